//! What a newcomer meets (issue 17): the commands refuse what can only be a mistake before doing
//! any work, say what they are about to do, take a component's config on the command line, and
//! print each message once, in one sentence, with the right knob.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use cairn::format::{CheckpointFormat, Dict, Tensor, Value, read_checkpoint, write_checkpoint};
use cairn_testkit as common;

fn cairn(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .current_dir(dir)
        .env("CAIRN_CACHE_DIR", dir.join("cache"))
        .env_remove("CAIRN_BACKTRACE")
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", stderr(out));
    stdout(out)
}

fn refused(out: &Output, needles: &[&str]) -> String {
    let err = stderr(out);
    assert!(!out.status.success(), "should fail: {err}");
    assert!(
        !err.contains("thread 'main' panicked"),
        "cairn itself panicked: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in: {err}");
    }
    err
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// A small full checkpoint with a model and an optimizer.
fn checkpoint(path: &Path) {
    let model = Dict::ordered()
        .with("encoder.w", Tensor::from_f32(vec![2], &[0.5, 1.5]))
        .with("decoder.w", Tensor::from_f32(vec![1], &[2.0]));
    let opt = Dict::new().with(
        "Adam",
        Dict::new().with(
            "state",
            Dict::new().with("0", Tensor::from_f32(vec![1], &[0.1])),
        ),
    );
    let tree = Value::Dict(
        Dict::new()
            .with(
                "state",
                Dict::new().with("model", model).with("optimizers", opt),
            )
            .with("rng", Value::List(vec![])),
    );
    let format = CheckpointFormat::from_name(&path.to_string_lossy()).unwrap();
    let mut file = fs::File::create(path).unwrap();
    write_checkpoint(path, format, &tree, &mut file).unwrap();
}

fn job(name: &str, checkpoint: &str, extra: &str) -> String {
    format!(
        "run_name = \"{name}\"\n[checkpoint]\nfolder = \"{name}\"\nremote_file_name = false\n{checkpoint}\n{extra}\n[train]\nmax_duration = \"1ep\"\nbatches_per_epoch = 4\nseconds_per_batch = 0\nmodel_mib = 0.25\n"
    )
}

#[test]
fn filter_refuses_to_replace_files_and_unknown_extensions_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("in.pt");
    checkpoint(&input);
    let input = input.to_str().unwrap();
    let before = fs::read(input).unwrap();
    let args = |out: &str| {
        vec!["filter", input, "-o", out, "--ignore-keys", "rng"]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| cairn(d, &a.iter().map(String::as_str).collect::<Vec<_>>());

    refused(&run(args(input)), &["is the input checkpoint", "--force"]);
    assert_eq!(fs::read(input).unwrap(), before, "the input is untouched");
    fs::write(d.join("taken.pt"), b"precious").unwrap();
    refused(
        &run(args("taken.pt")),
        &["taken.pt already exists", "--force"],
    );
    assert_eq!(fs::read(d.join("taken.pt")).unwrap(), b"precious");
    refused(
        &run(args("out.bin")),
        &["out.bin names no checkpoint format", ".pt.zst"],
    );
    assert!(!d.join("out.bin").exists());

    let mut forced = args("taken.pt");
    forced.push("--force".into());
    ok(&run(forced));
    assert!(
        read_checkpoint(&d.join("taken.pt"))
            .unwrap()
            .get_path(&["rng"])
            .is_none()
    );
    let mut in_place = args(input);
    in_place.push("--force".into());
    ok(&run(in_place));
    assert!(
        read_checkpoint(Path::new(input))
            .unwrap()
            .get_path(&["rng"])
            .is_none()
    );
}

#[test]
fn filter_passes_a_components_config() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    checkpoint(&d.join("in.pt"));
    let drop = common::rust_policy("drop_optimizer_state");
    let drop = drop.to_str().unwrap();
    // The example refuses to start without `prefix`.
    refused(
        &cairn(d, &["filter", "in.pt", "-o", "a.pt", "--filter", drop]),
        &["init refused its config"],
    );
    ok(&cairn(
        d,
        &[
            "filter",
            "in.pt",
            "-o",
            "b.pt",
            "--filter",
            drop,
            "--policy-config",
            "prefix=encoder.",
        ],
    ));
    let tree = read_checkpoint(&d.join("b.pt")).unwrap();
    assert!(tree.get_path(&["state", "model", "decoder.w"]).is_some());
    refused(
        &cairn(
            d,
            &[
                "filter",
                "in.pt",
                "-o",
                "c.pt",
                "--filter",
                drop,
                "--policy-config",
                "prefix",
            ],
        ),
        &["'prefix' is not KEY=VALUE"],
    );
}

