//! Issue 11 as a Composer user meets it through `cairn run`: retention and resume in a folder an
//! earlier run used, configs refused at load instead of misplacing checkpoints, the `latest`
//! link's name, ranks other than 0, the default run name, `verify` on an uploaded mirror, and a
//! `folder` given as a URL.

use cairn_testkit as common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `[train]` of every job here: 4 batches an epoch, no sleeping, a small model.
const TRAIN: &str = "batches_per_epoch = 4\nseconds_per_batch = 0\nmodel_mib = 0.25\n";

fn cairn(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .current_dir(dir)
        .env_remove("RUN_NAME")
        .env_remove("COMPOSER_RUN_NAME")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap()
}

/// Write a job file: `head` (top-level keys and `[checkpoint]`/`[remote]` tables), then `[train]`
/// with `max_duration`.
fn job(dir: &Path, file: &str, head: &str, max: &str) -> String {
    let path = dir.join(file);
    fs::write(
        &path,
        format!("{head}\n[train]\nmax_duration = \"{max}\"\n{TRAIN}"),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn run_json(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> (serde_json::Value, String) {
    let mut all = vec!["run", "--json"];
    all.extend_from_slice(args);
    let out = cairn(dir, env, &all);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (common::success_json(&out), stderr)
}

/// The checkpoint files of a folder (names starting with `ep`), oldest batch first.
fn checkpoints(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("ep"))
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|n| batch_of(n));
    v
}

fn batch_of(name: &str) -> u64 {
    name.split("-ba")
        .nth(1)
        .and_then(|b| b.split(['-', '.']).next()?.parse().ok())
        .unwrap_or_else(|| panic!("{name} carries no batch"))
}

/// Which run wrote a checkpoint (`state/run_name`).
fn written_by(path: &Path) -> String {
    let tree = cairn::format::read_checkpoint(path).unwrap();
    match tree.get_path(&["state", "run_name"]) {
        Some(cairn::format::Value::Str(s)) => s.to_string(),
        other => panic!("{}: run_name is {other:?}", path.display()),
    }
}

/// An earlier run, `old`, left `ep1-ba4` .. `ep5-ba20` and its `latest` in `ck`.
fn earlier_run(dir: &Path) {
    let old = job(
        dir,
        "old.toml",
        "run_name = \"old\"\n[checkpoint]\nfolder = \"ck\"\nremote_file_name = false",
        "5ep",
    );
    run_json(dir, &[], &["--config", &old]);
    assert_eq!(checkpoints(&dir.join("ck")).len(), 5);
}

/// Issue 11, items 1 and 2, exactly as reported: a fresh run in that folder with `overwrite`,
/// keeping 1 and no local `latest`, must keep what it wrote (not the earlier run's `ep5`), and
/// `--resume` must continue from its `ep2-ba8`, saying why.
#[test]
fn a_new_run_keeps_what_it_wrote_and_resumes_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    earlier_run(d);
    let head = "run_name = \"new\"\n[checkpoint]\nfolder = \"ck\"\nremote_file_name = false\noverwrite = true\nnum_checkpoints_to_keep = 1\nlatest_filename = false";
    let (summary, _) = run_json(d, &[], &["--config", &job(d, "new.toml", head, "2ep")]);
    assert_eq!(summary["saves"], 2, "{summary}");
    let ck = d.join("ck");
    assert_eq!(
        checkpoints(&ck),
        ["ep2-ba8-rank0.pt"],
        "retention deleted this run's checkpoints"
    );
    assert_eq!(written_by(&ck.join("ep2-ba8-rank0.pt")), "new");

    let (resumed, stderr) = run_json(
        d,
        &[],
        &["--resume", "--config", &job(d, "new3.toml", head, "3ep")],
    );
    assert!(
        resumed["resumed_from"]
            .as_str()
            .unwrap()
            .ends_with("ck/ep2-ba8-rank0.pt"),
        "{resumed}"
    );
    assert_eq!(resumed["batches"], 4, "{resumed}");
    assert!(
        stderr.contains("resuming from ck/ep2-ba8-rank0.pt (epoch 2, batch 8): it is the most recently written checkpoint that verifies"),
        "{stderr}"
    );
}

