//! The saver through `cairn run`: resuming reaches the same checkpoint as an uninterrupted run,
//! and the embedded default leaves a verified folder.

use std::fs;
use std::path::Path;
use std::process::Command;

use cairn::format::Value;

fn names(dir: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.retain(|n| n.starts_with(prefix));
    v.sort();
    v
}

fn cairn(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

/// Composer's `test_resumption`: resuming from an intermediate checkpoint reaches the same final
/// checkpoint as an uninterrupted run.
#[test]
fn resume_reaches_the_same_final_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let job = |name: &str, max: &str| {
        let text = format!(
            "run_name = \"r\"\n[checkpoint]\nfolder = \"{name}\"\nsave_interval = \"3ba\"\nremote_file_name = false\n[train]\nmax_duration = \"{max}\"\nbatches_per_epoch = 4\nseconds_per_batch = 0\nmodel_mib = 0.5\n"
        );
        let path = dir.path().join(format!("{name}-{max}.toml"));
        fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let run_ok = |args: &[&str]| {
        let out = cairn(dir.path(), args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    run_ok(&["run", "--config", &job("straight", "3ep"), "--json"]);
    run_ok(&["run", "--config", &job("resumed", "5ba"), "--json"]);
    let out = run_ok(&[
        "run",
        "--config",
        &job("resumed", "3ep"),
        "--resume",
        "--json",
    ]);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The short run's end-of-training save at batch 5 is the newest checkpoint.
    assert!(
        summary["resumed_from"]
            .as_str()
            .unwrap()
            .ends_with("ep1-ba5-rank0.pt"),
        "{summary}"
    );
    assert_eq!(summary["batches"], 7);

    let straight =
        cairn::format::read_checkpoint(&dir.path().join("straight/ep2-ba12-rank0.pt")).unwrap();
    let resumed =
        cairn::format::read_checkpoint(&dir.path().join("resumed/ep2-ba12-rank0.pt")).unwrap();
    let strip = |mut v: Value| {
        let state = v
            .as_dict_mut()
            .unwrap()
            .get_mut("state")
            .unwrap()
            .as_dict_mut()
            .unwrap();
        state.remove(&"callbacks".into());
        v
    };
    assert_eq!(strip(straight), strip(resumed));
}

#[test]
fn cairn_run_with_no_arguments_leaves_a_verified_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = cairn(
        dir.path(),
        &["run", "--model-mib", "1", "--seconds-per-batch", "0"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("checkpoints saved  6"), "{text}");
    let ck = dir.path().join("cairn-demo/checkpoints");
    assert_eq!(names(&ck, "ep").len(), 3);
    let latest = cairn::resolve_latest(&ck.join("latest-rank0.pt"))
        .unwrap()
        .unwrap();
    assert!(latest.ends_with("ep2-ba24-rank0.pt"));
    cairn::format::verify_checkpoint(&latest).unwrap();
}
