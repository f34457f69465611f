//! `cairn simulate` end to end: the CLI contract that outside tests consume.

use std::process::{Command, Output};

fn cairn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()
        .expect("cairn runs")
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn three_ba_over_two_epochs_prints_the_three_saves_of_the_reference() {
    let out = cairn(&[
        "simulate",
        "--save-interval",
        "3ba",
        "--max-duration",
        "2ep",
        "--batches-per-epoch",
        "4",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saves = json_lines(&out);
    let got: Vec<(String, u64, u64, String)> = saves
        .iter()
        .map(|s| {
            (
                s["event"].as_str().unwrap().to_owned(),
                s["epoch"].as_u64().unwrap(),
                s["batch"].as_u64().unwrap(),
                s["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("batch".into(), 0, 3, "ep0-ba3-rank0.pt".into()),
            ("batch".into(), 1, 6, "ep1-ba6-rank0.pt".into()),
            ("epoch".into(), 2, 8, "ep2-ba8-rank0.pt".into()),
        ]
    );
    let keys: Vec<&str> = saves[0]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    for k in [
        "event",
        "epoch",
        "batch",
        "batch_in_epoch",
        "sample",
        "sample_in_epoch",
        "token",
        "token_in_epoch",
        "path",
    ] {
        assert!(keys.contains(&k), "missing {k} in {keys:?}");
    }
    assert_eq!(saves[1]["batch_in_epoch"], 2);
    assert_eq!(saves[2]["batch_in_epoch"], 0);
}

#[test]
fn a_bare_integer_means_epochs_and_names_use_the_template() {
    let out = cairn(&[
        "simulate",
        "--save-interval",
        "2",
        "--max-duration",
        "5ep",
        "--batches-per-epoch",
        "3",
        "--samples-per-batch",
        "8",
        "--filename",
        "{run_name}/ep{epoch:03d}-sp{sample}.pt",
        "--run-name",
        "gpt",
        "--json",
    ]);
    assert!(out.status.success());
    let paths: Vec<String> = json_lines(&out)
        .iter()
        .map(|s| s["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        paths,
        [
            "gpt/ep002-sp48.pt",
            "gpt/ep004-sp96.pt",
            "gpt/ep005-sp120.pt"
        ]
    );
}

#[test]
fn bad_input_is_one_sentence_and_a_failure() {
    let base = ["simulate", "--batches-per-epoch", "4"];
    let cases: &[(&[&str], &str)] = &[
        (
            &["--save-interval", "1.5ba", "--max-duration", "2ep"],
            "1.5ba",
        ),
        (
            &["--save-interval", "3ba", "--max-duration", "0.5dur"],
            "0.5dur",
        ),
        (
            &[
                "--save-interval",
                "3ba",
                "--max-duration",
                "2ep",
                "--filename",
                "ep{epoch",
            ],
            "ep{epoch",
        ),
        (&["--save-interval", "", "--max-duration", "2ep"], "empty"),
        (
            &["--save-interval", "0dur", "--max-duration", "2ep"],
            "0dur",
        ),
    ];
    for (args, needle) in cases {
        let out = cairn(&[&base[..], args].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_config_file_drives_the_simulation_and_its_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "run_name = \"r\"\n[checkpoint]\nsave_interval = \"5ba\"\nfilename = \"{run_name}-ba{batch}.pt\"\n[train]\nmax_duration = \"12ba\"\nbatches_per_epoch = 4\n",
    )
    .unwrap();
    let out = cairn(&["simulate", "--config", good.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let paths: Vec<String> = json_lines(&out)
        .iter()
        .map(|s| s["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(paths, ["r-ba5.pt", "r-ba10.pt", "r-ba12.pt"]);

    for (text, needle) in [
        (
            "[checkpoint]\nsave_intervall = \"1ep\"\n",
            "bad.toml:2:1: unknown field `save_intervall`",
        ),
        (
            "[checkpoint]\nsave_interval = \"1\"\n",
            "bad.toml:2:17: checkpoint.save_interval",
        ),
        (
            "[checkpoint]\nfilename = \"ep{epoch\"\n",
            "bad.toml:2:12: checkpoint.filename",
        ),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let out = cairn(&["simulate", "--config", bad.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(needle), "{text:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

/// `--plot` draws the timeline: one mark per save (its tooltip names the event and the file), the
/// epochs, and the end of training; the JSON on stdout is unchanged.
#[test]
fn plot_draws_one_mark_per_save() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("timeline.svg");
    let args = [
        "simulate",
        "--save-interval",
        "1iter",
        "--max-duration",
        "6ep",
    ];
    let shape = [
        "--batches-per-epoch",
        "5",
        "--epochs-per-iteration",
        "2",
        "--json",
    ];
    let plain = cairn(&[&args[..], &shape[..]].concat());
    let plotted = cairn(
        &[
            &args[..],
            &shape[..],
            &["--plot", svg.to_str().unwrap()][..],
        ]
        .concat(),
    );
    assert_eq!(plain.stdout, plotted.stdout);
    let saves = json_lines(&plotted);
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(picture.starts_with("<svg") && picture.trim_end().ends_with("</svg>"));
    let marks: Vec<&str> = picture
        .lines()
        .filter(|l| l.contains("save at epoch"))
        .collect();
    assert_eq!(marks.len(), saves.len(), "{picture}");
    for (mark, save) in marks.iter().zip(&saves) {
        let name = save["path"].as_str().unwrap();
        let event = save["event"].as_str().unwrap();
        assert!(
            mark.contains(name) && mark.contains(&format!("<title>{event} save")),
            "{mark}"
        );
    }
    for epoch in 0..6 {
        assert!(
            picture.contains(&format!(">ep{epoch}<")),
            "epoch {epoch} labelled"
        );
    }
    assert!(picture.contains("end of training"));
    let bad = cairn(
        &[
            &args[..],
            &shape[..],
            &["--plot", "/nonexistent/dir/p.svg"][..],
        ]
        .concat(),
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("cannot write the plot"),
        "{err}"
    );
}
