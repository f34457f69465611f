//! Class 5: compilation is bounded. A component the cache does not hold is compiled by a
//! compile worker, here this very test binary (`compile_worker` below), which the host kills
//! at the deadline or which dies at its memory limit; either is a named error and the host's
//! own memory stays small. A cached component starts no worker at all.

use super::*;
use cairn_policy::{CompileCache, CompileWorker, Origin, PolicyHost, World};
use common::wat;
use std::time::{Duration, Instant};

const WORKER_ENV: &str = "CAIRN_TEST_COMPILE_WORKER";

/// The compile worker's entry point when this binary is started as one; a no-op test
/// otherwise.
#[test]
fn compile_worker() {
    if std::env::var_os(WORKER_ENV).is_some() {
        std::process::exit(cairn_policy::serve_compile_worker());
    }
}

/// This test binary, as a compile worker.
fn worker() -> CompileWorker {
    CompileWorker::new(std::env::current_exe().unwrap())
        .arg("bounds::compile::compile_worker")
        .arg("--exact")
        .arg("--nocapture")
        .env(WORKER_ENV, "1")
}

/// A host with its own cache in `dir`, compiling in `worker`.
fn host(dir: &std::path::Path, worker: CompileWorker) -> PolicyHost {
    PolicyHost::new(CompileCache::new(Some(dir.to_owned())))
        .with_log(std::sync::Arc::new(|_: &str| {}))
        .with_compile_worker(worker)
}

fn load(host: &PolicyHost, bytes: &[u8], sandbox: &SandboxConfig) -> Result<Origin, PolicyError> {
    let dir = tempfile::tempdir().unwrap();
    let path = wat::write(dir.path(), "bomb.wasm", bytes);
    host.load(&path, World::SaveInterval, sandbox)
        .map(|l| l.origin)
}

#[test]
fn a_cpu_bomb_is_stopped_at_the_compile_deadline() {
    let Some(cost) = common::measure::isolated(
        "bounds::compile::a_cpu_bomb_is_stopped_at_the_compile_deadline",
        || {
            let cache = tempfile::tempdir().unwrap();
            let host = host(cache.path(), worker());
            // 20 000 locals live around a loop: ~30 CPU-s released, minutes in a debug build;
            // 40 000: ~4 CPU-minutes released.
            for locals in [20_000, 40_000] {
                let sandbox = SandboxConfig {
                    compile_timeout_ms: 1_500,
                    ..SandboxConfig::default()
                };
                let started = Instant::now();
                let err = load(&host, &wat::locals_loop(locals, locals), &sandbox).unwrap_err();
                let took = started.elapsed();
                assert_eq!(err.kind(), "compile-timeout", "{err}");
                let msg = err.to_string();
                assert!(
                    msg.contains("deadline of 1500 ms") && msg.contains("compile_timeout_ms"),
                    "{msg}"
                );
                eprintln!("{locals} locals: stopped after {took:?}");
                assert!(took < Duration::from_secs(60), "{took:?}");
            }
        },
    ) else {
        return;
    };
    // The compiler ran in the worker: this process stayed small.
    assert!(cost.max_rss < 200 * MIB, "{} bytes", cost.max_rss);
}

#[test]
fn a_memory_bomb_is_stopped_at_the_compile_memory_limit() {
    let Some(cost) = common::measure::isolated(
        "bounds::compile::a_memory_bomb_is_stopped_at_the_compile_memory_limit",
        || {
            let cache = tempfile::tempdir().unwrap();
            let host = host(cache.path(), worker());
            // 20 000 locals through 3 000 merges in a loop took 2 GB to compile; 40 000 through
            // 6 000 asked for a 26 GB hash table.
            for (locals, diamonds) in [(20_000, 3_000), (40_000, 6_000)] {
                let sandbox = SandboxConfig {
                    compile_memory_mib: 96,
                    ..SandboxConfig::default()
                };
                let bomb = wat::loop_diamonds(locals, diamonds);
                let started = Instant::now();
                let err = load(&host, &bomb, &sandbox).unwrap_err();
                assert_eq!(err.kind(), "compile-memory", "{err}");
                assert!(err.to_string().contains("memory limit of 96 MiB"), "{err}");
                eprintln!("{locals}x{diamonds}: stopped after {:?}", started.elapsed());
            }
        },
    ) else {
        return;
    };
    assert!(cost.max_rss < 200 * MIB, "{} bytes", cost.max_rss);
}

#[test]
fn a_worker_compiles_for_the_cache_and_a_cached_component_starts_none() {
    let cache = tempfile::tempdir().unwrap();
    let every_n = common::rust_policy("every_n");
    let sandbox = SandboxConfig::default();
    let loaded = host(cache.path(), worker())
        .load(&every_n, World::SaveInterval, &sandbox)
        .unwrap();
    assert_eq!(loaded.origin, Origin::Compiled);
    // A worker that cannot even start: a cache hit never asks for it.
    let nowhere = CompileWorker::new("/nonexistent/cairn-compile-worker");
    let again = host(cache.path(), nowhere.clone())
        .load(&every_n, World::SaveInterval, &sandbox)
        .unwrap();
    assert_eq!(again.origin, Origin::Cached);
    // A miss does, and says so in one sentence.
    let err = load(
        &host(cache.path(), nowhere),
        &wat::many_memories(1, 1),
        &sandbox,
    )
    .unwrap_err();
    assert_eq!(err.kind(), "host", "{err}");
    assert!(
        err.to_string().contains("cannot start the compile worker"),
        "{err}"
    );
    // An invalid component is reported as such by the worker.
    let dir = tempfile::tempdir().unwrap();
    let bad = wat::write(dir.path(), "bad.wasm", b"\0asm\x0d\0\x01\0\x01\x05");
    let err = host(cache.path(), worker())
        .load(&bad, World::SaveInterval, &sandbox)
        .err()
        .unwrap();
    assert_eq!(err.kind(), "invalid", "{err}");
}
