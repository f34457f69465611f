//! Uploads through a fault-injecting proxy in front of a real S3 server: bursts of 5xx, connections
//! dropped mid-request, and a hang. Uploads either retry and finish, or fail within their timeout
//! with a clear error; a `.symlink` never names a missing or partial object; `enqueue` never
//! waits for the network.

use cairn_testkit as common;

use std::time::{Duration, Instant};

use cairn::remote::{UploadJob, UploadOptions, Uploader};
use common::fault_proxy::{Fault, FaultProxy, Match};
use common::s3::{BUCKET, S3Server};
use common::{MIB, within, write_file};

const POINTER: &str = "latest-rank0.pt";

fn options() -> UploadOptions {
    UploadOptions {
        num_concurrent_uploads: 2,
        timeout: Duration::from_secs(30),
        part_size_min: 8 * MIB,
        part_concurrency: 4,
        max_attempts: 3,
        retry_backoff: Duration::from_millis(50),
        abort_timeout: Duration::from_secs(5),
        ..UploadOptions::default()
    }
}

fn job(path: &std::path::Path, name: &str, seq: u64) -> UploadJob {
    UploadJob {
        local_path: path.to_path_buf(),
        object_name: name.to_string(),
        latest_pointer: Some(POINTER.to_string()),
        sequence: seq,
    }
}

/// The invariant: if the pointer exists, it names an object that exists on the server with
/// exactly the bytes of the local checkpoint it was uploaded from.
fn assert_pointer_names_a_whole_object(server: &S3Server, expected: &[(String, Vec<u8>)]) {
    let Ok(target) = std::fs::read(server.object_file(&format!("{POINTER}.symlink"))) else {
        return;
    };
    let target = String::from_utf8(target).unwrap();
    let (_, data) = expected
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("the pointer names '{target}', which was never uploaded"));
    let on_server = std::fs::read(server.object_file(&target))
        .unwrap_or_else(|_| panic!("the pointer names '{target}', which is missing"));
    assert!(
        on_server == *data,
        "the pointer names '{target}', which is partial"
    );
}

#[test]
fn bursts_of_503_are_retried_and_uploads_finish() {
    let Some(server) = S3Server::start() else {
        return;
    };
    within(Duration::from_secs(120), move || {
        let proxy = FaultProxy::start(server.addr);
        let store = server.store_via(&proxy.endpoint(), "");
        let dir = tempfile::tempdir().unwrap();
        // 3 × 503 on parts, 2 on single PUTs, 2 on the multipart completion.
        proxy.inject(Fault::Status(503), 3, Match::parts());
        proxy.inject(
            Fault::Status(503),
            2,
            Match {
                method: Some("PUT"),
                target_contains: Some("small"),
            },
        );
        proxy.inject(
            Fault::Status(500),
            2,
            Match {
                method: Some("POST"),
                target_contains: Some("uploadId="),
            },
        );
        let (big, big_data) = write_file(dir.path(), "big.pt", 20 * MIB, 1);
        let (small, small_data) = write_file(dir.path(), "small.pt", 4000, 2);
        let uploader = Uploader::new(store, options()).unwrap();
        uploader.enqueue(job(&big, "big.pt", 1)).unwrap();
        uploader.enqueue(job(&small, "small.pt", 2)).unwrap();
        let report = uploader.finish();
        eprintln!("{report}\n{:#?}", report.failures);
        assert_eq!((report.uploaded, report.failed), (2, 0), "{report:?}");
        assert_eq!(proxy.injected().len(), 7, "{:#?}", proxy.injected());
        assert_eq!(
            std::fs::read(server.object_file("big.pt")).unwrap(),
            big_data
        );
        assert_eq!(
            std::fs::read(server.object_file("small.pt")).unwrap(),
            small_data
        );
        assert_eq!(
            std::fs::read(server.object_file("latest-rank0.pt.symlink")).unwrap(),
            b"small.pt"
        );
        assert!(server.leftover_parts().is_empty());
    });
}

#[test]
fn connections_dropped_mid_request_are_retried_and_uploads_finish() {
    let Some(server) = S3Server::start() else {
        return;
    };
    within(Duration::from_secs(120), move || {
        let proxy = FaultProxy::start(server.addr);
        let store = server.store_via(&proxy.endpoint(), "");
        let dir = tempfile::tempdir().unwrap();
        // Parts are idempotent, so object_store retries them itself. A create-only single PUT
        // is not (a retry could find its own object), so that one is cairn's whole-upload retry.
        proxy.inject(Fault::Drop, 2, Match::parts());
        proxy.inject(
            Fault::Drop,
            1,
            Match {
                method: Some("PUT"),
                target_contains: Some("small"),
            },
        );
        let (big, big_data) = write_file(dir.path(), "big.pt", 24 * MIB, 1);
        let (small, small_data) = write_file(dir.path(), "small.pt", 200_000, 2);
        let uploader = Uploader::new(store, options()).unwrap();
        uploader.enqueue(job(&big, "big.pt", 1)).unwrap();
        uploader.enqueue(job(&small, "small.pt", 2)).unwrap();
        let report = uploader.finish();
        eprintln!("{report}\n{:#?}", report.failures);
        assert_eq!((report.uploaded, report.failed), (2, 0), "{report:?}");
        assert_eq!(proxy.injected().len(), 3, "{:#?}", proxy.injected());
        assert_eq!(
            std::fs::read(server.object_file("big.pt")).unwrap(),
            big_data
        );
        assert_eq!(
            std::fs::read(server.object_file("small.pt")).unwrap(),
            small_data
        );
        assert_pointer_names_a_whole_object(
            &server,
            &[
                ("big.pt".to_string(), big_data),
                ("small.pt".to_string(), small_data),
            ],
        );
        assert!(server.leftover_parts().is_empty());
    });
}

