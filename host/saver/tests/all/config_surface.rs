//! The whole config surface, property-tested (issue 11, item 5): any TOML value for any key
//! either loads, and then a saver built from it runs a short fit in a temporary folder to the
//! end, or is refused at load with one sentence naming the file. Never a panic, and never a
//! failure once checkpoints are being written — except the refusal to replace a checkpoint
//! (`overwrite = false` with names that repeat, which cairn refuses by design, leaving the
//! earlier checkpoint intact).
//!
//! Paths are confined to each case's temporary folder: the local folder and `file://` URLs are
//! drawn from `{dir}`-rooted values, and no URL names a network store (no request leaves the
//! machine).

use std::fs;
use std::path::Path;

use proptest::prelude::*;

use cairn::policy::Timestamp;
use cairn::{CheckpointSaver, Config, Error};

use crate::support::fit;

/// Strings a user might write under any key: templates good and bad, names of every format,
/// time strings, URLs of every kind, and oddities.
const STRINGS: &[&str] = &[
    "",
    "/",
    "x",
    "ep{epoch}.pt",
    "ep{epoch}-ba{batch}-rank{rank}.pt",
    "{run_name}/ep{epoch}-ba{batch}.pt",
    "sub/ep{epoch:03d}-ba{batch}.pt",
    "a//b{batch}.pt",
    "./x/ep{batch}.pt",
    "../ba{batch}.pt",
    "ba{batch}.pt.lzo",
    "ba{batch}.pt.gz",
    "ba{batch}.tar.gz",
    "ba{batch}.safetensors",
    "ba{batch}.pt.rar",
    "ck.pt",
    "latest.pt",
    "/latest-{rank}.pt",
    "latest-ep{epoch}.pt",
    "{unknown}-{batch}.pt",
    "{epoch",
    "}",
    "{epoch:/<3}-{batch}.pt",
    "{run_name}",
    ".cairn-tmp.{batch}",
    "a\u{0}b{batch}",
    "é/ü{batch}.pt",
    "1ep",
    "2ba",
    "0dur",
    "0.5dur",
    "1",
    "1e100ba",
    "-1ba",
    "3sp",
    "1h",
    "fail",
    "warn",
    "skip",
    "save",
    "gcs://b/p",
    "dbfs:/x",
    "ftp://x",
    "s3://",
    "file://",
    "memory://",
    "memory://p/q",
    "memory://a//b",
];

/// Values for `folder` and `[remote] url`: the temporary folder, in-memory stores, and refusals.
const PLACES: &[&str] = &[
    "{dir}/ck",
    "{dir}/{run_name}/ck",
    "{dir}",
    "file://{dir}/store/u",
    "file://{dir}/remote",
    "memory://bucket/p",
    "memory://",
    "gcs://bucket/ckpts",
    "dbfs:/Volumes/x",
    "s3://",
    "file://",
    "{dir}/ep{epoch}",
    "{dir}/{oops",
];

/// `run_name` values: none of them leaves the temporary folder.
const RUN_NAMES: &[&str] = &["r", "run/x", "", "{epoch}", "a\u{0}b", "é"];

fn string(pool: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
    prop::sample::select(pool).prop_map(|s| toml::Value::String(s.to_owned()).to_string())
}

/// Any TOML value, as it would be written after `key = `.
fn any_value() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        string(STRINGS),
        prop::sample::select(&[0i64, 1, -1, 2, 3, 256, 257, i64::MAX, i64::MIN][..])
            .prop_map(|n| n.to_string()),
        (-5i64..50).prop_map(|n| n.to_string()),
        prop::sample::select(
            &[
                "nan",
                "inf",
                "-inf",
                "1e20",
                "9.2e18",
                "0.0",
                "-1.5",
                "0.001",
                "31536000.5"
            ][..]
        )
        .prop_map(str::to_owned),
        any::<bool>().prop_map(|b| b.to_string()),
    ];
    prop_oneof![
        4 => scalar.clone(),
        1 => prop::collection::vec(scalar, 0..3).prop_map(|v| format!("[{}]", v.join(", "))),
        1 => prop::sample::select(
            &["{}", "{ wasm = \"nope.wasm\" }", "{ a = 1 }", "[\"state/optimizers/*\", \"rng\"]"][..]
        )
        .prop_map(str::to_owned),
    ]
}

