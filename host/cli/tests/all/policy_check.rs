//! `cairn policy check`: the right verdict, in one clear sentence, on every example policy and
//! on broken files.

use cairn_testkit as common;

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
