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
//! A save reads as Composer's sequence: the policy decides ([`CheckpointSaver::on_event`]), the
//! snapshot is taken and filtered ([`CheckpointSaver::save`]), then the [`Committer`] writes the
//! file durably and takes the steps after it (`latest`, upload, retention: `commit.rs`). With
//! `async_save` the snapshot's tensors are copied into staging first and the committer runs on a
//! writer thread behind training (`background/`), one save at a time; its outcome is collected
//! by the next call into the saver.
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

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_format::durable;
use cairn_format::{CheckpointFormat, FormatError, Prebuilt, PtError, ReadLimits, Value};
use cairn_policy::{
    Event, Filtered, IgnoreGlobs, IntervalScheduler, KeyFilter, PolicyHost, PolicyStats, Ranks,
    RunInfo, SavePolicy, StatsHandle, Timestamp, TrainingState,
};

use crate::background::Writer;
use crate::background::pool::{StagingPool, StagingStats};
use crate::checkpoint::{self, Snapshot, restore_state_key};
use crate::commit::{Committer, Content, Naming, Outcome, RemoteNames, Sharding, WriteJob};
use crate::config::{
    Config, ConfigError, IgnoreKeysSpec, OnUploadFailure, RunNameOrigin, SaveIntervalSpec,
};
use crate::error::{Error, Result, SnapshotError};
use crate::gate::Schedule;
use crate::local::scan;
use crate::local::staging::Staging;
use crate::remote::{RemoteStore, UploadFailure, UploadOptions, UploadReport, Uploader};
use crate::resume::{self, ResumePoint, ResumeReason};
use crate::role::Role;
use crate::sharded::{self, CommitFailure, Committed, Coordinator};
use crate::template::Vars;

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
    /// Seconds from the decision to save (after any wait for the previous save) until it was
    /// durable, `latest` named it and its upload was queued: snapshot, filter, write, fsync.
    pub seconds: f64,
    /// Seconds the training thread was held by this save: all of it for a synchronous save; for
    /// one written behind training, any wait for the previous save plus the snapshot.
    pub blocked_seconds: f64,
    /// The part of `blocked_seconds` spent waiting for the previous save to be written.
    pub waited_seconds: f64,
}

/// A save taken at a checkpoint event, as training gets it back.
#[derive(Clone, Debug, PartialEq)]
pub enum Taken {
    /// Written before the call returned (`async_save = false`, or a state over the staging
    /// budget).
    Written(SavedCheckpoint),
    /// Copied into staging buffers and being written behind training. Once it is durable,
    /// [`CheckpointSaver::take_completed`] reports it as a [`SavedCheckpoint`]; if it fails, the
    /// next call into the saver returns [`Error::WrittenBehind`].
    Staged(StagedCheckpoint),
}

impl Taken {
    /// Where the checkpoint goes.
    pub fn path(&self) -> &Path {
        match self {
            Taken::Written(s) => &s.path,
            Taken::Staged(s) => &s.path,
        }
    }

    /// Seconds the training thread was held by this save.
    pub fn blocked_seconds(&self) -> f64 {
        match self {
            Taken::Written(s) => s.blocked_seconds,
            Taken::Staged(s) => s.blocked_seconds,
        }
    }

    /// The checkpoint, when it was written before the call returned.
    pub fn written(&self) -> Option<&SavedCheckpoint> {
        match self {
            Taken::Written(s) => Some(s),
            Taken::Staged(_) => None,
        }
    }
}

/// A save being written behind training (`async_save`): what training knows of it when the
/// call returns.
#[derive(Clone, Debug, PartialEq)]
pub struct StagedCheckpoint {
    /// When it was taken.
    pub timestamp: Timestamp,
    /// The event that took it.
    pub event: Event,
    /// Where it goes.
    pub path: PathBuf,
    /// Seconds the training thread was held: any wait for the previous save, the snapshot, the
    /// filter and the copy into staging.
    pub blocked_seconds: f64,
    /// The part of `blocked_seconds` spent waiting for the previous save to be written.
    pub waited_seconds: f64,
    /// Tensor bytes copied into staging.
    pub staged_bytes: u64,
    /// Seconds the copy took: `staged_bytes / copy_seconds` is the memory bandwidth the snapshot
    /// got.
    pub copy_seconds: f64,
}

