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

/// The largest counter (batches, samples, tokens, ...) read back from a checkpoint: 2^53, the
/// largest integer a float holds exactly (Composer's time arithmetic mixes the two), far past
/// any real run, and far enough from `u64::MAX` that a resumed run's additions cannot overflow.
pub const MAX_COUNTER: u64 = 1 << 53;

/// The longest wall-clock duration read back from a checkpoint: 10^10 seconds (about 317
/// years); a resumed run adds its own time to it, which must not overflow a `Duration`.
pub const MAX_WALL_CLOCK_SECS: u64 = 10_000_000_000;

/// A duration from what a checkpoint holds: a `datetime.timedelta` (days, seconds,
/// microseconds, each possibly negative, as Python normalises them), a float or an int of
/// seconds. Out-of-range values (negative, NaN, infinite, past [`MAX_WALL_CLOCK_SECS`]) are
/// errors, whoever wrote them (a filter may legally set `1e300`).
fn duration_of(v: &Value) -> Result<Duration, String> {
    let too_big = || format!("is beyond {MAX_WALL_CLOCK_SECS} seconds");
    let negative = || "is negative".to_owned();
    match v.resolved() {
        Value::Object(o) if o.module == "datetime" && o.name == "timedelta" => {
            let Construct::Reduce(args) = &o.construct else {
                return Err("is a timedelta without its (days, seconds, microseconds)".into());
            };
            let part = |i: usize| match args.get(i).map(Value::resolved) {
                Some(Value::Int(n)) => Ok(i128::from(*n)),
                None => Ok(0),
                Some(other) => Err(format!(
                    "is a timedelta whose argument {i} is a {}, not an int",
                    other.kind()
                )),
            };
            let micros = part(0)? * 86_400_000_000 + part(1)? * 1_000_000 + part(2)?;
            if micros < 0 {
                return Err(negative());
            }
            if micros > i128::from(MAX_WALL_CLOCK_SECS) * 1_000_000 {
                return Err(too_big());
            }
            Ok(Duration::from_micros(micros as u64))
        }
        Value::Float(x) if x.is_nan() => Err("is NaN".into()),
        Value::Float(x) if *x < 0.0 => Err(negative()),
        Value::Float(x) if *x > MAX_WALL_CLOCK_SECS as f64 => Err(too_big()),
        Value::Float(x) => Ok(Duration::from_secs_f64(*x)),
        Value::Int(n) if *n < 0 => Err(negative()),
        Value::Int(n) if *n as u64 > MAX_WALL_CLOCK_SECS => Err(too_big()),
        Value::Int(n) => Ok(Duration::from_secs(*n as u64)),
        other => Err(format!(
            "is a {}, not a timedelta or a number of seconds",
            other.kind()
        )),
    }
}

/// A counter from what a checkpoint holds: an int in `0..=MAX_COUNTER`.
fn counter_of(v: &Value) -> Result<u64, String> {
    match v.resolved() {
        Value::Int(n) if *n < 0 => Err(format!("is {n}, a negative count")),
        Value::Int(n) if *n as u64 > MAX_COUNTER => {
            Err(format!("is {n}, beyond {MAX_COUNTER} (2^53)"))
        }
        Value::Int(n) => Ok(*n as u64),
        Value::BigInt(_) => Err(format!("is an int beyond {MAX_COUNTER} (2^53)")),
        other => Err(format!("is a {}, not an int", other.kind())),
    }
}

