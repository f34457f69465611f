//! The save pipeline stopped at every step, deterministically (issue 11's fault suite).
//!
//! `cairn run` is started with `FAILPOINTS` (the `fail` crate; the test build of `cairn` has the
//! `failpoints` feature, a release build has none) so that the third save stops at one step:
//! after the data write before fsync, after fsync before rename, after rename before the folder
//! fsync, inside the `latest` swap, after an upload before its pointer, and during rotation. Each
//! step is run twice: the process dies there (`_exit`, as under `kill -9`) and the call returns
//! an error. After each, the invariants hold:
//!
//! - every file under a checkpoint name verifies, locally and in the store;
//! - `latest` (local and remote) names a checkpoint that verifies, and never moves backwards;
//! - no temporary file survives the next start;
//! - `--resume` continues from the newest complete checkpoint.
//!
//! The full disk (`ENOSPC`) is tested on a real small tmpfs where the tests may mount one (they
//! run as root in CI), else with an injected `ENOSPC`; the test says which.
//!
//! Every scenario runs twice: with synchronous saves and with `async_save = true`, where the
//! steps run on the writer thread behind training (which adds its own failpoint, `writer::start`)
//! and a failure comes back at the next checkpoint event.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cairn::failpoints::{ASYNC_NAMES, DIED, NAMES};

fn cairn(dir: &Path, failpoints: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
    c.current_dir(dir).args(args);
    match failpoints {
        Some(f) => c.env("FAILPOINTS", f),
        None => c.env_remove("FAILPOINTS"),
    };
    c.output().unwrap()
}

/// Saves at every batch, keeps 2 (so the third save rotates), uploads to `./remote`; writes
/// behind training with `async_save`.
fn config(dir: &Path, max: &str, async_save: bool) -> String {
    let path = dir.join(format!("fp-{max}.toml"));
    let text = format!(
        "run_name = \"fp\"\n[checkpoint]\nfolder = \"ck\"\nsave_interval = \"1ba\"\nnum_checkpoints_to_keep = 2\nasync_save = {async_save}\n[remote]\nurl = \"file://./remote\"\n[train]\nmax_duration = \"{max}\"\nbatches_per_epoch = 4\nseconds_per_batch = 0\nmodel_mib = 0.25\n"
    );
    fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

fn batch_of(path: &Path) -> u64 {
    let tree =
        cairn::format::read_checkpoint(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    cairn::read_timestamp(&tree).unwrap().unwrap().batch
}

/// What a folder holds after a failure, once every invariant was checked.
#[derive(Debug)]
struct State {
    /// The batch of the newest complete checkpoint in the folder.
    newest: Option<u64>,
    /// The batch `latest` names.
    latest: Option<u64>,
    /// The batch the remote `latest` names.
    remote_latest: Option<u64>,
    /// Temporary files in the folder.
    temporary: Vec<String>,
}

/// Check every invariant that holds at any moment: every file under a checkpoint name verifies
/// (locally and in the store), and each `latest` names one that verifies.
fn check(dir: &Path, what: &str) -> State {
    let ck = dir.join("ck");
    let mut newest = None;
    let mut temporary = Vec::new();
    for entry in fs::read_dir(&ck).into_iter().flatten() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".cairn-tmp.") {
            temporary.push(name);
            continue;
        }
        if name.starts_with("latest") {
            continue;
        }
        cairn::format::verify_checkpoint(&entry.path())
            .unwrap_or_else(|e| panic!("{what}: {name} is under a checkpoint name but: {e}"));
        newest = newest.max(Some(batch_of(&entry.path())));
    }
    let latest = cairn::resolve_latest(&ck.join("latest-rank0.pt"))
        .unwrap()
        .map(|target| {
            cairn::format::verify_checkpoint(&target)
                .unwrap_or_else(|e| panic!("{what}: latest names {}: {e}", target.display()));
            batch_of(&target)
        });
    let remote = dir.join("remote/fp/checkpoints");
    for entry in fs::read_dir(&remote).into_iter().flatten() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if cairn::remote::is_staging_file(&name) {
            // An upload the process died in: `object_store`'s file store writes `NAME#N` and
            // renames it to NAME only when complete, and lists and reads never show it (as a
            // multipart upload in progress in S3). It is never under a checkpoint name.
            continue;
        }
        if name.starts_with("ep") {
            cairn::format::verify_checkpoint(&path)
                .unwrap_or_else(|e| panic!("{what}: remote {name}: {e}"));
        }
    }
    let remote_latest = fs::read_to_string(remote.join("latest-rank0.pt.symlink"))
        .ok()
        .map(|key| {
            let target = dir.join("remote").join(&key);
            assert!(
                target.is_file(),
                "{what}: the remote latest names a missing {key}"
            );
            batch_of(&target)
        });
    State {
        newest,
        latest,
        remote_latest,
        temporary,
    }
}

