//! Issue 6: hostile components, built from source, against cairn's sandbox. Each gets the
//! documented error within its limits, and nothing it does reaches the host or a neighbour.

use cairn_testkit as common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cairn_format::{Dict, Tensor, Value};
use cairn_policy::{CountUnit, Time, Timestamp};
use cairn_policy::{Event, MaxDuration, Ranks, SavePolicy, TrainingState};
use cairn_policy::{OnError, PolicyError, PolicySpec, RunInfo, SandboxConfig, WasmSavePolicy};

fn save(mode: &str, arg: u64, sandbox: &SandboxConfig) -> Result<WasmSavePolicy, PolicyError> {
    let (host, _) = common::host();
    let spec = PolicySpec::new(common::rust_policy("hostile_save"))
        .with("mode", mode)
        .with("arg", arg.to_string());
    host.save_policy(&spec, sandbox, &RunInfo::default())
}

fn state_at(batch: u64, metrics: &[(String, f64)]) -> TrainingState<'_> {
    let mut ts = Timestamp::default();
    for _ in 0..batch {
        ts = ts.to_next_batch(1, 1, Duration::from_millis(1));
    }
    TrainingState {
        timestamp: ts,
        previous_timestamp: Some(ts),
        max_duration: MaxDuration::new(Time::Count(1_000_000, CountUnit::Batch)).unwrap(),
        dataloader_len: Some(100),
        run_name: "hostile",
        ranks: Ranks::default(),
        metrics,
    }
}

fn ask(p: &mut WasmSavePolicy, batch: u64) -> Result<bool, PolicyError> {
    p.ask(&state_at(batch, &[]), Event::Batch)
}

#[test]
fn endless_loop_runs_out_of_fuel() {
    let mut p = save("loop", 0, &SandboxConfig::default()).unwrap();
    let err = ask(&mut p, 1).unwrap_err();
    assert_eq!(err.kind(), "out-of-fuel", "{err}");
    // The trapped call's fuel is accounted: all of it.
    let stats = p.stats().get();
    assert_eq!(
        stats.fuel,
        SandboxConfig::default().fuel_per_call,
        "{stats:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("hostile_save.wasm") && msg.contains("should-save") && msg.contains("fuel"),
        "{msg}"
    );
}

#[test]
fn endless_loop_hits_the_deadline_without_fuel() {
    let sandbox = SandboxConfig {
        fuel_per_call: 0,
        timeout_ms: 50,
        ..SandboxConfig::default()
    };
    // The host that loaded the policy is gone: its ticker must live on with the policy.
    let mut p = save("loop", 0, &sandbox).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        let err = ask(&mut p, 1).unwrap_err();
        let _ = tx.send((err, start.elapsed()));
    });
    let (err, took) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the epoch deadline never fired");
    assert_eq!(err.kind(), "deadline-exceeded", "{err}");
    assert!(err.to_string().contains("deadline of 50 ms"), "{err}");
    assert!(
        took >= Duration::from_millis(50) && took < Duration::from_millis(1000),
        "took {took:?}"
    );
}

#[test]
fn endless_init_hits_the_init_deadline() {
    let sandbox = SandboxConfig {
        init_fuel: 0,
        init_timeout_ms: 100,
        ..SandboxConfig::default()
    };
    let err = save("loop-init", 0, &sandbox).err().unwrap();
    assert_eq!(err.kind(), "deadline-exceeded", "{err}");
    assert!(
        err.to_string()
            .contains("init exceeded its deadline of 100 ms"),
        "{err}"
    );
}

#[test]
fn memory_bomb_hits_the_memory_limit() {
    let sandbox = SandboxConfig {
        memory_limit_mib: 32,
        fuel_per_call: 0,
        ..SandboxConfig::default()
    };
    let mut p = save("alloc", 0, &sandbox).unwrap();
    let err = ask(&mut p, 1).unwrap_err();
    assert_eq!(err.kind(), "memory-limit", "{err}");
    assert!(err.to_string().contains("memory limit of 32 MiB"), "{err}");
    let peak = p.stats().get().peak_memory;
    assert!(peak <= 32 << 20 && peak > 16 << 20, "peak {peak}");
}