#[test]
fn simulate_passes_a_components_config_and_predicts_what_the_interval_would() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let every_n = common::rust_policy("every_n");
    let shape = [
        "--max-duration",
        "2ep",
        "--batches-per-epoch",
        "5",
        "--json",
    ];
    let with = |spec: &str, extra: &[&str]| {
        let mut a = vec!["simulate", "--save-interval", spec];
        a.extend_from_slice(&shape);
        a.extend_from_slice(extra);
        ok(&cairn(d, &a))
    };
    let wasm = with(every_n.to_str().unwrap(), &["--policy-config", "n=3"]);
    assert_eq!(wasm, with("3ba", &[]));
    assert_eq!(wasm.lines().count(), 4, "{wasm}");
    refused(
        &cairn(
            d,
            &[
                "simulate",
                "--save-interval",
                "3ba",
                "--max-duration",
                "1ep",
                "--batches-per-epoch",
                "2",
                "--policy-config",
                "n=3",
            ],
        ),
        &["configures a .wasm component", "'3ba'"],
    );
}

#[test]
fn simulate_refuses_what_run_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, checkpoint, needle) in [
        ("lzo", "filename = \"x.pt.lzo\"", "lzop"),
        ("zero", "save_interval = \"0ba\"", "'0ba' is not positive"),
        ("iter", "save_interval = \"1iter\"", "epochs_per_iteration"),
    ] {
        let file = write(d, &format!("{name}.toml"), &job(name, checkpoint, ""));
        let run = refused(&cairn(d, &["run", "--config", &file]), &[needle]);
        let sim = refused(&cairn(d, &["simulate", "--config", &file]), &[needle]);
        assert_eq!(run, sim, "the same sentence from both");
        assert!(!d.join(name).exists(), "{name}: nothing written");
    }
    refused(
        &cairn(
            d,
            &[
                "simulate",
                "--save-interval",
                "1iter",
                "--max-duration",
                "1ep",
                "--batches-per-epoch",
                "2",
            ],
        ),
        &["--epochs-per-iteration"],
    );
    refused(
        &cairn(
            d,
            &[
                "simulate",
                "--save-interval",
                "0",
                "--max-duration",
                "1ep",
                "--batches-per-epoch",
                "2",
            ],
        ),
        &["'0' is not positive"],
    );
}

#[test]
fn run_says_where_it_writes_prints_its_config_and_refuses_doubled_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let printed = ok(&cairn(d, &["run", "--print-config"]));
    assert!(
        printed.contains("[train]") && printed.contains("run_name"),
        "{printed}"
    );
    assert_eq!(
        fs::read_dir(d).unwrap().count(),
        0,
        "--print-config writes nothing"
    );

    let a = write(d, "a.toml", &job("a", "", ""));
    let out = cairn(d, &["run", "--config", &a]);
    ok(&out);
    let err = stderr(&out);
    let said = err
        .lines()
        .position(|l| l.contains("checkpoints of ~") && l.contains(" go to "));
    let saved = err.lines().position(|l| l.contains("saved "));
    assert!(
        said.is_some() && said < saved,
        "announced before saving: {err}"
    );

    refused(
        &cairn(d, &["run", "--config", &a, "--config", &a]),
        &["is given twice"],
    );
    let b = write(
        d,
        "b.toml",
        &job("a", "", "").replace("run_name = \"a\"", "run_name = \"b\""),
    );
    refused(
        &cairn(d, &["run", "--config", &a, "--config", &b]),
        &["both save into", "checkpoint.folder"],
    );

    // The second run in a folder holding a later checkpoint is told about --resume.
    let short = write(d, "short.toml", &job("s", "save_interval = \"1ba\"", ""));
    ok(&cairn(d, &["run", "--config", &short]));
    refused(
        &cairn(d, &["run", "--config", &short]),
        &["--resume", "future checkpoint"],
    );
}

