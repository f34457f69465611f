//! Sharded runs end to end: `cairn run --world-size 4` (four rank processes, as torchrun starts
//! them) against a shared local folder and against the real S3 server; one rank killed with
//! SIGKILL during saves, for several seeds: `latest` never names an uncommitted step, and the
//! resumed run continues from the newest committed step on every rank.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cairn::sharded::{Checksum, Manifest};
use cairn_cli::train::SplitMix;
use cairn_testkit::s3::S3Server;

fn job(dir: &Path, name: &str, remote: &str, max: &str, mib: f64) -> PathBuf {
    let path = dir.join(format!("{name}-{max}.toml"));
    let remote = match remote {
        "" => "remote_file_name = false\n".to_owned(),
        url => format!("[remote]\nurl = \"{url}\"\n"),
    };
    let (table, rest) = match remote.strip_prefix("remote_file_name") {
        Some(_) => (remote.clone(), String::new()),
        None => (String::new(), remote.clone()),
    };
    let text = format!(
        "run_name = \"{name}\"\n[checkpoint]\nfolder = \"{name}/ck\"\nsave_interval = \"1ba\"\nsharded = true\ncommit_timeout_s = 30\n{table}{rest}[train]\nmax_duration = \"{max}\"\nbatches_per_epoch = 4\nseconds_per_batch = 0.01\nmodel_mib = {mib}\n"
    );
    fs::write(&path, text).unwrap();
    path
}

fn cairn(dir: &Path, env: &[(String, String)], args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .current_dir(dir)
        .envs(env.iter().cloned())
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
    (out.status.success(), json, stderr)
}

/// Every committed step under `root` (its manifests, by batch) with each shard checked against
/// its manifest where `locate` finds it.
pub(crate) fn committed(
    root: &Path,
    locate: impl Fn(&cairn::sharded::ShardRecord) -> PathBuf,
) -> Vec<Manifest> {
    let mut found = Vec::new();
    for entry in fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path().join("manifest.json");
        if let Ok(bytes) = fs::read(&path) {
            let m = Manifest::parse(&bytes).unwrap();
            for shard in &m.shards {
                let file = locate(shard);
                assert_eq!(
                    Checksum::of_file(&file).unwrap(),
                    shard.crc64nvme,
                    "{} does not match its manifest",
                    file.display()
                );
                cairn::format::verify_checkpoint(&file).unwrap();
            }
            found.push(m);
        }
    }
    found.sort_by_key(|m| m.batch);
    found
}