#[test]
fn deep_recursion_overflows_the_stack() {
    let mut p = save(
        "recurse",
        0,
        &SandboxConfig {
            fuel_per_call: 0,
            ..SandboxConfig::default()
        },
    )
    .unwrap();
    let err = ask(&mut p, 1).unwrap_err();
    assert_eq!(err.kind(), "stack-overflow", "{err}");
}

#[test]
fn panic_in_init_names_the_guest_message() {
    let err = save("panic-init", 0, &SandboxConfig::default())
        .err()
        .unwrap();
    assert_eq!(err.kind(), "trap", "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("init trapped") && msg.contains("hostile policy panics in init"),
        "{msg}"
    );
}

#[test]
fn a_trap_discards_the_instance_and_the_next_call_gets_a_fresh_one() {
    let (host, log) = common::host();
    let spec = PolicySpec::new(common::rust_policy("hostile_save"))
        .with("mode", "panic-at")
        .with("arg", "3");
    let mut p = host
        .save_policy(&spec, &SandboxConfig::default(), &RunInfo::default())
        .unwrap();
    assert!(ask(&mut p, 1).unwrap());
    assert!(ask(&mut p, 2).unwrap());
    let err = ask(&mut p, 3).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.kind(), "trap");
    assert!(msg.contains("panics at batch 3"), "{msg}");
    assert!(
        !msg.contains("wasm backtrace"),
        "the backtrace is apart: {msg}"
    );
    let backtrace = err.backtrace().expect("a trap's wasm backtrace");
    assert!(backtrace.contains("hostile_save"), "{backtrace}");
    assert!(ask(&mut p, 4).unwrap(), "a fresh instance answers again");
    let stats = p.stats().get();
    assert_eq!((stats.errors, stats.reinstantiations), (1, 1), "{stats:?}");
    let lines = log.lock().unwrap().join("\n");
    assert!(
        lines.contains("fresh instance") && lines.contains("discarding the instance"),
        "{lines}"
    );
    assert_eq!(
        lines.matches("panics at batch 3").count(),
        0,
        "the panic is said once, by the error: {lines}"
    );
}

#[test]
fn on_error_decides_what_training_does() {
    let sandbox = |on_error| SandboxConfig {
        on_error,
        ..SandboxConfig::default()
    };
    let mut fail = save("panic", 0, &sandbox(OnError::Fail)).unwrap();
    let mut skip = save("panic", 0, &sandbox(OnError::Skip)).unwrap();
    let mut keep = save("panic", 0, &sandbox(OnError::Save)).unwrap();
    let s = state_at(1, &[]);
    assert!(fail.should_save(&s, Event::Batch).is_err());
    assert!(!skip.should_save(&s, Event::Batch).unwrap());
    assert!(keep.should_save(&s, Event::Batch).unwrap());
}

