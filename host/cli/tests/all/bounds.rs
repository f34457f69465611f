//! Issue 18 through the `cairn` command: every class of attack ends in a named error (one line
//! on stderr, exit status 1, never a signal) or a bounded log, within bounded memory (the child
//! process's peak RSS, from `wait4`), and a neighbouring tenant of the same process finishes
//! its job. Time is measured and printed, never asserted tightly.

use cairn_testkit as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cairn::format::{DType, Dict, Tensor, Value, format_of, write_checkpoint};
use common::measure::{Measured, run_measured};
use common::wat;

const MIB: u64 = 1 << 20;

/// `cairn ARGS` in `dir`, with the suite's shared compile cache, measured.
fn cairn(dir: &Path, args: &[&str]) -> Measured {
    let cache = common::shared_cache();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.current_dir(dir)
        .env("CAIRN_CACHE_DIR", cache.dir().expect("a cache dir"))
        .args(args);
    let m = run_measured(&mut cmd, Duration::from_secs(600));
    m.report(&format!("cairn {}", args.join(" ")));
    assert!(!m.killed, "cairn {args:?} did not finish");
    m
}

/// A job: `checkpoint` lines (saving every batch unless they set `save_interval`), `sandbox`
/// lines, a `model_mib` model, two epochs of `batches` batches.
fn job_of(
    dir: &Path,
    name: &str,
    checkpoint: &str,
    sandbox: &str,
    model_mib: u32,
    batches: u32,
) -> String {
    let every = if checkpoint.contains("save_interval") {
        ""
    } else {
        "save_interval = \"1ba\"\n"
    };
    let text = format!(
        "run_name = \"{name}\"\n[checkpoint]\nfolder = \"{name}\"\nremote_file_name = false\n{every}{checkpoint}\n[sandbox]\n{sandbox}\n[train]\nmax_duration = \"2ep\"\nbatches_per_epoch = {batches}\nseconds_per_batch = 0\nmodel_mib = {model_mib}\n"
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// [`job_of`] with 5 batches an epoch.
fn job(dir: &Path, name: &str, checkpoint: &str, sandbox: &str, model_mib: u32) -> String {
    job_of(dir, name, checkpoint, sandbox, model_mib, 5)
}

/// `ignore_keys` as the hostile filter in `mode` with `arg`.
fn hostile_filter(mode: &str, arg: u64) -> String {
    format!(
        "ignore_keys = {{ wasm = \"{}\", config = {{ mode = \"{mode}\", arg = {arg} }} }}",
        common::rust_policy("hostile_filter").display()
    )
}

/// `save_interval` as the hostile save-interval in `mode` with `arg`.
fn hostile_save(mode: &str, arg: u64) -> String {
    format!(
        "save_interval = {{ wasm = \"{}\", config = {{ mode = \"{mode}\", arg = {arg} }} }}",
        common::rust_policy("hostile_save").display()
    )
}

/// Checkpoints of the job folder `name`.
fn saved(dir: &Path, name: &str) -> usize {
    std::fs::read_dir(dir.join(name)).map_or(0, |d| {
        d.filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("ep"))
        })
        .count()
    })
}

/// Exit status 1 with one sentence on stderr (never a signal, never a panic).
fn assert_named_failure(m: &Measured, words: &[&str]) {
    let stderr = m.stderr();
    assert_eq!(m.output.status.code(), Some(1), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("overflow"),
        "{stderr}"
    );
    for w in words {
        assert!(stderr.contains(w), "{w:?} not in {stderr}");
    }
}

/// A checkpoint for `cairn filter --filter hostile_filter.wasm`: the filter reads its mode from
/// the top-level `hostile-mode` / `hostile-arg` entries (it has no config there).
fn in_band(dir: &Path, name: &str, mode: &str, arg: i64, mut d: Dict) -> PathBuf {
    d.insert("hostile-mode", mode);
    d.insert("hostile-arg", arg);
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    write_checkpoint(&path, format_of(&path).unwrap(), &Value::Dict(d), &mut file).unwrap();
    path
}

fn small() -> Dict {
    Dict::new().with("w", Tensor::from_f32(vec![2], &[1.0, 2.0]))
}

fn filter(dir: &Path, input: &Path, output: &str, wasm: &Path) -> Measured {
    cairn(
        dir,
        &[
            "filter",
            &input.to_string_lossy(),
            "-o",
            output,
            "--filter",
            &wasm.to_string_lossy(),
        ],
    )
}

