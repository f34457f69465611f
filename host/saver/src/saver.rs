//! cairn's `CheckpointSaver`: the object a training loop calls at every checkpoint event.
//!
//! It reads like Composer's `CheckpointSaver._save_checkpoint`
//! (`composer/callbacks/checkpoint_saver.py`), with the fixes listed in the README's differences:
//! every checkpoint is durable (fsync of file and folder) before anything names it, the
//! `latest` pointer is swapped atomically, retention counts the checkpoints of earlier runs in
//! the same folder by when they were written and never deletes the one `latest` names, and a
//! failed save leaves the previous checkpoint and its pointer as they were. Only global rank 0
//! writes (see [`Role`]), unless `sharded = true`: then every rank writes its own shard and
//! global rank 0 commits each step through the store ([`crate::sharded`]) before `latest` moves.
//! [`CheckpointSaver::close`] is Composer's `post_close`: call it when training stops, however it
//! stops, so that uploads and commits in flight finish.
//!
//! ```no_run
//! use cairn::format::{Dict, Tensor};
//! use cairn::policy::{Event, MaxDuration, Ranks, Time, Timestamp, TrainingState};
//! use cairn::{CheckpointSaver, Config, Snapshot};
//!
//! let config = Config::parse("[checkpoint]\nsave_interval = \"2ba\"", "job.toml", ".".as_ref())?;
//! let mut saver = CheckpointSaver::new(&config)?;
//! let max = MaxDuration::new("4ba".parse::<Time>()?).unwrap();
//! let mut now = Timestamp::default();
//! saver.fit_start(&now)?;
//! for _ in 0..4 {
//!     let previous = now;
//!     now = now.to_next_batch(1, 0, Default::default());
//!     let state = TrainingState {
//!         timestamp: now, previous_timestamp: Some(previous), max_duration: max,
//!         dataloader_len: Some(10), run_name: "run", ranks: Ranks::default(), metrics: &[],
//!     };
//!     // The closure runs only when a checkpoint is due.
//!     saver.on_event(&state, Event::Batch, || {
//!         let model = Dict::ordered().with("w", Tensor::from_f32(vec![2], &[0.5, 1.5]));
//!         Ok(Snapshot { state: Dict::new().with("model", model), rng: None })
//!     })?;
//! }
//! saver.fit_end()?;
//! saver.close()?;
//! assert_eq!(saver.saved_checkpoints().len(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_format::durable::{self, Replace};
use cairn_format::{CheckpointFormat, FormatError, Prebuilt, PtError, ReadLimits, Value};
use cairn_policy::{
    Event, Filtered, IgnoreGlobs, IntervalScheduler, KeyFilter, PolicyHost, PolicyStats, Ranks,
    RunInfo, SavePolicy, StatsHandle, Timestamp, TrainingState,
};

use crate::checkpoint::{self, Snapshot, restore_state_key};
use crate::config::{
    Config, ConfigError, IgnoreKeysSpec, OnUploadFailure, RunNameOrigin, SaveIntervalSpec,
};
use crate::error::{Error, Result, SnapshotError};
use crate::gate::Schedule;
use crate::local::staging::Staging;
use crate::local::{latest, scan};
use crate::remote::{
    RemoteStore, UploadFailure, UploadJob, UploadOptions, UploadReport, UploadStatus, Uploader,
};
use crate::resume::{self, ResumePoint, ResumeReason};
use crate::role::Role;
use crate::sharded::{
    self, Checksum, CommitFailure, CommitJob, CommitStore, Committed, Coordinator, ShardRecord,
};
use crate::template::{Template, Vars};

/// A checkpoint this saver wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct SavedCheckpoint {
    /// When it was taken.
    pub timestamp: Timestamp,
    /// The event that took it.
    pub event: Event,
    /// Where it is.
    pub path: PathBuf,
    /// Its size on disk.
    pub bytes: u64,
    /// Seconds from the decision to save to the durable rename (snapshot, filter, write, fsync).
    pub seconds: f64,
}

/// Composer's `CheckpointSaver`.
pub struct CheckpointSaver {
    run_name: String,
    ranks: Ranks,
    role: Role,
    folder: PathBuf,
    /// The local staging folder of a `folder` given as a URL; removed when the saver closes.
    staging: Option<Staging>,
    filename: Template,
    format: CheckpointFormat,
    latest_filename: Option<Template>,
    overwrite: bool,
    num_checkpoints_to_keep: i64,
    weights_only: bool,
    schedule: Schedule,
    filter: Option<Box<dyn KeyFilter>>,
    history: Vec<(String, Timestamp)>,
    saved: Vec<SavedCheckpoint>,
    warnings: Vec<String>,
    remote: Option<RemoteHalf>,
    /// Accounting of each WebAssembly policy (calls, fuel, time, peak memory, errors).
    policy_stats: Vec<(String, StatsHandle)>,
    /// Local files whose upload failed: with `num_checkpoints_to_keep = 0` they are the only copy.
    failed_uploads: HashSet<PathBuf>,
    /// Bounds on reading a checkpoint to resume from.
    read_limits: ReadLimits,
    /// Uploads that failed since the current `fit_start`: `fit_end` returns them as an error.
    fit_failures: Vec<UploadFailure>,
    on_upload_failure: OnUploadFailure,
    /// How long `close` gives uploads still in flight.
    upload_timeout: Duration,
    /// Sharded saves: the commit protocol's store and thread (every rank).
    sharding: Option<Sharding>,
    closed: bool,
}

/// The sharded half of a saver (see [`crate::sharded`]).
struct Sharding {
    coordinator: Coordinator,
    /// Each step's name in the commit store, rendered for global rank 0: `remote_file_name` when
    /// the store is the remote one, `filename` when it is the folder.
    step_name: Template,
    commit_timeout: Duration,
    /// Steps that failed to commit since the current `fit_start`: `fit_end` returns them.
    fit_failures: Vec<CommitFailure>,
    /// Global rank 0's save index: `latest` never moves to a lower one.
    sequence: u64,
}

/// What global rank 0's commits came to so far.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct CommitReport {
    /// Steps committed, in the order their commits finished.
    pub committed: Vec<Committed>,
    /// Steps that were not, with why.
    pub failed: Vec<CommitFailure>,
    /// Commits still waiting.
    pub pending: usize,
}