/// Issue 11, item 2, with the earlier run's later checkpoints still there: resume follows
/// `latest`, and without a usable `latest` takes the most recently *written* checkpoint, never
/// the one whose name carries the highest counters.
#[test]
fn resume_never_jumps_to_an_earlier_runs_later_checkpoint() {
    for break_latest in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        earlier_run(d);
        let head = "run_name = \"new\"\n[checkpoint]\nfolder = \"ck\"\nremote_file_name = false\noverwrite = true";
        run_json(d, &[], &["--config", &job(d, "new.toml", head, "2ep")]);
        let ck = d.join("ck");
        assert_eq!(checkpoints(&ck).len(), 5, "the earlier run's ep3..ep5 stay");
        assert_eq!(written_by(&ck.join("ep5-ba20-rank0.pt")), "old");
        let why = if break_latest {
            fs::remove_file(ck.join("latest-rank0.pt")).unwrap();
            "it is the most recently written checkpoint that verifies (there is no ck/latest-rank0.pt)"
        } else {
            "the latest pointer names it"
        };
        let (resumed, stderr) = run_json(
            d,
            &[],
            &["--resume", "--config", &job(d, "new3.toml", head, "3ep")],
        );
        assert!(
            resumed["resumed_from"]
                .as_str()
                .unwrap()
                .ends_with("ep2-ba8-rank0.pt"),
            "{resumed}"
        );
        assert_eq!(resumed["batches"], 4, "{resumed}");
        assert!(stderr.contains(why), "{stderr}");
        assert_eq!(written_by(&ck.join("ep3-ba12-rank0.pt")), "new");
    }
}

/// Issue 11, items 3 and 5: what cannot work is refused when the config is loaded, by `run` and
/// `simulate --config` alike, in one line, before anything is written.
#[test]
fn configs_that_would_misplace_or_fail_later_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases = [
        ("folder = \"gcs://bucket/ckpts\"", "gs://bucket/ckpts"),
        (
            "folder = \"oci://bucket/ckpts\"",
            "does not store to oci://",
        ),
        (
            "folder = \"dbfs:/Volumes/ckpts\"",
            "does not store to dbfs://",
        ),
        (
            "folder = \"wandb://project/ckpts\"",
            "does not store to wandb://",
        ),
        (
            "folder = \"sftp://host/ckpts\"",
            "does not store to sftp://",
        ),
        ("upload_timeout_in_seconds = 1e20", "at most 31536000"),
        (
            "remote_file_name = \"./ckpts/ep{epoch}.pt\"",
            "not a valid object name",
        ),
        ("remote_file_name = \"a//b.pt\"", "not a valid object name"),
        ("latest_filename = \"latest.pt.lzo\"", "lzop"),
    ];
    for (i, (line, needle)) in cases.iter().enumerate() {
        let config = job(
            d,
            &format!("bad{i}.toml"),
            &format!("run_name = \"r\"\n[checkpoint]\n{line}"),
            "2ep",
        );
        for args in [
            vec!["run", "--config", config.as_str()],
            vec!["simulate", "--config", config.as_str()],
        ] {
            let out = cairn(d, &[], &args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?} {line}: {stderr}");
            assert!(stderr.contains(needle), "{args:?} {line}: {stderr}");
            assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        }
    }
    let left: Vec<PathBuf> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|e| e != "toml"))
        .collect();
    assert!(left.is_empty(), "written before refusing: {left:?}");
    let out = cairn(
        d,
        &[],
        &[
            "run",
            "--config",
            &job(d, "url.toml", "[remote]\nurl = \"gcs://b/p\"", "2ep"),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("remote.url"));
}

