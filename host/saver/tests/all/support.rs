//! What the saver's end-to-end tests share: a config in a temporary folder, a small snapshot, and
//! a training loop that fires Composer's batch and epoch checkpoint events.

use std::path::Path;

use cairn::format::{Dict, Tensor, Value};
use cairn::policy::{Event, MaxDuration, Ranks, Time, Timestamp, TrainingState};
use cairn::{CheckpointSaver, Config, Snapshot};

/// Batches per epoch of [`fit`].
pub const BATCHES_PER_EPOCH: u64 = 4;

/// A config whose relative paths (folder, `file://` URL) are written under `dir`: `{dir}` in
/// `text` stands for it.
pub fn config(dir: &Path, text: &str) -> Config {
    let text = text.replace("{dir}", &dir.display().to_string());
    Config::parse(&text, "test.toml", dir).unwrap_or_else(|e| panic!("{e}"))
}

/// A model whose first weight is the batch it was taken at.
pub fn snapshot(batch: u64) -> Snapshot {
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

/// Train from `start` until `max` ([`BATCHES_PER_EPOCH`] batches an epoch), between `fit_start`
/// and the last event (the caller calls `fit_end`). Returns where training stopped, or the first
/// error.
pub fn fit(saver: &mut CheckpointSaver, start: Timestamp, max: &str) -> cairn::Result<Timestamp> {
    let max = MaxDuration::new(max.parse::<Time>().unwrap()).unwrap();
    let mut now = start;
    saver.fit_start(&now)?;
    while !max.reached(&now) {
        let previous = now;
        now = now.to_next_batch(1, 0, Default::default());
        let mut events = vec![(Event::Batch, now)];
        if now.batch_in_epoch == BATCHES_PER_EPOCH {
            now = now.to_next_epoch();
            events.push((Event::Epoch, now));
        }
        for (event, ts) in events {
            let state = TrainingState {
                timestamp: ts,
                previous_timestamp: Some(previous),
                max_duration: max,
                dataloader_len: Some(BATCHES_PER_EPOCH),
                run_name: "r",
                ranks: Ranks::default(),
                metrics: &[],
            };
            let batch = ts.batch;
            saver.on_event(&state, event, || Ok(snapshot(batch)))?;
        }
    }
    Ok(now)
}

/// The names of a folder's entries starting with `prefix`, sorted.
pub fn names(dir: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.retain(|n| n.starts_with(prefix));
    v.sort();
    v
}