#[test]
fn persistent_errors_fail_with_the_store_error_abort_the_upload_and_leave_no_pointer() {
    let Some(server) = S3Server::start() else {
        return;
    };
    within(Duration::from_secs(120), move || {
        let proxy = FaultProxy::start(server.addr);
        let store = server.store_via(&proxy.endpoint(), "");
        let dir = tempfile::tempdir().unwrap();
        proxy.inject(Fault::Status(500), usize::MAX, Match::parts());
        let (big, big_data) = write_file(dir.path(), "big.pt", 16 * MIB + 3, 1);
        let opts = UploadOptions {
            max_attempts: 2,
            ..options()
        };
        let start = Instant::now();
        let uploader = Uploader::new(store, opts).unwrap();
        uploader.enqueue(job(&big, "big.pt", 1)).unwrap();
        let report = uploader.finish();
        eprintln!("{report}\n{:#?}", report.failures);
        assert!(start.elapsed() < Duration::from_secs(30));
        assert_eq!((report.uploaded, report.failed), (0, 1), "{report:?}");
        let failure = &report.failures[0];
        assert_eq!(failure.object_name, "big.pt");
        assert_eq!(failure.local_path, big);
        let msg = &failure.message;
        assert!(
            msg.contains(&format!(
                "uploading 'big.pt' to 's3://{BUCKET}/' failed after 2 attempt(s)"
            )),
            "{msg}"
        );
        assert!(
            msg.contains("500") && msg.contains("InternalError"),
            "the store's own error: {msg}"
        );
        assert!(
            msg.contains("the unfinished multipart upload was aborted"),
            "{msg}"
        );
        assert!(
            server.leftover_parts().is_empty(),
            "{:?}",
            server.leftover_parts()
        );
        assert!(!server.object_file("big.pt").exists());
        assert!(!server.object_file("latest-rank0.pt.symlink").exists());
        assert_eq!(
            std::fs::read(&big).unwrap(),
            big_data,
            "local file untouched"
        );
    });
}

