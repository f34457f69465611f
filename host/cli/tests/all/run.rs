//! The saver through `cairn run`: resuming reaches the same checkpoint as an uninterrupted run
//! (also when the resumed run writes behind training), the embedded default leaves a verified
//! folder, and saves behind training keep memory flat.

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
/// checkpoint as an uninterrupted run; and a run whose saves are written behind training writes
/// the same checkpoints as one that writes them synchronously.
#[test]
fn resume_reaches_the_same_final_checkpoint() {
    resumption(false);
    resumption(true);
}

/// The uninterrupted run saves synchronously; the interrupted one with `async_save`.
fn resumption(async_save: bool) {
    let dir = tempfile::tempdir().unwrap();
    let job = |name: &str, max: &str| {
        let behind = async_save && name == "resumed";
        let text = format!(
            "run_name = \"r\"\n[checkpoint]\nfolder = \"{name}\"\nsave_interval = \"3ba\"\nremote_file_name = false\nasync_save = {behind}\n[train]\nmax_duration = \"{max}\"\nbatches_per_epoch = 4\nseconds_per_batch = 0\nmodel_mib = 0.5\n"
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
    assert_eq!(summary["async_save"], async_save);

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

/// Issue 14, bounded memory: ten saves behind training in a row reuse the one staging buffer and
/// do not grow the process (its peak is the same as after two), and the peak stays within the
/// model, the buffer and 64 MiB.
#[test]
fn ten_saves_behind_training_keep_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let run = |batches: u32| {
        let text = format!(
            "run_name = \"m{batches}\"\n[checkpoint]\nfolder = \"m{batches}\"\nsave_interval = \"1ba\"\nnum_checkpoints_to_keep = 1\nremote_file_name = false\nasync_save = true\n[train]\nmax_duration = \"{batches}ba\"\nbatches_per_epoch = 100\nseconds_per_batch = 0\nmodel_mib = 32\n"
        );
        let path = dir.path().join(format!("m{batches}.toml"));
        fs::write(&path, text).unwrap();
        let out = cairn(
            dir.path(),
            &["run", "--json", "--config", path.to_str().unwrap()],
        );
        cairn_testkit::success_json(&out)
    };
    let (two, ten) = (run(2), run(10));
    let state = (3 * 32) << 20;
    let peak = |s: &serde_json::Value| s["process_peak_rss_bytes"].as_u64().unwrap();
    assert_eq!(ten["saves"], 10, "{ten}");
    let staging = &ten["staging"];
    assert_eq!(staging["allocations"], 1, "{ten}");
    let pool = staging["pool_bytes"].as_u64().unwrap();
    assert!(pool >= state && pool < state + (1 << 20), "{ten}");
    // Eight 4 MiB layers, each with a 4-byte Adam step.
    assert_eq!(
        staging["staged_bytes"].as_u64().unwrap(),
        10 * (state + 8 * 4)
    );
    eprintln!(
        "peak RSS: {:.1} MiB after 2 saves, {:.1} MiB after 10 (state {} MiB, staging {:.1} MiB)",
        peak(&two) as f64 / (1 << 20) as f64,
        peak(&ten) as f64 / (1 << 20) as f64,
        state >> 20,
        pool as f64 / (1 << 20) as f64
    );
    // Slack for allocator and thread-stack noise (ten saves give the training and writer
    // threads' temporaries more chances to peak together); one leaked staging copy is 96 MiB.
    assert!(
        peak(&ten) <= peak(&two) + (32 << 20),
        "ten saves grew the process past two: {} vs {} bytes",
        peak(&ten),
        peak(&two)
    );
    assert!(
        peak(&ten) <= state + pool + (64 << 20),
        "peak RSS {} over the state, the staging buffer and 64 MiB",
        peak(&ten)
    );
    assert!(ten["blocked_seconds"].as_f64().unwrap() > 0.0, "{ten}");
}
