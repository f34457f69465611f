//! Sharded saves through the library: ranks as threads (each with its own saver and explicit
//! ranks) against a shared folder and a `file://` store (written synchronously and behind
//! training), the create-only manifest against the real
//! S3 server, a rank that never saves, and resume of every rank from the newest committed step.

use std::path::Path;
use std::sync::Arc;

use cairn::policy::{Event, MaxDuration, PolicyHost, Ranks, Time, Timestamp, TrainingState};
use cairn::sharded::{CommitStore, Created, Manifest, ShardRecord};
use cairn::{CheckpointSaver, Config, ResumeReason};
use object_store::path::Path as ObjectPath;
use object_store::{PutMode, PutOptions, PutPayload};

use crate::support::{config, fit, snapshot};
use cairn_testkit as common;

fn ranks(rank: u32, world_size: u32) -> Ranks {
    Ranks {
        rank,
        local_rank: rank,
        world_size,
        local_world_size: world_size,
        node_rank: 0,
    }
}

const LOCAL: &str = "run_name = \"r\"\n[checkpoint]\nfolder = \"{dir}/ck\"\nsave_interval = \"2ba\"\nsharded = true\nremote_file_name = false\ncommit_timeout_s = 20\n";
const REMOTE: &str = "run_name = \"r\"\n[checkpoint]\nfolder = \"{dir}/ck-{rank_dir}\"\nsave_interval = \"2ba\"\nsharded = true\ncommit_timeout_s = 20\n[remote]\nurl = \"file://{dir}/store\"\n";

