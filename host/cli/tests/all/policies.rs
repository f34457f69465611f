//! The example policies, end to end through the library: each is built from source, loaded
//! into cairn's host and driven through a simulated run.

use cairn_testkit as common;

use std::time::Duration;

use cairn::format::{Dict, DictKind, Tensor, Value};
use cairn::policy::IntervalScheduler;
use cairn::policy::{CountUnit, Time, Timestamp};
use cairn::policy::{Event, MaxDuration, Ranks, SavePolicy, TrainingState};
use cairn::policy::{PolicySpec, RunInfo, SandboxConfig};
use cairn_cli::train::{Events, Tick, TrainerSpec};

/// Every checkpoint event of a run of `epochs` epochs of `per_epoch` batches, in Composer's
/// order, with the timestamps a trainer would report.
fn events(epochs: u64, per_epoch: u64) -> Vec<(Timestamp, Option<Timestamp>, Event)> {
    let mut out = Vec::new();
    let mut ts = Timestamp::default();
    for _ in 0..epochs {
        for _ in 0..per_epoch {
            let prev = ts;
            ts = ts.to_next_batch(4, 64, Duration::from_millis(250));
            out.push((ts, Some(prev), Event::Batch));
        }
        let prev = ts;
        ts = ts.to_next_epoch();
        out.push((ts, Some(prev), Event::Epoch));
    }
    out
}

/// Which events `policy` says yes to.
fn answers(
    policy: &mut dyn SavePolicy,
    epochs: u64,
    per_epoch: u64,
    metrics: &dyn Fn(u64) -> f64,
) -> Vec<bool> {
    let max = MaxDuration::new(Time::Count(epochs as i64, CountUnit::Epoch)).unwrap();
    events(epochs, per_epoch)
        .into_iter()
        .map(|(ts, prev, ev)| {
            let m = vec![("loss".to_string(), metrics(ts.batch))];
            let state = TrainingState {
                timestamp: ts,
                previous_timestamp: prev,
                max_duration: max,
                dataloader_len: Some(per_epoch),
                run_name: "test-run",
                ranks: Ranks::default(),
                metrics: &m,
            };
            policy.should_save(&state, ev).unwrap()
        })
        .collect()
}

/// The (event, batch) of every yes.
fn saved_batches(answers: &[bool], epochs: u64, per_epoch: u64) -> Vec<(Event, u64)> {
    events(epochs, per_epoch)
        .into_iter()
        .zip(answers)
        .filter(|(_, yes)| **yes)
        .map(|((ts, _, ev), _)| (ev, ts.batch))
        .collect()
}

fn load(crate_name: &str, config: &[(&str, toml::Value)]) -> cairn::policy::WasmSavePolicy {
    let (host, _) = common::host();
    let mut spec = PolicySpec::new(common::rust_policy(crate_name));
    for (k, v) in config {
        spec = spec.with(k, v.clone());
    }
    host.save_policy(&spec, &SandboxConfig::default(), &RunInfo::default())
        .unwrap()
}

#[test]
fn loss_margin_saves_on_improvements() {
    // Loss by batch: 10, 9.95 (not by > 0.1), 9.8 (yes), 9.75, 9.9, 9.6 (yes), 9.55, 9.0 (yes)...
    let curve = [10.0, 9.95, 9.8, 9.75, 9.9, 9.6, 9.55, 9.0, 9.05, 8.95];
    let loss = move |batch: u64| curve[(batch as usize - 1) % curve.len()];
    let mut p = load("loss_margin", &[("margin", 0.1.into())]);
    let saved = saved_batches(&answers(&mut p, 1, 10, &loss), 1, 10);
    assert_eq!(
        saved,
        vec![(Event::Batch, 3), (Event::Batch, 6), (Event::Batch, 8)]
    );
    // Another metric name that is absent: never saves.
    let mut p = load("loss_margin", &[("metric", "val_loss".into())]);
    assert!(answers(&mut p, 1, 10, &loss).iter().all(|y| !y));
}

#[test]
fn loss_margin_rejects_bad_config() {
    let (host, _) = common::host();
    let spec = PolicySpec::new(common::rust_policy("loss_margin")).with("margin", -1);
    let err = host
        .save_policy(&spec, &SandboxConfig::default(), &RunInfo::default())
        .err()
        .unwrap();
    assert_eq!(err.kind(), "init-refused");
    let msg = err.to_string();
    assert!(
        msg.contains("loss_margin.wasm") && msg.contains("margin must be a non-negative number"),
        "{msg}"
    );
}

#[test]
fn dense_early_saves_at_powers_of_two() {
    let mut p = load("dense_early", &[]);
    let saved: Vec<u64> = saved_batches(&answers(&mut p, 1, 100, &|_| 1.0), 1, 100)
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert_eq!(saved, vec![1, 2, 4, 8, 16, 32, 64]);
    let mut p = load("dense_early", &[("max_gap", 16.into())]);
    let saved: Vec<u64> = saved_batches(&answers(&mut p, 1, 100, &|_| 1.0), 1, 100)
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert_eq!(saved, vec![1, 2, 4, 8, 16, 32, 48, 64, 80, 96]);
}

