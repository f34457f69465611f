//! End to end against a real S3 server (s3s-fs) on loopback: uploads small and multipart, many at
//! once, the `.symlink` pointer's exact bytes, `overwrite = false`, and resume from remote after
//! the local folder is gone.

mod common;

use std::time::Duration;

use cairn::remote::{
    RemoteStore, UploadJob, UploadOptions, UploadStatus, Uploader, download_latest,
};
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
fn concurrent_uploads_all_land_and_the_pointer_names_the_newest() {
    let Some(server) = S3Server::start() else {
        return;
    };
    within(Duration::from_secs(120), move || {
        let proxy = FaultProxy::start(server.addr);
        let store = server.store_via(&proxy.endpoint(), "");
        let dir = tempfile::tempdir().unwrap();
        let opts = UploadOptions {
            num_concurrent_uploads: 3,
            ..options()
        };
        let uploader = Uploader::new(store, opts).unwrap();
        let mut files = Vec::new();
        for i in 0..6u64 {
            let name = format!("run/ep{i}.pt");
            let (path, data) = write_file(dir.path(), &format!("ep{i}.pt"), 9 * MIB + 1, i);
            uploader.enqueue(job(&path, &name, i)).unwrap();
            files.push((name, path, data));
        }
        let report = uploader.finish();
        eprintln!("{report}\n{:#?}", report.failures);
        assert_eq!((report.uploaded, report.failed), (6, 0), "{report:?}");
        for (name, _, data) in &files {
            assert_eq!(&std::fs::read(server.object_file(name)).unwrap(), data);
        }
        assert_eq!(
            std::fs::read(server.object_file("run/latest-rank0.pt.symlink")).unwrap(),
            b"run/ep5.pt"
        );
        assert!(
            proxy.max_open_connections() >= 3,
            "uploads ran concurrently: {} connections",
            proxy.max_open_connections()
        );
    });
}

#[test]
fn overwrite_false_refuses_to_replace_objects_on_the_server() {
    let Some(server) = S3Server::start() else {
        return;
    };
    within(Duration::from_secs(120), move || {
        let store = server.store("p");
        let dir = tempfile::tempdir().unwrap();
        let (small, small_data) = write_file(dir.path(), "a/small.pt", 1000, 1);
        let (big, big_data) = write_file(dir.path(), "a/big.pt", 17 * MIB, 2);
        let first = Uploader::new(store.clone(), options()).unwrap();
        first.enqueue(job(&small, "small.pt", 0)).unwrap();
        first.enqueue(job(&big, "big.pt", 1)).unwrap();
        assert_eq!(first.finish().uploaded, 2);

        let (small2, _) = write_file(dir.path(), "b/small.pt", 1000, 3);
        let (big2, _) = write_file(dir.path(), "b/big.pt", 17 * MIB, 4);
        let second = Uploader::new(store.clone(), options()).unwrap();
        second.enqueue(job(&small2, "small.pt", 2)).unwrap();
        second.enqueue(job(&big2, "big.pt", 3)).unwrap();
        let report = second.finish();
        eprintln!("{report}\n{:#?}", report.failures);
        assert_eq!((report.uploaded, report.failed), (0, 2), "{report:?}");
        for f in &report.failures {
            assert!(
                f.message.contains(&format!(
                    "already exists in 's3://{BUCKET}/p' and overwrite is false"
                )),
                "{}",
                f.message
            );
        }
        assert_eq!(
            std::fs::read(server.object_file("p/small.pt")).unwrap(),
            small_data
        );
        assert_eq!(
            std::fs::read(server.object_file("p/big.pt")).unwrap(),
            big_data
        );
        assert_eq!(
            std::fs::read(server.object_file("p/run/latest-rank0.pt.symlink")).unwrap(),
            b"p/big.pt",
            "a refused upload moved the pointer"
        );
    });
}

#[test]
fn resume_downloads_the_latest_checkpoint_after_the_local_folder_is_deleted() {
    let Some(server) = S3Server::start() else {
        return;
    };
    within(Duration::from_secs(120), move || {
        let store = server.store("jobs/7");
        let work = tempfile::tempdir().unwrap();
        let folder = work.path().join("checkpoints");
        assert_eq!(
            download_latest(&store, "run/latest-rank0.pt", &folder).unwrap(),
            None,
            "nothing to resume yet"
        );
        let (p1, _) = write_file(&folder, "ep1.pt", 3 * MIB, 1);
        let (p2, d2) = write_file(&folder, "ep2.pt", 12 * MIB + 5, 2);
        let opts = UploadOptions {
            num_concurrent_uploads: 2,
            ..options()
        };
        let uploader = Uploader::new(store.clone(), opts).unwrap();
        uploader.enqueue(job(&p1, "run/ep1.pt", 1)).unwrap();
        uploader.enqueue(job(&p2, "run/ep2.pt", 2)).unwrap();
        let report = uploader.finish();
        eprintln!("{report}\n{:#?}", report.failures);
        assert_eq!(report.uploaded, 2, "{report:?}");
        std::fs::remove_dir_all(&folder).unwrap();

        // A new process: a fresh client, nothing local.
        let store = server.store("jobs/7");
        let got = download_latest(&store, "run/latest-rank0.pt", &folder)
            .unwrap()
            .expect("a checkpoint to resume from");
        assert_eq!(got, folder.join("ep2.pt"));
        assert_eq!(std::fs::read(&got).unwrap(), d2);
        let names: Vec<_> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["ep2.pt"], "no temporary files left");
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
