//! Saves written behind training (`async_save`, issue 14): the snapshot is a copy training may
//! change at once, saves land and `latest` moves in save order, a slow write makes the next due
//! save wait (counted as blocked), a failure behind training comes back at the next event, at
//! `fit_end` and at `close`, `close` waits for the save in flight, and one staging buffer serves
//! every save.
//!
//! Writes are held or failed deterministically at the writer thread's failpoint
//! (`writer::start`), which only saves behind training reach. The failpoint configuration is the
//! process's, so every test that saves behind training holds the failpoint scenario (a
//! process-wide lock, see [`scenario`]), including the config-surface property test.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn::format::{DType, Dict, Storage, Tensor, Value};
use cairn::policy::{Event, MaxDuration, Ranks, Time, Timestamp, TrainingState};
use cairn::{CheckpointSaver, Error, Snapshot, Taken};

use crate::support::{config, snapshot};

/// The failpoint scenario: a process-wide lock over the failpoint configuration, cleared when
/// dropped. Every test that saves behind training holds it.
pub fn scenario() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}

fn job(extra: &str) -> String {
    format!(
        "run_name = \"r\"\n[checkpoint]\nfolder = \"{{dir}}/ck\"\nfilename = \"ba{{batch}}.pt\"\nsave_interval = \"1ba\"\nremote_file_name = false\nasync_save = true\n{extra}"
    )
}

fn at(batch: u64) -> Timestamp {
    Timestamp {
        batch,
        batch_in_epoch: batch,
        ..Timestamp::default()
    }
}

/// Fire the batch event of `batch` with the test snapshot.
fn event(saver: &mut CheckpointSaver, batch: u64) -> cairn::Result<Option<Taken>> {
    let max = MaxDuration::new(Time::batches(1000)).unwrap();
    let state = TrainingState {
        timestamp: at(batch),
        previous_timestamp: Some(at(batch - 1)),
        max_duration: max,
        dataloader_len: Some(1000),
        run_name: "r",
        ranks: Ranks::default(),
        metrics: &[],
    };
    saver.on_event(&state, Event::Batch, || Ok(snapshot(batch)))
}

/// The batch a checkpoint holds (the test snapshot's first weight).
fn batch_in(path: &Path) -> u64 {
    let tree = cairn::format::read_checkpoint(path).unwrap();
    match tree.get_path(&["state", "model", "fc.weight"]) {
        Some(Value::Tensor(t)) => {
            f32::from_le_bytes(t.storage.bytes()[..4].try_into().unwrap()) as u64
        }
        other => panic!("{}: {other:?}", path.display()),
    }
}

fn latest_batch(dir: &Path) -> Option<u64> {
    cairn::resolve_latest(&dir.join("ck/latest-rank0.pt"))
        .unwrap()
        .map(|p| batch_in(&p))
}

fn staged(taken: Option<Taken>) -> cairn::StagedCheckpoint {
    match taken {
        Some(Taken::Staged(s)) => s,
        other => panic!("expected a save behind training, got {other:?}"),
    }
}

/// Holds each save behind training at the writer's start until released.
struct Hold {
    entered: mpsc::Receiver<PathBuf>,
    release: mpsc::Sender<()>,
}

fn hold_writer() -> Hold {
    let (entered_tx, entered) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let (entered_tx, released) = (Mutex::new(entered_tx), Mutex::new(released));
    fail::cfg_callback("writer::start", move || {
        let _ = entered_tx.lock().unwrap().send(PathBuf::new());
        // Released by a message, or by the `Hold` being dropped.
        let _ = released.lock().unwrap().recv();
    })
    .unwrap();
    Hold { entered, release }
}

impl Hold {
    /// Wait until a writer is held.
    fn entered(&self) {
        self.entered
            .recv_timeout(Duration::from_secs(60))
            .expect("no save reached the writer");
    }

    /// Release one held writer after `delay`, from another thread.
    fn release_after(&self, delay: Duration) {
        let release = self.release.clone();
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = release.send(());
        });
    }
}

