//! WebAssembly policies through `cairn run` and `cairn simulate`: the component decides when to
//! save and what to leave out of real checkpoints, `simulate` predicts exactly what `run` saves,
//! and a hostile tenant's job cannot stop a well-behaved one running beside it in one process.

use cairn_testkit as common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use cairn::format::Value;

fn cairn(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .current_dir(dir)
        .env("CAIRN_CACHE_DIR", dir.join("cache"))
        .args(args)
        .output()
        .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

fn job(name: &str, checkpoint: &str, sandbox: &str) -> String {
    format!(
        "run_name = \"{name}\"\n[checkpoint]\nfolder = \"{name}\"\nremote_file_name = false\n{checkpoint}\n[sandbox]\n{sandbox}\n[train]\nmax_duration = \"2ep\"\nbatches_per_epoch = 5\nseconds_per_batch = 0\nmodel_mib = 8\n"
    )
}

fn saved(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ep"))
        .collect();
    v.sort_by_key(|n| {
        n.split("-ba")
            .nth(1)
            .and_then(|b| b.split('-').next()?.parse::<u64>().ok())
    });
    v
}

#[test]
fn wasm_interval_and_filter_shape_real_checkpoints_and_simulate_predicts_run() {
    let every_n = common::rust_policy("every_n");
    let drop = common::rust_policy("drop_optimizer_state");
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = format!(
        "save_interval = {{ wasm = \"{}\", config = {{ n = 3 }} }}\nignore_keys = {{ wasm = \"{}\", config = {{ prefix = \"layers.1.\" }} }}",
        every_n.display(),
        drop.display()
    );
    let config = write(dir.path(), "job.toml", &job("wasm", &checkpoint, ""));

    let sim = cairn(dir.path(), &["simulate", "--config", &config, "--json"]);
    assert!(
        sim.status.success(),
        "{}",
        String::from_utf8_lossy(&sim.stderr)
    );
    let predicted: Vec<String> = String::from_utf8(sim.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["path"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        predicted,
        [
            "ep0-ba3-rank0.pt",
            "ep1-ba6-rank0.pt",
            "ep1-ba9-rank0.pt",
            "ep2-ba10-rank0.pt"
        ]
    );

    let run = cairn(dir.path(), &["run", "--config", &config, "--json"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        saved(&dir.path().join("wasm")),
        predicted,
        "simulate predicts run"
    );
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let policies = summary["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 2, "{summary}");
    assert_eq!(policies[0]["policy"], "every_n.wasm");
    assert!(policies[0]["calls"].as_u64().unwrap() >= 12, "{summary}");
    assert_eq!(policies[1]["calls"], 4, "one filter call per save");

    let tree = cairn::format::read_checkpoint(&dir.path().join("wasm/ep1-ba6-rank0.pt")).unwrap();
    let adam = tree
        .get_path(&["state", "optimizers", "Adam", "state"])
        .unwrap()
        .as_dict()
        .unwrap();
    let keys: Vec<String> = adam.entries.keys().map(|k| k.to_string()).collect();
    assert_eq!(
        keys,
        ["layers.0.weight"],
        "the optimizer state of layers.1.weight is dropped"
    );
    assert!(
        matches!(
            tree.get_path(&["state", "model", "layers.1.weight"]),
            Some(Value::Tensor(_))
        ),
        "weights stay"
    );
    assert!(
        tree.get_path(&["state", "optimizers", "Adam", "param_groups"])
            .is_some()
    );
    cairn::format::verify_checkpoint(&dir.path().join("wasm/ep1-ba6-rank0.pt")).unwrap();
}

/// Two tenants in one process: one policy loops forever at every call, the other is well
/// behaved. The hostile job fails with a clear error naming its policy; the other writes every
/// checkpoint it should.
#[test]
fn a_hostile_tenant_cannot_stop_its_neighbour() {
    let hostile = common::rust_policy("hostile_save");
    let every_n = common::rust_policy("every_n");
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.toml",
        &job(
            "bad",
            &format!(
                "save_interval = {{ wasm = \"{}\", config = {{ mode = \"loop\" }} }}",
                hostile.display()
            ),
            "timeout_ms = 50\nfuel_per_call = 0",
        ),
    );
    let good = write(
        dir.path(),
        "good.toml",
        &job(
            "good",
            &format!(
                "save_interval = {{ wasm = \"{}\", config = {{ n = 2 }} }}",
                every_n.display()
            ),
            "",
        ),
    );
    let out = cairn(
        dir.path(),
        &["run", "--config", &bad, "--config", &good, "--json"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("hostile_save.wasm") && stderr.contains("1 of 2 jobs failed: bad"),
        "{stderr}"
    );
    assert!(
        stderr.contains("deadline") || stderr.contains("time"),
        "{stderr}"
    );
    assert_eq!(
        saved(&dir.path().join("good")),
        [
            "ep0-ba2-rank0.pt",
            "ep0-ba4-rank0.pt",
            "ep1-ba6-rank0.pt",
            "ep1-ba8-rank0.pt",
            "ep1-ba10-rank0.pt"
        ]
    );
    assert!(!dir.path().join("bad").join("ep0-ba1-rank0.pt").exists());
}

/// The `--json` summaries of a (multi-job) `cairn run`, by run name.
fn summaries(out: &Output) -> std::collections::HashMap<String, serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["run_name"].as_str().unwrap().to_owned(), v))
        .collect()
}

/// Issue 6: two tenants misbehave all run long — one fills its memory cap and traps at every
/// event, one spins into its deadline at every event — while a well-behaved job trains beside
/// them in the same process. The host's peak memory stays within one bomb's cap of the
/// well-behaved job alone (each trapped instance is freed, not hoarded), the good job's pace is
/// measured against its pace alone, and it writes every checkpoint it should.
#[test]
fn misbehaving_neighbours_leave_memory_bounded_and_the_good_job_on_pace() {
    let hostile = common::rust_policy("hostile_save");
    let every_n = common::rust_policy("every_n");
    let dir = tempfile::tempdir().unwrap();
    let paced = |name: &str, checkpoint: &str, sandbox: &str, epochs: u32| {
        let text = job(name, checkpoint, sandbox)
            .replace(
                "max_duration = \"2ep\"",
                &format!("max_duration = \"{epochs}ep\""),
            )
            .replace("seconds_per_batch = 0", "seconds_per_batch = 0.02")
            .replace("model_mib = 8", "model_mib = 1");
        write(dir.path(), &format!("{name}.toml"), &text)
    };
    let good = paced(
        "good",
        &format!(
            "save_interval = {{ wasm = \"{}\", config = {{ n = 2 }} }}",
            every_n.display()
        ),
        "",
        2,
    );
    let bomb_cap_mib = 64u64;
    let bomb = paced(
        "bomb",
        &format!(
            "save_interval = {{ wasm = \"{}\", config = {{ mode = \"alloc\" }} }}",
            hostile.display()
        ),
        &format!("memory_limit_mib = {bomb_cap_mib}\nfuel_per_call = 0\non_error = \"skip\""),
        10,
    );
    let spin = paced(
        "spin",
        &format!(
            "save_interval = {{ wasm = \"{}\", config = {{ mode = \"loop\" }} }}",
            hostile.display()
        ),
        "timeout_ms = 30\nfuel_per_call = 0\non_error = \"skip\"",
        10,
    );
    // Warm the compile cache so that neither run pays for compiling.
    for policy in [&hostile, &every_n] {
        let warm = cairn(dir.path(), &["policy", "check", &policy.to_string_lossy()]);
        assert!(warm.status.success());
    }

    let alone = cairn(dir.path(), &["run", "--config", &good, "--json"]);
    assert!(
        alone.status.success(),
        "{}",
        String::from_utf8_lossy(&alone.stderr)
    );
    let alone = summaries(&alone)["good"].clone();
    fs::remove_dir_all(dir.path().join("good")).unwrap();

    let beside = cairn(
        dir.path(),
        &[
            "run", "--config", &bomb, "--config", &good, "--config", &spin, "--json",
        ],
    );
    let stderr = String::from_utf8_lossy(&beside.stderr);
    assert!(beside.status.success(), "{stderr}");
    let all = summaries(&beside);
    let expected = [
        "ep0-ba2-rank0.pt",
        "ep0-ba4-rank0.pt",
        "ep1-ba6-rank0.pt",
        "ep1-ba8-rank0.pt",
        "ep1-ba10-rank0.pt",
    ];
    assert_eq!(saved(&dir.path().join("good")), expected);

    // The neighbours misbehaved at every event, all the while the good job ran.
    for (name, kind) in [("bomb", "memory limit"), ("spin", "deadline")] {
        let p = &all[name]["policies"][0];
        assert!(p["calls"].as_u64().unwrap() >= 20, "{name}: {p}");
        assert_eq!(p["errors"], p["calls"], "{name}: every call failed: {p}");
        assert!(stderr.contains(kind), "{name}: {stderr}");
        assert!(
            all[name]["training_seconds"].as_f64().unwrap()
                > all["good"]["training_seconds"].as_f64().unwrap(),
            "{name} must misbehave for longer than the good job trains"
        );
    }
    let bomb_peak = all["bomb"]["policies"][0]["peak_memory_bytes"]
        .as_u64()
        .unwrap();
    assert!(bomb_peak <= bomb_cap_mib << 20, "{bomb_peak}");

    // Host memory: one bomb's worth above the good job alone, not one per trapped call.
    let rss = |s: &serde_json::Value| s["process_peak_rss_bytes"].as_u64().unwrap();
    let rss_alone = rss(&alone);
    let rss_beside = all.values().map(rss).max().unwrap();
    let bomb_calls = all["bomb"]["policies"][0]["calls"].as_u64().unwrap();
    eprintln!(
        "peak RSS: {} MiB alone, {} MiB beside a {bomb_cap_mib} MiB memory bomb that trapped {bomb_calls} times",
        rss_alone >> 20,
        rss_beside >> 20
    );
    // One bomb cap plus two more (1 MiB) jobs and their threads, with room for allocator
    // slack; a leak of every trapped instance would be bomb_calls × 64 MiB.
    let bound = rss_alone + ((bomb_cap_mib + 64) << 20);
    assert!(rss_beside < bound, "{rss_beside} >= {bound}");

    // Pace: batches per second of training, alone and beside the misbehaving pair.
    let pace = |s: &serde_json::Value| s["batches_per_second"].as_f64().unwrap();
    let ratio = pace(&all["good"]) / pace(&alone);
    eprintln!(
        "good job pace: {:.1} batches/s alone, {:.1} beside (ratio {ratio:.2})",
        pace(&alone),
        pace(&all["good"])
    );
    // A generous bound: the pace includes each save's fsync, which a loaded CI disk makes
    // noisy; a starved job (each event waiting on the neighbours) falls far below it.
    assert!(ratio > 0.2, "the good job slowed to {ratio:.2} of its pace");
}