#[test]
fn no_files_env_or_sockets_and_a_fixed_clock() {
    assert!(
        !ask(
            &mut save("read-file", 0, &SandboxConfig::default()).unwrap(),
            1
        )
        .unwrap(),
        "/etc/passwd readable"
    );
    assert!(
        !ask(&mut save("env", 0, &SandboxConfig::default()).unwrap(), 1).unwrap(),
        "env or args visible"
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = u64::from(listener.local_addr().unwrap().port());
    assert!(
        !ask(
            &mut save("socket", port, &SandboxConfig::default()).unwrap(),
            1
        )
        .unwrap(),
        "socket connected"
    );
    assert!(
        ask(&mut save("clock", 0, &SandboxConfig::default()).unwrap(), 1).unwrap(),
        "clock is not cairn's fixed one"
    );
}

#[test]
fn run_info_comes_from_the_host() {
    let (host, _) = common::host();
    let spec = PolicySpec::new(common::rust_policy("hostile_save")).with("mode", "run-name");
    let run = RunInfo {
        run_name: "tenant-a".into(),
        ranks: Ranks::default(),
    };
    let mut p = host
        .save_policy(&spec, &SandboxConfig::default(), &run)
        .unwrap();
    assert!(ask(&mut p, 1).unwrap());
}

/// Every function of the `training` interface answers from the event being decided.
#[test]
fn training_interface_reports_the_state_of_the_event() {
    let (host, log) = common::host();
    let spec = PolicySpec::new(common::rust_policy("hostile_save")).with("mode", "report");
    let mut p = host
        .save_policy(&spec, &SandboxConfig::default(), &RunInfo::default())
        .unwrap();
    let metrics = [("loss".to_string(), 0.25), ("lr".to_string(), 1e-3)];
    let mut state = state_at(3, &metrics);
    let before = state.timestamp;
    state.timestamp = before.to_next_batch(8, 80, Duration::from_millis(7));
    assert!(p.ask(&state, Event::Batch).unwrap());
    let first = state.previous_timestamp.unwrap();
    state.previous_timestamp = None;
    assert!(p.ask(&state, Event::Batch).unwrap());
    let lines = log.lock().unwrap().clone();
    let reports: Vec<&String> = lines.iter().filter(|l| l.contains("now.batch=")).collect();
    assert_eq!(reports.len(), 2, "{lines:?}");
    let want = format!(
        "now.batch=4 now.sample=11 now.batch_wct_ns=7000000 previous.batch=Some({}) elapsed=0.000004 \
         duration=1000000CountUnit::Batch dataloader_len=Some(100) loss=Some(0.25) nope=None \
         metrics=[(\"loss\", 0.25), (\"lr\", 0.001)]",
        first.batch
    );
    assert!(reports[0].ends_with(&want), "{}\nwant {want}", reports[0]);
    assert!(reports[1].contains("previous.batch=None"), "{}", reports[1]);
}

#[test]
fn guest_output_is_logged_with_its_name_and_capped() {
    let (host, log) = common::host();
    let spec = PolicySpec::new(common::rust_policy("hostile_save"))
        .with("mode", "print")
        .with("arg", "5000");
    let sandbox = SandboxConfig {
        fuel_per_call: 0,
        timeout_ms: 5000,
        ..SandboxConfig::default()
    };
    let mut p = host
        .save_policy(&spec, &sandbox, &RunInfo::default())
        .unwrap();
    assert!(ask(&mut p, 1).unwrap());
    let lines = log.lock().unwrap().clone();
    assert!(
        lines[0].starts_with("[policy hostile_save.wasm] hostile line 0"),
        "{:?}",
        &lines[..2]
    );
    let kept: usize = lines
        .iter()
        .filter(|l| l.contains("hostile line"))
        .map(|l| l.len())
        .sum();
    assert!(kept < 20 << 10, "kept {kept} bytes");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("more of its stdout cut (over [sandbox] max_log_bytes")),
        "{lines:?}"
    );
}

#[test]
fn an_import_cairn_does_not_provide_is_refused_at_load() {
    let (host, _) = common::host();
    let spec = PolicySpec::new(common::rust_policy("hostile_extra_import"));
    let err = host
        .save_policy(&spec, &SandboxConfig::default(), &RunInfo::default())
        .err()
        .unwrap();
    assert_eq!(err.kind(), "unknown-import");
    assert!(err.to_string().contains("hostile:extra/net"), "{err}");
}

fn small_tree() -> Value {
    Value::Dict(
        Dict::new()
            .with("w", Tensor::from_f32(vec![2], &[1.0, 2.0]))
            .with("n", 3)
            .with("s", "text"),
    )
}