#[test]
fn on_error_decides_what_a_failing_filter_does_to_the_save() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let filter = common::rust_policy("hostile_filter");
    let ignore = |mode: &str| {
        format!(
            "save_interval = \"2ba\"\nignore_keys = {{ wasm = \"{}\", config = {{ mode = \"{mode}\" }} }}",
            filter.display()
        )
    };
    // skip: nothing is written while the filter fails, so nothing it exists to remove leaks.
    let skip = write(
        d,
        "skip.toml",
        &job("skip", &ignore("refuse"), "[sandbox]\non_error = \"skip\""),
    );
    let err = stderr(&cairn(d, &["run", "--config", &skip]));
    assert!(
        err.contains("was not saved") && err.contains("on_error = \"skip\""),
        "{err}"
    );
    assert_eq!(
        fs::read_dir(d.join("skip")).map_or(0, |r| r
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("ep"))
            .count()),
        0
    );
    // save: written unfiltered, and said so.
    let save = write(
        d,
        "save.toml",
        &job("save", &ignore("refuse"), "[sandbox]\non_error = \"save\""),
    );
    let err = stderr(&cairn(d, &["run", "--config", &save]));
    assert!(err.contains("saved unfiltered"), "{err}");
    assert!(d.join("save/ep0-ba2-rank0.pt").exists());
    // fail: training stops with the filter's error.
    let fail = write(
        d,
        "fail.toml",
        &job("fail", &ignore("refuse"), "[sandbox]\non_error = \"fail\""),
    );
    refused(
        &cairn(d, &["run", "--config", &fail]),
        &["filter refused the state dict"],
    );
}

#[test]
fn a_guest_panic_is_said_once_and_its_backtrace_only_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hostile = common::rust_policy("hostile_save");
    let cfg = format!(
        "save_interval = {{ wasm = \"{}\", config = {{ mode = \"panic-at\", arg = \"2\" }} }}",
        hostile.display()
    );
    let file = write(d, "p.toml", &job("p", &cfg, ""));
    let err = refused(
        &cairn(d, &["run", "--config", &file]),
        &["panics at batch 2", "CAIRN_BACKTRACE=1"],
    );
    assert_eq!(err.matches("panics at batch 2").count(), 1, "{err}");
    assert!(!err.contains("wasm backtrace:"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .current_dir(d)
        .env("CAIRN_CACHE_DIR", d.join("cache"))
        .env("CAIRN_BACKTRACE", "1")
        .args([
            "run",
            "--config",
            &write(d, "p2.toml", &job("p2", &cfg, "")),
        ])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("hostile_save"),
        "the backtrace names the component's functions: {err}"
    );
}

#[test]
fn an_init_that_loops_names_init_fuel() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hostile = common::rust_policy("hostile_save");
    let cfg = format!(
        "save_interval = {{ wasm = \"{}\", config = {{ mode = \"loop-init\" }} }}",
        hostile.display()
    );
    let file = write(
        d,
        "l.toml",
        &job("l", &cfg, "[sandbox]\ninit_fuel = 1000000"),
    );
    let err = refused(&cairn(d, &["run", "--config", &file]), &["init_fuel"]);
    assert!(!err.contains("fuel_per_call"), "{err}");
}

#[test]
fn the_compile_cache_says_what_it_does_and_can_be_shown_and_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(ok(&cairn(d, &["cache"])).contains("0 compiled components"));
    let every_n = common::rust_policy("every_n");
    let first = cairn(
        d,
        &[
            "simulate",
            "--save-interval",
            every_n.to_str().unwrap(),
            "--max-duration",
            "1ep",
            "--batches-per-epoch",
            "2",
        ],
    );
    ok(&first);
    assert!(
        stderr(&first).contains("compiling every_n.wasm"),
        "{}",
        stderr(&first)
    );
    let second = cairn(
        d,
        &[
            "simulate",
            "--save-interval",
            every_n.to_str().unwrap(),
            "--max-duration",
            "1ep",
            "--batches-per-epoch",
            "2",
        ],
    );
    assert!(
        !stderr(&second).contains("compiling"),
        "cached: {}",
        stderr(&second)
    );
    assert!(ok(&cairn(d, &["cache"])).contains("1 compiled component ("));
    assert!(ok(&cairn(d, &["cache", "clear"])).contains("removed 1 compiled component"));
    assert!(ok(&cairn(d, &["cache"])).contains("0 compiled components"));
}

#[test]
fn counts_are_singular_for_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&cairn(
        dir.path(),
        &[
            "simulate",
            "--save-interval",
            "1ep",
            "--max-duration",
            "1ep",
            "--batches-per-epoch",
            "2",
        ],
    ));
    assert!(out.contains("1 save with"), "{out}");
}