#[test]
fn class1_deep_answers_fail_their_job_by_name_and_spare_the_neighbour() {
    let dir = tempfile::tempdir().unwrap();
    // One process, two tenants on 2 MiB job threads: 4 000 levels used to kill both.
    for (mode, arg) in [("deep-index", 20_000), ("deep-mixed", 4_000)] {
        let bad = job(dir.path(), "deep", &hostile_filter(mode, arg), "", 1);
        let good = job(dir.path(), "good", "", "", 1);
        let m = cairn(dir.path(), &["run", "--config", &bad, "--config", &good]);
        assert_named_failure(
            &m,
            &[
                "hostile_filter.wasm",
                "deeper than the 100 levels",
                "1 of 2 jobs failed: deep",
            ],
        );
        assert_eq!(saved(dir.path(), "good"), 10, "{mode}");
        assert_eq!(saved(dir.path(), "deep"), 0, "{mode}");
        assert!(m.max_rss < 400 * MIB, "{}", m.max_rss);
        std::fs::remove_dir_all(dir.path().join("good")).unwrap();
    }
    // `cairn filter` (the main thread): every shape.
    let wasm = common::rust_policy("hostile_filter");
    for (mode, arg) in [
        ("deep-key", 20_000),
        ("deep-int-key", 20_000),
        ("deep-empty-dict", 10_000),
    ] {
        let input = in_band(dir.path(), "in.pt", mode, arg, small());
        let m = filter(dir.path(), &input, "out.pt", &wasm);
        assert_named_failure(&m, &["deeper than the 100 levels"]);
        assert!(!dir.path().join("out.pt").exists());
        assert!(m.max_rss < 200 * MIB, "{}", m.max_rss);
    }
}

#[test]
fn class2_aliases_cannot_multiply_a_value_into_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = common::rust_policy("hostile_filter");
    let big = || Tensor::from_bytes(DType::U8, vec![8 << 20], vec![1u8; 8 << 20]);
    // 256 aliases of an 8 MiB tensor into safetensors: a 2.2 GB file before.
    let input = in_band(
        dir.path(),
        "alias.pt",
        "alias-flood",
        256,
        small().with("big", big()),
    );
    let m = filter(dir.path(), &input, "out.safetensors", &wasm);
    assert_named_failure(&m, &["aliased values", "[sandbox] max_filter_string_bytes"]);
    assert!(!dir.path().join("out.safetensors").exists());
    assert!(m.max_rss < 300 * MIB, "{}", m.max_rss);
    // 200 aliases of a tuple of 8 MiB: 1.7 GB written, 3.3 GB of RSS before.
    let tuple = Value::Tuple(vec![Value::Bytes(vec![2u8; 8 << 20])]);
    let input = in_band(
        dir.path(),
        "opaque.pt",
        "alias-opaque",
        200,
        small().with("blob", tuple),
    );
    let m = filter(dir.path(), &input, "out.pt", &wasm);
    assert_named_failure(&m, &["aliased values"]);
    assert!(m.max_rss < 300 * MIB, "{}", m.max_rss);
    // Seven fit in the cap: the file holds the tensor once, and reads back cheaply.
    let input = in_band(
        dir.path(),
        "seven.pt",
        "alias-flood",
        7,
        small().with("big", big()),
    );
    let m = filter(dir.path(), &input, "seven.safetensors", &wasm);
    assert!(m.output.status.success(), "{}", m.stderr());
    let size = std::fs::metadata(dir.path().join("seven.safetensors"))
        .unwrap()
        .len();
    assert!(
        size < 9 * MIB,
        "{size} bytes for one 8 MiB tensor and 7 aliases"
    );
    let m = cairn(dir.path(), &["verify", "seven.safetensors"]);
    assert!(m.output.status.success(), "{}", m.stderr());
    assert!(m.max_rss < 150 * MIB, "{}", m.max_rss);
    // Through `cairn run`: 64 aliases of the largest tensor of a 32 MiB model, to safetensors.
    let flood = job(
        dir.path(),
        "flood",
        &format!(
            "filename = \"ep{{epoch}}-ba{{batch}}.safetensors\"\n{}",
            hostile_filter("alias-flood", 64)
        ),
        "",
        32,
    );
    let m = cairn(dir.path(), &["run", "--config", &flood]);
    assert_named_failure(&m, &["aliased values"]);
    assert_eq!(saved(dir.path(), "flood"), 0);
}

