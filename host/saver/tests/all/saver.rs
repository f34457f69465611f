//! The saver through the library: Composer's scenarios with real files, real fsyncs and real
//! `.pt` archives.

use std::fs;
use std::path::Path;

use cairn::format::{Dict, Tensor, Value};
use cairn::policy::{Event, MaxDuration, Ranks, Time, Timestamp, TrainingState};
use cairn::{CheckpointSaver, Config, Snapshot};

fn config(dir: &Path, extra: &str) -> Config {
    let text = format!(
        "run_name = \"r\"\n[checkpoint]\nfolder = \"{}/ck\"\nfilename = \"checkpoint_ep{{epoch}}_ba{{batch}}.pt\"\nremote_file_name = false\n{extra}",
        dir.display()
    );
    Config::parse(&text, "test.toml", dir).unwrap()
}

fn snapshot(batch: u64) -> Snapshot {
    let model = Dict::ordered()
        .with(
            "fc.weight",
            Tensor::from_f32(vec![2, 2], &[batch as f32, 1.0, 2.0, 3.0]),
        )
        .with("fc.bias", Tensor::from_f32(vec![2], &[0.5, -0.5]));
    let state = Dict::new()
        .with("model", model)
        .with(
            "optimizers",
            Dict::new().with("Adam", Dict::new().with("state", Dict::new())),
        )
        .with("integrations", Dict::new())
        .with("metadata", Dict::new().with("device", "cpu"))
        .with("rank_zero_seed", 17i64);
    Snapshot {
        state,
        rng: Some(Value::List(vec![Value::Dict(
            Dict::new().with("python", 1i64),
        )])),
    }
}

/// Drive `batches` batches (10 per epoch) through the saver, starting after `start`.
fn train(saver: &mut CheckpointSaver, start: Timestamp, max: &str) -> Timestamp {
    let max = MaxDuration::new(max.parse::<Time>().unwrap()).unwrap();
    let mut now = start;
    saver.fit_start(&now).unwrap();
    while !max.reached(&now) {
        let previous = now;
        now = now.to_next_batch(1, 0, Default::default());
        let state = TrainingState {
            timestamp: now,
            previous_timestamp: Some(previous),
            max_duration: max,
            dataloader_len: Some(10),
            run_name: "r",
            ranks: Ranks::default(),
            metrics: &[],
        };
        let batch = now.batch;
        saver
            .on_event(&state, Event::Batch, || Ok(snapshot(batch)))
            .unwrap();
    }
    saver.fit_end().unwrap();
    now
}

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

/// Composer's `test_rotate_checkpoints`: 6 saves at `1ba`; `min(keep, 6)` files remain, and
/// one `latest` unless keep is 0.
#[test]
fn rotation_keeps_the_newest_and_one_latest() {
    for keep in [-1i64, 0, 1, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let c = config(
            dir.path(),
            &format!("save_interval = \"1ba\"\nnum_checkpoints_to_keep = {keep}\n"),
        );
        let mut saver = CheckpointSaver::new(&c).unwrap();
        train(&mut saver, Timestamp::default(), "6ba");
        let ck = dir.path().join("ck");
        let files = names(&ck, "checkpoint_");
        let want = if keep < 0 { 6 } else { keep as usize };
        assert_eq!(files.len(), want, "keep {keep}: {files:?}");
        let newest: Vec<String> = (7 - want as u64..=6)
            .map(|b| format!("checkpoint_ep0_ba{b}.pt"))
            .collect();
        let mut newest_sorted = newest.clone();
        newest_sorted.sort();
        assert_eq!(files, newest_sorted, "keep {keep}");
        assert_eq!(
            names(&ck, "latest-").len(),
            usize::from(keep != 0),
            "keep {keep}"
        );
        if keep != 0 {
            let target = fs::read_link(ck.join("latest-rank0.pt")).unwrap();
            assert_eq!(target, Path::new("checkpoint_ep0_ba6.pt"));
        }
        assert_eq!(saver.saved_checkpoints().len(), want, "keep {keep}");
    }
}

/// Composer #2087: retention also counts the checkpoints an earlier run left in the folder.
#[test]
fn retention_spans_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        "save_interval = \"1ba\"\nnum_checkpoints_to_keep = 2\n",
    );
    let end = train(
        &mut CheckpointSaver::new(&c).unwrap(),
        Timestamp::default(),
        "3ba",
    );
    train(&mut CheckpointSaver::new(&c).unwrap(), end, "6ba");
    assert_eq!(
        names(&dir.path().join("ck"), "checkpoint_"),
        ["checkpoint_ep0_ba5.pt", "checkpoint_ep0_ba6.pt"]
    );
}

#[test]
fn weights_only_checkpoints_hold_exactly_model_integrations_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), "save_interval = \"2ba\"\nweights_only = true\n");
    let mut saver = CheckpointSaver::new(&c).unwrap();
    train(&mut saver, Timestamp::default(), "2ba");
    let tree = cairn::format::read_checkpoint(&saver.saved_checkpoints()[0].path).unwrap();
    let top = tree.as_dict().unwrap();
    assert_eq!(
        top.entries
            .keys()
            .map(|k| k.to_string())
            .collect::<Vec<_>>(),
        ["state"]
    );
    let keys: Vec<String> = top
        .get("state")
        .unwrap()
        .as_dict()
        .unwrap()
        .entries
        .keys()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(keys, ["model", "integrations", "metadata"]);
    assert_eq!(
        tree.get_path(&["state", "metadata", "device"]),
        Some(&Value::from("cpu"))
    );
}