/// Composer's `CheckpointSaver`.
pub struct CheckpointSaver {
    naming: Naming,
    role: Role,
    /// The local staging folder of a `folder` given as a URL; removed when the saver closes.
    staging: Option<Staging>,
    weights_only: bool,
    overwrite: bool,
    schedule: Schedule,
    filter: Option<Box<dyn KeyFilter>>,
    history: Vec<(String, Timestamp)>,
    saved: Vec<SavedCheckpoint>,
    /// Saves finished behind training that [`CheckpointSaver::take_completed`] has not returned.
    completed: Vec<SavedCheckpoint>,
    /// The save in flight behind training, written by the [`Committer`] it holds: the next save
    /// waits for it.
    writer: Writer,
    /// `async_save`: the staging buffers (`None`: every save is written before it returns).
    pool: Option<StagingPool>,
    /// Whether the saver already said that a state over the budget is saved synchronously.
    warned_over_budget: bool,
    warnings: Vec<String>,
    /// The uploads, shared with the committer, which queues them.
    uploader: Option<Arc<Uploader>>,
    /// Sharded: the commit protocol's thread, shared with the committer, which hands it the
    /// steps.
    commits: Option<Commits>,
    /// Accounting of each WebAssembly policy (calls, fuel, time, peak memory, errors).
    policy_stats: Vec<(String, StatsHandle)>,
    /// Bounds on reading a checkpoint to resume from.
    read_limits: ReadLimits,
    /// Uploads that failed since the current `fit_start`: `fit_end` returns them as an error.
    fit_failures: Vec<UploadFailure>,
    on_upload_failure: OnUploadFailure,
    /// How long `close` gives uploads still in flight.
    upload_timeout: Duration,
    closed: bool,
}