fn filter_with(mode: &str, arg: u64, sandbox: &SandboxConfig) -> Result<Value, PolicyError> {
    let (host, _) = common::host();
    let spec = PolicySpec::new(common::rust_policy("hostile_filter"))
        .with("mode", mode)
        .with("arg", arg.to_string());
    host.key_filter(&spec, sandbox, &RunInfo::default())?
        .apply(&small_tree())
}

#[test]
fn filters_cannot_forge_duplicate_or_reshape_tensors() {
    let d = SandboxConfig::default();
    for (mode, words) in [
        ("forge", "was not issued"),
        ("duplicate", "returned twice"),
        ("reshape", "another dtype or shape"),
        ("empty-path", "path is empty"),
        ("conflict", "both as a dict"),
        ("twice", "appears twice"),
        ("under-leaf", "is a leaf"),
        ("root-index", "list at the root"),
    ] {
        let err = filter_with(mode, 0, &d).unwrap_err();
        assert_eq!(err.kind(), "invalid-result", "{mode}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains(words) && msg.contains("hostile_filter.wasm"),
            "{mode}: {msg}"
        );
    }
    let err = filter_with("refuse", 0, &d).unwrap_err();
    assert_eq!(err.kind(), "filter-refused");
    assert_eq!(filter_with("identity", 0, &d).unwrap(), small_tree());
}

#[test]
fn an_alias_shares_the_tensor_on_purpose() {
    let out = filter_with("alias", 0, &SandboxConfig::default()).unwrap();
    // Both places hold one shared tensor (written once, as torch.save writes tied weights).
    let (Some(Value::Shared(a)), Some(Value::Shared(b))) =
        (out.get_path(&["w"]), out.get_path(&["shared"]))
    else {
        panic!("{out:?}");
    };
    assert!(a.same(b) && matches!(a.get(), Value::Tensor(_)));
}

#[test]
fn huge_filter_output_is_capped() {
    let capped = SandboxConfig {
        max_filter_entries: 1000,
        ..SandboxConfig::default()
    };
    let err = filter_with("huge", 2000, &capped).unwrap_err();
    assert!(
        err.to_string().contains("more than the limit of 1000"),
        "{err}"
    );
    let capped = SandboxConfig {
        max_filter_string_bytes: 1 << 20,
        ..SandboxConfig::default()
    };
    let err = filter_with("big-string", 2 << 20, &capped).unwrap_err();
    assert!(err.to_string().contains("max_filter_string_bytes"), "{err}");
    // Unbounded output runs into the memory limit first.
    let err = filter_with(
        "huge",
        u64::MAX,
        &SandboxConfig {
            fuel_per_call: 0,
            timeout_ms: 10_000,
            memory_limit_mib: 16,
            ..SandboxConfig::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), "memory-limit", "{err}");
}

#[test]
fn a_component_needing_more_instances_than_allowed_is_refused_at_start() {
    // A Rust component made for wasm32-wasip2 is several core instances (the program, the WASI
    // adapter, their shims): one is not enough.
    let sandbox = SandboxConfig {
        max_instances: 1,
        ..SandboxConfig::default()
    };
    let err = save("report", 0, &sandbox)
        .err()
        .expect("instantiated with one instance");
    assert_eq!(err.kind(), "instantiate", "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("hostile_save.wasm") && msg.contains("max_instances"),
        "{msg}"
    );
}