/// Ordering: every save returns before it is written, lands in save order, and `latest` only
/// moves forwards: when save k returns, save k-1 is complete and `latest` names it (or already
/// names k).
#[test]
fn saves_land_in_order_and_latest_follows_them() {
    let _fp = scenario();
    let dir = tempfile::tempdir().unwrap();
    let mut saver = CheckpointSaver::new(&config(dir.path(), &job(""))).unwrap();
    saver.fit_start(&Timestamp::default()).unwrap();
    let mut completed = Vec::new();
    for k in 1..=8 {
        let s = staged(event(&mut saver, k).unwrap());
        assert_eq!(s.path, dir.path().join(format!("ck/ba{k}.pt")));
        assert!(s.blocked_seconds >= s.waited_seconds, "{s:?}");
        let latest = latest_batch(dir.path());
        if k > 1 {
            assert!(
                latest == Some(k - 1) || latest == Some(k),
                "after save {k} returned, latest names {latest:?}"
            );
        }
        completed.extend(saver.take_completed());
    }
    saver.fit_end().unwrap();
    completed.extend(saver.take_completed());
    let batches: Vec<u64> = completed.iter().map(|s| s.timestamp.batch).collect();
    assert_eq!(batches, (1..=8).collect::<Vec<_>>());
    for s in &completed {
        assert_eq!(batch_in(&s.path), s.timestamp.batch);
        assert!(s.bytes > 0 && s.seconds > 0.0, "{s:?}");
    }
    let kept: Vec<u64> = saver
        .saved_checkpoints()
        .iter()
        .map(|s| s.timestamp.batch)
        .collect();
    assert_eq!(kept, (1..=8).collect::<Vec<_>>());
    assert_eq!(latest_batch(dir.path()), Some(8));
    assert_eq!(saver.history().len(), 8);
    saver.close().unwrap();
}

/// Back-pressure: a save that falls due while the previous one is still being written waits for
/// it, and that wait is blocked time; the previous save is complete when the next returns.
#[test]
fn a_slow_write_holds_the_next_save_and_counts_as_blocked() {
    let _fp = scenario();
    let hold = hold_writer();
    let dir = tempfile::tempdir().unwrap();
    let mut saver = CheckpointSaver::new(&config(dir.path(), &job(""))).unwrap();
    saver.fit_start(&Timestamp::default()).unwrap();
    let first = staged(event(&mut saver, 1).unwrap());
    hold.entered();
    assert!(saver.is_writing());
    assert!(!dir.path().join("ck/ba1.pt").exists());
    hold.release_after(Duration::from_millis(500));
    let second = staged(event(&mut saver, 2).unwrap());
    assert!(
        second.waited_seconds >= 0.25,
        "the second save waited only {} s for a write held 0.5 s",
        second.waited_seconds
    );
    assert!(second.blocked_seconds >= second.waited_seconds);
    assert!(first.waited_seconds < second.waited_seconds);
    assert_eq!(batch_in(&dir.path().join("ck/ba1.pt")), 1);
    assert_eq!(latest_batch(dir.path()), Some(1));
    drop(hold);
    saver.flush().unwrap();
    let done = saver.take_completed();
    assert_eq!(done.len(), 2);
    assert_eq!(done[1].waited_seconds, second.waited_seconds);
    assert_eq!(done[1].blocked_seconds, second.blocked_seconds);
    assert!(done[1].seconds > 0.0);
    assert_eq!(latest_batch(dir.path()), Some(2));
}

/// A name already taken is refused before the snapshot is staged, as a synchronous save refuses
/// it: the caller hears of it at once, not one event later.
#[test]
fn a_name_already_taken_is_refused_before_staging() {
    let _fp = scenario();
    let dir = tempfile::tempdir().unwrap();
    let mut saver = CheckpointSaver::new(&config(dir.path(), &job(""))).unwrap();
    saver.fit_start(&Timestamp::default()).unwrap();
    fs::write(dir.path().join("ck/ba1.pt"), b"someone else's").unwrap();
    let err = event(&mut saver, 1).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    assert!(!saver.is_writing());
    assert!(saver.history().is_empty());
    staged(event(&mut saver, 2).unwrap());
    saver.fit_end().unwrap();
}

/// Errors are never lost: a save that fails behind training is returned at the next event, even
/// one at which nothing is due, naming the checkpoint, with the cause a synchronous save would
/// have given; the checkpoint leaves the history, the file in its way is untouched, `latest`
/// stays, and training can go on saving.
#[test]
fn a_failure_behind_training_is_returned_at_the_next_event() {
    let _fp = scenario();
    let dir = tempfile::tempdir().unwrap();
    let mut saver =
        CheckpointSaver::new(&config(dir.path(), &job("").replace("\"1ba\"", "\"2ba\""))).unwrap();
    saver.fit_start(&Timestamp::default()).unwrap();
    for batch in 1..=4 {
        let taken = event(&mut saver, batch).unwrap();
        assert_eq!(taken.is_some(), batch % 2 == 0);
    }
    // Someone else's file takes the name of the next save while it is being written (a name
    // taken before the save is refused at once, before staging).
    let taken = dir.path().join("ck/ba6.pt");
    let started = Instant::now();
    assert!(event(&mut saver, 5).unwrap().is_none());
    saver.flush().unwrap(); // ba4 is written: the hold below catches ba6 alone
    let hold = hold_writer();
    staged(event(&mut saver, 6).unwrap());
    hold.entered();
    fs::write(&taken, b"someone else's").unwrap();
    drop(hold);
    while saver.is_writing() {
        assert!(started.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
    }
    let err = event(&mut saver, 7).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(&err, Error::WrittenBehind { path, .. } if *path == taken),
        "{message}"
    );
    assert!(
        matches!(err.cause(), Error::AlreadyExists { .. }),
        "{message}"
    );
    assert!(
        message.contains("ba6.pt") && message.contains("behind training"),
        "{message}"
    );
    assert_eq!(fs::read(&taken).unwrap(), b"someone else's");
    assert_eq!(latest_batch(dir.path()), Some(4));
    let history: Vec<u64> = saver.history().iter().map(|(_, t)| t.batch).collect();
    assert_eq!(history, [2, 4]);
    // Reported once; training goes on.
    staged(event(&mut saver, 8).unwrap());
    saver.fit_end().unwrap();
    assert_eq!(latest_batch(dir.path()), Some(8));
}

