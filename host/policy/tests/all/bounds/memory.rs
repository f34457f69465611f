//! Class 4: the memory cap bounds the component's total, every memory and table of every core
//! instance, and the accounting reports that total. The components are written in WAT and
//! assembled here (`cairn_testkit::wat`).

use super::*;
use cairn_policy::{Event, MaxDuration, Ranks, Time, Timestamp, TrainingState};
use common::wat;

fn state() -> TrainingState<'static> {
    TrainingState {
        timestamp: Timestamp::default(),
        previous_timestamp: None,
        max_duration: MaxDuration::new(Time::batches(1_000)).unwrap(),
        dataloader_len: None,
        run_name: "memory",
        ranks: Ranks::default(),
        metrics: &[],
    }
}

/// Load the component `bytes` as a save-interval policy.
fn load(bytes: &[u8], sandbox: &SandboxConfig) -> Result<WasmSavePolicy, PolicyError> {
    let dir = tempfile::tempdir().unwrap();
    let path = wat::write(dir.path(), "memory.wasm", bytes);
    let (host, _) = common::host();
    host.save_policy(&PolicySpec::new(path), sandbox, &RunInfo::default())
}

#[test]
fn memories_allocated_at_start_are_refused_by_their_total() {
    let Some(cost) = common::measure::isolated(
        "bounds::memory::memories_allocated_at_start_are_refused_by_their_total",
        || {
            // 30 memories of 60 MiB in one module (1.8 GB of RSS before), 30 core instances of
            // one each, and three of 60 MiB: each memory is under the 128 MiB cap, not their sum.
            for (what, bytes) in [
                ("30 memories", wat::many_memories(30, 60)),
                ("30 instances", wat::many_instances(30, 60)),
                ("3 memories", wat::many_memories(3, 60)),
            ] {
                let err = load(&bytes, &SandboxConfig::default()).err().unwrap();
                assert_eq!(err.kind(), "memory-limit", "{what}: {err}");
                let msg = err.to_string();
                assert!(
                    msg.contains("memory limit of 128 MiB")
                        && msg.contains("memories and tables would have held"),
                    "{what}: {msg}"
                );
            }
            // Two fit, and the accounting says 120 MiB.
            let mut two = load(&wat::many_memories(2, 60), &SandboxConfig::default()).unwrap();
            assert!(!two.ask(&state(), Event::Batch).unwrap());
            let peak = two.stats().get().peak_memory;
            assert!((120 * MIB..=128 * MIB).contains(&peak), "{peak}");
        },
    ) else {
        return;
    };
    // Two 60 MiB memories were really touched; 30 would be 1.8 GB.
    assert!(cost.max_rss < 450 * MIB, "{} bytes", cost.max_rss);
}

#[test]
fn memories_grown_at_every_call_stop_at_the_total() {
    let Some(cost) = common::measure::isolated(
        "bounds::memory::memories_grown_at_every_call_stop_at_the_total",
        || {
            // Each call grows the next of 60 memories to 60 MiB: the third call would hold
            // 180 MiB (60 calls held 3.6 GiB before, with no error at all).
            let sandbox = SandboxConfig {
                fuel_per_call: 0,
                timeout_ms: 20_000,
                ..SandboxConfig::default()
            };
            let mut p = load(&wat::growing_memories(60, 60), &sandbox).unwrap();
            assert!(!p.ask(&state(), Event::Batch).unwrap());
            assert!(!p.ask(&state(), Event::Batch).unwrap());
            let err = p.ask(&state(), Event::Batch).unwrap_err();
            assert_eq!(err.kind(), "memory-limit", "{err}");
            let stats = p.stats().get();
            assert!(stats.peak_memory <= 128 * MIB, "{stats:?}");
            assert!(stats.peak_memory >= 120 * MIB, "{stats:?}");
            // A smaller cap stops it earlier.
            let small = SandboxConfig {
                memory_limit_mib: 64,
                ..sandbox
            };
            let mut p = load(&wat::growing_memories(60, 40), &small).unwrap();
            assert!(!p.ask(&state(), Event::Batch).unwrap());
            assert_eq!(
                p.ask(&state(), Event::Batch).unwrap_err().kind(),
                "memory-limit"
            );
        },
    ) else {
        return;
    };
    assert!(cost.max_rss < 450 * MIB, "{} bytes", cost.max_rss);
}

#[test]
fn tables_count_against_both_caps() {
    // 60 tables of 100 000 elements each: every table was under max_table_elements alone.
    let err = load(&wat::many_tables(60, 100_000), &SandboxConfig::default())
        .err()
        .unwrap();
    assert_eq!(err.kind(), "instantiate", "{err}");
    assert!(err.to_string().contains("max_table_elements"), "{err}");
    // Their bytes count in the memory total: 4 tables of 1M elements (32 MiB) under a 16 MiB cap.
    let roomy = SandboxConfig {
        max_table_elements: 10_000_000,
        memory_limit_mib: 16,
        ..SandboxConfig::default()
    };
    let err = load(&wat::many_tables(4, 1_000_000), &roomy).err().unwrap();
    assert_eq!(err.kind(), "memory-limit", "{err}");
    // Within both caps: fine.
    assert!(load(&wat::many_tables(4, 1_000), &SandboxConfig::default()).is_ok());
}