/// Issue 11, item 4: `latest_filename` loses a leading `/` (the link stays in the folder, as in
/// Composer) and renders time variables as checkpoint names do.
#[test]
fn latest_filename_stays_in_the_folder_and_renders_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let head = "run_name = \"l\"\n[checkpoint]\nfolder = \"ck\"\nremote_file_name = false\nlatest_filename = \"/latest-ep{epoch}-rank{rank}.pt\"";
    let (summary, _) = run_json(d, &[], &["--config", &job(d, "l.toml", head, "2ep")]);
    let ck = d.join("ck");
    for (link, target) in [
        ("latest-ep1-rank0.pt", "ep1-ba4-rank0.pt"),
        ("latest-ep2-rank0.pt", "ep2-ba8-rank0.pt"),
    ] {
        assert_eq!(
            fs::read_link(ck.join(link)).unwrap(),
            Path::new(target),
            "{link}"
        );
    }
    assert!(!Path::new("/latest-ep1-rank0.pt").exists());
    assert!(!ck.join("latest-ep{epoch}-rank0.pt").exists());
    assert!(
        summary["latest"]
            .as_str()
            .unwrap()
            .starts_with("ck/latest-ep2-rank0.pt -> "),
        "{summary}"
    );
}

/// Issue 11, item 6: with `RANK=1`, the process asks the policy at every event, exactly as rank 0
/// does, and writes, links, uploads and deletes nothing; its start-up cleanup leaves rank 0's
/// temporary files in the shared folder alone.
#[test]
fn only_rank_zero_writes_a_checkpoint() {
    let every_n = common::rust_policy("every_n");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let head = format!(
        "run_name = \"ranks\"\n[checkpoint]\nfolder = \"ck\"\nsave_interval = {{ wasm = \"{}\", config = {{ n = 2 }} }}\nnum_checkpoints_to_keep = 1\n[remote]\nurl = \"file://./remote\"",
        every_n.display()
    );
    let config = job(d, "ranks.toml", &head, "2ep");
    fs::create_dir_all(d.join("ck")).unwrap();
    let in_progress = d.join("ck/.cairn-tmp.4242.0.ep1-ba4-rank0.pt");
    fs::write(&in_progress, b"rank 0 is writing this").unwrap();
    let rank = |r: &str| {
        let env = [
            ("RANK", r),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", r),
            ("LOCAL_WORLD_SIZE", "2"),
        ];
        run_json(d, &env, &["--config", &config]).0
    };
    let one = rank("1");
    assert_eq!(
        (one["rank"].as_u64(), one["saves"].as_u64()),
        (Some(1), Some(0)),
        "{one}"
    );
    assert_eq!(one["batches"], 8);
    let calls = one["policies"][0]["calls"].as_u64().unwrap();
    assert!(calls >= 8, "rank 1 did not ask the policy: {one}");
    let names: Vec<String> = fs::read_dir(d.join("ck"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [".cairn-tmp.4242.0.ep1-ba4-rank0.pt"],
        "rank 1 touched the folder"
    );
    assert!(!d.join("remote").exists(), "rank 1 uploaded");
    assert!(one["uploads"].is_null(), "{one}");

    let zero = rank("0");
    assert_eq!(zero["saves"], 4, "{zero}");
    assert_eq!(
        zero["policies"][0]["calls"], calls,
        "the ranks disagree on when"
    );
    assert!(!in_progress.exists(), "rank 0 cleans its own leftovers");
}

/// Issue 11, item 11: without `run_name`, each run gets its own generated name as in Composer,
/// or `RUN_NAME`; `--resume` without a name is refused (Composer's `autoresume` rule).
#[test]
fn runs_without_a_name_get_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = job(
        d,
        "anon.toml",
        "[checkpoint]\nremote_file_name = false",
        "1ep",
    );
    let names: Vec<String> = (0..2)
        .map(|_| {
            let (s, _) = run_json(d, &[], &["--config", &config]);
            let name = s["run_name"].as_str().unwrap().to_owned();
            let parts: Vec<&str> = name.splitn(3, '-').collect();
            assert!(
                parts.len() == 3 && parts[0].parse::<u64>().is_ok(),
                "not <seconds>-<adjective>-<animal>: {name}"
            );
            assert_eq!(s["folder"], format!("{name}/checkpoints"));
            name
        })
        .collect();
    assert_ne!(names[0], names[1], "two runs share a folder");
    let (s, _) = run_json(d, &[("RUN_NAME", "from-env")], &["--config", &config]);
    assert_eq!(s["run_name"], "from-env");
    let out = cairn(d, &[], &["run", "--resume", "--config", &config]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--resume needs the run's name"), "{stderr}");
    // Ranks cannot agree on a generated name (Composer broadcasts rank 0's).
    let out = cairn(d, &[("WORLD_SIZE", "2")], &["run", "--config", &config]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no run_name is set and WORLD_SIZE is 2"),
        "{stderr}"
    );
    // The embedded demo keeps its fixed name (`cairn_run_with_no_arguments_leaves_a_verified_folder`).
}

/// Issue 11, item 9: `cairn verify` on the uploaded mirror (`file://./remote`) resolves the
/// `.symlink` pointer's bucket-relative key as the store does.
#[test]
fn verify_follows_remote_pointers_in_an_uploaded_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let head =
        "run_name = \"m\"\n[checkpoint]\nfolder = \"ck\"\n[remote]\nurl = \"file://./remote\"";
    run_json(d, &[], &["--config", &job(d, "m.toml", head, "2ep")]);
    let out = cairn(d, &[], &["verify", "remote/m/checkpoints"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "ok remote/m/checkpoints/latest-rank0.pt.symlink -> remote/m/checkpoints/ep2-ba8-rank0.pt"
        ),
        "{stdout}"
    );
    // The staging files of uploads a killed process was in (the file store's `NAME#N`) are no
    // objects of the store: verify passes over them.
    for staging in ["latest-rank0.pt.symlink#1", "ep3-ba9-rank0.pt#2"] {
        fs::write(d.join("remote/m/checkpoints").join(staging), "").unwrap();
    }
    let out = cairn(d, &[], &["verify", "remote/m/checkpoints"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(
        d.join("remote/m/checkpoints/latest-rank0.pt.symlink"),
        "m/checkpoints/ep9.pt",
    )
    .unwrap();
    let out = cairn(d, &[], &["verify", "remote/m/checkpoints"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("names 'm/checkpoints/ep9.pt'"), "{stderr}");
}

/// Issue 17, item 2: a `folder` given as a URL names its objects `<url path>/<filename>` as
/// Composer's `Trainer` does (not `<url path>/<run_name>/checkpoints/...`), and leaves no staging
/// copy behind; a crashed run's stale staging folder is removed at the next start.
#[test]
fn a_url_folder_names_objects_as_composer_and_cleans_its_staging() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tmp = d.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let stale = tmp.join(format!("cairn-staging-{dead}-1"));
    fs::create_dir_all(&stale).unwrap();
    fs::write(stale.join("ep1-ba4-rank0.pt"), b"a crashed run's copy").unwrap();
    let head = "run_name = \"u\"\n[checkpoint]\nfolder = \"file://./store/u\"";
    let tmp_env = tmp.to_string_lossy().into_owned();
    let (summary, _) = run_json(
        d,
        &[("TMPDIR", tmp_env.as_str())],
        &["--config", &job(d, "u.toml", head, "2ep")],
    );
    assert_eq!(summary["uploads"]["uploaded"], 2, "{summary}");
    let store = d.join("store/u");
    assert_eq!(
        checkpoints(&store),
        ["ep1-ba4-rank0.pt", "ep2-ba8-rank0.pt"]
    );
    assert!(!store.join("u").exists(), "the URL's path was doubled");
    assert_eq!(
        fs::read_to_string(store.join("latest-rank0.pt.symlink")).unwrap(),
        "ep2-ba8-rank0.pt"
    );
    let left: Vec<PathBuf> = fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");
}