#[test]
fn a_hang_fails_within_the_timeout_while_enqueue_never_waits_and_the_pointer_stays_whole() {
    let Some(server) = S3Server::start() else {
        return;
    };
    within(Duration::from_secs(120), move || {
        let proxy = FaultProxy::start(server.addr);
        let store = server.store_via(&proxy.endpoint(), "");
        let dir = tempfile::tempdir().unwrap();
        let timeout = Duration::from_secs(2);
        let opts = UploadOptions {
            timeout,
            abort_timeout: Duration::from_millis(500),
            ..options()
        };
        let uploader = Uploader::new(store, opts).unwrap();

        // A healthy first checkpoint: the pointer names it.
        let (p0, d0) = write_file(dir.path(), "ep0.pt", 9 * MIB, 0);
        uploader.enqueue(job(&p0, "ep0.pt", 0)).unwrap();
        let start = Instant::now();
        while uploader.pending() > 0 {
            assert!(start.elapsed() < Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(uploader.poll_failures().is_empty());

        // Now every upload request hangs (creating and aborting multipart uploads still answer,
        // so the abort after the timeout can be checked). The training loop keeps saving.
        proxy.inject(Fault::Hang, usize::MAX, Match::method("PUT"));
        let mut expected = vec![("ep0.pt".to_string(), d0)];
        let mut slowest = Duration::ZERO;
        for i in 1..=4u64 {
            let size = if i % 2 == 0 { 9 * MIB } else { 3000 };
            let (p, d) = write_file(dir.path(), &format!("ep{i}.pt"), size, i);
            let t = Instant::now();
            uploader.enqueue(job(&p, &format!("ep{i}.pt"), i)).unwrap();
            slowest = slowest.max(t.elapsed());
            expected.push((format!("ep{i}.pt"), d));
        }
        eprintln!("slowest enqueue while the network hangs: {slowest:?}");
        assert!(
            slowest < Duration::from_millis(25),
            "enqueue waited on the network: {slowest:?}"
        );
        assert!(
            uploader.poll_failures().is_empty(),
            "nothing can have failed yet"
        );

        let finish_start = Instant::now();
        let report = uploader.finish();
        eprintln!("{report}\n{:#?}", report.failures);
        let waited = finish_start.elapsed();
        // Two at a time, each bounded by timeout + abort: 4 jobs → 2 rounds.
        assert!(
            waited < 2 * (timeout + Duration::from_millis(500)) + Duration::from_secs(3),
            "finish waited {waited:?}"
        );
        assert_eq!((report.uploaded, report.failed), (1, 4), "{report:?}");
        for f in &report.failures {
            assert!(
                f.message
                    .contains("did not finish within 2.0 s (upload_timeout_in_seconds)"),
                "{}",
                f.message
            );
        }
        let multipart = report
            .failures
            .iter()
            .find(|f| f.object_name == "ep2.pt")
            .unwrap();
        assert!(
            multipart
                .message
                .contains("the unfinished multipart upload was aborted"),
            "{}",
            multipart.message
        );
        assert!(server.leftover_parts().is_empty());
        assert_eq!(
            std::fs::read(server.object_file("latest-rank0.pt.symlink")).unwrap(),
            b"ep0.pt"
        );
        assert_pointer_names_a_whole_object(&server, &expected);
        drop(proxy);
    });
}

#[test]
fn under_mixed_faults_the_pointer_only_ever_names_whole_objects() {
    let Some(server) = S3Server::start() else {
        return;
    };
    within(Duration::from_secs(180), move || {
        let proxy = FaultProxy::start(server.addr);
        let store = server.store_via(&proxy.endpoint(), "");
        let dir = tempfile::tempdir().unwrap();
        let opts = UploadOptions {
            num_concurrent_uploads: 3,
            max_attempts: 2,
            timeout: Duration::from_secs(20),
            ..options()
        };
        let uploader = Uploader::new(store, opts).unwrap();
        // Faults on every kind of request, interleaved with saves; the pointer is checked after
        // each save while uploads are still running.
        let mut expected = Vec::new();
        for i in 0..8u64 {
            match i % 4 {
                0 => proxy.inject(Fault::Status(503), 2, Match::method("PUT")),
                1 => proxy.inject(Fault::Drop, 1, Match::parts()),
                2 => proxy.inject(Fault::Status(500), 6, Match::parts()),
                _ => proxy.inject(Fault::Status(503), 1, Match::method("HEAD")),
            }
            let size = if i % 2 == 0 { 9 * MIB + 7 } else { 5000 };
            let name = format!("ep{i}.pt");
            let (p, d) = write_file(dir.path(), &name, size, i);
            uploader.enqueue(job(&p, &name, i)).unwrap();
            expected.push((name, d));
            std::thread::sleep(Duration::from_millis(50));
            assert_pointer_names_a_whole_object(&server, &expected);
        }
        let report = uploader.finish();
        eprintln!("{report}\n{:#?}", report.failures);
        assert_eq!(report.uploaded + report.failed, 8, "{report:?}");
        assert_pointer_names_a_whole_object(&server, &expected);
        // Every upload that succeeded is whole; every one that failed left no object.
        let failed: Vec<_> = report
            .failures
            .iter()
            .map(|f| f.object_name.clone())
            .collect();
        for (name, data) in &expected {
            let on_server = std::fs::read(server.object_file(name)).ok();
            if failed.contains(name) {
                assert_eq!(on_server, None, "{name} failed but an object exists");
            } else {
                assert_eq!(on_server.as_ref(), Some(data), "{name}");
            }
        }
        assert!(server.leftover_parts().is_empty());
    });
}

#[test]
fn when_even_the_abort_hangs_the_failure_says_parts_may_remain() {
    let Some(server) = S3Server::start() else {
        return;
    };
    within(Duration::from_secs(60), move || {
        let proxy = FaultProxy::start(server.addr);
        let store = server.store_via(&proxy.endpoint(), "");
        let dir = tempfile::tempdir().unwrap();
        // Part 1 lands, part 2 hangs, and so does the abort (DELETE ?uploadId=...).
        proxy.inject(
            Fault::Hang,
            usize::MAX,
            Match {
                method: Some("PUT"),
                target_contains: Some("partNumber=2&"),
            },
        );
        proxy.inject(Fault::Hang, usize::MAX, Match::method("DELETE"));
        let (big, _) = write_file(dir.path(), "big.pt", 16 * MIB + 1, 1);
        let opts = UploadOptions {
            timeout: Duration::from_secs(2),
            abort_timeout: Duration::from_millis(500),
            part_concurrency: 1,
            ..options()
        };
        let start = Instant::now();
        let uploader = Uploader::new(store, opts).unwrap();
        uploader.enqueue(job(&big, "big.pt", 1)).unwrap();
        let report = uploader.finish();
        eprintln!("{report}\n{:#?}", report.failures);
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(report.failed, 1);
        let msg = &report.failures[0].message;
        assert!(
            msg.contains("did not finish within 2.0 s")
                && msg.contains(
                    "aborting the unfinished multipart upload also failed (no answer within 0.5 s)"
                )
                && msg.contains("lifecycle rule"),
            "{msg}"
        );
        assert_eq!(server.leftover_parts().len(), 1, "part 1 is on the server");
        assert!(!server.object_file("big.pt").exists());
        assert!(!server.object_file("latest-rank0.pt.symlink").exists());
    });
}
