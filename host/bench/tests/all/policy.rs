//! `cairn-bench policy`: measures a policy component against the built-in interval.

use std::process::Command;

use cairn_testkit as common;

/// `cairn-bench policy --json` measures a component against the built-in interval, with each
/// limit alone on `--breakdown` (a smoke run: the figures themselves are not asserted).
#[test]
fn bench_policy_reports_every_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-bench"))
        .args(["policy", "--calls", "200", "--rounds", "1"])
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-bench"));
        cmd.args(["policy", "--calls", "100", "--rounds", "1", "--json"]);
        for pair in config {
            cmd.args(["--policy-config", pair]);
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
