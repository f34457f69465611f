//! What only a real S3 server (s3s-fs on loopback) shows: which requests an upload makes (one PUT,
//! or parallel multipart parts), that no part is left behind, retention's view of an upload in
//! flight, and bad credentials. The behaviour every store shares is in `remote.rs`.

use cairn_testkit as common;

use std::time::Duration;

use cairn::remote::{RemoteStore, UploadJob, UploadOptions, UploadStatus, Uploader};
use common::fault_proxy::FaultProxy;
use common::s3::{BUCKET, S3Server};
use common::{MIB, within, write_file};

fn options() -> UploadOptions {
    UploadOptions {
        timeout: Duration::from_secs(60),
        part_size_min: 8 * MIB,
        part_concurrency: 4,
        retry_backoff: Duration::from_millis(50),
        abort_timeout: Duration::from_secs(5),
        ..UploadOptions::default()
    }
}

fn job(path: &std::path::Path, name: &str, seq: u64) -> UploadJob {
    UploadJob {
        local_path: path.to_path_buf(),
        object_name: name.to_string(),
        latest_pointer: Some("run/latest-rank0.pt".to_string()),
        sequence: seq,
    }
}

#[test]
fn small_and_multipart_uploads_land_byte_exact_with_an_exact_pointer() {
    let Some(server) = S3Server::start() else {
        return;
    };
    within(Duration::from_secs(120), move || {
        // A pass-through proxy (no faults armed) lets the test see which requests were made.
        let proxy = FaultProxy::start(server.addr);
        let store = server.store_via(&proxy.endpoint(), "prefix/a");
        let dir = tempfile::tempdir().unwrap();
        let (small, small_data) = write_file(dir.path(), "ep0-ba1-rank0.pt", 1000, 1);
        let (large, large_data) = write_file(dir.path(), "ep1-ba2-rank0.pt", 40 * MIB, 2);
        let uploader = Uploader::new(store, options()).unwrap();
        let t1 = uploader
            .enqueue(job(&small, "run/ep0-ba1-rank0.pt", 0))
            .unwrap();
        let t2 = uploader
            .enqueue(job(&large, "run/ep1-ba2-rank0.pt", 1))
            .unwrap();
        assert_eq!(t1.key, "prefix/a/run/ep0-ba1-rank0.pt");
        assert_eq!(t2.bytes, 40 * MIB as u64);
        let report = uploader.finish();
        eprintln!("{report}\n{:#?}", report.failures);
        assert_eq!((report.uploaded, report.failed), (2, 0), "{report:?}");
        assert_eq!(report.bytes, 1000 + 40 * MIB as u64);
        assert!(report.seconds > 0.0 && report.throughput() > 0.0);

        let on_server = |key: &str| std::fs::read(server.object_file(key)).ok();
        assert_eq!(
            on_server("prefix/a/run/ep0-ba1-rank0.pt").unwrap(),
            small_data
        );
        assert_eq!(
            on_server("prefix/a/run/ep1-ba2-rank0.pt").unwrap(),
            large_data
        );
        // Exactly the bucket-relative key, no newline.
        assert_eq!(
            on_server("prefix/a/run/latest-rank0.pt.symlink").unwrap(),
            b"prefix/a/run/ep1-ba2-rank0.pt"
        );
        let requests = proxy.requests();
        let parts = requests
            .iter()
            .filter(|r| r.starts_with("PUT") && r.contains("ep1-ba2") && r.contains("partNumber="))
            .count();
        assert_eq!(parts, 5, "40 MiB in 8 MiB parts: {requests:#?}");
        assert!(
            requests
                .iter()
                .any(|r| r.starts_with("PUT") && r.contains("ep0-ba1") && !r.contains('?')),
            "the small file goes in one PUT: {requests:#?}"
        );
        assert!(proxy.max_open_connections() >= 2, "parts went in parallel");
        assert!(server.leftover_parts().is_empty());
    });
}

#[test]
fn status_tells_retention_when_a_local_file_may_go() {
    let Some(server) = S3Server::start() else {
        return;
    };
    within(Duration::from_secs(60), move || {
        let proxy = FaultProxy::start(server.addr);
        // A 1 s request timeout so the request hung below is retried soon after the hang ends.
        let mut store_opts = S3Server::options(&proxy.endpoint());
        store_opts.request_timeout = Duration::from_secs(1);
        let url = format!("s3://{BUCKET}/");
        let store = RemoteStore::from_url_with(&url, &store_opts).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (p, data) = write_file(dir.path(), "ep1.pt", 1000, 1);
        proxy.hang_all(true);
        let opts = UploadOptions {
            overwrite: true,
            ..options()
        };
        let uploader = Uploader::new(store, opts).unwrap();
        assert_eq!(uploader.status(&p), UploadStatus::NotTracked);
        uploader.enqueue(job(&p, "ep1.pt", 1)).unwrap();
        assert_eq!(uploader.status(&p), UploadStatus::InFlight);
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            uploader.in_flight(&p),
            "num_checkpoints_to_keep=0 must wait"
        );
        assert!(!uploader.status(&p).may_delete());
        proxy.hang_all(false);
        let start = std::time::Instant::now();
        while uploader.in_flight(&p) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "upload never finished"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(uploader.status(&p), UploadStatus::Uploaded);
        assert!(uploader.status(&p).may_delete());
        assert_eq!(std::fs::read(server.object_file("ep1.pt")).unwrap(), data);
        assert_eq!(uploader.finish().uploaded, 1);
    });
}

#[test]
fn bad_credentials_fail_with_the_stores_own_error() {
    let Some(server) = S3Server::start() else {
        return;
    };
    within(Duration::from_secs(60), move || {
        let mut opts = S3Server::options(&server.endpoint);
        let env = opts.env.as_mut().unwrap();
        env.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
        env.push(("AWS_SECRET_ACCESS_KEY".into(), "wrong".into()));
        let store = RemoteStore::from_url_with(&format!("s3://{BUCKET}/x"), &opts).unwrap();
        let err = store
            .check_access(Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("cannot reach remote URL 's3://{BUCKET}/x'"))
                && err.contains("403 Forbidden"),
            "{err}"
        );
        server
            .store("x")
            .check_access(Duration::from_secs(10))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (p, data) = write_file(dir.path(), "ep1.pt", 1000, 1);
        let uploader = Uploader::new(store, options()).unwrap();
        uploader.enqueue(job(&p, "ep1.pt", 1)).unwrap();
        let report = uploader.finish();
        eprintln!("{report}\n{:#?}", report.failures);
        assert_eq!(report.failed, 1);
        let msg = &report.failures[0].message;
        assert!(
            msg.contains("'x/ep1.pt'") && msg.contains(&format!("s3://{BUCKET}/x")),
            "{msg}"
        );
        assert!(msg.contains("403") || msg.contains("Signature"), "{msg}");
        assert_eq!(std::fs::read(&p).unwrap(), data);
    });
}