#[test]
fn class3_guest_text_is_escaped_and_bounded_per_call_and_per_run() {
    let dir = tempfile::tempdir().unwrap();
    // 16 KiB of two-byte lines at each of ~200 events: 92 MB of log lines before (368 MB at
    // 1 250 events); now the run's 1 MiB budget.
    let flood = job_of(
        dir.path(),
        "flood",
        &hostile_save("print-flood", 16 << 10),
        "",
        1,
        100,
    );
    let m = cairn(dir.path(), &["run", "--config", &flood]);
    assert!(m.output.status.success(), "{}", m.stderr());
    let stderr = m.stderr();
    assert!(
        m.output.stderr.len() < 1_100_000,
        "{} bytes",
        m.output.stderr.len()
    );
    assert_eq!(
        stderr
            .matches("reached [sandbox] max_log_bytes_per_run")
            .count(),
        1
    );
    // Forged lines: no escape, bell or carriage return reaches the terminal.
    let forged = job(
        dir.path(),
        "forged",
        &hostile_save("print-forged", 0),
        "",
        1,
    );
    let m = cairn(dir.path(), &["run", "--config", &forged]);
    assert!(m.output.status.success(), "{}", m.stderr());
    assert!(
        !m.output
            .stderr
            .iter()
            .any(|&b| b == 0x1b || b == 0x07 || b == b'\r'),
        "{}",
        m.stderr()
    );
    assert!(
        m.stderr().lines().all(|l| l.starts_with("cairn: ")),
        "{}",
        m.stderr()
    );
    // A 10 MiB `err` from init: one line of about 2 KiB.
    let init = job(
        dir.path(),
        "init",
        &hostile_save("init-err", 10 << 20),
        "",
        1,
    );
    let m = cairn(dir.path(), &["run", "--config", &init]);
    assert_named_failure(&m, &["init refused its config", "MiB more cut"]);
    assert!(
        m.output.stderr.len() < 4 << 10,
        "{} bytes",
        m.output.stderr.len()
    );
    // A 4 MiB `err` from filter at every save, skipped: 84 MB of stderr before.
    let skip = job(
        dir.path(),
        "skip",
        &hostile_filter("refuse-big", 4 << 20),
        "on_error = \"skip\"",
        1,
    );
    let m = cairn(dir.path(), &["run", "--config", &skip]);
    assert!(m.output.status.success(), "{}", m.stderr());
    assert!(
        m.output.stderr.len() < 64 << 10,
        "{} bytes",
        m.output.stderr.len()
    );
    // `cairn filter`: the forged refusal is one escaped line.
    let input = in_band(dir.path(), "in.pt", "refuse-forged", 0, small());
    let m = filter(
        dir.path(),
        &input,
        "out.pt",
        &common::rust_policy("hostile_filter"),
    );
    assert_named_failure(&m, &["filter refused the state dict", "\\u{1b}"]);
    assert_eq!(m.stderr().trim().lines().count(), 1, "{}", m.stderr());
}

#[test]
fn class4_the_memory_cap_is_the_components_total_and_the_summary_says_it() {
    let dir = tempfile::tempdir().unwrap();
    // 60 memories, each grown to 60 MiB at one event: 3.6 GiB with no error before.
    let grow = wat::write(dir.path(), "grow.wasm", &wat::growing_memories(60, 60));
    let checkpoint = format!("save_interval = {{ wasm = \"{}\" }}", grow.display());
    let config = job(
        dir.path(),
        "grow",
        &checkpoint,
        "on_error = \"skip\"\nfuel_per_call = 0\ntimeout_ms = 5000",
        1,
    );
    let m = cairn(dir.path(), &["run", "--config", &config, "--json"]);
    assert!(m.output.status.success(), "{}", m.stderr());
    let summary: serde_json::Value = serde_json::from_str(m.stdout().trim()).unwrap();
    let p = &summary["policies"][0];
    let peak = p["peak_memory_bytes"].as_u64().unwrap();
    assert!((120 * MIB..=128 * MIB).contains(&peak), "{p}");
    assert!(p["errors"].as_u64().unwrap() >= 1, "{p}");
    assert!(
        m.stderr().contains("exceeded the memory limit of 128 MiB"),
        "{}",
        m.stderr()
    );
    assert!(m.max_rss < 450 * MIB, "{}", m.max_rss);
    // 30 memories of 60 MiB at start: `cairn policy check` refuses it within the cap.
    let many = wat::write(dir.path(), "many.wasm", &wat::many_memories(30, 60));
    let m = cairn(dir.path(), &["policy", "check", &many.to_string_lossy()]);
    assert_named_failure(&m, &["memory limit of 128 MiB"]);
    assert!(m.max_rss < 300 * MIB, "{}", m.max_rss);
}