/// `fit_end` and `close` wait for the save in flight and return its failure.
#[test]
fn fit_end_and_close_return_a_failure_behind_training() {
    let _fp = scenario();
    let dir = tempfile::tempdir().unwrap();
    let mut saver = CheckpointSaver::new(&config(dir.path(), &job(""))).unwrap();
    saver.fit_start(&Timestamp::default()).unwrap();
    staged(event(&mut saver, 1).unwrap());
    saver.flush().unwrap();
    fail::cfg("writer::start", "return").unwrap();
    staged(event(&mut saver, 2).unwrap());
    let err = saver.fit_end().unwrap_err().to_string();
    assert!(
        err.contains("ba2.pt") && err.contains("injected failure at failpoint writer::start"),
        "{err}"
    );
    staged(event(&mut saver, 3).unwrap());
    let err = saver.close().unwrap_err().to_string();
    assert!(err.contains("ba3.pt"), "{err}");
    assert_eq!(latest_batch(dir.path()), Some(1));
    assert!(matches!(event(&mut saver, 4), Err(Error::Closed)));
}

/// `fit_end` returns a failure behind training only once the earlier saves' uploads are done,
/// their remote `latest` included: returning at once would abandon complete checkpoints.
#[test]
fn fit_end_finishes_earlier_uploads_before_returning_a_failure_behind_training() {
    let _fp = scenario();
    let dir = tempfile::tempdir().unwrap();
    let text = "run_name = \"r\"\n[checkpoint]\nfolder = \"{dir}/ck\"\nfilename = \"ba{batch}.pt\"\nsave_interval = \"1ba\"\nasync_save = true\n[remote]\nurl = \"file://{dir}/store\"\n";
    let mut saver = CheckpointSaver::new(&config(dir.path(), text)).unwrap();
    saver.fit_start(&Timestamp::default()).unwrap();
    // The first checkpoint's upload is slow to move the remote `latest`.
    fail::cfg("upload::before-pointer", "sleep(600)").unwrap();
    staged(event(&mut saver, 1).unwrap());
    saver.flush().unwrap();
    fail::cfg("writer::start", "return").unwrap();
    staged(event(&mut saver, 2).unwrap());
    let err = saver.fit_end().unwrap_err().to_string();
    assert!(err.contains("ba2.pt"), "{err}");
    let pointers = files_under(&dir.path().join("store"), ".symlink");
    assert_eq!(pointers.len(), 1, "the remote latest of ba1: {pointers:?}");
    saver.close().unwrap();
}

/// Every file under `dir` whose name ends with `suffix`.
fn files_under(dir: &Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path, suffix));
        } else if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    found
}

/// `close` (Composer's `post_close`, also on the error path) waits for the save in flight, which
/// is then complete and named by `latest`.
#[test]
fn close_waits_for_the_save_being_written() {
    let _fp = scenario();
    let hold = hold_writer();
    let dir = tempfile::tempdir().unwrap();
    let mut saver = CheckpointSaver::new(&config(dir.path(), &job(""))).unwrap();
    saver.fit_start(&Timestamp::default()).unwrap();
    staged(event(&mut saver, 1).unwrap());
    hold.entered();
    hold.release_after(Duration::from_millis(300));
    saver.close().unwrap();
    cairn::format::verify_checkpoint(&dir.path().join("ck/ba1.pt")).unwrap();
    assert_eq!(latest_batch(dir.path()), Some(1));
    assert_eq!(saver.take_completed().len(), 1);
}

/// The bytes of a training buffer the test can take back (as PyTorch's storages are changed by
/// the next optimizer step).
struct Borrowed(Arc<Vec<u8>>);