/// The saver's side of the sharded commit protocol: at hand even while the committer is on the
/// writer thread (`async_save`), so that commits can be woken, waited for and reported.
struct Commits {
    coordinator: Arc<Coordinator>,
    timeout: Duration,
    /// Steps that failed to commit since the current `fit_start`: `fit_end` returns them.
    fit_failures: Vec<CommitFailure>,
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
        let naming = Naming {
            run_name: config.run_name.clone(),
            ranks,
            folder: PathBuf::new(),
            filename: config.filename.clone(),
            latest_filename: config.latest_filename.clone(),
        };
        let place = Place::of(
            &config.folder.render(&naming.vars(None)),
            &config.remote_url,
            role,
        )?;
        let naming = Naming {
            folder: place.folder,
            ..naming
        };
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
                Some(RemoteNames {
                    uploader: Arc::new(Uploader::new(store, options)?),
                    remote_file_name: name.clone(),
                    latest_remote_file_name: config.latest_remote_file_name.clone(),
                    sequence: 0,
                })
            }
            _ => None,
        };
        let sharding = match config.sharded {
            false => None,
            true => Some(Sharding::new(config, &naming.folder, remote.as_ref())?),
        };
        let uploader = remote.as_ref().map(|r| Arc::clone(&r.uploader));
        let commits = sharding.as_ref().map(|s| Commits {
            coordinator: Arc::clone(&s.coordinator),
            timeout: s.commit_timeout,
            fit_failures: Vec::new(),
        });
        let committer = Committer {
            naming: naming.clone(),
            role,
            sharding,
            format,
            overwrite: config.overwrite,
            num_checkpoints_to_keep: config.num_checkpoints_to_keep,
            remote,
            failed_uploads: Default::default(),
            newest: None,
        };
        // Only a rank that writes stages (rank 0, or every rank when sharded, each with its share
        // of the machine's budget): a follower takes part in the snapshot and writes nothing.
        let pool = (config.async_save && role.writes()).then(|| {
            let budget = config
                .staging_budget_mib
                .map_or_else(|| default_staging_budget(ranks), |mib| mib << 20);
            let mut pool = StagingPool::new(budget);
            pool.set_copy_threads(copy_threads(ranks));
            pool
        });
        Ok(CheckpointSaver {
            naming,
            role,
            staging: place.staging,
            weights_only: config.weights_only,
            overwrite: config.overwrite,
            schedule: Schedule::new(policy),
            filter,
            history: Vec::new(),
            saved: Vec::new(),
            completed: Vec::new(),
            writer: Writer::Idle(Box::new(committer)),
            pool,
            warned_over_budget: false,
            warnings: Vec::new(),
            uploader,
            commits,
            policy_stats,
            fit_failures: Vec::new(),
            on_upload_failure: config.on_upload_failure,
            upload_timeout,
            closed: false,
            read_limits: config.read,
        })
    }

    /// The local folder checkpoints go to.
    pub fn folder(&self) -> &Path {
        &self.naming.folder
    }

    /// Checkpoints this process wrote and still keeps, oldest first (Composer's
    /// `saved_checkpoints`, with their timestamps). A save behind training joins the list once
    /// it is durable and a later call into the saver noticed ([`CheckpointSaver::flush`] waits
    /// for it).
    pub fn saved_checkpoints(&self) -> &[SavedCheckpoint] {
        &self.saved
    }

    /// Saves written behind training that finished since the last call, in save order (a
    /// synchronous save is returned by the call that took it instead): with the returned
    /// [`Taken::Staged`], each save is reported once, as taken and as written.
    pub fn take_completed(&mut self) -> Vec<SavedCheckpoint> {
        std::mem::take(&mut self.completed)
    }

    /// Whether saves are written behind training (`async_save` on the rank that writes).
    pub fn is_async(&self) -> bool {
        self.pool.is_some()
    }

    /// Whether a save is being written behind training right now (its outcome is collected by
    /// the next call into the saver once this is false).
    pub fn is_writing(&self) -> bool {
        self.writer.is_writing()
    }

    /// What staging has done so far; `None` without `async_save`.
    pub fn staging_stats(&self) -> Option<StagingStats> {
        self.pool.as_ref().map(StagingPool::stats)
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
        self.naming.latest_link(&self.naming.vars(newest))
    }

    fn ensure_open(&self) -> Result<()> {
        if self.closed {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// With `async_save`, allocate the staging buffers for storages of these byte sizes now and
    /// touch their pages, so the first save does not pay for that (on this project's VM, a
    /// first copy into fresh memory was 3–6 times slower than into reused memory). Call it
    /// before training; the buffers still grow if a state needs more. A state over the budget
    /// gets a warning, and its saves are written synchronously. Without `async_save`, nothing.
    pub fn reserve_staging(&mut self, sizes: impl IntoIterator<Item = u64>) -> Result<()> {
        self.flush()?;
        let Some(pool) = &mut self.pool else {
            return Ok(());
        };
        if let Err(over) = pool.reserve(sizes) {
            self.warn_over_budget(over.need, over.budget, None);
        }
        Ok(())
    }

    /// `FIT_START`: create the folder, remove a crashed run's temporary files, and (unless
    /// `overwrite`) refuse a folder holding checkpoints from this run's future (§12). Ranks other
    /// than 0 only read: the folder may be shared, and its temporary files may be rank 0's.
    pub fn fit_start(&mut self, now: &Timestamp) -> Result<()> {
        self.ensure_open()?;
        // A save still in flight has a temporary file the clean-up would take for a leftover.
        self.flush()?;
        self.fit_failures.clear();
        let folder = &self.naming.folder;
        if let Some(commits) = &mut self.commits {
            commits.fit_failures.clear();
        }
        match self.role {
            Role::Writer => {
                fs::create_dir_all(folder)
                    .map_err(Error::io("create the checkpoint folder", folder))?;
                durable::remove_leftovers(folder).map_err(Error::io("clean", folder))?;
            }
            Role::Shard { .. } => {
                fs::create_dir_all(folder)
                    .map_err(Error::io("create the checkpoint folder", folder))?;
                // The folder may be shared: only this rank's own temporary files are its to
                // remove (another rank may be writing its shard right now).
                let (pattern, _) = self.naming.filename.match_regex(&self.naming.vars(None));
                let own = regex::Regex::new(&pattern).map_err(|e| Error::Io {
                    action: "clean",
                    path: folder.clone(),
                    source: io::Error::other(e),
                })?;
                durable::remove_leftovers_where(folder, |name| own.is_match(name))
                    .map_err(Error::io("clean", folder))?;
            }
            Role::Follower => {}
        }
        if let Some(uploader) = &self.uploader {
            // Bad credentials or a missing bucket fail now, not after the first checkpoint.
            uploader.store().check_access(Duration::from_secs(30))?;
        }
        if !self.overwrite
            && let Some(commits) = &self.commits
        {
            // Sharded, only committed steps count: an uncommitted shard beyond `now` is a
            // leftover that this run's save at that step replaces.
            let store = commits.coordinator.store();
            let committed = commits.coordinator.block_on(store.committed())?;
            let future = committed
                .into_iter()
                .filter_map(|(_, m)| m.ok())
                .filter(|m| m.run_name == self.naming.run_name && m.batch > now.batch)
                .max_by(|a, b| a.training_order().cmp(&b.training_order()));
            if let Some(m) = future {
                return Err(Error::FutureCheckpoint {
                    path: folder.join(&m.step),
                });
            }
        } else if !self.overwrite {
            let found = self.naming.scan()?;
            match scan::future_conflict(&found, now) {
                Ok(None) => {}
                Ok(Some(path)) => return Err(Error::FutureCheckpoint { path }),
                Err(e) => {
                    return Err(Error::Io {
                        action: "compare the checkpoints of",
                        path: folder.clone(),
                        source: std::io::Error::other(format!(
                            "checkpoint.filename '{}': {e}",
                            self.naming.filename
                        )),
                    });
                }
            }
        }
        Ok(())
    }

    /// A checkpoint event: ask the policy and, when a save is due, take the snapshot and save.
    /// `snapshot` runs only when a checkpoint is written. A save behind training that failed
    /// since the last call is returned first (as [`Error::WrittenBehind`]), before the policy is
    /// asked, as are failed uploads with `on_failure = "fail"`.
    pub fn on_event(
        &mut self,
        state: &TrainingState<'_>,
        event: Event,
        snapshot: impl FnOnce() -> Result<Snapshot, SnapshotError>,
    ) -> Result<Option<Taken>> {
        self.ensure_open()?;
        self.collect_written()?;
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
    ///
    /// With `async_save`, a save first waits for the one in flight (one at a time, so saves and
    /// `latest` stay in order; if that one failed, its error is returned and this save is not
    /// taken), then copies the snapshot's tensors into staging and returns [`Taken::Staged`]
    /// while a writer thread does the rest.
    pub fn save(
        &mut self,
        timestamp: &Timestamp,
        event: Event,
        snapshot: impl FnOnce() -> Result<Snapshot, SnapshotError>,
    ) -> Result<Option<Taken>> {
        self.ensure_open()?;
        let began = Instant::now();
        self.flush()?;
        let waited = began.elapsed();
        let started = Instant::now();
        self.schedule.saved_at(timestamp.batch);
        let path = self.naming.checkpoint_path(timestamp);
        self.history
            .push((path.to_string_lossy().into_owned(), *timestamp));
        if self.role == Role::Follower {
            snapshot().map_err(Error::Snapshot)?;
            return Ok(None);
        }
        let tree = match self.snapshot(timestamp, snapshot) {
            Ok(Filtered::Keep(tree)) => tree,
            Ok(Filtered::Skip(why)) => {
                self.history.pop();
                self.skipped(&path, why);
                return Ok(None);
            }
            Err(e) => {
                self.history.pop();
                return Err(e);
            }
        };
        let job = WriteJob {
            path,
            timestamp: *timestamp,
            content: Content::Tree(tree),
            started,
            rotate: true,
        };
        self.take(job, event, began, waited)
    }

    /// Write `job` now, or stage it and hand it to the writer thread (`async_save`). `began`:
    /// when training started waiting, of which `waited` was for the previous save.
    fn take(
        &mut self,
        job: WriteJob,
        event: Event,
        began: Instant,
        waited: Duration,
    ) -> Result<Option<Taken>> {
        if self.pool.is_some()
            && !self.overwrite
            && fs::symlink_metadata(&job.path).is_ok()
            && !self.writer.idle()?.uncommitted_leftover(&job.timestamp)?
        {
            // Said now rather than behind training: the durable write would refuse it anyway.
            self.forget(&job.path);
            return Err(Error::AlreadyExists { path: job.path });
        }
        let mut pending = Pending {
            timestamp: job.timestamp,
            event,
            path: job.path.clone(),
            blocked_seconds: 0.0,
            waited_seconds: waited.as_secs_f64(),
        };
        let job = match self.stage(job) {
            Staged::Copied(job, staged_bytes, copy_seconds) => {
                pending.blocked_seconds = began.elapsed().as_secs_f64();
                let taken = pending.staged(staged_bytes, copy_seconds);
                let path = job.path.clone();
                if let Err(e) = self.writer.start(job, pending) {
                    self.forget(&path);
                    return Err(e);
                }
                return Ok(Some(Taken::Staged(taken)));
            }
            Staged::Synchronous(job) => job,
        };
        let outcome = self.writer.idle()?.save(job);
        let saved = self.settle(pending, outcome, Some(began))?;
        Ok(saved.map(Taken::Written))
    }

    /// Save a checkpoint built by the caller: `checkpoint` is the finished pickle and its
    /// storage records (cairn's Python package pickles the training state with Python's own
    /// pickler, as `torch.save` does), `path` the name the caller gave it, which must be the one
    /// this saver's `filename` renders at `timestamp` (or retention and the conflict scan would
    /// not see it). The caller keeps the history (`all_saved_checkpoints_to_timestamp`) and the
    /// one-save-per-batch rule; the saver does the rest as [`CheckpointSaver::save`] does: the
    /// configured `ignore_keys` (on the pickle read back into a tree, only when there is one
    /// and `options.filter` is set; otherwise the pickle is written as given), the durable
    /// write, `latest`, the upload and, with `options.rotate`, retention; with `async_save` the
    /// records are copied into staging and the rest happens behind training. The caller's
    /// records are only read (it may drop them once this returns). `None` when the filter's
    /// `on_error = "skip"` kept the checkpoint from being written (a warning says so), and on
    /// ranks other than 0, which write nothing.
    pub fn save_prebuilt(
        &mut self,
        path: &Path,
        timestamp: &Timestamp,
        event: Event,
        checkpoint: &Prebuilt,
        options: PrebuiltOptions<'_>,
    ) -> Result<Option<Taken>> {
        self.ensure_open()?;
        let began = Instant::now();
        self.flush()?;
        let waited = began.elapsed();
        let started = Instant::now();
        let expected = self.checkpoint_path(timestamp);
        if expected != path {
            return Err(ConfigError {
                file: path.display().to_string(),
                location: String::new(),
                message: format!(
                    "is not the name checkpoint.filename '{}' gives at batch {} ({}), so retention and the conflict scan would not find it",
                    self.naming.filename,
                    timestamp.batch,
                    expected.display()
                ),
            }
            .into());
        }
        if self.role == Role::Follower {
            return Ok(None);
        }
        let filter = options.filter && self.filter.is_some();
        let format = self.writer.idle()?.format;
        let content = if filter || format == CheckpointFormat::Safetensors {
            let tree = checkpoint.tree().map_err(|error| FormatError::Pt {
                path: path.to_path_buf(),
                error: PtError::Pickle(error),
            })?;
            let tree = if filter {
                match self.apply_filter(tree)? {
                    Filtered::Keep(tree) => tree,
                    Filtered::Skip(why) => {
                        self.skipped(path, why);
                        return Ok(None);
                    }
                }
            } else {
                tree
            };
            Content::Tree(tree)
        } else {
            Content::Prebuilt {
                checkpoint: checkpoint.clone(),
                archive: options.archive.map(str::to_owned),
            }
        };
        let job = WriteJob {
            path: path.to_path_buf(),
            timestamp: *timestamp,
            content,
            started,
            rotate: options.rotate,
        };
        self.take(job, event, began, waited)
    }

    /// Where the checkpoint taken at `timestamp` goes.
    pub fn checkpoint_path(&self, timestamp: &Timestamp) -> PathBuf {
        self.naming.checkpoint_path(timestamp)
    }

    /// A checkpoint the filter's `on_error = "skip"` kept from being written.
    fn skipped(&mut self, path: &Path, why: impl std::fmt::Display) {
        self.warnings.push(format!(
            "{} was not saved: {why} (on_error = \"skip\"; the previous checkpoint stays latest)",
            path.display()
        ));
    }

    /// Take the snapshot, build Composer's checkpoint dict around it and run the filter, on the
    /// training thread: the filter sees the same tree whether the save is written now or behind
    /// training, and only what it keeps is copied into staging.
    fn snapshot(
        &mut self,
        ts: &Timestamp,
        snapshot: impl FnOnce() -> Result<Snapshot, SnapshotError>,
    ) -> Result<Filtered> {
        let snapshot = snapshot().map_err(Error::Snapshot)?;
        let tree = checkpoint::build(
            snapshot,
            ts,
            &self.naming.run_name,
            &self.history,
            self.weights_only,
        );
        self.apply_filter(tree)
    }

    /// Run the configured `ignore_keys` over a checkpoint tree, restoring the `state` key the
    /// filter may have removed.
    fn apply_filter(&mut self, tree: Value) -> Result<Filtered> {
        let Some(filter) = self.filter.as_mut() else {
            return Ok(Filtered::Keep(tree));
        };
        let mut warnings = Vec::new();
        let filtered = filter.filter(tree, &mut warnings);
        self.warnings.extend(warnings);
        Ok(match filtered? {
            Filtered::Keep(mut tree) => {
                restore_state_key(&mut tree);
                Filtered::Keep(tree)
            }
            skip => skip,
        })
    }

    /// With `async_save`, copy the job's tensors into the staging buffers, so that training may
    /// change its own as soon as the save returns. A state over the budget is written
    /// synchronously (with a warning, once).
    fn stage(&mut self, mut job: WriteJob) -> Staged {
        let Some(pool) = &mut self.pool else {
            return Staged::Synchronous(job);
        };
        let before = pool.stats();
        let staged = match &mut job.content {
            Content::Tree(tree) => pool.stage(tree),
            Content::Prebuilt { checkpoint, .. } => pool.stage_prebuilt(checkpoint),
        };
        match staged {
            Ok(bytes) => {
                let copy_seconds = pool.stats().copy_seconds - before.copy_seconds;
                Staged::Copied(job, bytes, copy_seconds)
            }
            Err(over) => {
                let path = job.path.clone();
                self.warn_over_budget(over.need, over.budget, Some(&path));
                Staged::Synchronous(job)
            }
        }
    }

    fn warn_over_budget(&mut self, need: u64, budget: u64, path: Option<&Path>) {
        if std::mem::replace(&mut self.warned_over_budget, true) {
            return;
        }
        let what = path.map_or("the state".to_owned(), |p| p.display().to_string());
        self.warnings.push(format!(
            "{what} needs {} MiB of staging, more than staging_budget_mib = {}: saves of this size are written synchronously, with training waiting for them",
            need.div_ceil(1 << 20),
            budget >> 20
        ));
    }

    /// Collect the save written behind training if it has finished, without waiting: its
    /// failure is returned here (as [`Error::WrittenBehind`]); once written it joins
    /// [`CheckpointSaver::take_completed`]. What a caller polls between events.
    pub fn collect_written(&mut self) -> Result<()> {
        if self.writer.is_writing() {
            return Ok(());
        }
        self.flush()
    }

    /// Wait for the save being written behind training, if any. Its failure is returned here
    /// (as [`Error::WrittenBehind`], naming the checkpoint); once written it joins
    /// [`CheckpointSaver::saved_checkpoints`] and [`CheckpointSaver::take_completed`].
    pub fn flush(&mut self) -> Result<()> {
        let Some((pending, outcome)) = self.writer.wait() else {
            return Ok(());
        };
        let path = pending.path.clone();
        self.settle(pending, outcome, None)
            .map(|_| ())
            .map_err(|source| Error::WrittenBehind {
                path,
                source: Box::new(source),
            })
    }

    /// A checkpoint that was not written leaves the run's history.
    fn forget(&mut self, path: &Path) {
        let path = path.to_string_lossy();
        if let Some(i) = self.history.iter().rposition(|(p, _)| *p == path) {
            self.history.remove(i);
        }
    }

    /// Record what became of a save: a durable checkpoint joins the saved ones (and the
    /// completed ones, when it was written behind training), retention's deletions leave them;
    /// a checkpoint that was not written leaves the history. `began`: a synchronous save, held
    /// training from then until now.
    fn settle(
        &mut self,
        taken: Pending,
        outcome: Outcome,
        began: Option<Instant>,
    ) -> Result<Option<SavedCheckpoint>> {
        let (bytes, seconds, deleted, retention) = match outcome {
            Outcome::Failed { durable, error } => {
                if !durable {
                    self.forget(&taken.path);
                }
                return Err(error);
            }
            Outcome::Committed {
                bytes,
                seconds,
                deleted,
                retention,
            } => (bytes, seconds, deleted, retention),
        };
        let saved = SavedCheckpoint {
            timestamp: taken.timestamp,
            event: taken.event,
            path: taken.path,
            bytes,
            seconds,
            blocked_seconds: began.map_or(taken.blocked_seconds, |b| b.elapsed().as_secs_f64()),
            waited_seconds: taken.waited_seconds,
        };
        self.saved.push(saved.clone());
        if began.is_none() {
            self.completed.push(saved.clone());
        }
        self.saved.retain(|s| !deleted.contains(&s.path));
        retention?;
        Ok(Some(saved))
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
        self.flush()?;
        let folder = self.naming.folder.clone();
        if let Some(commits) = &self.commits {
            fs::create_dir_all(&folder)
                .map_err(Error::io("create the checkpoint folder", &folder))?;
            let found = sharded::resume::find(
                &commits.coordinator,
                &self.naming.run_name,
                self.naming.ranks.rank,
                self.naming.ranks.world_size,
                &folder,
                &self.read_limits,
            )?;
            if let Some(point) = &found {
                self.history = point.history.clone();
            }
            return Ok(found);
        }
        let writer = Vars {
            ranks: Role::writer_ranks(self.naming.ranks),
            ..self.naming.vars(None)
        };
        let latest = match &self.naming.latest_filename {
            None => Ok(None),
            Some(t) if !t.is_constant_in_time() => Err(format!(
                "latest_filename '{t}' has time variables, so no single link names the newest checkpoint"
            )),
            Some(_) => Ok(self.naming.latest_link(&writer)),
        };
        let search = resume::Search {
            folder: &self.naming.folder,
            filename: &self.naming.filename,
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
    pub fn download_remote_latest(&mut self) -> Result<Option<(String, PathBuf)>> {
        self.flush()?;
        let Some(uploader) = &self.uploader else {
            return Ok(None);
        };
        let committer = self.writer.idle()?;
        let Some(template) = committer
            .remote
            .as_ref()
            .and_then(|r| r.latest_remote_file_name.as_ref())
        else {
            return Ok(None);
        };
        let name = template
            .render(&self.naming.vars(None))
            .trim_start_matches('/')
            .to_owned();
        let folder = &self.naming.folder;
        fs::create_dir_all(folder).map_err(Error::io("create the checkpoint folder", folder))?;
        let path = crate::remote::download_latest(uploader.store(), &name, folder)?;
        Ok(path.map(|p| (name, p)))
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
        let Some(commits) = &mut self.commits else {
            return Vec::new();
        };
        let new = commits.coordinator.poll_failures();
        commits.fit_failures.extend(new.iter().cloned());
        new
    }

    /// Global rank 0: wake the commit thread (every record is in place, say after a
    /// `torch.distributed` barrier) and wait, at most `limit`, for the commits handed over so far;
    /// what they came to. Other ranks and non-sharded savers return an empty report at once. A
    /// save still being written behind training (`async_save`) hands its step over only once its
    /// shard is durable: [`CheckpointSaver::flush`] first to wait for that one too.
    pub fn wait_for_commits(&mut self, limit: Option<Duration>) -> CommitReport {
        if let Some(commits) = &self.commits {
            commits.coordinator.wait(limit);
        }
        self.commit_report()
    }

    /// What global rank 0's commits came to so far (empty elsewhere).
    pub fn commit_report(&self) -> CommitReport {
        match &self.commits {
            Some(s) => CommitReport {
                committed: s.coordinator.committed(),
                failed: s.coordinator.failures(),
                pending: s.coordinator.pending(),
            },
            None => CommitReport::default(),
        }
    }

    /// Upload failures since the last call, recorded for `fit_end` (retention asks the uploader
    /// itself whether a file's upload failed).
    fn collect_upload_failures(&mut self) -> Vec<UploadFailure> {
        let Some(uploader) = &self.uploader else {
            return Vec::new();
        };
        let new = uploader.poll_failures();
        self.fit_failures.extend(new.iter().cloned());
        new
    }

    /// Apply retention now, after the save in flight (see [`CheckpointSaver::save_prebuilt`]):
    /// keep the `num_checkpoints_to_keep` most recently written checkpoints, counting earlier
    /// runs', never the one `latest` names, the newest this saver wrote, or one uploading.
    pub fn rotate(&mut self) -> Result<()> {
        self.flush()?;
        let mut deleted = Vec::new();
        let result = self.writer.idle()?.rotate(&mut deleted);
        self.saved.retain(|s| !deleted.contains(&s.path));
        result
    }

    /// `FIT_END`: wait for the save in flight, then for the uploads (each bounded by
    /// `upload_timeout_in_seconds`; the remote `latest` is written after the object it names) and
    /// the commits, then apply the retention that had to wait for them. A save that failed behind
    /// training is returned (naming the checkpoint) once the earlier saves' uploads and commits
    /// are done: those are complete checkpoints that stopping at once would abandon.
    /// Nothing is saved here: Composer never saves at the end by itself; the interval's final
    /// save already happened at the last event. Returns the upload totals so far, or
    /// [`Error::UploadsFailed`] with every upload that failed since `fit_start`. The saver keeps
    /// uploading if training starts again (`fit_start` ... `fit_end` once more).
    pub fn fit_end(&mut self) -> Result<Option<UploadReport>> {
        self.ensure_open()?;
        let in_flight = self.flush();
        if self.uploader.is_none() && self.commits.is_none() {
            return in_flight.map(|()| None);
        }
        if let Some(uploader) = &self.uploader {
            uploader.wait(None);
        }
        if let Some(commits) = &self.commits {
            // Each commit is bounded by its own commit_timeout_s.
            commits.coordinator.wait(None);
        }
        self.collect_upload_failures();
        self.collect_commit_failures();
        in_flight?;
        self.rotate()?;
        if !self.fit_failures.is_empty() {
            return Err(Error::UploadsFailed(std::mem::take(&mut self.fit_failures)));
        }
        if let Some(commits) = &mut self.commits
            && !commits.fit_failures.is_empty()
        {
            return Err(Error::StepsNotCommitted(std::mem::take(
                &mut commits.fit_failures,
            )));
        }
        Ok(self.upload_report())
    }

    /// The store this saver uploads to (`[remote] url`, or a `folder` given as a URL); `None`
    /// when it does not upload (no `remote_file_name`, or a rank other than 0).
    pub fn upload_url(&self) -> Option<&str> {
        self.uploader.as_ref().map(|u| u.store().url())
    }

    /// The upload totals so far, with every failure; `None` when the saver does not upload.
    pub fn upload_report(&self) -> Option<UploadReport> {
        self.uploader.as_ref().map(|u| u.report())
    }

    /// Composer's `post_close`: wait for the save in flight behind training, give the uploads in
    /// flight until `upload_timeout_in_seconds` to finish (the remote `latest` names the newest
    /// checkpoint confirmed by then; one still running after that is abandoned and listed as
    /// failed), apply the retention that waited for them, and remove the staging folder of a
    /// `folder` given as a URL. Call it when training stops, also when it stops with an error:
    /// dropping the saver abandons uploads at once. Returns the final upload totals; an `Err`
    /// when the save in flight failed (after everything else was done) or local cleanup failed.
    /// Later calls do nothing and return `None`.
    pub fn close(&mut self) -> Result<Option<UploadReport>> {
        if self.closed {
            return Ok(None);
        }
        self.closed = true;
        let in_flight = self.flush();
        let report = self.close_uploads();
        let cleanup = self.close_folders();
        in_flight?;
        cleanup?;
        Ok(report)
    }

    /// Stop the uploader (see [`CheckpointSaver::close`]): the final totals.
    fn close_uploads(&mut self) -> Option<UploadReport> {
        let uploader = self.uploader.take()?;
        // The committer's handle goes first, so this one is the last and may close it.
        if let Ok(committer) = self.writer.idle() {
            committer.remote = None;
        }
        let report = match Arc::try_unwrap(uploader) {
            Ok(uploader) => uploader.close(Some(self.upload_timeout)),
            // Only a lost writer still holds it: wait as long, and report.
            Err(shared) => {
                shared.wait(Some(self.upload_timeout));
                shared.report()
            }
        };
        if let Ok(committer) = self.writer.idle() {
            committer
                .failed_uploads
                .extend(report.failures.iter().map(|f| f.local_path.clone()));
        }
        Some(report)
    }

    /// The retention that waited for uploads, and the staging folder's removal.
    fn close_folders(&mut self) -> Result<()> {
        if let Some(commits) = &self.commits {
            commits.coordinator.wait(Some(commits.timeout));
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
        Ok(())
    }
}

/// A save as the training thread took it, until the committer says what became of it.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    timestamp: Timestamp,
    event: Event,
    path: PathBuf,
    /// Known when it returns to training (for a synchronous save, only once it is written).
    blocked_seconds: f64,
    waited_seconds: f64,
}

impl Pending {
    /// What training is told of it when it was staged.
    fn staged(&self, staged_bytes: u64, copy_seconds: f64) -> StagedCheckpoint {
        StagedCheckpoint {
            timestamp: self.timestamp,
            event: self.event,
            path: self.path.clone(),
            blocked_seconds: self.blocked_seconds,
            waited_seconds: self.waited_seconds,
            staged_bytes,
            copy_seconds,
        }
    }
}

/// What [`CheckpointSaver::stage`] made of a job.
enum Staged {
    /// Copied into staging (bytes, seconds): to be written behind training.
    Copied(WriteJob, u64, f64),
    /// To be written now.
    Synchronous(WriteJob),
}

/// `staging_budget_mib` when the config leaves it unset: half the machine's memory shared by
/// its local ranks, at most 32 GiB (torchsnapshot's per-rank budget is 0.6 of free memory over
/// the local ranks, at most 32 GiB).
/// Threads for the copy into staging: this rank's share of the machine's cores, at most four.
/// Nothing else of the save runs while it copies (the previous save is written by then), and two
/// threads copied 1.4x faster than one on the 2-core machine the benchmark ran on
/// (`cairn-bench async-save`: 8.7 against 12.2 GB/s).
fn copy_threads(ranks: Ranks) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let ranks_here = usize::try_from(ranks.local_world_size.max(1)).unwrap_or(1);
    (cores / ranks_here).clamp(1, 4)
}

fn default_staging_budget(ranks: Ranks) -> u64 {
    const CAP: u64 = 32 << 30;
    // SAFETY: `sysconf` takes no pointers.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let total = u64::try_from(pages).unwrap_or(0) * u64::try_from(page).unwrap_or(0);
    let ranks_here = u64::from(ranks.local_world_size.max(1));
    match total {
        0 => CAP / 8,
        total => (total / 2 / ranks_here).min(CAP),
    }
}

impl Drop for CheckpointSaver {
    /// Dropped without [`CheckpointSaver::close`]: a save in flight finishes on its own thread,
    /// uploads are abandoned at once (dropping never blocks). The staging folder is removed only
    /// if nothing was still writing or uploading from it; otherwise the next saver's start
    /// removes it.
    fn drop(&mut self) {
        let idle = matches!(self.writer, Writer::Idle(_))
            && self.uploader.as_ref().is_none_or(|u| u.pending() == 0);
        if idle && let Some(staging) = self.staging.take() {
            let _ = staging.remove();
        }
    }
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
