//! `cairn policy check`: the right verdict, in one clear sentence, on every example policy and
//! on broken files; and `cairn bench policy`, which measures a policy component.

mod common;

use std::path::Path;
use std::process::Command;

fn check(file: &Path) -> (bool, String, String) {
    // The test suite's shared cache: compiling the Python component in a debug build takes
    // minutes, so it is compiled once for every test binary. Cache hits are safe (tested in
    // tests/cache.rs).
    let shared = common::shared_cache();
    let cache = shared.dir().expect("the shared cache has a directory");
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["policy", "check"])
        .arg(file)
        .env("CAIRN_CACHE_DIR", cache)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.success(), stdout, stderr)
}

fn accepts(file: &Path, world: &str) {
    let (ok, stdout, stderr) = check(file);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("implements cairn:policy/{world}@0.1.0")),
        "{stdout}"
    );
    assert!(
        stdout.contains("cairn will deny") || stdout.contains("no WASI"),
        "{stdout}"
    );
}

fn refuses(file: &Path, words: &[&str]) {
    let (ok, stdout, stderr) = check(file);
    assert!(!ok, "accepted: {stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");
    for w in words {
        assert!(stderr.contains(w), "{w:?} not in {stderr}");
    }
}

#[test]
fn examples_are_recognised() {
    for name in ["every_n", "loss_margin", "dense_early"] {
        accepts(&common::rust_policy(name), "save-interval");
    }
    accepts(
        &common::rust_policy("drop_optimizer_state"),
        "state-dict-filter",
    );
    if let Some(py) = common::python_policy() {
        accepts(&py, "save-interval");
    }
}

#[test]
fn broken_components_are_explained() {
    refuses(
        &common::rust_policy("hostile_wrong_signature"),
        &["'should-save' export has the wrong signature"],
    );
    refuses(
        &common::rust_policy("hostile_no_export"),
        &["neither", "'should-save'", "'filter'", "hello"],
    );
    refuses(
        &common::rust_policy("hostile_future_version"),
        &["cairn:policy/", "@0.2.0", "serves cairn:policy@0.1.0"],
    );
    refuses(
        &common::rust_policy("hostile_extra_import"),
        &["imports hostile:extra/net", "does not provide"],
    );
}

#[test]
fn broken_files_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    refuses(
        &write("empty.wasm", b""),
        &["empty.wasm", "is an empty file"],
    );
    refuses(
        &write("garbage.wasm", b"this is not wasm at all"),
        &["garbage.wasm", "is not WebAssembly"],
    );
    refuses(
        &write("core.wasm", b"\0asm\x01\0\0\0"),
        &["core.wasm", "core WebAssembly module, not a component"],
    );
    refuses(
        &write("cut.wasm", b"\0asm\x0d\0\x01\0\x01\x05"),
        &["cut.wasm", "not a valid component"],
    );
    refuses(
        &dir.path().join("missing.wasm"),
        &["cannot read policy", "missing.wasm"],
    );
}

/// `cairn bench policy --json` measures a component against the built-in interval, with each
/// limit alone on `--breakdown` (a smoke run: the figures themselves are not asserted).
#[test]
fn bench_policy_reports_every_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["bench", "policy", "--calls", "200", "--rounds", "1"])
        .args(["--breakdown", "--json"])
        .arg(common::rust_policy("every_n"))
        .output()
        .unwrap();
    let v = common::success_json(&out);
    assert!(v["native_ns_per_call"].as_f64().unwrap() > 0.0, "{v}");
    let c = &v["components"][0];
    assert_eq!(c["file"], "every_n.wasm");
    for key in [
        "ns_per_call_limits_on",
        "ns_per_call_limits_off",
        "limits_overhead",
        "cold_start_ms",
        "warm_start_ms",
    ] {
        assert!(c[key].as_f64().unwrap() > 0.0, "{key}: {c}");
    }
    for limit in ["fuel", "deadline"] {
        assert!(
            c["single_limit_overhead"][limit].as_f64().unwrap() > 0.0,
            "{c}"
        );
    }
}

#[test]
fn bench_policy_passes_the_components_config() {
    let bench = |config: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.args([
            "bench", "policy", "--calls", "100", "--rounds", "1", "--json",
        ]);
        for pair in config {
            cmd.args(["--config", pair]);
        }
        cmd.arg(common::rust_policy("hostile_save"))
            .output()
            .unwrap()
    };
    // The probe takes `mode` and `arg`; the default `n=1000` would be refused by its `init`.
    let out = bench(&["mode=read", "arg=3"]);
    let v = common::success_json(&out);
    assert!(
        v["components"][0]["ns_per_call_limits_on"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let out = bench(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown key n"),
        "{err}"
    );
    let out = bench(&["mode"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("'mode' is not KEY=VALUE"),
        "{err}"
    );
}