impl AsRef<[u8]> for Borrowed {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The snapshot is a copy: once the save returns, the saver holds no reference to the training
/// loop's memory, which training may overwrite while the write is still to come; the checkpoint
/// holds the values at the save, and tensors that shared a storage still share one.
#[test]
fn training_may_change_its_tensors_as_soon_as_the_save_returns() {
    let _fp = scenario();
    let hold = hold_writer();
    let dir = tempfile::tempdir().unwrap();
    let mut saver = CheckpointSaver::new(&config(dir.path(), &job(""))).unwrap();
    saver.fit_start(&Timestamp::default()).unwrap();
    let mut memory = Arc::new((0u8..64).collect::<Vec<u8>>());
    let storage = Storage::new(DType::F32, Bytes::from_owner(Borrowed(Arc::clone(&memory))));
    let view = |offset: u64| Tensor {
        storage: storage.clone(),
        storage_offset: offset,
        shape: vec![8],
        stride: vec![1],
        requires_grad: false,
        parameter: true,
    };
    let model = Dict::ordered().with("w", view(0)).with("tail", view(8));
    let snapshot = Snapshot {
        state: Dict::new().with("model", model),
        rng: None,
    };
    drop(storage);
    let taken = staged(saver.save(&at(1), Event::Batch, || Ok(snapshot)).unwrap());
    assert_eq!(taken.staged_bytes, 64, "the shared storage is copied once");
    hold.entered();
    Arc::get_mut(&mut memory)
        .expect("the saver still references training memory after the save returned")
        .fill(0xff);
    drop(hold);
    saver.flush().unwrap();
    let tree = cairn::format::read_checkpoint(&dir.path().join("ck/ba1.pt")).unwrap();
    let tensor = |name: &str| match tree.get_path(&["state", "model", name]) {
        Some(Value::Tensor(t)) => t.clone(),
        other => panic!("{other:?}"),
    };
    let (w, tail) = (tensor("w"), tensor("tail"));
    assert_eq!(&w.storage.bytes()[..], &(0u8..64).collect::<Vec<u8>>()[..]);
    assert!(w.storage.same(&tail.storage), "still one storage");
    assert_eq!(tail.storage_offset, 8);
}

/// Bounded memory: ten saves in a row reuse the one staging buffer allocated at the first.
#[test]
fn ten_saves_reuse_one_staging_buffer() {
    let _fp = scenario();
    let dir = tempfile::tempdir().unwrap();
    let mut saver = CheckpointSaver::new(&config(dir.path(), &job(""))).unwrap();
    saver.fit_start(&Timestamp::default()).unwrap();
    let mut capacity = None;
    for k in 1..=10 {
        staged(event(&mut saver, k).unwrap());
        let stats = saver.staging_stats().unwrap();
        assert_eq!(stats.allocations, 1, "save {k}: {stats:?}");
        assert_eq!(
            *capacity.get_or_insert(stats.capacity_bytes),
            stats.capacity_bytes
        );
    }
    saver.close().unwrap();
    let stats = saver.staging_stats().unwrap();
    assert_eq!((stats.saves, stats.allocations), (10, 1));
    assert_eq!(
        stats.bytes,
        10 * 24,
        "two tensors of 16 and 8 bytes per save"
    );
}

/// A state over `staging_budget_mib` is saved synchronously, with one warning that says so.
#[test]
fn a_state_over_the_budget_is_saved_synchronously_with_a_warning() {
    let _fp = scenario();
    let dir = tempfile::tempdir().unwrap();
    let text = job("staging_budget_mib = 1\n");
    let mut saver = CheckpointSaver::new(&config(dir.path(), &text)).unwrap();
    saver.fit_start(&Timestamp::default()).unwrap();
    let big = || {
        let model = Dict::ordered().with(
            "w",
            Tensor::from_bytes(DType::U8, vec![2 << 20], vec![7u8; 2 << 20]),
        );
        Ok(Snapshot {
            state: Dict::new().with("model", model),
            rng: None,
        })
    };
    for batch in [1, 2] {
        match saver.save(&at(batch), Event::Batch, big).unwrap() {
            Some(Taken::Written(s)) => assert!(s.blocked_seconds >= s.seconds, "{s:?}"),
            other => panic!("{other:?}"),
        }
    }
    let warnings = saver.take_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("staging_budget_mib = 1")
            && warnings[0].contains("written synchronously"),
        "{warnings:?}"
    );
    // A small state still goes behind training.
    staged(
        saver
            .save(&at(3), Event::Batch, || Ok(snapshot(3)))
            .unwrap(),
    );
    saver.close().unwrap();
    assert!(saver.take_completed().len() == 1);
}