/// How [`CheckpointSaver::save_prebuilt`] writes and commits a checkpoint.
#[derive(Clone, Copy, Debug)]
pub struct PrebuiltOptions<'a> {
    /// The zip folder of a plain `.pt` (`torch.save` names it `archive` when it writes to a file
    /// object, as Composer's saver does); `None`: the file's stem, as for a path.
    pub archive: Option<&'a str>,
    /// Apply the configured `ignore_keys` (the caller may have applied its own instead).
    pub filter: bool,
    /// Apply retention now; `false` when the caller still hands the file to someone first, and
    /// calls [`CheckpointSaver::rotate`] after.
    pub rotate: bool,
}

impl Default for PrebuiltOptions<'_> {
    fn default() -> Self {
        PrebuiltOptions {
            archive: Some("archive"),
            filter: true,
            rotate: true,
        }
    }
}

/// What [`CheckpointSaver::write`] did.
enum Written {
    /// The checkpoint is durable; its size.
    Bytes(u64),
    /// The filter's `on_error = "skip"` kept it from being written; why.
    Skipped(String),
}

/// The remote half of a saver: every checkpoint is uploaded as `remote_file_name`, and the
/// remote `latest` pointer moves only after the object it names is confirmed.
struct RemoteHalf {
    uploader: Uploader,
    remote_file_name: Template,
    latest_remote_file_name: Option<Template>,
    sequence: u64,
}

impl CheckpointSaver {
    /// A saver for a checked config. WebAssembly policies, if the config names any, run on a
    /// policy host of their own.
    pub fn new(config: &Config) -> Result<CheckpointSaver> {
        CheckpointSaver::with_host(config, &PolicyHost::default())
    }

    /// A saver whose WebAssembly policies run on `host`, shared by every job of the process
    /// (one engine, one epoch ticker, one compile cache; stores and limits stay per job).
    pub fn with_host(config: &Config, host: &PolicyHost) -> Result<CheckpointSaver> {
        CheckpointSaver::with_ranks(config, host, Ranks::from_env())
    }

    /// A saver for the process with these ranks (a binding that takes them from
    /// `torch.distributed` rather than from `RANK`, `WORLD_SIZE`, ...; a benchmark running ranks
    /// as threads).
    pub fn with_ranks(config: &Config, host: &PolicyHost, ranks: Ranks) -> Result<CheckpointSaver> {
        if config.run_name_origin == RunNameOrigin::Generated && ranks.world_size > 1 {
            return Err(Error::UnnamedDistributedRun {
                world_size: ranks.world_size,
            });
        }
        let role = Role::of(ranks, config.sharded);
        let vars = Vars {
            run_name: &config.run_name,
            ranks,
            timestamp: None,
        };
        let place = Place::of(&config.folder.render(&vars), &config.remote_url, role)?;
        let format = CheckpointFormat::from_name(config.filename.source())?;
        let run = RunInfo {
            run_name: config.run_name.clone(),
            ranks,
        };
        let mut policy_stats = Vec::new();
        let policy = save_policy(config, host, &run, &mut policy_stats)?;
        let filter = key_filter(config, host, &run, &mut policy_stats)?;
        let upload_timeout = Duration::from_secs_f64(config.upload_timeout_in_seconds);
        let remote = match &config.remote_file_name {
            // Only the writer uploads; the others have nothing to send.
            Some(name) if role.writes() => {
                let store = RemoteStore::from_url(&place.remote_url)?;
                let options = UploadOptions {
                    num_concurrent_uploads: config.num_concurrent_uploads,
                    timeout: upload_timeout,
                    overwrite: config.overwrite,
                    ..UploadOptions::default()
                };
                Some(RemoteHalf {
                    uploader: Uploader::new(store, options)?,
                    remote_file_name: name.clone(),
                    latest_remote_file_name: config.latest_remote_file_name.clone(),
                    sequence: 0,
                })
            }
            _ => None,
        };
        let sharding = match config.sharded {
            false => None,
            true => Some(Sharding::new(config, &place, remote.as_ref())?),
        };
        Ok(CheckpointSaver {
            sharding,
            policy_stats,
            remote,
            failed_uploads: HashSet::new(),
            fit_failures: Vec::new(),
            on_upload_failure: config.on_upload_failure,
            upload_timeout,
            closed: false,
            run_name: config.run_name.clone(),
            ranks,
            role,
            folder: place.folder,
            staging: place.staging,
            filename: config.filename.clone(),
            format,
            latest_filename: config.latest_filename.clone(),
            overwrite: config.overwrite,
            num_checkpoints_to_keep: config.num_checkpoints_to_keep,
            weights_only: config.weights_only,
            schedule: Schedule::new(policy),
            filter,
            history: Vec::new(),
            saved: Vec::new(),
            warnings: Vec::new(),
            read_limits: config.read,
        })
    }

    /// The local folder checkpoints go to.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// Checkpoints this process wrote and still keeps, oldest first (Composer's
    /// `saved_checkpoints`, with their timestamps).
    pub fn saved_checkpoints(&self) -> &[SavedCheckpoint] {
        &self.saved
    }

    /// Every checkpoint of this run so far, persisted in each checkpoint (Composer's
    /// `all_saved_checkpoints_to_timestamp`).
    pub fn history(&self) -> &[(String, Timestamp)] {
        &self.history
    }

    /// Continue the history of a resumed run (Composer's `load_state_dict`); [`CheckpointSaver::resume`]
    /// does this itself.
    pub fn restore_history(&mut self, history: Vec<(String, Timestamp)>) {
        self.history = history;
    }

    /// Warnings collected since the last call (globs that matched nothing, ...).
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// What each WebAssembly policy of this saver has cost so far, by file name.
    pub fn policy_stats(&self) -> Vec<(String, PolicyStats)> {
        self.policy_stats
            .iter()
            .map(|(name, h)| (name.clone(), h.get()))
            .collect()
    }

    /// The save-interval policy's description.
    pub fn describe_interval(&self) -> String {
        self.schedule.describe()
    }