#[test]
fn four_ranks_in_a_shared_folder_commit_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let config = job(dir.path(), "local", "", "6ba", 2.0);
    let config = config.to_str().unwrap();
    let (ok, run, stderr) = cairn(
        dir.path(),
        &[],
        &["run", "--world-size", "4", "--config", config],
    );
    assert!(ok, "{stderr}");
    assert_eq!(run["failed_ranks"], serde_json::json!([]));
    assert_eq!(run["saves"], 24);
    assert_eq!(run["commits"]["committed"], 6, "{run}");
    let ck = dir.path().join("local/ck");
    let steps = committed(&ck, |s| ck.join(&s.file));
    assert_eq!(
        steps.iter().map(|m| m.batch).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    let latest = cairn::resolve_latest(&ck.join("latest-rank0.pt"))
        .unwrap()
        .unwrap();
    assert_eq!(latest, ck.join("ep1-ba6-rank0.pt"));
    let verify = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["verify", ck.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(out.contains("ok step ep1-ba6-rank0.pt (4 shards"), "{out}");
    let manifest = ck.join("ep1-ba6-rank0.pt.commit/manifest.json");
    let (ok, shown, stderr) = cairn(dir.path(), &[], &["inspect", manifest.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert_eq!(shown["format"], "cairn-commit/1");
    assert_eq!(shown["manifest"]["shards"].as_array().unwrap().len(), 4);
    // A step whose manifest is gone is reported as uncommitted.
    fs::remove_file(&manifest).unwrap();
    let verify = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["verify", ck.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!verify.status.success());
    let err = String::from_utf8_lossy(&verify.stderr);
    assert!(err.contains("ep1-ba6-rank0.pt is not committed: it has no manifest (records from ranks [0, 1, 2, 3])"), "{err}");
    assert!(err.contains("latest-rank0.pt points to"), "{err}");
}

/// Turn on `async_save` in the job at `config`.
fn write_behind(config: &Path) {
    let text = fs::read_to_string(config).unwrap();
    let text = text.replacen("sharded = true\n", "sharded = true\nasync_save = true\n", 1);
    fs::write(config, text).unwrap();
}

#[test]
fn four_ranks_writing_behind_training_commit_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let config = job(dir.path(), "behind", "", "6ba", 2.0);
    write_behind(&config);
    let (ok, run, stderr) = cairn(
        dir.path(),
        &[],
        &[
            "run",
            "--world-size",
            "4",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    assert!(ok, "{stderr}");
    assert_eq!(run["saves"], 24, "{run}");
    assert_eq!(run["commits"]["committed"], 6, "{run}");
    for rank in run["ranks"].as_array().unwrap() {
        assert_eq!(rank["async_save"], true, "{rank}");
    }
    let ck = dir.path().join("behind/ck");
    let steps = committed(&ck, |s| ck.join(&s.file));
    assert_eq!(
        steps.iter().map(|m| m.batch).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    let latest = cairn::resolve_latest(&ck.join("latest-rank0.pt"))
        .unwrap()
        .unwrap();
    assert_eq!(latest, ck.join("ep1-ba6-rank0.pt"));
}

#[test]
fn four_ranks_against_the_s3_server_commit_every_step_and_resume() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let env = S3Server::env(&server.endpoint);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("s3://{}/runs", cairn_testkit::s3::BUCKET);
    let first = job(dir.path(), "s3", &url, "4ba", 2.0);
    let (ok, run, stderr) = cairn(
        dir.path(),
        &env,
        &[
            "run",
            "--world-size",
            "4",
            "--config",
            first.to_str().unwrap(),
        ],
    );
    assert!(ok, "{stderr}");
    assert_eq!(run["commits"]["committed"], 4, "{run}");
    let prefix = server.object_file("runs/s3/checkpoints");
    let steps = committed(&prefix, |s| {
        server.object_file(&format!("runs/{}", s.object.as_ref().unwrap()))
    });
    assert_eq!(steps.len(), 4);
    let pointer = fs::read_to_string(prefix.join("latest-rank0.pt.symlink")).unwrap();
    assert_eq!(pointer, "runs/s3/checkpoints/ep0-ba4-rank0.pt");
    // Every rank's local copy gone: each downloads its own shard of the newest committed step.
    fs::remove_dir_all(dir.path().join("s3")).unwrap();
    let more = job(dir.path(), "s3", &url, "6ba", 2.0);
    let (ok, run, stderr) = cairn(
        dir.path(),
        &env,
        &[
            "run",
            "--world-size",
            "4",
            "--resume",
            "--config",
            more.to_str().unwrap(),
        ],
    );
    assert!(ok, "{stderr}");
    for (rank, summary) in run["ranks"].as_array().unwrap().iter().enumerate() {
        let from = summary["resumed_from"].as_str().unwrap();
        assert!(from.ends_with(&format!("ep0-ba4-rank{rank}.pt")), "{from}");
        assert_eq!(summary["batches"], 2);
    }
    let pointer = fs::read_to_string(prefix.join("latest-rank0.pt.symlink")).unwrap();
    assert_eq!(pointer, "runs/s3/checkpoints/ep1-ba6-rank0.pt");
}

#[test]
fn a_rank_killed_mid_save_leaves_its_step_uncommitted_and_every_rank_resumes_from_the_last_commit()
{
    killed_mid_save(false, &[11, 12, 13]);
}

#[test]
fn a_rank_killed_while_writing_behind_training_leaves_its_step_uncommitted() {
    killed_mid_save(true, &[21, 22]);
}

fn killed_mid_save(behind: bool, seeds: &[u64]) {
    for &seed in seeds {
        let mut rng = SplitMix(seed);
        let dir = tempfile::tempdir().unwrap();
        let config = job(dir.path(), "kill", "", "40ba", 8.0);
        if behind {
            write_behind(&config);
        }
        let mut parent = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .current_dir(dir.path())
            .args([
                "run",
                "--world-size",
                "4",
                "--json",
                "--config",
                config.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(parent.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("cairn: rank ")
                    && let Some((rank, pid)) = rest.split_once(" is process ")
                {
                    let _ = tx.send((rank.parse::<u32>().unwrap(), pid.parse::<i32>().unwrap()));
                }
            }
        });
        let pids: Vec<(u32, i32)> = (0..4)
            .map(|_| rx.recv_timeout(Duration::from_secs(30)).unwrap())
            .collect();
        let victim = pids[(rng.next_u64() % 4) as usize];
        std::thread::sleep(Duration::from_millis(400 + rng.next_u64() % 800));
        // SAFETY: a signal to a process this test started (through the parent).
        unsafe {
            libc::kill(victim.1, libc::SIGKILL);
        }
        let status = parent.wait().unwrap();
        assert!(
            !status.success(),
            "seed {seed}: the run went on without rank {}",
            victim.0
        );
        let ck = dir.path().join("kill/ck");
        let steps = committed(&ck, |s| ck.join(&s.file));
        let latest = cairn::resolve_latest(&ck.join("latest-rank0.pt")).unwrap();
        if let Some(target) = &latest {
            let manifest = PathBuf::from(format!("{}.commit/manifest.json", target.display()));
            assert!(
                manifest.exists(),
                "seed {seed}: latest names {}, which is not committed",
                target.display()
            );
        }
        let newest = steps.last().map(|m| m.batch);
        // Resume: every rank continues from its own shard of the newest committed step.
        let end = newest.unwrap_or(0) + 3;
        let more = job(dir.path(), "kill", "", &format!("{end}ba"), 8.0);
        if behind {
            write_behind(&more);
        }
        let (ok, run, stderr) = cairn(
            dir.path(),
            &[],
            &[
                "run",
                "--world-size",
                "4",
                "--resume",
                "--config",
                more.to_str().unwrap(),
            ],
        );
        assert!(ok, "seed {seed}: {stderr}");
        for (rank, summary) in run["ranks"].as_array().unwrap().iter().enumerate() {
            match newest {
                Some(batch) => {
                    let from = summary["resumed_from"].as_str().unwrap_or("-");
                    assert!(
                        from.ends_with(&format!("-ba{batch}-rank{rank}.pt")),
                        "seed {seed}: rank {rank} resumed from {from}, not from step {batch}"
                    );
                    assert_eq!(summary["batches"].as_u64().unwrap(), end - batch);
                }
                None => assert!(summary["resumed_from"].is_null()),
            }
        }
        let steps = committed(&ck, |s| ck.join(&s.file));
        let last = steps.last().unwrap();
        assert_eq!(last.batch, end, "seed {seed}");
        let latest = cairn::resolve_latest(&ck.join("latest-rank0.pt"))
            .unwrap()
            .unwrap();
        assert_eq!(latest, ck.join(&last.step), "seed {seed}");
    }
}