fn composer_state_dict() -> Value {
    let t = |n: usize| Value::Tensor(Tensor::from_f32(vec![n as u64], &vec![0.5; n]));
    let adam_state = |n| {
        Value::Dict(
            Dict::new()
                .with("exp_avg", t(n))
                .with("exp_avg_sq", t(n))
                .with("step", t(1)),
        )
    };
    let model = Dict::ordered()
        .with("encoder.layer.weight", t(4))
        .with("decoder.weight", t(2));
    let opt = Dict::new()
        .with(
            "state",
            Dict::new()
                .with("encoder.layer.weight", adam_state(4))
                .with("decoder.weight", adam_state(2)),
        )
        .with(
            "param_groups",
            Value::List(vec![Value::Dict(Dict::new().with("lr", 0.001).with(
                "params",
                Value::List(vec!["encoder.layer.weight".into(), "decoder.weight".into()]),
            ))]),
        );
    Value::Dict(
        Dict::new()
            .with(
                "state",
                Dict::new()
                    .with("model", model)
                    .with("optimizers", Dict::new().with("Adam", opt))
                    .with(
                        "timestamp",
                        Value::Tuple(vec![Value::Int(1), Value::Int(2)]),
                    ),
            )
            .with(
                "rng",
                Value::List(vec![Value::Dict(Dict::new().with("seed", 42))]),
            ),
    )
}

#[test]
fn drop_optimizer_state_filters_matching_parameters() {
    let (host, _) = common::host();
    let spec =
        PolicySpec::new(common::rust_policy("drop_optimizer_state")).with("prefix", "encoder.");
    let mut filter = host
        .key_filter(&spec, &SandboxConfig::default(), &RunInfo::default())
        .unwrap();
    let before = composer_state_dict();
    let after = filter.apply(&before).unwrap();
    let paths = cairn::policy::tree_paths(&after);
    assert!(
        paths.contains(&"state/optimizers/Adam/state/decoder.weight/exp_avg".to_string()),
        "{paths:?}"
    );
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with("state/optimizers/Adam/state/encoder.")),
        "{paths:?}"
    );
    // Everything else is exactly as before, tensors and the tuple included.
    let mut expected = before.clone();
    expected
        .get_path_mut_for_test(&["state", "optimizers", "Adam", "state"])
        .remove(&"encoder.layer.weight".into());
    assert_eq!(after, expected);
    // The model dict stays an OrderedDict.
    let model = after
        .get_path(&["state", "model"])
        .unwrap()
        .as_dict()
        .unwrap();
    assert_eq!(model.kind, DictKind::Ordered);
    // Dropping the last parameter's state leaves an empty `state` dict, as globs would.
    let spec =
        PolicySpec::new(common::rust_policy("drop_optimizer_state")).with("prefix", "decoder.");
    let mut all = host
        .key_filter(&spec, &SandboxConfig::default(), &RunInfo::default())
        .unwrap();
    let out = all.apply(&after).unwrap();
    let state = out
        .get_path(&["state", "optimizers", "Adam", "state"])
        .unwrap()
        .as_dict()
        .unwrap();
    assert!(state.is_empty());
    assert!(
        out.get_path(&["state", "optimizers", "Adam", "param_groups"])
            .is_some()
    );
}

#[test]
fn drop_optimizer_state_requires_a_prefix() {
    let (host, _) = common::host();
    let spec = PolicySpec::new(common::rust_policy("drop_optimizer_state"));
    let err = host
        .key_filter(&spec, &SandboxConfig::default(), &RunInfo::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("'prefix' is required"), "{err}");
}

/// A helper the test needs: mutable access to a dict by path.
trait PathMut {
    fn get_path_mut_for_test(&mut self, path: &[&str]) -> &mut Dict;
}

impl PathMut for Value {
    fn get_path_mut_for_test(&mut self, path: &[&str]) -> &mut Dict {
        let mut node = self;
        for seg in path {
            node = node.as_dict_mut().unwrap().get_mut(seg).unwrap();
        }
        node.as_dict_mut().unwrap()
    }
}

fn cross_check_every_n(wasm: std::path::PathBuf, sandbox: &SandboxConfig) {
    let (host, _) = common::host();
    for (n, epochs, per_epoch) in [(1, 2, 3), (3, 3, 7), (5, 4, 10), (7, 2, 7), (100, 2, 10)] {
        let spec = PolicySpec::new(&wasm).with("n", n);
        let mut wasm_policy = host
            .save_policy(&spec, sandbox, &RunInfo::default())
            .unwrap();
        let mut builtin = IntervalScheduler::new(Time::batches(n)).unwrap();
        let got = answers(&mut wasm_policy, epochs, per_epoch, &|_| 1.0);
        let want = answers(&mut builtin, epochs, per_epoch, &|_| 1.0);
        assert_eq!(got, want, "every {n} batches over {epochs}x{per_epoch}");
        assert!(got.iter().any(|y| *y), "the run saves at least at the end");
    }
}

