//! `cairn run` with uploads, end to end: the embedded `file://` store and a real S3 server.
//! Local retention waits for uploads, the remote `latest` names the newest checkpoint, and a run
//! whose local folder is gone resumes from the remote pointer.

use cairn_testkit as common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::s3::S3Server;

fn job(dir: &Path, name: &str, remote_url: &str, keep: i64, max: &str) -> String {
    let text = format!(
        "run_name = \"{name}\"\n[checkpoint]\nfolder = \"{name}/ck\"\nsave_interval = \"2ba\"\nnum_checkpoints_to_keep = {keep}\n[remote]\nurl = \"{remote_url}\"\n[train]\nmax_duration = \"{max}\"\nbatches_per_epoch = 4\nseconds_per_batch = 0\nmodel_mib = 1\n"
    );
    let path = dir.join(format!("{name}-{max}.toml"));
    fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

fn cairn(dir: &Path, env: &[(String, String)], args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .current_dir(dir)
        .envs(env.iter().cloned())
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cairn {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn checkpoints(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.retain(|n| n.starts_with("ep"));
    v.sort();
    v
}

#[test]
fn keep_zero_deletes_locally_only_after_upload_and_resume_comes_from_remote() {
    let dir = tempfile::tempdir().unwrap();
    let summary = cairn(
        dir.path(),
        &[],
        &[
            "run",
            "--config",
            &job(dir.path(), "f", "file://./remote", 0, "8ba"),
        ],
    );
    assert_eq!(summary["saves"], 4);
    assert_eq!(summary["uploads"]["uploaded"], 4, "{summary}");
    assert_eq!(summary["uploads"]["failed"], 0);
    // Remote-only: every local copy was deleted, each after its upload finished.
    assert_eq!(checkpoints(&dir.path().join("f/ck")), Vec::<String>::new());
    let remote = dir.path().join("remote/f/checkpoints");
    assert_eq!(
        checkpoints(&remote),
        [
            "ep0-ba2-rank0.pt",
            "ep0-ba4-rank0.pt",
            "ep1-ba6-rank0.pt",
            "ep1-ba8-rank0.pt"
        ]
    );
    let pointer = fs::read_to_string(remote.join("latest-rank0.pt.symlink")).unwrap();
    assert_eq!(
        pointer, "f/checkpoints/ep1-ba8-rank0.pt",
        "no trailing newline"
    );
    cairn::format::verify_checkpoint(&remote.join("ep1-ba8-rank0.pt")).unwrap();

    fs::remove_dir_all(dir.path().join("f")).ok();
    let resumed = cairn(
        dir.path(),
        &[],
        &[
            "run",
            "--resume",
            "--config",
            &job(dir.path(), "f", "file://./remote", -1, "12ba"),
        ],
    );
    assert!(
        resumed["resumed_from"]
            .as_str()
            .unwrap()
            .ends_with("ep1-ba8-rank0.pt"),
        "{resumed}"
    );
    assert_eq!(resumed["batches"], 4);
    let pointer = fs::read_to_string(remote.join("latest-rank0.pt.symlink")).unwrap();
    assert_eq!(pointer, "f/checkpoints/ep2-ba12-rank0.pt");
}

#[test]
fn cairn_run_uploads_to_a_real_s3_server_and_resumes_from_it() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let env = S3Server::env(&server.endpoint);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("s3://{}/runs", common::s3::BUCKET);
    let summary = common::within(Duration::from_secs(120), {
        let (d, env, url) = (dir.path().to_path_buf(), env.clone(), url.clone());
        move || {
            cairn(
                &d,
                &env,
                &["run", "--config", &job(&d, "s", &url, 1, "6ba")],
            )
        }
    });
    assert_eq!(summary["uploads"]["uploaded"], 3, "{summary}");
    assert_eq!(
        checkpoints(&dir.path().join("s/ck")),
        ["ep1-ba6-rank0.pt"],
        "keep = 1"
    );
    for name in ["ep0-ba2-rank0.pt", "ep0-ba4-rank0.pt", "ep1-ba6-rank0.pt"] {
        let object = server.object_file(&format!("runs/s/checkpoints/{name}"));
        cairn::format::verify_checkpoint(&object).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let pointer =
        fs::read_to_string(server.object_file("runs/s/checkpoints/latest-rank0.pt.symlink"))
            .unwrap();
    assert_eq!(pointer, "runs/s/checkpoints/ep1-ba6-rank0.pt");

    fs::remove_dir_all(dir.path().join("s")).unwrap();
    let resumed = common::within(Duration::from_secs(120), {
        let (d, env, url) = (dir.path().to_path_buf(), env.clone(), url.clone());
        move || {
            cairn(
                &d,
                &env,
                &["run", "--resume", "--config", &job(&d, "s", &url, 1, "8ba")],
            )
        }
    });
    assert!(
        resumed["resumed_from"]
            .as_str()
            .unwrap()
            .ends_with("ep1-ba6-rank0.pt"),
        "{resumed}"
    );
    assert_eq!(resumed["batches"], 2);
    assert_eq!(resumed["uploads"]["uploaded"], 1);
}

/// An S3 endpoint that accepts connections and never answers uploads: training goes on at full
/// pace, each upload fails within `upload_timeout_in_seconds` naming its object, no remote
/// `latest` is ever written, and every local checkpoint is intact.
#[test]
fn a_hanging_store_never_slows_training_and_fails_within_the_timeout() {
    use common::fault_proxy::{Fault, FaultProxy, Match};
    let Some(server) = S3Server::start() else {
        return;
    };
    let proxy = FaultProxy::start(server.addr);
    proxy.inject(Fault::Hang, 1000, Match::method("PUT"));
    proxy.inject(Fault::Hang, 1000, Match::method("POST"));
    let env = S3Server::env(&proxy.endpoint());
    let dir = tempfile::tempdir().unwrap();
    let url = format!("s3://{}/hang", common::s3::BUCKET);
    let config = job(dir.path(), "h", &url, -1, "4ba");
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("[remote]", "upload_timeout_in_seconds = 8\n[remote]");
    fs::write(&config, text).unwrap();
    let started = std::time::Instant::now();
    let out = common::within(Duration::from_secs(60), {
        let (d, env) = (dir.path().to_path_buf(), env.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_cairn"))
                .current_dir(&d)
                .envs(env)
                .args(["run", "--json", "--config", &config])
                .output()
                .unwrap()
        }
    });
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "failed uploads fail the run");
    assert!(
        stderr.contains("uploads failed") && stderr.contains("ep0-ba2-rank0.pt"),
        "{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["uploads"]["failed"], 2, "{summary}");
    assert!(
        summary["training_seconds"].as_f64().unwrap() < 6.0,
        "training waited on the network: {summary}"
    );
    assert!(
        elapsed < Duration::from_secs(45),
        "each upload is bounded by its timeout: {elapsed:?}"
    );
    for name in ["ep0-ba2-rank0.pt", "ep0-ba4-rank0.pt"] {
        cairn::format::verify_checkpoint(&dir.path().join("h/ck").join(name)).unwrap();
    }
    assert!(
        !server
            .object_file("hang/h/checkpoints/latest-rank0.pt.symlink")
            .exists()
    );
}

/// `folder` as a store URL: checkpoints are staged in a local temporary folder, removed at the
/// end, and uploaded as Composer's `Trainer` names them under `save_folder = "s3://..."`:
/// `<url path>/<filename>`.
#[test]
fn a_folder_url_stages_locally_and_uploads_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let text = format!(
        "run_name = \"u\"\n[checkpoint]\nfolder = \"file://{}/runs\"\nsave_interval = \"2ba\"\n[train]\nmax_duration = \"4ba\"\nbatches_per_epoch = 4\nseconds_per_batch = 0\nmodel_mib = 1\n",
        store.display()
    );
    let config = dir.path().join("url.toml");
    fs::write(&config, text).unwrap();
    let summary = cairn(
        dir.path(),
        &[],
        &["run", "--config", config.to_str().unwrap()],
    );
    assert_eq!(summary["uploads"]["uploaded"], 2, "{summary}");
    let staged = summary["folder"].as_str().unwrap();
    assert!(
        staged.starts_with(std::env::temp_dir().to_str().unwrap()),
        "{staged}"
    );
    assert!(
        !Path::new(staged).exists(),
        "the staging folder was left behind"
    );
    let remote = store.join("runs");
    assert_eq!(
        checkpoints(&remote),
        ["ep0-ba2-rank0.pt", "ep0-ba4-rank0.pt"]
    );
    assert_eq!(
        fs::read_to_string(remote.join("latest-rank0.pt.symlink")).unwrap(),
        "ep0-ba4-rank0.pt"
    );
}