/// Names a user might give: every format, templates good and bad.
const NAMES: &[&str] = &[
    "ep{epoch}-ba{batch}-rank{rank}.pt",
    "{run_name}/ep{epoch}-ba{batch}.pt",
    "sub/ep{epoch:03d}-ba{batch}.pt",
    "ba{batch}.pt.gz",
    "ba{batch}.pt.zst",
    "ba{batch}.tar.gz",
    "ba{batch}.safetensors",
    "ep{epoch}.pt",
    "/ba{batch}.pt",
    "../ba{batch}.pt",
    "ck.pt",
    "latest-rank{rank}.pt",
    "latest-ep{epoch}.pt",
    "{unknown}-{batch}.pt",
    "{epoch:/<3}-{batch}.pt",
    "a//b{batch}.pt",
    "ba{batch}.pt.lzo",
    "{epoch",
];

/// A value typical of `key` three times in four, any TOML value otherwise.
fn value_for(key: &'static str) -> BoxedStrategy<String> {
    let typical: BoxedStrategy<String> = match key {
        "filename" => string(NAMES).boxed(),
        "remote_file_name" | "latest_filename" | "latest_remote_file_name" => {
            prop_oneof![3 => string(NAMES), 1 => Just("false".to_owned())].boxed()
        }
        "save_interval" => prop_oneof![
            string(&[
                "1ba", "2ba", "1ep", "3sp", "0.5dur", "1dur", "1e100ba", "-1ba", "1h", "0dur"
            ]),
            (-2i64..4).prop_map(|n| n.to_string()),
        ]
        .boxed(),
        "overwrite" | "weights_only" | "sharded" => {
            any::<bool>().prop_map(|b| b.to_string()).boxed()
        }
        "num_checkpoints_to_keep" => (-2i64..4).prop_map(|n| n.to_string()).boxed(),
        "ignore_keys" => prop::sample::select(
            &[
                "[]",
                "[\"state/optimizers/*\"]",
                "[\"*\"]",
                "[\"rng\", \"state/model/*.bias\"]",
                "[\"[\"]",
            ][..],
        )
        .prop_map(str::to_owned)
        .boxed(),
        "num_concurrent_uploads" => prop::sample::select(&[1i64, 2, 4, 256, 0, 257][..])
            .prop_map(|n| n.to_string())
            .boxed(),
        "upload_timeout_in_seconds" => {
            prop::sample::select(&["3600", "0.5", "31536000", "1e20", "0", "nan"][..])
                .prop_map(str::to_owned)
                .boxed()
        }
        "commit_timeout_s" => {
            prop::sample::select(&["600", "0.5", "31536000", "1e20", "0", "-1", "nan"][..])
                .prop_map(str::to_owned)
                .boxed()
        }
        "on_failure" => string(&["fail", "warn"]).boxed(),
        "async_save" => any::<bool>().prop_map(|b| b.to_string()).boxed(),
        "staging_budget_mib" => {
            prop::sample::select(&[1i64, 64, 4096, 0, -1, 1 << 20, (1 << 20) + 1][..])
                .prop_map(|n| n.to_string())
                .boxed()
        }
        "on_error" => string(&["fail", "skip", "save"]).boxed(),
        _ => any_value().boxed(),
    };
    prop_oneof![3 => typical, 1 => any_value()].boxed()
}