    /// Where the local `latest` pointer of the newest save lives, if there is one. A
    /// `latest_filename` with time variables names a new link at each save, as in Composer.
    pub fn latest_path(&self) -> Option<PathBuf> {
        let newest = self.saved.last().map(|s| &s.timestamp);
        self.latest_link(&self.vars(newest))
    }

    /// The `latest` link a save at `vars`' timestamp moves (the leading `/` stripped, as Composer
    /// does). `None` without a `latest_filename`, or when it has time variables and `vars` no
    /// timestamp.
    fn latest_link(&self, vars: &Vars<'_>) -> Option<PathBuf> {
        let t = self.latest_filename.as_ref()?;
        if vars.timestamp.is_none() && !t.is_constant_in_time() {
            return None;
        }
        Some(self.folder.join(t.render(vars).trim_start_matches('/')))
    }

    /// The checkpoints the folder holds under this saver's filename template, oldest first.
    fn scan(&self) -> Result<Vec<scan::Found>> {
        scan::checkpoints(&self.folder, &self.filename, &self.vars(None))
            .map_err(Error::io("list", &self.folder))
    }

    fn vars<'a>(&'a self, ts: Option<&'a Timestamp>) -> Vars<'a> {
        Vars {
            run_name: &self.run_name,
            ranks: self.ranks,
            timestamp: ts,
        }
    }

