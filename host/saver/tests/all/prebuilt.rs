//! `CheckpointSaver::save_prebuilt`: a checkpoint whose pickle the caller made (cairn's Python
//! package) written verbatim, durably, with `latest`, retention and the configured filter.

use std::fs;
use std::path::Path;

use bytes::Bytes;
use cairn::format::{Dict, Prebuilt, Value, read_checkpoint};
use cairn::policy::{Event, Timestamp};
use cairn::{CheckpointSaver, Config, Error, PrebuiltOptions};

/// `pickle.dumps({'state': {'w': 1, 'optimizers': [2]}}, protocol=2)`, as CPython writes it.
const PICKLE: &[u8] = b"\x80\x02}q\x00X\x05\x00\x00\x00stateq\x01}q\x02(X\x01\x00\x00\x00wq\x03K\x01X\n\x00\x00\x00optimizersq\x04]q\x05K\x02aus.";

fn saver(dir: &Path, extra: &str) -> CheckpointSaver {
    let text = format!(
        "[checkpoint]\nfolder = \"{}/ck\"\nfilename = \"ep{{epoch}}-ba{{batch}}.pt\"\nremote_file_name = false\n{extra}",
        dir.display()
    );
    CheckpointSaver::new(&Config::parse(&text, "test.toml", dir).unwrap()).unwrap()
}

fn at(batch: u64) -> Timestamp {
    Timestamp {
        batch,
        ..Timestamp::default()
    }
}

fn prebuilt() -> Prebuilt {
    let record = Bytes::from_static(&[7u8; 100]);
    Prebuilt::new(PICKLE.to_vec(), vec![("0".into(), record)]).unwrap()
}

fn save(saver: &mut CheckpointSaver, batch: u64) -> Result<Option<cairn::SavedCheckpoint>, Error> {
    let path = saver.checkpoint_path(&at(batch));
    let taken = saver.save_prebuilt(
        &path,
        &at(batch),
        Event::Batch,
        &prebuilt(),
        PrebuiltOptions::default(),
    )?;
    Ok(taken.map(|t| t.written().expect("synchronous saver").clone()))
}

fn zip_entry(file: &[u8], name: &[u8]) -> bool {
    file.windows(name.len()).any(|w| w == name)
}

#[test]
fn the_pickle_is_written_verbatim_and_latest_follows() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = saver(dir.path(), "num_checkpoints_to_keep = 2");
    s.fit_start(&at(0)).unwrap();
    for batch in 1..=3 {
        let saved = save(&mut s, batch).unwrap().unwrap();
        assert_eq!(saved.bytes, fs::metadata(&saved.path).unwrap().len());
    }
    let ck = dir.path().join("ck");
    let newest = ck.join("ep0-ba3.pt");
    let bytes = fs::read(&newest).unwrap();
    assert!(zip_entry(&bytes, PICKLE), "data.pkl is the caller's pickle");
    assert!(
        zip_entry(&bytes, b"archive/data/0"),
        "torch.save's folder for a file object"
    );
    let tree = read_checkpoint(&newest).unwrap();
    let state = Dict::new()
        .with("w", 1i64)
        .with("optimizers", Value::List(vec![Value::Int(2)]));
    assert_eq!(tree, Value::Dict(Dict::new().with("state", state)));
    assert_eq!(
        fs::read_link(ck.join("latest-rank0.pt")).unwrap(),
        Path::new("ep0-ba3.pt")
    );
    // Retention kept the newest two; the history is the caller's (untouched).
    assert!(!ck.join("ep0-ba1.pt").exists());
    assert_eq!(s.saved_checkpoints().len(), 2);
    assert!(s.history().is_empty());
}

#[test]
fn the_configured_filter_runs_on_the_pickle_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = saver(dir.path(), "ignore_keys = [\"state/optimizers\"]");
    s.fit_start(&at(0)).unwrap();
    let saved = save(&mut s, 1).unwrap().unwrap();
    let tree = read_checkpoint(&saved.path).unwrap();
    assert_eq!(tree.get_path(&["state", "w"]), Some(&Value::Int(1)));
    assert_eq!(tree.get_path(&["state", "optimizers"]), None);
    // Asked not to filter (the caller applied its own), the pickle goes out as given.
    let path = s.checkpoint_path(&at(2));
    let options = PrebuiltOptions {
        filter: false,
        ..PrebuiltOptions::default()
    };
    s.save_prebuilt(&path, &at(2), Event::Batch, &prebuilt(), options)
        .unwrap();
    assert!(zip_entry(&fs::read(&path).unwrap(), PICKLE));
}

#[test]
fn a_name_the_template_does_not_give_and_a_taken_name_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = saver(dir.path(), "");
    s.fit_start(&at(0)).unwrap();
    let wrong = dir.path().join("ck/ep0-ba9.pt");
    let err = s
        .save_prebuilt(
            &wrong,
            &at(1),
            Event::Batch,
            &prebuilt(),
            PrebuiltOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(err.to_string().contains("ep0-ba1.pt"), "{err}");
    assert!(!wrong.exists());

    save(&mut s, 1).unwrap();
    let before = fs::read(s.checkpoint_path(&at(1))).unwrap();
    let err = save(&mut s, 1).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    assert_eq!(fs::read(s.checkpoint_path(&at(1))).unwrap(), before);
}

#[test]
fn behind_training_the_records_are_staged_and_the_file_is_the_same() {
    let _lock = crate::async_save::scenario();
    let dir = tempfile::tempdir().unwrap();
    let mut sync = saver(&dir.path().join("sync"), "");
    let mut behind = saver(&dir.path().join("behind"), "async_save = true");
    assert!(behind.is_async());
    for s in [&mut sync, &mut behind] {
        s.fit_start(&at(0)).unwrap();
    }
    let checkpoint = prebuilt();
    let path = behind.checkpoint_path(&at(1));
    let taken = behind
        .save_prebuilt(
            &path,
            &at(1),
            Event::Batch,
            &checkpoint,
            PrebuiltOptions::default(),
        )
        .unwrap()
        .unwrap();
    let cairn::Taken::Staged(staged) = taken else {
        panic!("written synchronously: {taken:?}")
    };
    assert_eq!(staged.staged_bytes, 100);
    // The caller's records are its own again: the writer holds the staged copy.
    drop(checkpoint);
    behind.flush().unwrap();
    assert_eq!(behind.take_completed().len(), 1);
    let written = save(&mut sync, 1).unwrap().unwrap();
    assert_eq!(fs::read(&written.path).unwrap(), fs::read(&path).unwrap());
}
