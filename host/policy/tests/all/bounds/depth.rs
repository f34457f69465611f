//! Class 1: host recursion on guest-shaped data. A filter's answer of any depth is refused past
//! `cairn_format::MAX_DEPTH` with `too-deep`, on a 2 MiB thread (a tenant's job thread), without
//! the host recursing; an answer at the limit is kept and reads back.

use super::*;
use cairn_format::MAX_DEPTH;

/// Run `f` on a thread with a job thread's 2 MiB stack (where 4 000 levels used to abort the
/// whole process).
fn on_job_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn deep_answers_of_every_shape_are_refused_by_name() {
    let Some(cost) = common::measure::isolated(
        "bounds::depth::deep_answers_of_every_shape_are_refused_by_name",
        || {
            for (mode, arg) in [
                ("deep-index", 20_000),
                ("deep-key", 20_000),
                ("deep-int-key", 20_000),
                ("deep-mixed", 20_000),
                ("deep-empty-dict", 10_000),
                ("deep-index", 4_000),
                ("deep-index", MAX_DEPTH as u64),
                ("deep-wide", 40),
            ] {
                let started = std::time::Instant::now();
                let err = on_job_thread(move || {
                    filter(mode, arg, &SandboxConfig::default())
                        .apply(&small_tree())
                        .unwrap_err()
                });
                assert_eq!(err.kind(), "too-deep", "{mode} {arg}: {err}");
                let msg = err.to_string();
                assert!(
                    msg.contains("hostile_filter.wasm")
                        && msg.contains(&format!("deeper than the {MAX_DEPTH} levels")),
                    "{msg}"
                );
                assert!(msg.len() < 600, "{} bytes: {msg}", msg.len());
                assert_one_clean_line(&msg);
                eprintln!("{mode} {arg}: refused in {:?}", started.elapsed());
            }
        },
    ) else {
        return;
    };
    assert!(cost.max_rss < 256 * MIB, "{} bytes", cost.max_rss);
}

#[test]
fn an_answer_at_the_limit_is_kept_and_reads_back() {
    // `deep-index n` adds the path deep/0/0/.../0 (n + 1 segments): MAX_DEPTH containers at
    // n = MAX_DEPTH - 1, one too many at n = MAX_DEPTH.
    let n = MAX_DEPTH as u64 - 1;
    let tree = on_job_thread(move || {
        filter("deep-index", n, &SandboxConfig::default())
            .apply(&small_tree())
            .unwrap()
    });
    let dir = tempfile::tempdir().unwrap();
    for name in ["deep.pt", "deep.safetensors"] {
        let path = dir.path().join(name);
        let mut file = std::fs::File::create(&path).unwrap();
        let format = cairn_format::format_of(&path).unwrap();
        cairn_format::write_checkpoint(&path, format, &tree, &mut file).unwrap();
        drop(file);
        assert_eq!(
            cairn_format::read_checkpoint(&path).unwrap(),
            tree,
            "{name}"
        );
    }
    let err = filter("deep-index", n + 1, &SandboxConfig::default())
        .apply(&small_tree())
        .unwrap_err();
    assert_eq!(err.kind(), "too-deep", "{err}");
}

#[test]
fn a_deep_answer_leaves_a_neighbour_filtering() {
    // Two tenants' filters on two job threads: the hostile one fails by name, the other
    // keeps filtering (it used to die with the process).
    let hostile = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            filter(
                "deep-index",
                100_000,
                &SandboxConfig {
                    fuel_per_call: 0,
                    timeout_ms: 10_000,
                    ..SandboxConfig::default()
                },
            )
            .apply(&small_tree())
            .unwrap_err()
            .kind()
        })
        .unwrap();
    let good = on_job_thread(|| {
        let mut f = filter("identity", 0, &SandboxConfig::default());
        (0..20)
            .map(|_| f.apply(&small_tree()).unwrap())
            .all(|t| t == small_tree())
    });
    assert_eq!(hostile.join().unwrap(), "too-deep");
    assert!(good);
}