/// The batch in a sharded step's name (`...ep0-ba2-rank0.pt`).
fn batch_in(name: &str) -> Option<u64> {
    let rest = &name[name.rfind("-ba")? + 3..];
    rest[..rest.find('-')?].parse().ok()
}

/// One failpoint, one way of failing: run into it, check, resume without it, check again.
fn stop_at(point: &str, die: bool, async_save: bool) {
    let what = format!(
        "{point} ({}{})",
        if die { "dies" } else { "returns an error" },
        if async_save { ", async_save" } else { "" }
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let action = if die { "return(abort)" } else { "return" };
    // The third save is stopped (rotation first deletes at the third save, with keep = 2).
    let failpoints = if point == "rotate::before-delete" {
        format!("{point}={action}")
    } else {
        format!("{point}=2*off->{action}")
    };
    let out = cairn(
        d,
        Some(&failpoints),
        &["run", "--config", &config(d, "8ba", async_save)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    if die {
        assert_eq!(out.status.code(), Some(DIED), "{what}: {stderr}");
    } else {
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(
            stderr.contains(&format!("injected failure at failpoint {point}")),
            "{what}: {stderr}"
        );
    }
    let after = check(d, &what);
    let newest = after
        .newest
        .expect("two saves were complete before the failure");
    assert!(newest >= 2, "{what}: {after:?}");
    let latest = after
        .latest
        .expect("latest named a checkpoint before the failure");
    // `latest` lags the newest checkpoint by at most the save it was being moved for.
    assert!(
        latest + 1 >= newest && latest <= newest,
        "{what}: {after:?}"
    );

    let out = cairn(
        d,
        None,
        &[
            "run",
            "--resume",
            "--json",
            "--config",
            &config(d, "8ba", async_save),
        ],
    );
    let summary = cairn_testkit::success_json(&out);
    let resumed = summary["resumed_from"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: did not resume: {summary}"));
    // Read from the name: the resumed run's retention may have deleted the file since.
    assert!(
        resumed.ends_with(&format!("-ba{newest}-rank0.pt")),
        "{what}: resumed from {resumed}, not the newest complete checkpoint (batch {newest})"
    );
    assert_eq!(summary["batches"], 8 - newest, "{what}: {summary}");
    let end = check(d, &what);
    assert!(
        end.temporary.is_empty(),
        "{what}: temporary files survived the next start: {:?}",
        end.temporary
    );
    assert_eq!(end.latest, Some(8), "{what}: {end:?}");
    assert!(end.latest >= after.latest, "{what}: latest moved backwards");
    assert!(
        end.remote_latest >= after.remote_latest,
        "{what}: remote latest moved backwards"
    );
    // A checkpoint whose upload died with the process is not uploaded again by the next run
    // (nor by Composer's); once the resumed run saves, the remote `latest` is current again.
    if summary["batches"].as_u64() > Some(0) {
        assert_eq!(end.remote_latest, Some(8), "{what}: {end:?}");
    }
}

#[test]
fn every_step_dies_cleanly() {
    for point in NAMES {
        stop_at(point, true, false);
    }
}

#[test]
fn every_step_fails_cleanly() {
    for point in NAMES {
        stop_at(point, false, false);
    }
}

#[test]
fn every_step_behind_training_dies_cleanly() {
    for point in ASYNC_NAMES.into_iter().chain(NAMES) {
        stop_at(point, true, true);
    }
}

#[test]
fn every_step_behind_training_fails_cleanly() {
    for point in ASYNC_NAMES.into_iter().chain(NAMES) {
        stop_at(point, false, true);
    }
}

/// Issue 11, item 7: training that stops with an error (here a failed save) still finishes the
/// uploads in flight and writes the remote `latest` for the newest one confirmed, as Composer's
/// `post_close` does. The first upload is held for a second before its pointer, so the error
/// comes while it is in flight.
#[test]
fn an_error_finishes_the_uploads_in_flight() {
    for async_save in [false, true] {
        error_finishes_the_uploads_in_flight(async_save);
    }
}

fn error_finishes_the_uploads_in_flight(async_save: bool) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let failpoints = "upload::before-pointer=1*sleep(1000);durable::after-write=1*off->return";
    let out = cairn(
        d,
        Some(failpoints),
        &["run", "--config", &config(d, "8ba", async_save)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the uploads in flight were finished first (1 ok, 0 failed)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("injected failure at failpoint durable::after-write"),
        "{stderr}"
    );
    let pointer = fs::read_to_string(d.join("remote/fp/checkpoints/latest-rank0.pt.symlink"))
        .expect("the remote latest was abandoned");
    assert_eq!(pointer, "fp/checkpoints/ep0-ba1-rank0.pt");
}

/// Unmounts the small filesystem however the test ends.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk gives a one-line error naming the checkpoint, leaves every earlier checkpoint and
/// `latest` intact, and no temporary file.
#[test]
fn a_full_disk_gives_one_line_and_keeps_earlier_checkpoints() {
    for async_save in [false, true] {
        full_disk(async_save);
    }
}

fn full_disk(async_save: bool) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let small = d.join("small");
    fs::create_dir_all(&small).unwrap();
    // A checkpoint of a 1 MiB model is about 3 MiB (weights and two Adam moments): the first fits
    // in 4 MiB, the second does not.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&small)
        .output();
    let (_mount, failpoints) = match mounted {
        Ok(out) if out.status.success() => {
            eprintln!("ENOSPC from a real 4 MiB tmpfs");
            (Some(Mount(small.clone())), None)
        }
        other => {
            eprintln!(
                "cannot mount a tmpfs here ({}); injecting ENOSPC at the second data write instead",
                match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                }
            );
            (None, Some("durable::after-write=1*off->return(enospc)"))
        }
    };
    let config = d.join("full.toml");
    fs::write(
        &config,
        format!("run_name = \"full\"\n[checkpoint]\nfolder = \"small/ck\"\nsave_interval = \"1ba\"\nremote_file_name = false\nasync_save = {async_save}\n[train]\nmax_duration = \"4ba\"\nbatches_per_epoch = 4\nseconds_per_batch = 0\nmodel_mib = 1\n"),
    )
    .unwrap();
    let out = cairn(
        d,
        failpoints,
        &["run", "--config", config.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("cairn: ")
            && last.contains("small/ck/ep0-ba2-rank0.pt")
            && last.contains("No space left on device"),
        "{stderr}"
    );
    let ck = d.join("small/ck");
    let names: Vec<String> = fs::read_dir(&ck)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["ep0-ba1-rank0.pt", "latest-rank0.pt"], "{names:?}");
    cairn::format::verify_checkpoint(&ck.join("ep0-ba1-rank0.pt")).unwrap();
    assert_eq!(
        fs::read_link(ck.join("latest-rank0.pt")).unwrap(),
        Path::new("ep0-ba1-rank0.pt")
    );
}

/// Where a sharded job's steps are committed.
#[derive(Clone, Copy, Debug)]
enum StepStore {
    /// The checkpoint folder the ranks share (the record is published once the shard is durable).
    Folder,
    /// A `file://` store (the record is published once the upload is confirmed).
    Remote,
}

/// Two ranks saving every batch, sharded, committed in `store`.
fn sharded_config(dir: &Path, store: StepStore) -> String {
    let path = dir.join("sharded.toml");
    let (checkpoint, remote) = match store {
        StepStore::Folder => ("remote_file_name = false\n", ""),
        StepStore::Remote => ("", "[remote]\nurl = \"file://./remote\"\n"),
    };
    let text = format!(
        "run_name = \"sh\"\n[checkpoint]\nfolder = \"ck\"\nsave_interval = \"1ba\"\nsharded = true\ncommit_timeout_s = 5\n{checkpoint}{remote}[train]\nmax_duration = \"6ba\"\nbatches_per_epoch = 100\nseconds_per_batch = 0.02\nmodel_mib = 0.25\n"
    );
    fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// Issue 15: rank 1 dies (or its save fails) between its durable shard — written, or uploaded and
/// confirmed — and its record, at the third step. That step is never committed (rank 0 waits for a
/// record that never comes; the launcher stops it), `latest` names only a committed step, `cairn
/// verify` reports the shard no manifest lists, and `--resume` continues every rank from its own
/// shard of the newest committed step, after which every step is committed.
fn rank_stops_before_its_record(store: StepStore, die: bool) {
    let what = format!("{store:?}, rank 1 {}", if die { "dies" } else { "fails" });
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = sharded_config(d, store);
    let action = if die { "return(abort)" } else { "return" };
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .current_dir(d)
        .env(
            "FAILPOINTS",
            format!("sharded::before-record=2*off->{action}"),
        )
        .env("FAILPOINTS_RANK", "1")
        .args(["run", "--world-size", "2", "--config", &config])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: the run went on: {stderr}");
    if !die {
        assert!(
            stderr.contains("injected failure at failpoint sharded::before-record"),
            "{what}: {stderr}"
        );
    }
    let ck = d.join("ck");
    let (root, shard_of) = match store {
        StepStore::Folder => (ck.clone(), ck.join("ep0-ba3-rank1.pt")),
        StepStore::Remote => {
            let root = d.join("remote/sh/checkpoints");
            let object = root.join("ep0-ba3-rank1.pt");
            (root, object)
        }
    };
    // Rank 1's third shard is in place, and no step from the third on is committed.
    assert!(
        shard_of.is_file(),
        "{what}: {} is missing",
        shard_of.display()
    );
    // Objects are named from the store's root.
    let store_root = d.join("remote");
    let locate = |s: &cairn::sharded::ShardRecord| match s.object.as_deref() {
        Some(object) => store_root.join(object),
        None => ck.join(&s.file),
    };
    let steps = crate::sharded::committed(&root, locate);
    let newest = steps.last().map(|m| m.batch);
    assert!(
        steps.iter().all(|m| m.batch < 3),
        "{what}: committed {:?}",
        steps.iter().map(|m| m.batch).collect::<Vec<_>>()
    );
    // The launcher stops rank 0 once rank 1 is gone, possibly between a step's manifest and its
    // `latest`: each pointer names a committed step, the newest or the one before it.
    let named = |batch: Option<u64>| {
        let batch = batch.unwrap_or_else(|| panic!("{what}: a pointer names no step"));
        assert!(
            steps.iter().any(|m| m.batch == batch) && Some(batch + 1) >= newest,
            "{what}: a pointer names batch {batch}; committed {:?}",
            steps.iter().map(|m| m.batch).collect::<Vec<_>>()
        );
    };
    let latest = cairn::resolve_latest(&ck.join("latest-rank0.pt")).unwrap();
    if let Some(target) = latest {
        let name = target.file_name().unwrap().to_string_lossy().into_owned();
        named(batch_in(&name));
    }
    if let StepStore::Remote = store
        && let Ok(pointer) = fs::read_to_string(root.join("latest-rank0.pt.symlink"))
    {
        assert!(pointer.starts_with("sh/checkpoints/"), "{what}: {pointer}");
        named(batch_in(&pointer));
    }
    let verify = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["verify", root.to_str().unwrap()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&verify.stderr);
    assert!(!verify.status.success(), "{what}: verify found nothing");
    assert!(
        report.contains(&format!(
            "{} is listed by no commit manifest beside it: a shard of a step that never committed",
            shard_of.display()
        )),
        "{what}: {report}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .current_dir(d)
        .env_remove("FAILPOINTS")
        .args([
            "run",
            "--world-size",
            "2",
            "--resume",
            "--json",
            "--config",
            &config,
        ])
        .output()
        .unwrap();
    let run = cairn_testkit::success_json(&out);
    for (rank, summary) in run["ranks"].as_array().unwrap().iter().enumerate() {
        match newest {
            Some(batch) => {
                let from = summary["resumed_from"].as_str().unwrap_or("-");
                assert!(
                    from.ends_with(&format!("ep0-ba{batch}-rank{rank}.pt")),
                    "{what}: rank {rank} resumed from {from}, not from step {batch}"
                );
            }
            None => assert!(summary["resumed_from"].is_null(), "{what}: {summary}"),
        }
        assert_eq!(summary["batches"], 6 - newest.unwrap_or(0), "{what}");
    }
    let steps = crate::sharded::committed(&root, locate);
    assert_eq!(
        steps.iter().map(|m| m.batch).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6],
        "{what}"
    );
    let verify = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["verify", root.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn a_rank_dying_before_its_shard_record_leaves_the_step_uncommitted() {
    for store in [StepStore::Folder, StepStore::Remote] {
        rank_stops_before_its_record(store, true);
    }
}

#[test]
fn a_rank_failing_before_its_shard_record_leaves_the_step_uncommitted() {
    for store in [StepStore::Folder, StepStore::Remote] {
        rank_stops_before_its_record(store, false);
    }
}
