//! `cairn-bench upload` end to end against the real S3 server: it runs, prints medians and the
//! ratio, and leaves no benchmark objects behind.

use cairn_testkit as common;

use std::process::Command;
use std::time::Duration;

use common::s3::{BUCKET, S3Server};
use common::within;

#[test]
fn bench_upload_prints_the_ratio_and_cleans_up() {
    let Some(server) = S3Server::start() else {
        return;
    };
    within(Duration::from_secs(120), move || {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_cairn-bench"))
            .args(["upload", "--url", &format!("s3://{BUCKET}/b")])
            .args(["--size-mib", "20", "--runs", "1", "--no-aws"])
            .args(["--server-pid", &server.pid().to_string()])
            .arg("--dir")
            .arg(dir.path())
            // The child's environment, as a user would export it (the test's own is untouched).
            .envs(S3Server::env(&server.endpoint))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        for needle in [
            "cairn        median",
            "single-put   median",
            "ratio cairn / single-put throughput:",
            "server CPU",
        ] {
            assert!(stdout.contains(needle), "{needle:?} missing in:\n{stdout}");
        }
        let left: Vec<_> = std::fs::read_dir(server.object_file("b/cairn-bench"))
            .map(|it| it.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "benchmark objects left behind: {left:?}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the generated file was not removed"
        );
    });
}

#[test]
fn bench_upload_names_the_url_when_the_store_is_unreachable() {
    within(Duration::from_secs(60), || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_cairn-bench"))
            .args(["upload", "--url", "s3://nowhere/p"])
            .args(["--size-mib", "1", "--runs", "1", "--no-aws"])
            .arg("--dir")
            .arg(dir.path())
            .envs(S3Server::env(&endpoint))
            .env("AWS_MAX_RETRIES", "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.starts_with("cairn-bench: "), "{stderr}");
        assert!(stderr.contains("s3://nowhere/p"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    });
}
