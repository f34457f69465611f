//! The checkpoint dict Composer writes (`composer/utils/checkpoint.py::_save_checkpoint` and
//! `State.state_dict()` in Composer 0.32), built from what a training loop hands the saver, and the
//! parts of it that resume reads back.
//!
//! A full checkpoint is `{'state': {...}, 'rng': [...]}`; a weights-only one is
//! `{'state': {model, integrations, metadata}}`. The saver adds what Composer's own `State` would:
//! the timestamp (wall-clock fields as `datetime.timedelta`, so Composer can load it), the run
//! name, and its own entry under `callbacks` listing every checkpoint saved so far.

use std::time::Duration;

use cairn_format::{Dict, Key, Object, Value, state_dict::Construct};
use cairn_policy::Timestamp;

/// What a training loop hands the saver when a checkpoint is due.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The `state` entries the trainer owns: `model`, `optimizers`, `schedulers`, `algorithms`,
    /// `scaler`, `rank_zero_seed`, `dataset_state`, `integrations`, `metadata`, ...
    pub state: Dict,
    /// The per-rank RNG states, if any (`rng`).
    pub rng: Option<Value>,
}

/// Composer's order of the `state` keys; keys it does not list keep their order after these.
const STATE_ORDER: [&str; 14] = [
    "model",
    "optimizers",
    "schedulers",
    "algorithms",
    "callbacks",
    "scaler",
    "timestamp",
    "rank_zero_seed",
    "train_metrics",
    "eval_metrics",
    "run_name",
    "dataset_state",
    "integrations",
    "metadata",
];

/// The saver's history: every checkpoint path with the timestamp it was taken at.
pub type History = [(String, Timestamp)];

/// Assemble the dict to write.
pub fn build(
    snapshot: Snapshot,
    timestamp: &Timestamp,
    run_name: &str,
    history: &History,
    weights_only: bool,
) -> Value {
    let mut given = snapshot.state;
    if weights_only {
        let mut state = Dict::new();
        for key in ["model", "integrations", "metadata"] {
            if let Some(v) = given.remove(&Key::from(key)) {
                state.insert(key, v);
            }
        }
        return Value::Dict(Dict::new().with("state", state));
    }
    let mut callbacks = given
        .remove(&Key::from("callbacks"))
        .and_then(Value::into_dict)
        .unwrap_or_default();
    callbacks.insert("CheckpointSaver", saver_state(history));
    given.insert("callbacks", callbacks);
    given.insert(
        "timestamp",
        Dict::new().with("Timestamp", timestamp_dict(timestamp)),
    );
    given.insert("run_name", run_name);
    let mut state = Dict {
        kind: given.kind,
        ..Dict::default()
    };
    for key in STATE_ORDER {
        if let Some(v) = given.remove(&Key::from(key)) {
            state.insert(key, v);
        }
    }
    state.entries.extend(given.entries);
    let mut top = Dict::new().with("state", state);
    if let Some(rng) = snapshot.rng {
        top.insert("rng", rng);
    }
    Value::Dict(top)
}

fn saver_state(history: &History) -> Dict {
    let entries = history
        .iter()
        .map(|(path, ts)| {
            Value::Tuple(vec![
                Value::from(path.as_str()),
                Value::Dict(timestamp_dict(ts)),
            ])
        })
        .collect();
    Dict::new().with("all_saved_checkpoints_to_timestamp", Value::List(entries))
}

/// Composer's `Timestamp.state_dict()`.
pub fn timestamp_dict(t: &Timestamp) -> Dict {
    let int = |n: u64| Value::Int(n as i64);
    Dict::new()
        .with("iteration", int(t.iteration))
        .with("epoch", int(t.epoch))
        .with("batch", int(t.batch))
        .with("sample", int(t.sample))
        .with("token", int(t.token))
        .with("epoch_in_iteration", int(t.epoch_in_iteration))
        .with("token_in_iteration", int(t.token_in_iteration))
        .with("batch_in_epoch", int(t.batch_in_epoch))
        .with("sample_in_epoch", int(t.sample_in_epoch))
        .with("token_in_epoch", int(t.token_in_epoch))
        .with("total_wct", timedelta(t.total_wct))
        .with("iteration_wct", timedelta(t.iteration_wct))
        .with("epoch_wct", timedelta(t.epoch_wct))
        .with("batch_wct", timedelta(t.batch_wct))
}

/// `datetime.timedelta(days, seconds, microseconds)`, as Python pickles it.
pub fn timedelta(d: Duration) -> Value {
    let secs = d.as_secs();
    let args = vec![
        Value::Int((secs / 86_400) as i64),
        Value::Int((secs % 86_400) as i64),
        Value::Int(d.subsec_micros() as i64),
    ];
    Value::Object(Box::new(Object {
        module: "datetime".into(),
        name: "timedelta".into(),
        construct: Construct::Reduce(args),
        state: None,
        list_items: Vec::new(),
        dict_items: Vec::new(),
    }))
}

fn duration_of(v: &Value) -> Option<Duration> {
    match v {
        Value::Object(o) if o.module == "datetime" && o.name == "timedelta" => {
            let Construct::Reduce(args) = &o.construct else {
                return None;
            };
            let part = |i: usize| match args.get(i) {
                Some(Value::Int(n)) => Some(*n),
                None => Some(0),
                _ => None,
            };
            let micros = part(0)? * 86_400_000_000 + part(1)? * 1_000_000 + part(2)?;
            u64::try_from(micros).ok().map(Duration::from_micros)
        }
        Value::Float(x) if *x >= 0.0 && x.is_finite() => Some(Duration::from_secs_f64(*x)),
        Value::Int(n) => u64::try_from(*n).ok().map(Duration::from_secs),
        _ => None,
    }
}