#[test]
fn full_checkpoints_carry_timestamp_history_and_rng() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), "save_interval = \"2ba\"\n");
    let mut saver = CheckpointSaver::new(&c).unwrap();
    train(&mut saver, Timestamp::default(), "4ba");
    let last = &saver.saved_checkpoints()[1];
    let tree = cairn::format::read_checkpoint(&last.path).unwrap();
    assert_eq!(cairn::read_timestamp(&tree).unwrap().unwrap().batch, 4);
    let history = cairn::read_history(&tree).unwrap();
    assert_eq!(history.len(), 2, "the checkpoint lists itself");
    assert!(history[1].0.ends_with("checkpoint_ep0_ba4.pt"));
    assert!(tree.get_path(&["rng", "0", "python"]).is_some());
    assert_eq!(
        tree.get_path(&["state", "run_name"]),
        Some(&Value::from("r"))
    );
}

#[test]
fn ignore_keys_globs_filter_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        "save_interval = \"1ba\"\nignore_keys = [\"state/optimizers\", \"rng\", \"state/model/*.bias\", \"state/nothing\"]\n",
    );
    let mut saver = CheckpointSaver::new(&c).unwrap();
    train(&mut saver, Timestamp::default(), "1ba");
    let tree = cairn::format::read_checkpoint(&saver.saved_checkpoints()[0].path).unwrap();
    assert!(tree.get_path(&["state", "optimizers"]).is_none());
    assert!(tree.get_path(&["rng"]).is_none());
    assert!(tree.get_path(&["state", "model", "fc.bias"]).is_none());
    assert!(tree.get_path(&["state", "model", "fc.weight"]).is_some());
    let warnings = saver.take_warnings();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].ends_with("state/nothing"));

    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        "save_interval = \"1ba\"\nignore_keys = [\"*\"]\n",
    );
    let mut saver = CheckpointSaver::new(&c).unwrap();
    train(&mut saver, Timestamp::default(), "1ba");
    let tree = cairn::format::read_checkpoint(&saver.saved_checkpoints()[0].path).unwrap();
    assert_eq!(
        tree,
        Value::Dict(Dict::new().with("state", Dict::new())),
        "state is re-added"
    );
}

/// Reference §12.3 through the saver: a checkpoint from this run's future blocks the start
/// unless `overwrite`; an existing checkpoint is never silently replaced.
#[test]
fn overwrite_false_refuses_future_checkpoints_and_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), "save_interval = \"1ba\"\n");
    let end = train(
        &mut CheckpointSaver::new(&c).unwrap(),
        Timestamp::default(),
        "3ba",
    );
    assert_eq!(end.batch, 3);

    let mut again = CheckpointSaver::new(&c).unwrap();
    let err = again
        .fit_start(&Timestamp::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("checkpoint_ep0_ba3.pt") && err.contains("overwrite"),
        "{err}"
    );
    let at = |b| Timestamp {
        batch: b,
        ..Timestamp::default()
    };
    assert!(again.fit_start(&at(3)).is_ok(), "equal is not the future");

    let before = fs::read(dir.path().join("ck/checkpoint_ep0_ba3.pt")).unwrap();
    let err = again
        .save(&at(3), Event::Batch, || Ok(snapshot(99)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        fs::read(dir.path().join("ck/checkpoint_ep0_ba3.pt")).unwrap(),
        before,
        "untouched"
    );

    let c = config(dir.path(), "save_interval = \"1ba\"\noverwrite = true\n");
    let mut replacing = CheckpointSaver::new(&c).unwrap();
    replacing.fit_start(&Timestamp::default()).unwrap();
    replacing
        .save(&at(3), Event::Batch, || Ok(snapshot(99)))
        .unwrap();
    assert_ne!(
        fs::read(dir.path().join("ck/checkpoint_ep0_ba3.pt")).unwrap(),
        before
    );
}

#[test]
fn a_failing_snapshot_leaves_the_previous_checkpoint_and_latest() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), "save_interval = \"1ba\"\n");
    let mut saver = CheckpointSaver::new(&c).unwrap();
    train(&mut saver, Timestamp::default(), "1ba");
    let at = Timestamp {
        batch: 2,
        ..Timestamp::default()
    };
    let err = saver
        .save(&at, Event::Batch, || Err("out of host memory".into()))
        .unwrap_err();
    assert!(format!("{err:#}").contains("out of host memory"));
    let ck = dir.path().join("ck");
    assert_eq!(names(&ck, "checkpoint_"), ["checkpoint_ep0_ba1.pt"]);
    assert_eq!(
        fs::read_link(ck.join("latest-rank0.pt")).unwrap(),
        Path::new("checkpoint_ep0_ba1.pt")
    );
    assert_eq!(
        fs::read_dir(&ck).unwrap().count(),
        2,
        "no temporary file left"
    );
}
