//! WebAssembly policies through `cairn run` and `cairn simulate`: the component decides when to
//! save and what to leave out of real checkpoints, `simulate` predicts exactly what `run` saves,
//! and a hostile tenant's job cannot stop a well-behaved one running beside it in one process.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use cairn::state_dict::Value;

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

    let tree = cairn::read_checkpoint(&dir.path().join("wasm/ep1-ba6-rank0.pt")).unwrap();
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
    cairn::verify_checkpoint(&dir.path().join("wasm/ep1-ba6-rank0.pt")).unwrap();
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
