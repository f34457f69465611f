//! Class 3: unbounded text from a guest. Every piece of guest text cairn relays is one escaped
//! line, cut to its cap with a note of what was cut, and one policy's text over a run is
//! bounded by `max_log_bytes_per_run`.

use super::*;
use cairn_policy::{Event, MaxDuration, Ranks, Time, Timestamp, TrainingState};

fn state() -> TrainingState<'static> {
    TrainingState {
        timestamp: Timestamp::default(),
        previous_timestamp: None,
        max_duration: MaxDuration::new(Time::batches(1_000_000)).unwrap(),
        dataloader_len: None,
        run_name: "text",
        ranks: Ranks::default(),
        metrics: &[],
    }
}

/// The hostile save-interval with a host that collects its log lines.
fn logged(
    mode: &str,
    arg: u64,
    sandbox: &SandboxConfig,
) -> (
    Result<WasmSavePolicy, PolicyError>,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let (host, log) = common::host();
    let spec = PolicySpec::new(common::rust_policy("hostile_save"))
        .with("mode", mode)
        .with("arg", arg.to_string());
    (host.save_policy(&spec, sandbox, &RunInfo::default()), log)
}

#[test]
fn an_err_answer_is_one_short_escaped_line_whatever_its_size() {
    // init: a forged line then 10 MiB; filter: 4 MiB, and the forged text alone.
    let (err, _) = logged("init-err", 10 << 20, &SandboxConfig::default());
    let err = err.err().unwrap();
    assert_eq!(err.kind(), "init-refused", "{err}");
    let msg = err.to_string();
    assert!(msg.len() < 2_400, "{} bytes", msg.len());
    assert!(
        msg.contains("MiB more cut") && msg.contains("\\u{1b}[2K\\r"),
        "{msg}"
    );
    assert_one_clean_line(&msg);

    for (mode, arg) in [("refuse-big", 4 << 20), ("refuse-forged", 0)] {
        let err = filter(mode, arg, &SandboxConfig::default())
            .apply(&small_tree())
            .unwrap_err();
        assert_eq!(err.kind(), "filter-refused", "{err}");
        let msg = err.to_string();
        assert!(msg.len() < 2_400, "{mode}: {} bytes", msg.len());
        assert!(
            msg.contains("cairn: all checkpoints verified\\u{7}"),
            "{msg}"
        );
        assert_one_clean_line(&msg);
    }
    // A small cap of its own.
    let tight = SandboxConfig {
        max_message_bytes: 64,
        ..SandboxConfig::default()
    };
    let msg = filter("refuse-big", 1000, &tight)
        .apply(&small_tree())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("more cut") && msg.len() < 200, "{msg}");
}

#[test]
fn keys_quoted_in_an_invalid_answer_are_short_and_escaped() {
    // A 4 MiB key, then an entry below it whose key is the forged text.
    let err = filter("path-error", 4 << 20, &SandboxConfig::default())
        .apply(&small_tree())
        .unwrap_err();
    assert_eq!(err.kind(), "invalid-result", "{err}");
    let msg = err.to_string();
    assert!(msg.len() < 1_000 && msg.contains("MiB more cut"), "{msg}");
    assert_one_clean_line(&msg);
}

#[test]
fn printed_output_cannot_forge_a_line_and_a_panic_is_cut() {
    let (p, log) = logged("print-forged", 0, &SandboxConfig::default());
    let mut p = p.unwrap();
    assert!(!p.ask(&state(), Event::Batch).unwrap());
    let lines = log.lock().unwrap().clone();
    assert!(lines.len() >= 3, "{lines:?}");
    for line in &lines {
        assert!(line.starts_with("[policy hostile_save.wasm] "), "{line:?}");
        assert_one_clean_line(line);
    }
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("ok\\rcairn: all checkpoints verified")),
        "{lines:?}"
    );

    // A 1 MiB panic message: the error carries a cut, escaped tail; the log a capped copy.
    let (p, log) = logged("panic-big", 1 << 20, &SandboxConfig::default());
    let err = p.unwrap().ask(&state(), Event::Batch).unwrap_err();
    assert_eq!(err.kind(), "trap", "{err}");
    let msg = err.to_string();
    let first = msg.lines().next().unwrap();
    assert!(first.contains("cut …") && first.len() < 3_000, "{first}");
    assert_one_clean_line(first);
    let logged: usize = log.lock().unwrap().iter().map(String::len).sum();
    assert!(logged < 24 << 10, "{logged} bytes logged");
}

#[test]
fn chatty_output_is_capped_per_call_and_per_run() {
    for (per_call, per_run, calls) in [(16 << 10, 64 << 10, 40), (1 << 10, 8 << 10, 100)] {
        let sandbox = SandboxConfig {
            max_log_bytes: per_call,
            max_log_bytes_per_run: per_run,
            ..SandboxConfig::default()
        };
        // 16 KiB of two-byte lines at every call.
        let (p, log) = logged("print-flood", 16 << 10, &sandbox);
        let mut p = p.unwrap();
        let mut most_in_a_call = 0;
        for _ in 0..calls {
            let before: usize = log.lock().unwrap().iter().map(String::len).sum();
            assert!(!p.ask(&state(), Event::Batch).unwrap());
            let after: usize = log.lock().unwrap().iter().map(String::len).sum();
            most_in_a_call = most_in_a_call.max(after - before);
        }
        let lines = log.lock().unwrap().clone();
        let total: usize = lines.iter().map(String::len).sum();
        // The run's budget, plus the notes saying what was cut (one per call while it lasts,
        // and the one saying the budget is spent).
        assert!(
            total as u64 <= per_run + 400,
            "{total} bytes for a budget of {per_run}"
        );
        assert!(
            most_in_a_call as u64 <= per_call + 200,
            "{most_in_a_call} in one call"
        );
        let spent: Vec<_> = lines
            .iter()
            .filter(|l| l.contains("reached [sandbox] max_log_bytes_per_run"))
            .collect();
        assert_eq!(spent.len(), 1, "said once: {spent:?}");
        assert!(lines.iter().any(|l| l.contains("more of its stdout cut")));
        assert!(p.stats().get().output_dropped_bytes > 0);
    }
}