    fn ensure_open(&self) -> Result<()> {
        if self.closed {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// `FIT_START`: create the folder, remove a crashed run's temporary files, and (unless
    /// `overwrite`) refuse a folder holding checkpoints from this run's future (§12). Ranks other
    /// than 0 only read: the folder may be shared, and its temporary files may be rank 0's.
    pub fn fit_start(&mut self, now: &Timestamp) -> Result<()> {
        self.ensure_open()?;
        self.fit_failures.clear();
        if let Some(sharding) = &mut self.sharding {
            sharding.fit_failures.clear();
        }
        match self.role {
            Role::Writer => {
                fs::create_dir_all(&self.folder)
                    .map_err(Error::io("create the checkpoint folder", &self.folder))?;
                durable::remove_leftovers(&self.folder)
                    .map_err(Error::io("clean", &self.folder))?;
            }
            Role::Shard { .. } => {
                fs::create_dir_all(&self.folder)
                    .map_err(Error::io("create the checkpoint folder", &self.folder))?;
                // The folder may be shared: only this rank's own temporary files are its to
                // remove (another rank may be writing its shard right now).
                let (pattern, _) = self.filename.match_regex(&self.vars(None));
                let own = regex::Regex::new(&pattern).map_err(|e| Error::Io {
                    action: "clean",
                    path: self.folder.clone(),
                    source: io::Error::other(e),
                })?;
                durable::remove_leftovers_where(&self.folder, |name| own.is_match(name))
                    .map_err(Error::io("clean", &self.folder))?;
            }
            Role::Follower => {}
        }
        if let Some(remote) = &self.remote {
            // Bad credentials or a missing bucket fail now, not after the first checkpoint.
            remote
                .uploader
                .store()
                .check_access(Duration::from_secs(30))?;
        }
        if !self.overwrite
            && let Some(sharding) = &self.sharding
        {
            // Sharded, only committed steps count: an uncommitted shard beyond `now` is a
            // leftover that this run's save at that step replaces.
            let store = sharding.coordinator.store();
            let committed = sharding.coordinator.block_on(store.committed())?;
            let future = committed
                .into_iter()
                .filter_map(|(_, m)| m.ok())
                .filter(|m| m.run_name == self.run_name && m.batch > now.batch)
                .max_by(|a, b| a.training_order().cmp(&b.training_order()));
            if let Some(m) = future {
                return Err(Error::FutureCheckpoint {
                    path: self.folder.join(&m.step),
                });
            }
        } else if !self.overwrite {
            let found = self.scan()?;
            match scan::future_conflict(&found, now) {
                Ok(None) => {}
                Ok(Some(path)) => return Err(Error::FutureCheckpoint { path }),
                Err(e) => {
                    return Err(Error::Io {
                        action: "compare the checkpoints of",
                        path: self.folder.clone(),
                        source: std::io::Error::other(format!(
                            "checkpoint.filename '{}': {e}",
                            self.filename
                        )),
                    });
                }
            }
        }
        Ok(())
    }

    /// A checkpoint event: ask the policy and, when a save is due, take the snapshot and save.
    /// `snapshot` runs only when a checkpoint is written.
    pub fn on_event(
        &mut self,
        state: &TrainingState<'_>,
        event: Event,
        snapshot: impl FnOnce() -> Result<Snapshot, SnapshotError>,
    ) -> Result<Option<SavedCheckpoint>> {
        self.ensure_open()?;
        self.check_uploads()?;
        if !self.schedule.should_save(state, event)? {
            return Ok(None);
        }
        self.save(&state.timestamp, event, snapshot)
    }

    /// Ask the configured `save_interval` alone, without the one-save-per-batch rule (for a caller
    /// that keeps that rule itself, as Composer's `CheckpointSaver` does around its predicate).
    pub fn should_save(&mut self, state: &TrainingState<'_>, event: Event) -> Result<bool> {
        Ok(self.schedule.policy_mut().should_save(state, event)?)
    }

    /// Save now, bypassing the policy (Composer's `save_checkpoint_to_save_folder`); still
    /// counts for the at-most-one-save-per-batch rule. `None` when the filter's `on_error =
    /// "skip"` refused to let an unfiltered checkpoint be written (a warning says so), and on
    /// ranks other than 0, which run `snapshot` (building a state dict is collective in PyTorch,
    /// so a rank that skipped it would leave rank 0 waiting) and write nothing.
    pub fn save(
        &mut self,
        timestamp: &Timestamp,
        event: Event,
        snapshot: impl FnOnce() -> Result<Snapshot, SnapshotError>,
    ) -> Result<Option<SavedCheckpoint>> {
        self.ensure_open()?;
        let started = Instant::now();
        self.schedule.saved_at(timestamp.batch);
        let path = self.checkpoint_path(timestamp);
        self.history
            .push((path.to_string_lossy().into_owned(), *timestamp));
        if self.role == Role::Follower {
            snapshot().map_err(Error::Snapshot)?;
            return Ok(None);
        }
        let result = self.write(&path, timestamp, snapshot);
        let bytes = match result {
            Ok(Written::Bytes(bytes)) => bytes,
            Ok(Written::Skipped(why)) => {
                self.history.pop();
                self.skipped(&path, why);
                return Ok(None);
            }
            Err(e) => {
                self.history.pop();
                return Err(e);
            }
        };
        let saved = self.commit(path, timestamp, event, bytes, started)?;
        self.rotate()?;
        Ok(Some(saved))
    }

    /// Save a checkpoint built by the caller: `checkpoint` is the finished pickle and its
    /// storage records (cairn's Python package pickles the training state with Python's own
    /// pickler, as `torch.save` does), `path` the name the caller gave it, which must be the one
    /// this saver's `filename` renders at `timestamp` (or retention and the conflict scan would
    /// not see it). The caller keeps the history (`all_saved_checkpoints_to_timestamp`) and the
    /// one-save-per-batch rule; the saver does the rest as [`CheckpointSaver::save`] does: the
    /// configured `ignore_keys` (on the pickle read back into a tree, only when there is one
    /// and `options.filter` is set; otherwise the pickle is written as given), the durable
    /// write, `latest`, the upload and, with `options.rotate`, retention. `None` when the
    /// filter's `on_error = "skip"` kept the checkpoint from being written (a warning says so),
    /// and on ranks other than 0, which write nothing.
    pub fn save_prebuilt(
        &mut self,
        path: &Path,
        timestamp: &Timestamp,
        event: Event,
        checkpoint: &Prebuilt,
        options: PrebuiltOptions<'_>,
    ) -> Result<Option<SavedCheckpoint>> {
        self.ensure_open()?;
        let started = Instant::now();
        let expected = self.checkpoint_path(timestamp);
        if expected != path {
            return Err(ConfigError {
                file: path.display().to_string(),
                location: String::new(),
                message: format!(
                    "is not the name checkpoint.filename '{}' gives at batch {} ({}), so retention and the conflict scan would not find it",
                    self.filename,
                    timestamp.batch,
                    expected.display()
                ),
            }
            .into());
        }
        if self.role == Role::Follower {
            return Ok(None);
        }
        let format = cairn_format::format_of(path)?;
        let filter = options.filter && self.filter.is_some();
        let bytes = if filter || format == CheckpointFormat::Safetensors {
            let tree = checkpoint.tree().map_err(|error| FormatError::Pt {
                path: path.to_path_buf(),
                error: PtError::Pickle(error),
            })?;
            let tree = if filter {
                match self.apply_filter(tree)? {
                    Ok(tree) => tree,
                    Err(why) => {
                        self.skipped(path, why);
                        return Ok(None);
                    }
                }
            } else {
                tree
            };
            self.write_file(path, timestamp, |file| {
                cairn_format::write_checkpoint(path, format, &tree, file)
            })?
        } else {
            self.write_file(path, timestamp, |file| {
                cairn_format::write_prebuilt(path, format, checkpoint, options.archive, file)
            })?
        };
        let saved = self.commit(path.to_path_buf(), timestamp, event, bytes, started)?;
        if options.rotate {
            self.rotate()?;
        }
        Ok(Some(saved))
    }

    /// Where the checkpoint taken at `timestamp` goes.
    pub fn checkpoint_path(&self, timestamp: &Timestamp) -> PathBuf {
        let name = self.filename.render(&self.vars(Some(timestamp)));
        self.folder.join(name.trim_start_matches('/'))
    }

    /// A checkpoint the filter's `on_error = "skip"` kept from being written.
    fn skipped(&mut self, path: &Path, why: String) {
        self.warnings.push(format!(
            "{} was not saved: {why} (on_error = \"skip\"; the previous checkpoint stays latest)",
            path.display()
        ));
    }

    /// A durable checkpoint becomes the newest (see [`CheckpointSaver::after_write`]) and joins
    /// the saved checkpoints.
    fn commit(
        &mut self,
        path: PathBuf,
        timestamp: &Timestamp,
        event: Event,
        bytes: u64,
        started: Instant,
    ) -> Result<SavedCheckpoint> {
        self.after_write(&path, timestamp, bytes)?;
        let saved = SavedCheckpoint {
            timestamp: *timestamp,
            event,
            path,
            bytes,
            seconds: started.elapsed().as_secs_f64(),
        };
        self.saved.push(saved.clone());
        Ok(saved)
    }

    /// The steps after a checkpoint is durable, in Composer's order. Non-sharded: `latest` moves to
    /// it and its upload is queued. Sharded: the rank's record is published once the shard is in
    /// place (now, or when its upload is confirmed), and global rank 0 hands the step to the
    /// commit thread, which creates the manifest and only then moves `latest`.
    fn after_write(&mut self, path: &Path, timestamp: &Timestamp, bytes: u64) -> Result<()> {
        if self.sharding.is_none() {
            if self.num_checkpoints_to_keep != 0
                && let Some(link) = self.latest_link(&self.vars(Some(timestamp)))
            {
                latest::swap(&link, path).map_err(Error::io("move the latest pointer", &link))?;
            }
            return self.upload(path, timestamp, None);
        }
        let record = self.shard_record(path, timestamp, bytes)?;
        if self.remote.is_some() {
            self.upload(path, timestamp, Some(record))?;
        } else {
            let sharding = self.sharding.as_ref().expect("sharded");
            let store = sharding.coordinator.store();
            let mut record = record;
            let meta = sharding.coordinator.block_on(store.head(&record.file))?;
            record.etag = meta.e_tag;
            record.published_unix_ms = sharded::now_unix_ms();
            cairn_format::failpoint!("sharded::before-record", |e: io::Error| Error::io(
                "publish the record of",
                path
            )(e));
            sharding.coordinator.block_on(store.publish(&record))?;
        }
        if self.role == (Role::Shard { coordinator: true }) {
            self.enqueue_commit(timestamp);
        }
        Ok(())
    }

    /// This rank's record of the shard it just wrote (its ETag and time are filled in when it is
    /// published).
    fn shard_record(&self, path: &Path, timestamp: &Timestamp, bytes: u64) -> Result<ShardRecord> {
        let sharding = self.sharding.as_ref().expect("sharded");
        let crc64nvme = Checksum::of_file(path).map_err(Error::io("read back", path))?;
        let vars = self.vars(Some(timestamp));
        let object = self.remote.as_ref().map(|r| {
            r.remote_file_name
                .render(&vars)
                .trim_start_matches('/')
                .to_owned()
        });
        Ok(ShardRecord {
            format: sharded::manifest::RECORD_FORMAT.to_owned(),
            step: sharding.step(&self.run_name, self.ranks, timestamp),
            run_name: self.run_name.clone(),
            rank: self.ranks.rank,
            world_size: self.ranks.world_size,
            file: self
                .filename
                .render(&vars)
                .trim_start_matches('/')
                .to_owned(),
            object,
            bytes,
            crc64nvme,
            etag: None,
            epoch: timestamp.epoch,
            batch: timestamp.batch,
            published_unix_ms: 0,
        })
    }

    /// Global rank 0: hand the step to the commit thread, with where `latest` goes once it is
    /// committed (rank 0's shard: the manifest sits beside it).
    fn enqueue_commit(&mut self, timestamp: &Timestamp) {
        let writer = Vars {
            ranks: Role::writer_ranks(self.ranks),
            ..self.vars(Some(timestamp))
        };
        let local_latest = match self.num_checkpoints_to_keep {
            0 => None,
            _ => self.latest_link(&writer).map(|link| {
                let own = self.filename.render(&writer);
                (link, self.folder.join(own.trim_start_matches('/')))
            }),
        };
        let pointer = self.remote.as_ref().and_then(|r| {
            let pointer = r.latest_remote_file_name.as_ref()?.render(&writer);
            Some(format!(
                "{}{}",
                pointer.trim_start_matches('/'),
                crate::remote::SYMLINK_SUFFIX
            ))
        });
        let sharding = self.sharding.as_mut().expect("sharded");
        let step = sharding.step(&self.run_name, self.ranks, timestamp);
        let store = sharding.coordinator.store();
        let remote_latest =
            pointer.and_then(|p| Some((store.key(&p).ok()?, store.key(&step).ok()?)));
        sharding.sequence += 1;
        sharding.coordinator.enqueue(CommitJob {
            step,
            run_name: self.run_name.clone(),
            world_size: self.ranks.world_size,
            epoch: timestamp.epoch,
            batch: timestamp.batch,
            sequence: sharding.sequence,
            timeout: sharding.commit_timeout,
            remote_latest,
            local_latest,
        });
    }

    /// Build, filter and durably write the checkpoint dict.
    fn write(
        &mut self,
        path: &Path,
        ts: &Timestamp,
        snapshot: impl FnOnce() -> Result<Snapshot, SnapshotError>,
    ) -> Result<Written> {
        let snapshot = snapshot().map_err(Error::Snapshot)?;
        let mut tree = checkpoint::build(
            snapshot,
            ts,
            &self.run_name,
            &self.history,
            self.weights_only,
        );
        if self.filter.is_some() {
            tree = match self.apply_filter(tree)? {
                Ok(tree) => tree,
                Err(why) => return Ok(Written::Skipped(why)),
            };
        }
        let format = self.format;
        let bytes = self.write_file(path, ts, |file| {
            cairn_format::write_checkpoint(path, format, &tree, file)
        })?;
        Ok(Written::Bytes(bytes))
    }

    /// Run the configured `ignore_keys` over a checkpoint tree: the tree to write, or why the
    /// filter's `on_error = "skip"` refused to let this checkpoint be written.
    fn apply_filter(&mut self, tree: Value) -> Result<Result<Value, String>> {
        let Some(filter) = self.filter.as_mut() else {
            return Ok(Ok(tree));
        };
        let mut warnings = Vec::new();
        let filtered = filter.filter(tree, &mut warnings);
        self.warnings.extend(warnings);
        Ok(match filtered? {
            Filtered::Keep(mut tree) => {
                restore_state_key(&mut tree);
                Ok(tree)
            }
            Filtered::Skip(why) => Err(why.to_string()),
        })
    }

    /// Create `path` durably with what `write` puts in it (never replacing a checkpoint unless
    /// `overwrite`); its size.
    fn write_file(
        &self,
        path: &Path,
        timestamp: &Timestamp,
        write: impl Fn(&mut fs::File) -> Result<u64, FormatError>,
    ) -> Result<u64> {
        let replace = if self.overwrite {
            Replace::Allowed
        } else {
            Replace::Never
        };
        let mut written = durable::try_write_durably(path, replace, &write);
        if let Err(e) = &written
            && e.kind() == io::ErrorKind::AlreadyExists
            && self.uncommitted_leftover(timestamp)?
        {
            // A shard of a step that never committed: no reader trusts it, so this attempt
            // replaces it.
            written = durable::try_write_durably(path, Replace::Allowed, &write);
        }
        match written {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(format)) => Err(format.into()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Error::AlreadyExists {
                path: path.to_path_buf(),
            }),
            Err(e) => Err(Error::io("save", path)(e)),
        }
    }

    /// Sharded: is the step at `ts` uncommitted (so a shard already under this rank's name is a
    /// leftover of an attempt that never committed)? Always `false` when not sharded.
    fn uncommitted_leftover(&self, ts: &Timestamp) -> Result<bool> {
        let Some(sharding) = &self.sharding else {
            return Ok(false);
        };
        let step = sharding.step(&self.run_name, self.ranks, ts);
        let store = sharding.coordinator.store();
        Ok(sharding
            .coordinator
            .block_on(store.manifest(&step))?
            .is_none())
    }

    /// Find the checkpoint to continue from, load it, and continue its history: the local
    /// `latest` when it verifies (or a newer checkpoint of the same run written after it), else
    /// the most recently written local checkpoint that verifies, else the one the remote `latest`
    /// pointer names, downloaded into the folder. `None` when there is nothing to resume from.
    /// Call it before [`CheckpointSaver::fit_start`]; [`ResumePoint::reason`] says why this one.
    ///
    /// Ranks other than 0 look for rank 0's checkpoints (the names rank 0 writes, in a folder they
    /// share) and never download: that is rank 0's part.
    pub fn resume(&mut self) -> Result<Option<ResumePoint>> {
        if let Some(sharding) = &self.sharding {
            fs::create_dir_all(&self.folder)
                .map_err(Error::io("create the checkpoint folder", &self.folder))?;
            let found = sharded::resume::find(
                &sharding.coordinator,
                &self.run_name,
                self.ranks.rank,
                self.ranks.world_size,
                &self.folder,
                &self.read_limits,
            )?;
            if let Some(point) = &found {
                self.history = point.history.clone();
            }
            return Ok(found);
        }
        let writer = Vars {
            ranks: Role::writer_ranks(self.ranks),
            ..self.vars(None)
        };
        let latest = match &self.latest_filename {
            None => Ok(None),
            Some(t) if !t.is_constant_in_time() => Err(format!(
                "latest_filename '{t}' has time variables, so no single link names the newest checkpoint"
            )),
            Some(_) => Ok(self.latest_link(&writer)),
        };
        let search = resume::Search {
            folder: &self.folder,
            filename: &self.filename,
            latest,
            vars: writer,
            limits: self.read_limits,
        };
        let mut passed_over = Vec::new();
        let mut found = search.find(&mut passed_over)?;
        // Nothing usable locally: say what was passed over, whatever happens next.
        for (path, why) in passed_over {
            self.warnings.push(format!(
                "skipped damaged checkpoint {}: {why}",
                path.display()
            ));
        }
        if found.is_none()
            && let Some((pointer, path)) = self.download_remote_latest()?
        {
            let (tree, timestamp) = resume::load(&path, &self.read_limits)?;
            // `load` checked the history; a damaged one was an error there.
            let history = crate::checkpoint::read_history(&tree).unwrap_or_default();
            found = Some(ResumePoint {
                path,
                tree,
                timestamp,
                history,
                reason: ResumeReason::Remote { pointer },
                skipped: Vec::new(),
            });
        }
        if let Some(point) = &found {
            self.history = point.history.clone();
        }
        Ok(found)
    }

    /// Download the checkpoint the remote `latest` pointer names into the local folder: the
    /// pointer's name and the local path. `None` when the saver does not upload, has no remote
    /// pointer, or the store holds none yet.
    pub fn download_remote_latest(&self) -> Result<Option<(String, PathBuf)>> {
        let Some(remote) = &self.remote else {
            return Ok(None);
        };
        let Some(template) = &remote.latest_remote_file_name else {
            return Ok(None);
        };
        let name = template
            .render(&self.vars(None))
            .trim_start_matches('/')
            .to_owned();
        fs::create_dir_all(&self.folder)
            .map_err(Error::io("create the checkpoint folder", &self.folder))?;
        let path = crate::remote::download_latest(remote.uploader.store(), &name, &self.folder)?;
        Ok(path.map(|p| (name, p)))
    }

    /// Hand a durable checkpoint to the uploader (it returns at once; the upload runs in the
    /// background and the remote `latest` follows once the object is confirmed).
    fn upload(
        &mut self,
        path: &Path,
        timestamp: &Timestamp,
        record: Option<ShardRecord>,
    ) -> Result<()> {
        let vars = Vars {
            run_name: &self.run_name,
            ranks: self.ranks,
            timestamp: Some(timestamp),
        };
        let Some(remote) = self.remote.as_mut() else {
            return Ok(());
        };
        let object_name = remote
            .remote_file_name
            .render(&vars)
            .trim_start_matches('/')
            .to_owned();
        let latest_pointer = remote
            .latest_remote_file_name
            .as_ref()
            .map(|t| t.render(&vars).trim_start_matches('/').to_owned());
        let job = UploadJob {
            local_path: path.to_path_buf(),
            object_name,
            latest_pointer,
            sequence: remote.sequence,
        };
        match record {
            // The coordinator moves the pointer once the step is committed.
            Some(record) => remote.uploader.enqueue_shard(
                UploadJob {
                    latest_pointer: None,
                    ..job
                },
                record,
            )?,
            None => remote.uploader.enqueue(job)?,
        };
        remote.sequence += 1;
        Ok(())
    }

    /// Upload failures since the last event: with `on_failure = "fail"` the first event after
    /// a failure returns it (Composer re-raises at the next `BATCH_END`); with `"warn"` they
    /// become warnings. Either way `fit_end` returns them.
    pub fn check_uploads(&mut self) -> Result<()> {
        let new = self.collect_upload_failures();
        let steps = self.collect_commit_failures();
        match self.on_upload_failure {
            OnUploadFailure::Fail if !new.is_empty() => Err(Error::UploadsFailed(new)),
            OnUploadFailure::Fail if !steps.is_empty() => Err(Error::StepsNotCommitted(steps)),
            OnUploadFailure::Fail => Ok(()),
            OnUploadFailure::Warn => {
                for failure in new {
                    self.warnings.push(format!("upload failed: {failure}"));
                }
                for failure in steps {
                    self.warnings.push(failure.to_string());
                }
                Ok(())
            }
        }
    }

    /// Steps that failed to commit since the last call (global rank 0), recorded for `fit_end`.
    fn collect_commit_failures(&mut self) -> Vec<CommitFailure> {
        let Some(sharding) = &mut self.sharding else {
            return Vec::new();
        };
        let new = sharding.coordinator.poll_failures();
        sharding.fit_failures.extend(new.iter().cloned());
        new
    }

    /// Global rank 0: wake the commit thread (every record is in place, say after a
    /// `torch.distributed` barrier) and wait, at most `limit`, for the commits handed over so far;
    /// what they came to. Other ranks and non-sharded savers return an empty report at once.
    pub fn wait_for_commits(&mut self, limit: Option<Duration>) -> CommitReport {
        if let Some(sharding) = &self.sharding {
            sharding.coordinator.wait(limit);
        }
        self.commit_report()
    }

    /// What global rank 0's commits came to so far (empty elsewhere).
    pub fn commit_report(&self) -> CommitReport {
        match &self.sharding {
            Some(s) => CommitReport {
                committed: s.coordinator.committed(),
                failed: s.coordinator.failures(),
                pending: s.coordinator.pending(),
            },
            None => CommitReport::default(),
        }
    }

    /// Upload failures since the last call, recorded for retention and for `fit_end`.
    fn collect_upload_failures(&mut self) -> Vec<UploadFailure> {
        let Some(remote) = &self.remote else {
            return Vec::new();
        };
        let new = remote.uploader.poll_failures();
        for failure in &new {
            self.failed_uploads.insert(failure.local_path.clone());
            self.fit_failures.push(failure.clone());
        }
        new
    }

    fn upload_status(&self, path: &Path) -> UploadStatus {
        if self.failed_uploads.contains(path) {
            return UploadStatus::Failed;
        }
        self.remote
            .as_ref()
            .map_or(UploadStatus::NotTracked, |r| r.uploader.status(path))
    }

    /// May retention delete this local file now? Never while it is uploading; with
    /// `num_checkpoints_to_keep = 0` (remote-only) never if its upload failed.
    fn may_delete(&self, path: &Path) -> bool {
        match self.upload_status(path) {
            UploadStatus::InFlight => false,
            UploadStatus::Failed => self.num_checkpoints_to_keep != 0,
            UploadStatus::Uploaded | UploadStatus::NotTracked => true,
        }
    }

    /// Keep the `num_checkpoints_to_keep` most recently written checkpoints in the folder,
    /// counting those of earlier runs, never deleting the one `latest` names, the newest this
    /// saver wrote, or one still being uploaded. "Most recently written" is the files' write
    /// order, not their names' counters: an earlier run's `ep5` is older than this run's `ep2`.
    pub fn rotate(&mut self) -> Result<()> {
        self.rotate_steps()?;
        if self
            .sharding
            .as_ref()
            .is_some_and(|s| s.coordinator.store().local_folder().is_some())
        {
            // Steps committed in the folder are deleted whole, by global rank 0 alone.
            return Ok(());
        }
        let Ok(keep) = usize::try_from(self.num_checkpoints_to_keep) else {
            return Ok(());
        };
        let mut pinned = Vec::new();
        if keep > 0 {
            if let Some(link) = self.latest_path() {
                let target =
                    latest::resolve(&link).map_err(Error::io("read the latest pointer", &link))?;
                pinned.extend(target.and_then(|p| p.canonicalize().ok()));
            }
            pinned.extend(self.saved.last().and_then(|s| s.path.canonicalize().ok()));
        }
        let mut found = self.scan()?;
        scan::by_write_order(&mut found);
        let excess = found.len().saturating_sub(keep);
        let mut deleted = false;
        for f in found.into_iter().take(excess) {
            let is_pinned = f
                .path
                .canonicalize()
                .ok()
                .is_some_and(|p| pinned.contains(&p));
            if is_pinned || !self.may_delete(&f.path) {
                continue;
            }
            delete_checkpoint(&f.path).map_err(Error::io("delete old checkpoint", &f.path))?;
            if self.role == (Role::Shard { coordinator: true }) {
                // Rank 0's shard names its step: a local `.commit` folder beside it goes too.
                let _ = fs::remove_dir_all(commit_folder(&f.path));
            }
            self.saved.retain(|s| s.path != f.path);
            deleted = true;
        }
        if deleted {
            durable::sync_dir(&self.folder).map_err(Error::io("sync", &self.folder))?;
        }
        Ok(())
    }

    /// Sharded, global rank 0: delete whole committed steps beyond `num_checkpoints_to_keep`
    /// where they were committed in the folder (never the step `latest` names), and the
    /// leftovers of steps that never committed, wherever they are.
    fn rotate_steps(&mut self) -> Result<()> {
        let (Some(sharding), Role::Shard { coordinator: true }) = (&self.sharding, self.role)
        else {
            return Ok(());
        };
        let mut pinned = HashSet::new();
        if let Some(link) = self.latest_path()
            && let Ok(Some(target)) = latest::resolve(&link)
            && let Ok(relative) = target.strip_prefix(&self.folder)
        {
            pinned.insert(relative.to_string_lossy().into_owned());
        }
        if let Some(newest) = sharding.coordinator.committed().last() {
            pinned.insert(newest.step.clone());
        }
        sharded::retention::rotate(
            &sharding.coordinator,
            self.num_checkpoints_to_keep,
            &pinned,
            sharding.commit_timeout,
        )?;
        Ok(())
    }

    /// `FIT_END`: wait for the uploads (each bounded by `upload_timeout_in_seconds`; the remote
    /// `latest` is written after the object it names), then apply the retention that had to wait
    /// for them. Nothing is saved here: Composer never saves at the end by itself; the interval's
    /// final save already happened at the last event. Returns the upload totals so far, or
    /// [`Error::UploadsFailed`] with every upload that failed since `fit_start`. The saver keeps
    /// uploading if training starts again (`fit_start` ... `fit_end` once more).
    pub fn fit_end(&mut self) -> Result<Option<UploadReport>> {
        self.ensure_open()?;
        if self.remote.is_none() && self.sharding.is_none() {
            return Ok(None);
        }
        if let Some(remote) = &self.remote {
            remote.uploader.wait(None);
        }
        if let Some(sharding) = &self.sharding {
            // Each commit is bounded by its own commit_timeout_s.
            sharding.coordinator.wait(None);
        }
        self.collect_upload_failures();
        self.collect_commit_failures();
        self.rotate()?;
        if !self.fit_failures.is_empty() {
            return Err(Error::UploadsFailed(std::mem::take(&mut self.fit_failures)));
        }
        if let Some(sharding) = &mut self.sharding
            && !sharding.fit_failures.is_empty()
        {
            return Err(Error::StepsNotCommitted(std::mem::take(
                &mut sharding.fit_failures,
            )));
        }
        Ok(self.upload_report())
    }

    /// The store this saver uploads to (`[remote] url`, or a `folder` given as a URL); `None`
    /// when it does not upload (no `remote_file_name`, or a rank other than 0).
    pub fn upload_url(&self) -> Option<&str> {
        self.remote.as_ref().map(|r| r.uploader.store().url())
    }

    /// The upload totals so far, with every failure; `None` when the saver does not upload.
    pub fn upload_report(&self) -> Option<UploadReport> {
        self.remote.as_ref().map(|r| r.uploader.report())
    }

    /// Composer's `post_close`: give the uploads in flight until `upload_timeout_in_seconds` to
    /// finish (the remote `latest` names the newest checkpoint confirmed by then; one still
    /// running after that is abandoned and listed as failed), apply the retention that waited
    /// for them, and remove the staging folder of a `folder` given as a URL. Call it when
    /// training stops, also when it stops with an error: dropping the saver abandons uploads at
    /// once. Returns the final upload totals; an `Err` only when local cleanup failed. Later
    /// calls do nothing and return `None`.
    pub fn close(&mut self) -> Result<Option<UploadReport>> {
        if self.closed {
            return Ok(None);
        }
        self.closed = true;
        let report = self
            .remote
            .take()
            .map(|r| r.uploader.close(Some(self.upload_timeout)));
        for failure in report.iter().flat_map(|r| &r.failures) {
            self.failed_uploads.insert(failure.local_path.clone());
        }
        if let Some(sharding) = &self.sharding {
            sharding.coordinator.wait(Some(sharding.commit_timeout));
        }
        if self.role.leads() && self.staging.is_none() {
            self.rotate()?;
        }
        if let Some(staging) = self.staging.take() {
            let dir = staging.dir().to_owned();
            staging
                .remove()
                .map_err(Error::io("remove the staging folder", dir))?;
        }
        Ok(report)
    }
}

impl Drop for CheckpointSaver {
    /// Dropped without [`CheckpointSaver::close`]: uploads are abandoned at once (dropping never
    /// blocks). The staging folder is removed only if nothing was still uploading from it;
    /// otherwise the next saver's start removes it.
    fn drop(&mut self) {
        let idle = self
            .remote
            .as_ref()
            .is_none_or(|r| r.uploader.pending() == 0);
        if idle && let Some(staging) = self.staging.take() {
            let _ = staging.remove();
        }
    }
}

/// The `.commit` folder beside rank 0's shard of a step.
fn commit_folder(shard: &Path) -> PathBuf {
    let mut name = shard.as_os_str().to_owned();
    name.push(sharded::store::COMMIT_SUFFIX);
    PathBuf::from(name)
}

impl Sharding {
    fn new(config: &Config, place: &Place, remote: Option<&RemoteHalf>) -> Result<Sharding> {
        let (store, step_name) = match remote {
            Some(r) => (
                CommitStore::remote(r.uploader.store().clone()),
                r.remote_file_name.clone(),
            ),
            None => {
                fs::create_dir_all(&place.folder)
                    .map_err(Error::io("create the checkpoint folder", &place.folder))?;
                (CommitStore::folder(&place.folder)?, config.filename.clone())
            }
        };
        Ok(Sharding {
            coordinator: Coordinator::new(store, sharded::DEFAULT_POLL)?,
            step_name,
            commit_timeout: Duration::from_secs_f64(config.commit_timeout_s),
            fit_failures: Vec::new(),
            sequence: 0,
        })
    }