/// Some of the keys, each with a value.
fn document() -> impl Strategy<Value = String> {
    const CHECKPOINT_KEYS: &[&str] = &[
        "filename",
        "remote_file_name",
        "latest_filename",
        "latest_remote_file_name",
        "save_interval",
        "overwrite",
        "num_checkpoints_to_keep",
        "weights_only",
        "ignore_keys",
        "num_concurrent_uploads",
        "upload_timeout_in_seconds",
        "sharded",
        "commit_timeout_s",
        "async_save",
        "staging_budget_mib",
    ];
    let entries = prop::collection::vec(
        prop::sample::select(CHECKPOINT_KEYS).prop_flat_map(|k| (Just(k), value_for(k))),
        0..5,
    );
    (
        prop::option::weighted(
            0.8,
            prop_oneof![4 => string(&["r"]), 1 => string(RUN_NAMES)],
        ),
        prop::option::of(string(PLACES)),
        entries,
        prop::option::of(string(PLACES)),
        prop::option::weighted(0.3, value_for("on_failure")),
        prop::option::weighted(0.2, value_for("on_error")),
    )
        .prop_map(|(run_name, folder, entries, url, on_failure, on_error)| {
            let mut text = String::new();
            if let Some(n) = run_name {
                text += &format!("run_name = {n}\n");
            }
            text += "[checkpoint]\n";
            // The folder is always inside the case's temporary folder (or a store URL).
            text += &format!(
                "folder = {}\n",
                folder.unwrap_or_else(|| "\"{dir}/ck\"".to_owned())
            );
            let mut seen = std::collections::HashSet::new();
            for (key, value) in entries {
                if seen.insert(key) {
                    text += &format!("{key} = {value}\n");
                }
            }
            text += "[remote]\n";
            text += &format!(
                "url = {}\n",
                url.unwrap_or_else(|| "\"file://{dir}/remote\"".to_owned())
            );
            if let Some(v) = on_failure {
                text += &format!("on_failure = {v}\n");
            }
            if let Some(v) = on_error {
                text += &format!("[sandbox]\non_error = {v}\n");
            }
            text
        })
}

/// Every file under `dir`, for "nothing was written".
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            out.extend(files(&entry.path()));
        } else {
            out.push(entry.path().display().to_string());
        }
    }
    out
}

/// A refusal cairn makes on purpose: a repeated name with `overwrite = false` (also when the
/// save behind training that ran into it reports it).
fn refuses_to_replace(e: &Error) -> bool {
    match e.cause() {
        Error::AlreadyExists { .. } => true,
        Error::UploadsFailed(failures) => failures
            .iter()
            .all(|f| f.message.contains("overwrite is false")),
        _ => false,
    }
}

/// A deadline the case chose too short for this machine's load (`0.5` s for an upload or a
/// commit): the run reports it as it should, naming what did not finish.
fn timed_out(config: &Config, e: &Error) -> bool {
    match e.cause() {
        Error::UploadsFailed(_) => config.upload_timeout_in_seconds < 1.0,
        Error::StepsNotCommitted(_) => config.commit_timeout_s < 1.0,
        _ => false,
    }
}

fn run(config: &Config) -> Result<(), Error> {
    // Saves behind training reach the writer's failpoint, which the async tests configure.
    let _fp = config.async_save.then(crate::async_save::scenario);
    let mut saver = CheckpointSaver::new(config)?;
    let result = fit(&mut saver, Timestamp::default(), "6ba").and_then(|_| saver.fit_end());
    let closed = saver.close();
    result?;
    closed.map(|_| ())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_config_loads_and_runs_or_is_refused_in_one_sentence(doc in document()) {
        let dir = tempfile::tempdir().unwrap();
        let text = doc.replace("{dir}", &dir.path().display().to_string());
        match Config::parse(&text, "p.toml", dir.path()) {
            Err(e) => {
                let message = e.to_string();
                prop_assert!(message.starts_with("p.toml"), "{message}");
                prop_assert!(!message.contains('\n'), "not one line: {message}");
                prop_assert!(files(dir.path()).is_empty(), "loading wrote {:?}", files(dir.path()));
            }
            Ok(config) => {
                if let Err(e) = run(&config) {
                    prop_assert!(
                        refuses_to_replace(&e) || timed_out(&config, &e),
                        "loaded, then failed: {e}\nconfig:\n{text}"
                    );
                }
            }
        }
    }
}