/// After a filter ran over a full checkpoint dict, put `state` back if it was removed: Composer
/// re-adds it as `{}` so a loader always finds the key (`rng` is not re-added).
pub fn restore_state_key(tree: &mut Value) {
    if let Value::Dict(d) = tree
        && d.get("state").is_none()
    {
        d.insert("state", Dict::new());
    }
}

/// The timestamp a checkpoint was taken at (`state/timestamp/Timestamp`), if it has one.
pub fn read_timestamp(tree: &Value) -> Option<Timestamp> {
    let d = tree
        .get_path(&["state", "timestamp", "Timestamp"])?
        .as_dict()?;
    let int = |k: &str| match d.get(k) {
        Some(Value::Int(n)) => u64::try_from(*n).ok(),
        None => Some(0),
        _ => None,
    };
    let dur = |k: &str| d.get(k).map_or(Some(Duration::ZERO), duration_of);
    Some(Timestamp {
        iteration: int("iteration")?,
        epoch: int("epoch")?,
        batch: int("batch")?,
        sample: int("sample")?,
        token: int("token")?,
        epoch_in_iteration: int("epoch_in_iteration")?,
        token_in_iteration: int("token_in_iteration")?,
        batch_in_epoch: int("batch_in_epoch")?,
        sample_in_epoch: int("sample_in_epoch")?,
        token_in_epoch: int("token_in_epoch")?,
        total_wct: dur("total_wct")?,
        iteration_wct: dur("iteration_wct")?,
        epoch_wct: dur("epoch_wct")?,
        batch_wct: dur("batch_wct")?,
    })
}

/// The saver history a checkpoint carries (it persists across resumes, as in Composer).
pub fn read_history(tree: &Value) -> Vec<(String, Timestamp)> {
    let Some(Value::List(items)) = tree.get_path(&[
        "state",
        "callbacks",
        "CheckpointSaver",
        "all_saved_checkpoints_to_timestamp",
    ]) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::Tuple(pair) | Value::List(pair) => match pair.as_slice() {
                [Value::Str(path), ts @ Value::Dict(_)] => {
                    let wrapped = Value::Dict(Dict::new().with(
                        "state",
                        Dict::new().with("timestamp", Dict::new().with("Timestamp", ts.clone())),
                    ));
                    read_timestamp(&wrapped).map(|t| (path.clone(), t))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_format::Tensor;

    fn ts() -> Timestamp {
        Timestamp {
            epoch: 2,
            batch: 9,
            batch_in_epoch: 1,
            total_wct: Duration::from_micros(90_061_000_001),
            ..Timestamp::default()
        }
    }

    fn snapshot() -> Snapshot {
        let state = Dict::new()
            .with("metadata", Dict::new())
            .with(
                "model",
                Dict::ordered().with("w", Tensor::from_f32(vec![1], &[1.0])),
            )
            .with("integrations", Dict::new())
            .with("optimizers", Dict::new())
            .with("custom", 1i64);
        Snapshot {
            state,
            rng: Some(Value::List(vec![])),
        }
    }

    #[test]
    fn full_checkpoints_follow_composer_order_and_round_trip_the_timestamp() {
        let history = vec![(
            "ck/ep1.pt".to_owned(),
            Timestamp {
                epoch: 1,
                ..Timestamp::default()
            },
        )];
        let tree = build(snapshot(), &ts(), "run", &history, false);
        let state = tree.get_path(&["state"]).unwrap().as_dict().unwrap();
        let keys: Vec<String> = state.entries.keys().map(|k| k.to_string()).collect();
        assert_eq!(
            keys,
            [
                "model",
                "optimizers",
                "callbacks",
                "timestamp",
                "run_name",
                "integrations",
                "metadata",
                "custom"
            ]
        );
        assert!(tree.get_path(&["rng"]).is_some());
        assert_eq!(read_timestamp(&tree), Some(ts()));
        assert_eq!(read_history(&tree), history);
    }

    #[test]
    fn weights_only_keeps_three_keys_and_no_rng() {
        let tree = build(snapshot(), &ts(), "run", &[], true);
        let top = tree.as_dict().unwrap();
        assert_eq!(top.len(), 1);
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
    }

    #[test]
    fn a_filtered_away_state_comes_back_empty() {
        let mut tree = Value::Dict(Dict::new().with("rng", Value::List(vec![])));
        restore_state_key(&mut tree);
        assert_eq!(tree.get_path(&["state"]), Some(&Value::Dict(Dict::new())));
        let mut empty = Value::Dict(Dict::new());
        restore_state_key(&mut empty);
        assert_eq!(empty, Value::Dict(Dict::new().with("state", Dict::new())));
    }

    #[test]
    fn timedeltas_are_days_seconds_microseconds() {
        let Value::Object(o) = &timedelta(Duration::from_micros(90_061_000_001)) else {
            panic!()
        };
        assert_eq!(
            o.construct,
            Construct::Reduce(vec![Value::Int(1), Value::Int(3661), Value::Int(1)])
        );
    }
}