#[test]
fn an_answer_whose_strings_share_one_buffer_is_capped_while_it_is_copied() {
    // 4000 keys that all point at one 1 MiB string: 1 MiB in the component, 4000 MiB for a
    // host that copies each. The copy stops at `max_transfer_mib`, before any entry or string
    // cap of cairn's could look at the answer.
    for (transfer_mib, shown) in [
        (32, "32 MiB"),
        (SandboxConfig::default().max_transfer_mib, "128 MiB"),
    ] {
        let sandbox = SandboxConfig {
            max_transfer_mib: transfer_mib,
            ..SandboxConfig::default()
        };
        let err = filter_with("aliased", 4000, &sandbox).unwrap_err();
        assert_eq!(err.kind(), "invalid-data", "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("hostile_filter.wasm")
                && msg.contains("filter handed cairn data")
                && msg.contains(shown)
                && msg.contains("[sandbox] max_transfer_mib"),
            "{msg}"
        );
    }
    // The honest answer of the same component still passes under a small cap.
    let small = SandboxConfig {
        max_transfer_mib: 1,
        ..SandboxConfig::default()
    };
    assert_eq!(filter_with("identity", 0, &small).unwrap(), small_tree());
}

#[test]
fn a_well_behaved_job_keeps_its_pace_beside_a_hostile_one() {
    let (host, _) = common::host();
    let good_spec = PolicySpec::new(common::rust_policy("every_n")).with("n", 10);
    let calls = 3000u64;
    let run_good = |host: &cairn_policy::PolicyHost| -> (Duration, u64) {
        let mut good = host
            .save_policy(&good_spec, &SandboxConfig::default(), &RunInfo::default())
            .unwrap();
        let mut builtin = cairn_policy::IntervalScheduler::new(Time::batches(10)).unwrap();
        let start = Instant::now();
        let mut saves = 0;
        let mut prev = Timestamp::default();
        let max = MaxDuration::new(Time::Count(calls as i64, CountUnit::Batch)).unwrap();
        for _ in 0..calls {
            let ts = prev.to_next_batch(1, 1, Duration::from_millis(1));
            let s = TrainingState {
                timestamp: ts,
                previous_timestamp: Some(prev),
                max_duration: max,
                dataloader_len: None,
                run_name: "good",
                ranks: Ranks::default(),
                metrics: &[],
            };
            let yes = good.should_save(&s, Event::Batch).unwrap();
            assert_eq!(yes, builtin.should_save(&s, Event::Batch).unwrap());
            saves += u64::from(yes);
            prev = ts;
        }
        (start.elapsed(), saves)
    };
    let (alone, saves_alone) = run_good(&host);
    let stop = Arc::new(AtomicBool::new(false));
    let hostile_host = host.clone();
    let stop2 = stop.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let neighbour = std::thread::spawn(move || {
        let spec = PolicySpec::new(common::rust_policy("hostile_save")).with("mode", "loop");
        let sandbox = SandboxConfig {
            fuel_per_call: 0,
            timeout_ms: 20,
            ..SandboxConfig::default()
        };
        let mut bad = hostile_host
            .save_policy(&spec, &sandbox, &RunInfo::default())
            .unwrap();
        let mut timeouts = 0;
        ready_tx.send(()).unwrap();
        // At least one call, and calls until the good job is done: it runs entirely while the
        // neighbour spins.
        loop {
            let err = ask(&mut bad, 1).unwrap_err();
            assert_eq!(err.kind(), "deadline-exceeded");
            timeouts += 1;
            if stop2.load(Ordering::Relaxed) {
                return timeouts;
            }
        }
    });
    ready_rx.recv().unwrap();
    let (beside, saves_beside) = run_good(&host);
    stop.store(true, Ordering::Relaxed);
    let timeouts = neighbour.join().unwrap();
    assert_eq!(saves_alone, saves_beside);
    assert_eq!(saves_alone, calls / 10);
    assert!(
        timeouts >= 1,
        "the neighbour should have been stopped at least once"
    );
    eprintln!(
        "good job: {alone:?} alone, {beside:?} beside a looping neighbour ({timeouts} timeouts)"
    );
    // Generous for a loaded 2-core machine (other tests compile beside this one); a good job
    // that waited for the neighbour's calls would take `calls` × 20 ms, far beyond.
    assert!(
        beside < alone * 8 + Duration::from_secs(1),
        "{alone:?} vs {beside:?}"
    );
}
