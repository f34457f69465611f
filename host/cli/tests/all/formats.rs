//! The file commands end to end: `cairn inspect --json` follows the contract, `cairn filter`
//! drops keys and restores `state`, `cairn verify` checks folders and their `latest` pointers.

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn::format::{CheckpointFormat, Dict, Tensor, Value, read_checkpoint, write_checkpoint};
use serde_json::Value as Json;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A small full checkpoint in the format `path`'s name selects.
fn write_to(path: &Path) {
    let model = Dict::ordered().with("w", Tensor::from_f32(vec![2], &[0.5, 1.5]));
    let tree = Value::Dict(
        Dict::new()
            .with("state", Dict::new().with("model", model))
            .with("rng", Value::List(vec![])),
    );
    let format = CheckpointFormat::from_name(&path.to_string_lossy()).unwrap();
    let mut file = std::fs::File::create(path).unwrap();
    write_checkpoint(path, format, &tree, &mut file).unwrap();
}

fn cairn(args: &[&str]) -> (bool, String, String) {
    let bin = std::env::var("CAIRN_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_cairn").to_owned());
    let out = Command::new(bin).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn inspect_json_follows_the_contract() {
    let path = fixtures().join("composer_like.pt");
    let (ok, out, err) = cairn(&["inspect", "--json", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    let json: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(json["format"], "pt");
    let entries = json["entries"].as_array().unwrap();
    let w = entries
        .iter()
        .find(|e| e["path"] == "state/model/0.weight")
        .unwrap();
    assert_eq!(
        (
            w["kind"].as_str(),
            w["dtype"].as_str(),
            w["nbytes"].as_u64()
        ),
        (Some("tensor"), Some("float32"), Some(24))
    );
    assert_eq!(w["shape"], serde_json::json!([2, 3]));
    let td = entries
        .iter()
        .find(|e| e["path"] == "state/timestamp/Timestamp/total_wct")
        .unwrap();
    assert_eq!(
        (td["kind"].as_str(), td["type"].as_str()),
        (Some("object"), Some("datetime.timedelta"))
    );
    assert!(
        entries
            .iter()
            .any(|e| e["path"] == "rng/0/python" && e["kind"] == "tuple")
    );
}

#[test]
fn filter_drops_keys_restores_state_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixtures().join("composer_like.pt");
    let out = dir.path().join("f.pt.zst");
    let (ok, _, err) = cairn(&[
        "filter",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--ignore-keys",
        "state",
        "nothing/*",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("nothing/*"), "no-match warning: {err}");
    let tree = read_checkpoint(&out).unwrap();
    assert_eq!(tree.get_path(&["state"]), Some(&Value::Dict(Dict::new())));
    assert!(tree.get_path(&["rng"]).is_some());
    let (ok, _, err) = cairn(&[
        "filter",
        input.to_str().unwrap(),
        "-o",
        "x.tar.xz",
        "--ignore-keys",
        "rng",
    ]);
    assert!(
        !ok && err.contains("tarfile extension") && !err.contains("panick"),
        "{err}"
    );
}

#[test]
fn verify_checks_folders_and_latest_pointers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_to(&d.join("ep1-ba1-rank0.pt"));
    write_to(&d.join("ep1-ba2-rank0.tar.gz"));
    std::os::unix::fs::symlink("ep1-ba2-rank0.tar.gz", d.join("latest-rank0.tar.gz")).unwrap();
    std::fs::write(d.join("latest-rank1.pt"), "ep1-ba1-rank0.pt\n").unwrap();
    let (ok, out, err) = cairn(&["verify", d.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert_eq!(out.lines().count(), 4, "{out}");

    std::fs::write(d.join("latest-rank2.pt"), "missing.pt").unwrap();
    let mut bytes = std::fs::read(d.join("ep1-ba1-rank0.pt")).unwrap();
    bytes.truncate(bytes.len() - 10);
    std::fs::write(d.join("ep1-ba1-rank0.pt"), bytes).unwrap();
    let (ok, _, err) = cairn(&["verify", d.to_str().unwrap()]);
    assert!(!ok);
    // The truncated file, the pointer to it, and the dangling pointer: one line each.
    assert_eq!(err.lines().count(), 3, "{err}");
    assert!(err.contains("missing.pt"), "{err}");
}
