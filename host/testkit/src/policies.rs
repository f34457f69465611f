//! Building the policy components from source, once per test process.
//!
//! Rust policies: `cargo build --release --target wasm32-wasip2` in `policies/` with the
//! target dir `<cargo target>/policies`. The Python policy: `componentize-py` (from
//! `$COMPONENTIZE_PY` or `PATH`), rebuilt only when its sources change.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use cairn::policy::{CompileCache, LogSink, PolicyHost};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("host/testkit sits two levels below the repository root")
        .to_owned()
}

/// The workspace's target directory, found from the running test binary
/// (`<target>/<profile>/deps/<test>`), so every crate's tests share one build of the policies.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("test binaries live in <target>/<profile>/deps")
        .to_owned()
}

fn policies_target() -> PathBuf {
    target_dir().join("policies")
}

/// Set in a child test process whose parent already built the policies.
pub const BUILT_ENV: &str = "CAIRN_TEST_POLICIES_BUILT";

/// Build every Rust policy (once) and return the path of `<crate_name>.wasm`.
pub fn rust_policy(crate_name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let target = policies_target();
        if std::env::var_os(BUILT_ENV).is_some() {
            return Ok(target.join("wasm32-wasip2").join("release"));
        }
        let out = Command::new(env!("CARGO"))
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .current_dir(repo().join("policies"))
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "building policies/ failed (is the target installed? `rustup target add wasm32-wasip2`):\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(target.join("wasm32-wasip2").join("release"))
    });
    match dir {
        Ok(d) => d.join(format!("{crate_name}.wasm")),
        Err(e) => panic!("{e}"),
    }
}

/// The componentize-py executable, if there is one.
fn componentize_py() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("COMPONENTIZE_PY") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("componentize-py"))
        .find(|p| p.is_file())
}

/// Build the Python every-n policy (when its sources changed) and return its path, or `None`
/// — with a loud message — when componentize-py is not installed. CI installs it.
pub fn python_policy() -> Option<PathBuf> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let Some(tool) = componentize_py() else {
                eprintln!(
                    "\n*** SKIPPING the Python policy: componentize-py not found (pip install componentize-py==0.25.1, or set COMPONENTIZE_PY) ***\n"
                );
                return None;
            };
            let src = repo().join("policies/python/every_n");
            let app = std::fs::read(src.join("app.py")).unwrap();
            let wit = std::fs::read(repo().join("wit/policy.wit")).unwrap();
            let stamp = format!("{:x}", fxhash(&[&app, &wit]));
            let out_dir = policies_target().join("python");
            std::fs::create_dir_all(&out_dir).unwrap();
            let out = out_dir.join(format!("every_n_py-{stamp}.wasm"));
            if out.is_file() {
                return Some(out);
            }
            let tmp = out.with_extension("tmp.wasm");
            let status = Command::new(&tool)
                .arg("-d")
                .arg(repo().join("wit"))
                .args(["-w", "cairn:policy/save-interval", "componentize", "-p"])
                .arg(&src)
                .args(["app", "-o"])
                .arg(&tmp)
                .output()
                .expect("run componentize-py");
            assert!(
                status.status.success(),
                "componentize-py failed:\n{}",
                String::from_utf8_lossy(&status.stderr)
            );
            std::fs::rename(&tmp, &out).unwrap();
            Some(out)
        })
        .clone()
}

/// Build the JavaScript every-n policy (when its sources changed) with the pinned componentize-js
/// (`npm ci && npm run build` in `policies/js/every_n`) and return its path. npm must be on the
/// machine: CI has Node 20; `CAIRN_SKIP_JS=1` skips the JS checks (with a loud message) instead.
pub fn js_policy() -> Option<PathBuf> {
    static BUILT: OnceLock<Result<Option<PathBuf>, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let src = repo().join("policies/js/every_n");
        let inputs = ["app.js", "package.json", "package-lock.json"]
            .map(|f| std::fs::read(src.join(f)).unwrap());
        let wit = std::fs::read(repo().join("wit/policy.wit")).unwrap();
        let parts: Vec<&[u8]> = inputs
            .iter()
            .map(Vec::as_slice)
            .chain([wit.as_slice()])
            .collect();
        let out_dir = policies_target().join("js");
        std::fs::create_dir_all(&out_dir).unwrap();
        let out = out_dir.join(format!("every_n_js-{:x}.wasm", fxhash(&parts)));
        if out.is_file() {
            return Ok(Some(out));
        }
        if std::env::var("CAIRN_SKIP_JS").is_ok_and(|v| v == "1") {
            eprintln!("\n*** SKIPPING the JavaScript policy (CAIRN_SKIP_JS=1) ***\n");
            return Ok(None);
        }
        for args in [
            &["ci", "--no-audit", "--no-fund"][..],
            &["run", "build"][..],
        ] {
            let status = Command::new("npm")
                .args(args)
                .current_dir(&src)
                .output()
                .map_err(|e| {
                    format!("cannot run npm ({e}): install Node 20 and npm, or set CAIRN_SKIP_JS=1")
                })?;
            if !status.status.success() {
                return Err(format!(
                    "npm {} failed in {}:\n{}",
                    args.join(" "),
                    src.display(),
                    String::from_utf8_lossy(&status.stderr)
                ));
            }
        }
        std::fs::rename(src.join("every_n_js.wasm"), &out).map_err(|e| e.to_string())?;
        Ok(Some(out))
    });
    match built {
        Ok(path) => path.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// A stable hash of the inputs (FNV-1a), to name build outputs.
fn fxhash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// A shared compile cache for the tests (compiling Python takes seconds).
pub fn shared_cache() -> CompileCache {
    CompileCache::new(Some(policies_target().join("compile-cache")))
}

/// A policy host with the shared cache whose log lines are collected.
pub fn host() -> (PolicyHost, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let log: LogSink = Arc::new(move |l: &str| sink.lock().unwrap().push(l.to_owned()));
    (PolicyHost::new(shared_cache()).with_log(log), lines)
}