    /// The step of a save at `timestamp`: global rank 0's shard name in the commit store.
    fn step(&self, run_name: &str, ranks: Ranks, timestamp: &Timestamp) -> String {
        let vars = Vars {
            run_name,
            ranks: Role::writer_ranks(ranks),
            timestamp: Some(timestamp),
        };
        self.step_name
            .render(&vars)
            .trim_start_matches('/')
            .to_owned()
    }
}

/// Retention's delete (a failpoint sits just before it).
fn delete_checkpoint(path: &Path) -> io::Result<()> {
    cairn_format::failpoint!("rotate::before-delete");
    fs::remove_file(path)
}

/// Where checkpoints are written locally, and where they are uploaded.
struct Place {
    folder: PathBuf,
    staging: Option<Staging>,
    remote_url: String,
}

impl Place {
    /// A local `folder` is used as it is (an empty one is the current folder, as in Composer). A
    /// `folder` that is a store URL (`s3://bucket/prefix`) stages checkpoints in a fresh local
    /// folder, as Composer does, and uploads under that URL, which then takes the place of
    /// `[remote] url`; the config named the objects `<url path>/<filename>` unless told otherwise.
    /// Only the writer creates a staging folder.
    fn of(folder: &str, remote_url: &str, role: Role) -> Result<Place> {
        if !crate::remote::is_remote_url(folder) {
            let folder = if folder.is_empty() { "." } else { folder };
            return Ok(Place {
                folder: PathBuf::from(folder),
                staging: None,
                remote_url: remote_url.to_owned(),
            });
        }
        let temp = std::env::temp_dir();
        let (local, staging) = match role {
            Role::Writer | Role::Shard { .. } => {
                let (staging, _stale) = Staging::create(&temp)
                    .map_err(Error::io("create a staging folder in", &temp))?;
                (staging.dir().to_owned(), Some(staging))
            }
            Role::Follower => (Staging::path_in(&temp), None),
        };
        Ok(Place {
            folder: local,
            staging,
            remote_url: folder.to_owned(),
        })
    }
}

/// The job's `save_interval` as a policy: the built-in interval or a sandboxed component.
pub(crate) fn save_policy(
    config: &Config,
    host: &PolicyHost,
    run: &RunInfo,
    stats: &mut Vec<(String, StatsHandle)>,
) -> Result<Box<dyn SavePolicy>> {
    Ok(match &config.save_interval {
        SaveIntervalSpec::Time(t) => {
            Box::new(IntervalScheduler::new(*t).map_err(cairn_policy::PolicyError::from)?)
        }
        SaveIntervalSpec::Wasm(spec) => {
            let p = host.save_policy(spec, &config.sandbox, run)?;
            stats.push((spec.name(), p.stats()));
            Box::new(p)
        }
    })
}

/// The job's `ignore_keys` as a filter, if it has one.
fn key_filter(
    config: &Config,
    host: &PolicyHost,
    run: &RunInfo,
    stats: &mut Vec<(String, StatsHandle)>,
) -> Result<Option<Box<dyn KeyFilter>>> {
    Ok(match &config.ignore_keys {
        IgnoreKeysSpec::None => None,
        IgnoreKeysSpec::Globs(g) => Some(Box::new(
            IgnoreGlobs::new(g).map_err(cairn_policy::PolicyError::from)?,
        )),
        IgnoreKeysSpec::Wasm(spec) => {
            let f = host.key_filter(spec, &config.sandbox, run)?;
            stats.push((spec.name(), f.stats()));
            Some(Box::new(f))
        }
    })
}
