//! `cairn run` while the network hangs: the training loop never waits for uploads. Every upload
//! request hangs behind the fault proxy; saves still take only as long as the local write, the run
//! ends within the upload timeouts, reports each failure with the object and the time bound, keeps
//! its local checkpoints, and no remote `latest` pointer appears.

use cairn_testkit as common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::fault_proxy::{Fault, FaultProxy, Match};
use common::s3::{BUCKET, S3Server};

fn config(dir: &Path, url: &str) -> String {
    let text = format!(
        "run_name = \"hang\"\n\
         [checkpoint]\n\
         folder = \"hang/ck\"\n\
         save_interval = \"1ba\"\n\
         num_checkpoints_to_keep = -1\n\
         num_concurrent_uploads = 2\n\
         upload_timeout_in_seconds = 2\n\
         [remote]\n\
         url = \"{url}\"\n\
         [train]\n\
         max_duration = \"6ba\"\n\
         batches_per_epoch = 6\n\
         seconds_per_batch = 0\n\
         model_mib = 1\n"
    );
    let path = dir.join("hang.toml");
    fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn cairn_run_never_waits_on_a_hung_network() {
    let Some(server) = S3Server::start() else {
        return;
    };
    common::within(Duration::from_secs(120), move || {
        let proxy = FaultProxy::start(server.addr);
        // The access check (HEAD) answers; every upload (PUT) hangs.
        proxy.inject(Fault::Hang, usize::MAX, Match::method("PUT"));
        let dir = tempfile::tempdir().unwrap();
        let url = format!("s3://{BUCKET}/runs");
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .current_dir(dir.path())
            .envs(S3Server::env(&proxy.endpoint()))
            .args(["run", "--json", "--config", &config(dir.path(), &url)])
            .output()
            .unwrap();
        let wall = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "failed uploads must fail the run");
        assert!(stderr.contains("6 of 6 uploads failed"), "{stderr}");
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        eprintln!("wall {wall:?}; summary {summary:#}");

        assert_eq!(summary["saves"], 6);
        // Six saves took about as long as six local writes, although each upload hung for 2 s:
        // waiting on the network would have cost at least 6 x 2 s / 2 at a time = 6 s. (The
        // bound is loose on purpose: it tells "waited" from "did not", not how fast a write is.)
        let save_seconds = summary["save_seconds"].as_f64().unwrap();
        assert!(
            save_seconds < 6.0,
            "saves waited on the network: {save_seconds} s"
        );
        // The end of the run waits for the uploads, bounded by their timeouts: 6 uploads, 2 at a
        // time, 2 s each.
        assert!(wall < Duration::from_secs(20), "{wall:?}");
        let uploads = &summary["uploads"];
        assert_eq!(
            (uploads["uploaded"].as_u64(), uploads["failed"].as_u64()),
            (Some(0), Some(6))
        );
        for failure in uploads["failures"].as_array().unwrap() {
            let f = failure.as_str().unwrap();
            assert!(
                f.contains("runs/hang/checkpoints/ep0-ba")
                    && f.contains("did not finish within 2.0 s (upload_timeout_in_seconds)"),
                "{f}"
            );
        }
        // The local checkpoints are intact and no pointer names an object that is not there.
        let local: Vec<_> = fs::read_dir(dir.path().join("hang/ck"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("ep"))
            .map(|e| e.path())
            .collect();
        assert_eq!(local.len(), 6, "{local:?}");
        for path in &local {
            cairn::format::verify_checkpoint(path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        assert!(
            !server
                .object_file("runs/hang/checkpoints/latest-rank0.pt.symlink")
                .exists()
        );
        assert!(server.leftover_parts().is_empty());
    });
}