/// A value read back from a checkpoint that cairn cannot continue from: the key (a `/` path)
/// and what is wrong with it, in words that follow the key (`state/timestamp/... is NaN`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key} {problem}")]
pub struct BadValue {
    /// Where the value is.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
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

/// Where a checkpoint keeps its timestamp.
const TIMESTAMP_PATH: [&str; 3] = ["state", "timestamp", "Timestamp"];
/// Where a checkpoint keeps the saver's history.
const HISTORY_PATH: [&str; 4] = [
    "state",
    "callbacks",
    "CheckpointSaver",
    "all_saved_checkpoints_to_timestamp",
];

/// The timestamp a checkpoint was taken at (`state/timestamp/Timestamp`); `Ok(None)` when it
/// has none, an error naming the key when a field is out of range (a negative or huge counter,
/// a NaN or enormous wall clock, a value of the wrong type).
pub fn read_timestamp(tree: &Value) -> Result<Option<Timestamp>, BadValue> {
    let Some(node) = tree.get_path(&TIMESTAMP_PATH) else {
        return Ok(None);
    };
    timestamp_of(node, &TIMESTAMP_PATH.join("/")).map(Some)
}

/// Composer's `Timestamp.state_dict()` read back; absent fields are zero (older Composers
/// wrote fewer).
fn timestamp_of(node: &Value, at: &str) -> Result<Timestamp, BadValue> {
    let Some(d) = node.as_dict() else {
        return Err(BadValue {
            key: at.to_owned(),
            problem: format!("is a {}, not a dict", node.kind()),
        });
    };
    let bad = |k: &str| {
        let key = format!("{at}/{k}");
        move |problem| BadValue { key, problem }
    };
    let int = |k: &str| d.get(k).map_or(Ok(0), counter_of).map_err(bad(k));
    let dur = |k: &str| {
        d.get(k)
            .map_or(Ok(Duration::ZERO), duration_of)
            .map_err(bad(k))
    };
    Ok(Timestamp {
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

/// The saver history a checkpoint carries (it persists across resumes, as in Composer): each
/// entry a `(path, timestamp)` pair, checked like the checkpoint's own timestamp. An entry of
/// another shape is an error naming it (a checkpoint with no history has an empty one).
pub fn read_history(tree: &Value) -> Result<Vec<(String, Timestamp)>, BadValue> {
    let Some(node) = tree.get_path(&HISTORY_PATH) else {
        return Ok(Vec::new());
    };
    let at = HISTORY_PATH.join("/");
    let Value::List(items) = node.resolved() else {
        return Err(BadValue {
            key: at,
            problem: format!("is a {}, not a list", node.kind()),
        });
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("{at}/{i}");
            match item.resolved() {
                Value::Tuple(pair) | Value::List(pair) => match pair.as_slice() {
                    [path, ts] => match path.resolved() {
                        Value::Str(path) => {
                            Ok((path.clone(), timestamp_of(ts, &format!("{at}/1"))?))
                        }
                        other => Err(BadValue {
                            key: format!("{at}/0"),
                            problem: format!("is a {}, not a checkpoint path", other.kind()),
                        }),
                    },
                    _ => Err(BadValue {
                        key: at,
                        problem: format!("holds {} items, not (path, timestamp)", pair.len()),
                    }),
                },
                other => Err(BadValue {
                    key: at,
                    problem: format!("is a {}, not a (path, timestamp) pair", other.kind()),
                }),
            }
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
        assert_eq!(read_timestamp(&tree), Ok(Some(ts())));
        assert_eq!(read_history(&tree), Ok(history));
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

    /// A checkpoint whose timestamp has `key` set to `value`.
    fn with_timestamp_field(key: &str, value: Value) -> Value {
        let mut t = timestamp_dict(&ts());
        t.insert(key, value);
        Value::Dict(Dict::new().with(
            "state",
            Dict::new().with("timestamp", Dict::new().with("Timestamp", t)),
        ))
    }

    #[test]
    fn out_of_range_values_are_errors_naming_the_key() {
        let td = |d: i64, s: i64, us: i64| {
            Value::Object(Box::new(Object {
                module: "datetime".into(),
                name: "timedelta".into(),
                construct: Construct::Reduce(vec![Value::Int(d), Value::Int(s), Value::Int(us)]),
                state: None,
                list_items: Vec::new(),
                dict_items: Vec::new(),
            }))
        };
        let cases: Vec<(&str, Value, &str)> = vec![
            ("total_wct", Value::Float(1e300), "beyond"),
            ("total_wct", Value::Float(f64::NAN), "NaN"),
            ("total_wct", Value::Float(f64::INFINITY), "beyond"),
            ("total_wct", Value::Float(-1.0), "negative"),
            ("total_wct", Value::Int(-5), "negative"),
            ("total_wct", Value::Int(i64::MAX), "beyond"),
            ("epoch_wct", td(i64::MAX, i64::MAX, i64::MAX), "beyond"),
            ("epoch_wct", td(i64::MIN, 0, 0), "negative"),
            ("batch_wct", Value::from("soon"), "not a timedelta"),
            ("batch", Value::Int(i64::MAX), "beyond"),
            ("batch", Value::Int(-1), "negative"),
            ("sample", Value::BigInt(vec![0; 20]), "beyond"),
            ("epoch", Value::Float(1.0), "not an int"),
        ];
        for (key, value, want) in cases {
            let err = read_timestamp(&with_timestamp_field(key, value.clone())).unwrap_err();
            assert_eq!(
                err.key,
                format!("state/timestamp/Timestamp/{key}"),
                "{value:?}"
            );
            assert!(err.problem.contains(want), "{key} = {value:?}: {err}");
        }
        // Python normalises a timedelta to days >= any, 0 <= seconds < 86400, 0 <= us < 1e6;
        // a negative day with positive seconds is still a valid non-negative total.
        let ok = read_timestamp(&with_timestamp_field(
            "total_wct",
            td(-1, 86_400, 1_000_000),
        ));
        assert_eq!(ok.unwrap().unwrap().total_wct, Duration::from_secs(1));
        let ok = read_timestamp(&with_timestamp_field("total_wct", Value::Float(2.5)));
        assert_eq!(ok.unwrap().unwrap().total_wct, Duration::from_millis(2500));
    }

    #[test]
    fn a_damaged_history_entry_is_an_error_naming_it() {
        let tree = build(snapshot(), &ts(), "run", &[("a.pt".into(), ts())], false);
        assert_eq!(read_history(&tree).unwrap().len(), 1);
        let mut bad = build(snapshot(), &ts(), "run", &[], false);
        let list = Value::List(vec![
            Value::Tuple(vec![
                Value::from("a.pt"),
                Value::Dict(timestamp_dict(&ts())),
            ]),
            Value::Tuple(vec![Value::Int(3), Value::Dict(timestamp_dict(&ts()))]),
        ]);
        bad.as_dict_mut()
            .unwrap()
            .get_mut("state")
            .unwrap()
            .as_dict_mut()
            .unwrap()
            .get_mut("callbacks")
            .unwrap()
            .as_dict_mut()
            .unwrap()
            .insert(
                "CheckpointSaver",
                Dict::new().with("all_saved_checkpoints_to_timestamp", list),
            );
        let err = read_history(&bad).unwrap_err();
        assert_eq!(
            err.key,
            "state/callbacks/CheckpointSaver/all_saved_checkpoints_to_timestamp/1/0"
        );
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
