//! Resume through the library: every reason [`CheckpointSaver::resume`] gives for the checkpoint
//! it continues from, and the checkpoints it must not take.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use cairn::policy::Timestamp;
use cairn::{CheckpointSaver, ResumeReason};

use crate::support::{config, fit};

fn saver(dir: &Path, run: &str, extra: &str) -> CheckpointSaver {
    let text = format!(
        "run_name = \"{run}\"\n[checkpoint]\nfolder = \"{{dir}}/ck\"\nsave_interval = \"1ba\"\nremote_file_name = false\n{extra}"
    );
    CheckpointSaver::new(&config(dir, &text)).unwrap()
}

/// Train a run `run` for `batches` batches in `dir/ck`.
fn run(dir: &Path, name: &str, extra: &str, batches: u64) {
    let mut s = saver(dir, name, extra);
    fit(&mut s, Timestamp::default(), &format!("{batches}ba")).unwrap();
    s.fit_end().unwrap();
    s.close().unwrap();
}

fn set_mtime(path: &Path, ago: Duration) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - ago)
        .unwrap();
}

/// The checkpoint saved at the batch event of `batch` (its epoch is the one still running).
fn ck(dir: &Path, batch: u64) -> std::path::PathBuf {
    let epoch = (batch - 1) / crate::support::BATCHES_PER_EPOCH;
    dir.join(format!("ck/ep{epoch}-ba{batch}-rank0.pt"))
}

/// Point `latest` at `batch` by hand, as a crash between a save's rename and the swap leaves it.
fn point_latest_at(dir: &Path, batch: u64) {
    let link = dir.join("ck/latest-rank0.pt");
    fs::remove_file(&link).unwrap();
    let target = ck(dir, batch);
    std::os::unix::fs::symlink(target.file_name().unwrap(), &link).unwrap();
}

#[test]
fn latest_is_followed_when_it_verifies() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), "r", "", 3);
    let point = saver(dir.path(), "r", "").resume().unwrap().unwrap();
    assert_eq!(point.reason, ResumeReason::Latest);
    assert_eq!(point.path, ck(dir.path(), 3));
    assert_eq!(point.timestamp.batch, 3);
    assert_eq!(point.history.len(), 3, "the run's history continues");
    assert!(point.skipped.is_empty());
}

/// The crash window between a checkpoint's durable rename and the pointer swap: the newer
/// checkpoint continues the run `latest` names, so it wins.
#[test]
fn a_checkpoint_written_after_latest_that_continues_its_run_wins() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), "r", "", 3);
    set_mtime(&ck(dir.path(), 2), Duration::from_secs(60));
    point_latest_at(dir.path(), 2);
    let point = saver(dir.path(), "r", "").resume().unwrap().unwrap();
    assert_eq!(point.path, ck(dir.path(), 3));
    assert_eq!(
        point.reason,
        ResumeReason::WrittenAfterLatest {
            latest: ck(dir.path(), 2)
        }
    );
    assert!(point.reason.to_string().contains("was written after it"));
}

/// A checkpoint of another run written after `latest`, with later counters in its name, does not
/// override `latest`: its history does not continue this run.
#[test]
fn another_runs_later_checkpoint_does_not_override_latest() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    run(dir.path(), "mine", "", 2);
    run(other.path(), "theirs", "", 5);
    set_mtime(&ck(dir.path(), 2), Duration::from_secs(60));
    fs::copy(ck(other.path(), 5), ck(dir.path(), 5)).unwrap();
    let point = saver(dir.path(), "mine", "").resume().unwrap().unwrap();
    assert_eq!(point.reason, ResumeReason::Latest);
    assert_eq!(point.path, ck(dir.path(), 2));
}

/// Without a usable `latest`, the most recently *written* checkpoint that verifies, whatever the
/// counters in the names say; damaged ones are passed over and listed.
#[test]
fn the_newest_written_checkpoint_when_latest_is_missing_or_damaged() {
    // Missing: an earlier run's later counters are older.
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), "old", "", 5);
    for b in 1..=5 {
        set_mtime(&ck(dir.path(), b), Duration::from_secs(3600 - b));
    }
    run(dir.path(), "new", "overwrite = true", 2);
    fs::remove_file(dir.path().join("ck/latest-rank0.pt")).unwrap();
    let point = saver(dir.path(), "new", "").resume().unwrap().unwrap();
    assert_eq!(point.path, ck(dir.path(), 2), "{:?}", point.reason);
    let link = dir.path().join("ck/latest-rank0.pt");
    assert_eq!(
        point.reason,
        ResumeReason::NewestWritten {
            latest_problem: Some(format!("there is no {}", link.display()))
        }
    );

    // Damaged: `latest` names a truncated file; the one written before it is taken.
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), "r", "", 3);
    let damaged = ck(dir.path(), 3);
    let bytes = fs::read(&damaged).unwrap();
    fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    let point = saver(dir.path(), "r", "").resume().unwrap().unwrap();
    assert_eq!(point.path, ck(dir.path(), 2));
    assert!(
        matches!(&point.reason, ResumeReason::NewestWritten { latest_problem: Some(p) } if p.contains("is damaged")),
        "{:?}",
        point.reason
    );
    assert_eq!(point.skipped.len(), 1);
    assert_eq!(point.skipped[0].0, damaged);
}

#[test]
fn the_newest_written_checkpoint_without_a_local_pointer() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), "r", "latest_filename = false", 3);
    let point = saver(dir.path(), "r", "latest_filename = false")
        .resume()
        .unwrap()
        .unwrap();
    assert_eq!(point.path, ck(dir.path(), 3));
    assert_eq!(
        point.reason,
        ResumeReason::NewestWritten {
            latest_problem: None
        }
    );

    let timed = "latest_filename = \"latest-ba{batch}.pt\"";
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), "r", timed, 3);
    let point = saver(dir.path(), "r", timed).resume().unwrap().unwrap();
    assert_eq!(point.path, ck(dir.path(), 3));
    assert!(
        point.reason.to_string().contains("has time variables"),
        "{}",
        point.reason
    );
}

#[test]
fn nothing_local_means_the_remote_latest() {
    let dir = tempfile::tempdir().unwrap();
    let text = "run_name = \"r\"\n[checkpoint]\nfolder = \"{dir}/ck\"\nsave_interval = \"1ba\"\nnum_checkpoints_to_keep = 0\n[remote]\nurl = \"file://{dir}/remote\"";
    let mut s = CheckpointSaver::new(&config(dir.path(), text)).unwrap();
    fit(&mut s, Timestamp::default(), "3ba").unwrap();
    s.fit_end().unwrap();
    s.close().unwrap();
    assert!(crate::support::names(&dir.path().join("ck"), "ep").is_empty());
    let point = CheckpointSaver::new(&config(dir.path(), text))
        .unwrap()
        .resume()
        .unwrap()
        .unwrap();
    assert_eq!(
        point.reason,
        ResumeReason::Remote {
            pointer: "r/checkpoints/latest-rank0.pt".into()
        }
    );
    assert_eq!(point.path, ck(dir.path(), 3));
    assert_eq!(point.timestamp.batch, 3);
}