#[test]
fn class5_compilation_stops_at_its_deadline_and_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = |s: &str| {
        let p = dir.path().join("sandbox.toml");
        std::fs::write(&p, format!("[sandbox]\n{s}\n")).unwrap();
        p.to_string_lossy().into_owned()
    };
    // A CPU bomb (minutes of Cranelift) through `cairn policy check`.
    let cpu = wat::write(dir.path(), "cpu.wasm", &wat::locals_loop(20_000, 20_000));
    let limits = sandbox("compile_timeout_ms = 2000");
    let m = cairn(
        dir.path(),
        &[
            "policy",
            "check",
            &cpu.to_string_lossy(),
            "--config",
            &limits,
        ],
    );
    assert_named_failure(
        &m,
        &["cpu.wasm", "deadline of 2000 ms", "compile_timeout_ms"],
    );
    assert!(m.wall < Duration::from_secs(120), "{:?}", m.wall);
    // The peak of cairn and its compile worker together (wait4 counts reaped children).
    assert!(m.max_rss < 150 * MIB, "{}", m.max_rss);
    // A memory bomb (asked for 26 GB) stops at the worker's limit: cairn and the worker
    // peaked at the limit plus the worker's code.
    let mem = wat::write(dir.path(), "mem.wasm", &wat::loop_diamonds(40_000, 6_000));
    let limits = sandbox("compile_memory_mib = 96");
    let m = cairn(
        dir.path(),
        &[
            "policy",
            "check",
            &mem.to_string_lossy(),
            "--config",
            &limits,
        ],
    );
    assert_named_failure(
        &m,
        &["mem.wasm", "memory limit of 96 MiB", "compile_memory_mib"],
    );
    assert!(m.max_rss < 150 * MIB, "{}", m.max_rss);
    // Two tenants: the one whose component is a bomb fails by name, the other saves all.
    let bomb = job(
        dir.path(),
        "bomb",
        &format!("save_interval = {{ wasm = \"{}\" }}", cpu.display()),
        "compile_timeout_ms = 2000",
        1,
    );
    let good = job(dir.path(), "good", "", "", 1);
    let m = cairn(dir.path(), &["run", "--config", &bomb, "--config", &good]);
    assert_named_failure(&m, &["deadline of 2000 ms", "1 of 2 jobs failed: bomb"]);
    assert_eq!(saved(dir.path(), "good"), 10);
}

#[test]
fn class6_only_regular_files_of_a_bounded_size_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.wasm");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let sparse = dir.path().join("sparse.wasm");
    let f = std::fs::File::create(&sparse).unwrap();
    f.set_len(2 << 30).unwrap();
    for (path, words) in [
        (PathBuf::from("/dev/zero"), &["a character device"][..]),
        (fifo.clone(), &["a FIFO"][..]),
        (dir.path().to_owned(), &["a directory"][..]),
        (
            sparse.clone(),
            &["2147483648 bytes", "max_component_mib"][..],
        ),
    ] {
        let m = cairn(dir.path(), &["policy", "check", &path.to_string_lossy()]);
        assert_named_failure(&m, words);
        assert!(m.max_rss < 100 * MIB, "{}", m.max_rss);
    }
    // The same through `cairn filter` and `cairn run`.
    let input = in_band(dir.path(), "in.pt", "identity", 0, small());
    let m = filter(dir.path(), &input, "out.pt", Path::new("/dev/urandom"));
    assert_named_failure(&m, &["/dev/urandom", "a character device"]);
    let config = job(
        dir.path(),
        "fifo",
        &format!("save_interval = {{ wasm = \"{}\" }}", fifo.display()),
        "",
        1,
    );
    let m = cairn(dir.path(), &["run", "--config", &config]);
    assert_named_failure(&m, &["fifo.wasm", "a FIFO"]);
}