/// The same check through cairn's trainer, on the runs that exercise every branch of the
/// every-n policies: `max_duration` in batches, epochs and samples, iteration events, and
/// resumes, one of them at the last batch of an epoch (whose epoch event then comes before any
/// batch has run, with no previous timestamp).
fn cross_check_every_n_through_the_trainer(wasm: &std::path::Path, sandbox: &SandboxConfig) {
    let (host, _) = common::host();
    let runs = [
        (3, Time::Count(20, CountUnit::Batch), 6, None, 0),
        (4, Time::Count(3, CountUnit::Epoch), 5, Some(2), 0),
        (2, Time::Count(90, CountUnit::Sample), 4, None, 0),
        (5, Time::Count(23, CountUnit::Batch), 6, Some(1), 6),
        (3, Time::Count(4, CountUnit::Epoch), 4, None, 7),
    ];
    for (n, max, per_epoch, per_iteration, resume_at) in runs {
        let spec = TrainerSpec {
            max_duration: MaxDuration::new(max).unwrap(),
            batches_per_epoch: per_epoch,
            samples_per_batch: 4,
            tokens_per_batch: 0,
            batch_duration: Duration::from_millis(10),
            epochs_per_iteration: per_iteration,
        };
        let mut start = Timestamp::default();
        for _ in 0..resume_at {
            if start.batch_in_epoch == per_epoch {
                start = start.to_next_epoch();
            }
            start = start.to_next_batch(4, 0, Duration::from_millis(10));
        }
        let ticks: Vec<Tick> = Events::resume(spec.clone(), start).collect();
        let mut wasm_policy = host
            .save_policy(
                &PolicySpec::new(wasm).with("n", n),
                sandbox,
                &RunInfo::default(),
            )
            .unwrap();
        let mut builtin = IntervalScheduler::new(Time::batches(n as i64)).unwrap();
        let ask = |p: &mut dyn SavePolicy| -> Vec<(Event, u64, bool)> {
            ticks
                .iter()
                .map(|t| {
                    let state = TrainingState {
                        timestamp: t.timestamp,
                        previous_timestamp: t.previous,
                        max_duration: spec.max_duration,
                        dataloader_len: Some(per_epoch),
                        run_name: "test-run",
                        ranks: Ranks::default(),
                        metrics: &[],
                    };
                    (
                        t.event,
                        t.timestamp.batch,
                        p.should_save(&state, t.event).unwrap(),
                    )
                })
                .collect()
        };
        let (got, want) = (ask(&mut wasm_policy), ask(&mut builtin));
        assert_eq!(
            got, want,
            "every {n} batches, {max}, resumed at batch {resume_at}"
        );
        assert!(want.iter().any(|(_, _, yes)| *yes));
        if per_iteration.is_some() {
            assert!(ticks.iter().any(|t| t.event == Event::Iteration));
        }
    }
    // Composer's trainer (not cairn's, which stops first) can end an epoch at the end of
    // training before a resumed run's first batch: no previous timestamp, so no save.
    let mut end = Timestamp::default();
    for _ in 0..8 {
        end = end.to_next_batch(4, 0, Duration::from_millis(10));
    }
    let state = TrainingState {
        timestamp: end.to_next_epoch(),
        previous_timestamp: None,
        max_duration: MaxDuration::new(Time::Count(8, CountUnit::Batch)).unwrap(),
        dataloader_len: Some(8),
        run_name: "test-run",
        ranks: Ranks::default(),
        metrics: &[],
    };
    let mut p = host
        .save_policy(
            &PolicySpec::new(wasm).with("n", 4),
            sandbox,
            &RunInfo::default(),
        )
        .unwrap();
    let mut builtin = IntervalScheduler::new(Time::batches(4)).unwrap();
    assert!(!builtin.should_save(&state, Event::Epoch).unwrap());
    assert!(!p.should_save(&state, Event::Epoch).unwrap());
}

#[test]
fn every_n_rust_matches_builtin_interval() {
    let wasm = common::rust_policy("every_n");
    let sandbox = SandboxConfig::default();
    cross_check_every_n(wasm.clone(), &sandbox);
    cross_check_every_n_through_the_trainer(&wasm, &sandbox);
}

#[test]
fn every_n_python_matches_builtin_interval() {
    let Some(wasm) = common::python_policy() else {
        return;
    };
    // The decisions are what is compared; a busy CI machine must not turn CPython's slower calls
    // into deadline errors.
    let sandbox = SandboxConfig {
        timeout_ms: 2_000,
        ..SandboxConfig::default()
    };
    cross_check_every_n(wasm.clone(), &sandbox);
    cross_check_every_n_through_the_trainer(&wasm, &sandbox);
}

/// The JavaScript example with the limits its README gives (SpiderMonkey's heap and a GC's fuel).
#[test]
fn every_n_js_matches_builtin_interval() {
    let Some(wasm) = common::js_policy() else {
        return;
    };
    let sandbox = SandboxConfig {
        memory_limit_mib: 96,
        fuel_per_call: 200_000_000,
        timeout_ms: 2_000,
        ..SandboxConfig::default()
    };
    cross_check_every_n(wasm.clone(), &sandbox);
    cross_check_every_n_through_the_trainer(&wasm, &sandbox);
}