/// Run `world` ranks as threads, each with its own saver, to `max`; each rank's `fit_end` result.
fn run_ranks(configs: Vec<Config>, max: &'static str) -> Vec<cairn::Result<Timestamp>> {
    let host = Arc::new(PolicyHost::default());
    let world = configs.len() as u32;
    // Every saver exists before any rank saves (rank 0's coordinator takes records published
    // before it started for an earlier attempt's), as `cairn.Saver`'s barrier ensures.
    let started = Arc::new(std::sync::Barrier::new(configs.len()));
    let handles: Vec<_> = configs
        .into_iter()
        .enumerate()
        .map(|(r, c)| {
            let host = Arc::clone(&host);
            let started = Arc::clone(&started);
            std::thread::spawn(move || {
                let saver = CheckpointSaver::with_ranks(&c, &host, ranks(r as u32, world));
                started.wait();
                let mut saver = saver?;
                let start = match saver.resume()? {
                    Some(p) => p.timestamp,
                    None => Timestamp::default(),
                };
                let end = fit(&mut saver, start, max)?;
                saver.fit_end()?;
                saver.close()?;
                Ok(end)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// `text` with `async_save = true` in its `[checkpoint]` table when `behind`.
fn written(text: &str, behind: bool) -> String {
    match behind {
        false => text.to_owned(),
        true => text.replacen("sharded = true\n", "sharded = true\nasync_save = true\n", 1),
    }
}

fn manifest_at(path: &Path) -> Manifest {
    Manifest::parse(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn four_ranks_in_a_shared_folder_commit_every_step_and_resume_from_the_newest() {
    four_ranks_in_a_shared_folder(false);
}

#[test]
fn four_ranks_writing_behind_training_commit_every_step_and_resume_from_the_newest() {
    four_ranks_in_a_shared_folder(true);
}

fn four_ranks_in_a_shared_folder(behind: bool) {
    // Saves behind training pass the writer's failpoint: no other test may configure it now.
    let _scenario = behind.then(crate::async_save::scenario);
    let dir = tempfile::tempdir().unwrap();
    let local = written(LOCAL, behind);
    let configs = (0..4).map(|_| config(dir.path(), &local)).collect();
    for r in run_ranks(configs, "6ba") {
        r.unwrap();
    }
    let ck = dir.path().join("ck");
    for batch in [2, 4, 6] {
        let step = format!("ep1-ba{batch}-rank0.pt");
        let step = if batch <= 4 {
            step.replace("ep1", "ep0")
        } else {
            step
        };
        let m = manifest_at(&ck.join(format!("{step}.commit/manifest.json")));
        assert_eq!(
            (m.step.as_str(), m.world_size, m.batch),
            (step.as_str(), 4, batch)
        );
        for shard in &m.shards {
            let path = ck.join(&shard.file);
            cairn::format::verify_checkpoint(&path).unwrap();
            assert_eq!(
                cairn::sharded::Checksum::of_file(&path).unwrap(),
                shard.crc64nvme,
                "{}",
                shard.file
            );
            assert_eq!(shard.object, None);
        }
    }
    // latest names rank 0's shard of the newest step; its manifest sits beside it.
    let target = cairn::resolve_latest(&ck.join("latest-rank0.pt"))
        .unwrap()
        .unwrap();
    assert_eq!(target, ck.join("ep1-ba6-rank0.pt"));
    // Every rank resumes from its own shard of the newest committed step.
    let configs: Vec<Config> = (0..4).map(|_| config(dir.path(), &local)).collect();
    for (r, c) in configs.iter().enumerate() {
        let mut saver =
            CheckpointSaver::with_ranks(c, &PolicyHost::default(), ranks(r as u32, 4)).unwrap();
        let point = saver.resume().unwrap().unwrap();
        assert_eq!(point.path, ck.join(format!("ep1-ba6-rank{r}.pt")));
        assert_eq!(point.timestamp.batch, 6);
        assert!(
            matches!(point.reason, ResumeReason::Committed { .. }),
            "{}",
            point.reason
        );
    }
}

#[test]
fn through_a_store_each_rank_uploads_and_rank_0_commits_and_moves_the_remote_pointer() {
    through_a_store(false);
}

#[test]
fn through_a_store_behind_training_each_rank_uploads_and_rank_0_commits() {
    through_a_store(true);
}

fn through_a_store(behind: bool) {
    let _scenario = behind.then(crate::async_save::scenario);
    let dir = tempfile::tempdir().unwrap();
    let remote = written(REMOTE, behind);
    let configs = (0..3)
        .map(|r| config(dir.path(), &remote.replace("{rank_dir}", &r.to_string())))
        .collect();
    for r in run_ranks(configs, "4ba") {
        r.unwrap();
    }
    let store = dir.path().join("store/r/checkpoints");
    let m = manifest_at(&store.join("ep0-ba4-rank0.pt.commit/manifest.json"));
    assert_eq!(m.shards.len(), 3);
    for shard in &m.shards {
        let object = dir
            .path()
            .join("store")
            .join(shard.object.as_ref().unwrap());
        assert_eq!(
            cairn::sharded::Checksum::of_file(&object).unwrap(),
            shard.crc64nvme
        );
        assert!(shard.etag.is_some());
    }
    let pointer = std::fs::read_to_string(store.join("latest-rank0.pt.symlink")).unwrap();
    assert_eq!(pointer, "r/checkpoints/ep0-ba4-rank0.pt");
    // Only rank 0 has a local latest, naming its own shard.
    let target = cairn::resolve_latest(&dir.path().join("ck-0/latest-rank0.pt")).unwrap();
    assert_eq!(target, Some(dir.path().join("ck-0/ep0-ba4-rank0.pt")));
    assert!(!dir.path().join("ck-1/latest-rank0.pt").exists());
    // A rank whose local copy is gone downloads its shard of the newest committed step.
    std::fs::remove_dir_all(dir.path().join("ck-2")).unwrap();
    let c = config(dir.path(), &remote.replace("{rank_dir}", "2"));
    let mut saver = CheckpointSaver::with_ranks(&c, &PolicyHost::default(), ranks(2, 3)).unwrap();
    let point = saver.resume().unwrap().unwrap();
    assert_eq!(point.path, dir.path().join("ck-2/ep0-ba4-rank2.pt"));
    assert_eq!(point.timestamp.batch, 4);
}

#[test]
fn a_rank_that_never_saves_leaves_the_step_uncommitted_and_rank_0_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = LOCAL.replace("commit_timeout_s = 20", "commit_timeout_s = 0.5");
    // Ranks 0, 1 and 3 of 4 save; rank 2 never does.
    let host = PolicyHost::default();
    let mut savers: Vec<CheckpointSaver> = [0, 1, 3]
        .iter()
        .map(|&r| {
            CheckpointSaver::with_ranks(&config(dir.path(), &text), &host, ranks(r, 4)).unwrap()
        })
        .collect();
    let ts = Timestamp::default().to_next_batch(1, 0, Default::default());
    for s in &mut savers {
        s.fit_start(&Timestamp::default()).unwrap();
        s.save(&ts, Event::Batch, || Ok(snapshot(1))).unwrap();
    }
    let err = savers[0].fit_end().unwrap_err().to_string();
    assert!(
        err.contains("rank 2 never published its shard record"),
        "{err}"
    );
    assert!(err.contains("ep0-ba1-rank0.pt"), "{err}");
    let ck = dir.path().join("ck");
    assert!(!ck.join("ep0-ba1-rank0.pt.commit/manifest.json").exists());
    assert!(
        !ck.join("latest-rank0.pt").exists(),
        "latest names an uncommitted step"
    );
    // Nothing committed: nothing to resume from.
    let mut again =
        CheckpointSaver::with_ranks(&config(dir.path(), &text), &host, ranks(1, 4)).unwrap();
    assert!(again.resume().unwrap().is_none());
}

#[test]
fn with_on_failure_fail_the_next_event_after_a_timeout_stops_training() {
    let dir = tempfile::tempdir().unwrap();
    let text = LOCAL.replace("commit_timeout_s = 20", "commit_timeout_s = 0.2");
    let c = config(dir.path(), &text);
    let mut rank0 = CheckpointSaver::with_ranks(&c, &PolicyHost::default(), ranks(0, 2)).unwrap();
    rank0.fit_start(&Timestamp::default()).unwrap();
    let one = Timestamp::default().to_next_batch(1, 0, Default::default());
    rank0.save(&one, Event::Batch, || Ok(snapshot(1))).unwrap();
    // Until the step's commit gave up (bounded by its 0.2 s timeout).
    assert_eq!(rank0.wait_for_commits(None).failed.len(), 1);
    let two = one.to_next_batch(1, 0, Default::default());
    let max = MaxDuration::new("8ba".parse::<Time>().unwrap()).unwrap();
    let state = TrainingState {
        timestamp: two,
        previous_timestamp: Some(one),
        max_duration: max,
        dataloader_len: Some(4),
        run_name: "r",
        ranks: ranks(0, 2),
        metrics: &[],
    };
    let err = rank0
        .on_event(&state, Event::Batch, || Ok(snapshot(2)))
        .unwrap_err();
    assert!(matches!(err, cairn::Error::StepsNotCommitted(_)), "{err}");
    assert!(err.to_string().contains("rank 1 never published"), "{err}");
}

#[test]
fn the_manifest_is_created_once_and_the_s3_server_refuses_the_second() {
    let Some(server) = common::s3::S3Server::start() else {
        return;
    };
    let store = server.store("runs");
    // The store's own answer to a second create-only put: 412, AlreadyExists.
    let os = store.object_store();
    let key = ObjectPath::from("runs/probe");
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(os.put_opts(&key, PutPayload::from_static(b"one"), create()))
        .unwrap();
    let second = rt.block_on(os.put_opts(&key, PutPayload::from_static(b"two"), create()));
    assert!(
        matches!(second, Err(object_store::Error::AlreadyExists { .. })),
        "{second:?}"
    );
    // Through the protocol: the second coordinator is told, and the first manifest stays.
    let commits = CommitStore::remote(store.clone());
    let shard = |crc| ShardRecord {
        format: cairn::sharded::manifest::RECORD_FORMAT.into(),
        step: "ep0-ba2-rank0.pt".into(),
        run_name: "r".into(),
        rank: 0,
        world_size: 1,
        file: "ep0-ba2-rank0.pt".into(),
        object: Some("ep0-ba2-rank0.pt".into()),
        bytes: 10,
        crc64nvme: cairn::sharded::Checksum(crc),
        etag: None,
        epoch: 0,
        batch: 2,
        published_unix_ms: 1,
    };
    let manifest = |crc| Manifest {
        format: cairn::sharded::manifest::MANIFEST_FORMAT.into(),
        step: "ep0-ba2-rank0.pt".into(),
        run_name: "r".into(),
        world_size: 1,
        epoch: 0,
        batch: 2,
        shards: vec![shard(crc)],
        committed_unix_ms: 2,
        checksum: "crc64nvme".into(),
    };
    assert_eq!(
        rt.block_on(commits.create_manifest(&manifest(1))).unwrap(),
        Created::Created
    );
    assert_eq!(
        rt.block_on(commits.create_manifest(&manifest(1))).unwrap(),
        Created::AlreadyIdentical
    );
    assert!(matches!(
        rt.block_on(commits.create_manifest(&manifest(2))).unwrap(),
        Created::AlreadyDifferent(_)
    ));
    let kept = rt
        .block_on(commits.manifest("ep0-ba2-rank0.pt"))
        .unwrap()
        .unwrap();
    assert_eq!(kept.shards[0].crc64nvme.0, 1);
}
