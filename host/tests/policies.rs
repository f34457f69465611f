//! The example policies, end to end through the library: each is built from source, loaded
//! into cairn's host and driven through a simulated run.

mod common;

use std::time::Duration;

use cairn::interval::IntervalScheduler;
use cairn::policy::{Event, MaxDuration, Ranks, SavePolicy, TrainingState};
use cairn::time::{CountUnit, Time, Timestamp};
use cairn::wasm::{PolicySpec, RunInfo, SandboxConfig};

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

fn saved_batches(answers: &[bool], epochs: u64, per_epoch: u64) -> Vec<(Event, u64)> {
    events(epochs, per_epoch)
        .into_iter()
        .zip(answers)
        .filter(|(_, yes)| **yes)
        .map(|((ts, _, ev), _)| (ev, ts.batch))
        .collect()
}

fn cross_check_every_n(wasm: std::path::PathBuf) {
    let (host, _) = common::host();
    for (n, epochs, per_epoch) in [(1, 2, 3), (3, 3, 7), (5, 4, 10), (7, 2, 7), (100, 2, 10)] {
        let spec = PolicySpec::new(&wasm).with("n", n);
        let mut wasm_policy = host
            .save_policy(&spec, &SandboxConfig::default(), &RunInfo::default())
            .unwrap();
        let mut builtin = IntervalScheduler::new(Time::batches(n)).unwrap();
        let got = answers(&mut wasm_policy, epochs, per_epoch, &|_| 1.0);
        let want = answers(&mut builtin, epochs, per_epoch, &|_| 1.0);
        assert_eq!(got, want, "every {n} batches over {epochs}x{per_epoch}");
        assert!(got.iter().any(|y| *y), "the run saves at least at the end");
    }
}

#[test]
fn every_n_rust_matches_builtin_interval() {
    cross_check_every_n(common::rust_policy("every_n"));
}

#[test]
fn every_n_python_matches_builtin_interval() {
    let Some(wasm) = common::python_policy() else {
        return;
    };
    cross_check_every_n(wasm);
}
