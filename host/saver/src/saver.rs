//! cairn's `CheckpointSaver`: the object a training loop calls at every checkpoint event.
//!
//! It reads like Composer's `CheckpointSaver._save_checkpoint`
//! (`composer/callbacks/checkpoint_saver.py`), with the fixes listed in the README's differences:
//! every checkpoint is durable (fsync of file and folder) before anything names it, the
//! `latest` pointer is swapped atomically, retention counts the checkpoints of earlier runs in
//! the same folder and never deletes the one `latest` names, and a failed save leaves the
//! previous checkpoint and its pointer as they were.
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
//! assert_eq!(saver.saved_checkpoints().len(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_format::durable::{self, Replace};
use cairn_format::{CheckpointFormat, FormatError, Prebuilt, PtError, Value};
use cairn_policy::{
    Event, Filtered, IgnoreGlobs, IntervalScheduler, KeyFilter, PolicyHost, PolicyStats, Ranks,
    RunInfo, SavePolicy, StatsHandle, Timestamp, TrainingState,
};

use crate::checkpoint::{self, Snapshot, restore_state_key};
use crate::config::{Config, ConfigError, IgnoreKeysSpec, SaveIntervalSpec};
use crate::error::{Error, Result, SnapshotError};
use crate::gate::Schedule;
use crate::local::{latest, scan};
use crate::remote::{
    RemoteStore, UploadFailure, UploadJob, UploadOptions, UploadReport, UploadStatus, Uploader,
};
use crate::resume::{self, ResumePoint, ResumeReason};
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
    folder: PathBuf,
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
        let ranks = Ranks::from_env();
        let vars = Vars {
            run_name: &config.run_name,
            ranks,
            timestamp: None,
        };
        let (folder, remote_url) = locations(&config.folder.render(&vars), &config.remote_url)?;
        let format = CheckpointFormat::from_name(config.filename.source())?;
        let run = RunInfo {
            run_name: config.run_name.clone(),
            ranks,
        };
        let mut policy_stats = Vec::new();
        let policy = save_policy(config, host, &run, &mut policy_stats)?;
        let filter = key_filter(config, host, &run, &mut policy_stats)?;
        let remote = match &config.remote_file_name {
            None => None,
            Some(name) => {
                let store = RemoteStore::from_url(&remote_url)?;
                let options = UploadOptions {
                    num_concurrent_uploads: config.num_concurrent_uploads,
                    timeout: Duration::from_secs_f64(config.upload_timeout_in_seconds),
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
        };
        Ok(CheckpointSaver {
            policy_stats,
            remote,
            failed_uploads: HashSet::new(),
            run_name: config.run_name.clone(),
            ranks,
            folder,
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

    /// Where the local `latest` pointer lives, if there is one.
    pub fn latest_path(&self) -> Option<PathBuf> {
        let t = self.latest_filename.as_ref()?;
        Some(self.folder.join(t.render(&self.vars(None))))
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

    /// `FIT_START`: create the folder, remove a crashed run's temporary files, and (unless
    /// `overwrite`) refuse a folder holding checkpoints from this run's future (§12).
    pub fn fit_start(&mut self, now: &Timestamp) -> Result<()> {
        fs::create_dir_all(&self.folder)
            .map_err(Error::io("create the checkpoint folder", &self.folder))?;
        durable::remove_leftovers(&self.folder).map_err(Error::io("clean", &self.folder))?;
        if let Some(remote) = &self.remote {
            // Bad credentials or a missing bucket fail now, not after the first checkpoint.
            remote
                .uploader
                .store()
                .check_access(Duration::from_secs(30))?;
        }
        if !self.overwrite {
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
        self.collect_upload_failures();
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
    /// "skip"` refused to let an unfiltered checkpoint be written (a warning says so).
    pub fn save(
        &mut self,
        timestamp: &Timestamp,
        event: Event,
        snapshot: impl FnOnce() -> Result<Snapshot, SnapshotError>,
    ) -> Result<Option<SavedCheckpoint>> {
        let started = Instant::now();
        self.schedule.saved_at(timestamp.batch);
        let path = self.checkpoint_path(timestamp);
        self.history
            .push((path.to_string_lossy().into_owned(), *timestamp));
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
    /// filter's `on_error = "skip"` kept the checkpoint from being written (a warning says so).
    pub fn save_prebuilt(
        &mut self,
        path: &Path,
        timestamp: &Timestamp,
        event: Event,
        checkpoint: &Prebuilt,
        options: PrebuiltOptions<'_>,
    ) -> Result<Option<SavedCheckpoint>> {
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
            self.write_file(path, |file| {
                cairn_format::write_checkpoint(path, format, &tree, file)
            })?
        } else {
            self.write_file(path, |file| {
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

    /// A durable checkpoint becomes the newest: `latest` moves to it, its upload is queued, and
    /// it joins the saved checkpoints.
    fn commit(
        &mut self,
        path: PathBuf,
        timestamp: &Timestamp,
        event: Event,
        bytes: u64,
        started: Instant,
    ) -> Result<SavedCheckpoint> {
        if self.num_checkpoints_to_keep != 0
            && let Some(link) = self.latest_path()
        {
            latest::swap(&link, &path).map_err(Error::io("move the latest pointer", &link))?;
        }
        self.upload(&path, timestamp)?;
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
        let bytes = self.write_file(path, |file| {
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
        write: impl FnOnce(&mut fs::File) -> Result<u64, FormatError>,
    ) -> Result<u64> {
        let replace = if self.overwrite {
            Replace::Allowed
        } else {
            Replace::Never
        };
        match durable::try_write_durably(path, replace, write) {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(format)) => Err(format.into()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Error::AlreadyExists {
                path: path.to_path_buf(),
            }),
            Err(e) => Err(Error::io("save", path)(e)),
        }
    }

    /// Find the checkpoint to continue from, load it, and continue its history: the local
    /// `latest` when it verifies (or a newer checkpoint of the same run written after it), else
    /// the most recently written local checkpoint that verifies, else the one the remote `latest`
    /// pointer names, downloaded into the folder. `None` when there is nothing to resume from.
    /// Call it before [`CheckpointSaver::fit_start`]; [`ResumePoint::reason`] says why this one.
    pub fn resume(&mut self) -> Result<Option<ResumePoint>> {
        let search = resume::Search {
            folder: &self.folder,
            filename: &self.filename,
            latest: self.latest_path(),
            vars: self.vars(None),
        };
        let mut found = search.find()?;
        if found.is_none()
            && let Some((pointer, path)) = self.download_remote_latest()?
        {
            let (tree, timestamp) = resume::load(&path)?;
            let history = crate::checkpoint::read_history(&tree);
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
    fn upload(&mut self, path: &Path, timestamp: &Timestamp) -> Result<()> {
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
        remote.uploader.enqueue(UploadJob {
            local_path: path.to_path_buf(),
            object_name,
            latest_pointer,
            sequence: remote.sequence,
        })?;
        remote.sequence += 1;
        Ok(())
    }

    /// Upload failures since the last event become warnings (and are listed again at the end).
    fn collect_upload_failures(&mut self) {
        for failure in self.take_upload_failures() {
            self.warnings.push(format!("upload failed: {failure}"));
        }
    }

    /// Uploads that failed (after their retries) since the last call; their local files are
    /// kept from retention where they are the only copy.
    pub fn take_upload_failures(&mut self) -> Vec<UploadFailure> {
        let Some(remote) = &self.remote else {
            return Vec::new();
        };
        let failures = remote.uploader.poll_failures();
        for failure in &failures {
            self.failed_uploads.insert(failure.local_path.clone());
        }
        failures
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

    /// Keep the newest `num_checkpoints_to_keep` checkpoints in the folder, counting those of
    /// earlier runs, never deleting the one `latest` names or one still being uploaded.
    pub fn rotate(&mut self) -> Result<()> {
        let Ok(keep) = usize::try_from(self.num_checkpoints_to_keep) else {
            return Ok(());
        };
        let pinned = match self.latest_path() {
            Some(link) if keep > 0 => latest::resolve(&link)
                .map_err(Error::io("read the latest pointer", &link))?
                .and_then(|p| p.canonicalize().ok()),
            _ => None,
        };
        let found = self.scan()?;
        let excess = found.len().saturating_sub(keep);
        let mut deleted = false;
        for f in found.into_iter().take(excess) {
            if (pinned.is_some() && f.path.canonicalize().ok() == pinned)
                || !self.may_delete(&f.path)
            {
                continue;
            }
            fs::remove_file(&f.path).map_err(Error::io("delete old checkpoint", &f.path))?;
            self.saved.retain(|s| s.path != f.path);
            deleted = true;
        }
        if deleted {
            durable::sync_dir(&self.folder).map_err(Error::io("sync", &self.folder))?;
        }
        Ok(())
    }

    /// `FIT_END`: wait for the uploads (the remote `latest` is written last), then apply the
    /// retention that had to wait for them. Nothing is saved here: Composer never saves at the end
    /// by itself; the interval's final save already happened at the last event. Returns the
    /// upload totals, with every failure, when the saver uploads.
    pub fn fit_end(&mut self) -> Result<Option<UploadReport>> {
        let Some(remote) = self.remote.take() else {
            return Ok(None);
        };
        let report = remote.uploader.finish();
        for failure in &report.failures {
            self.failed_uploads.insert(failure.local_path.clone());
        }
        self.rotate()?;
        Ok(Some(report))
    }
}

/// Where checkpoints are written locally, and where they are uploaded. A `folder` that is a
/// store URL (`s3://bucket/prefix`) stages checkpoints in a fresh local temporary folder, as
/// Composer does, and uploads under that URL (which then takes the place of `[remote] url`).
fn locations(folder: &str, remote_url: &str) -> Result<(PathBuf, String)> {
    if !crate::remote::is_remote_url(folder) {
        return Ok((PathBuf::from(folder), remote_url.to_owned()));
    }
    let rest = folder.split_once("://").map_or(folder, |(_, rest)| rest);
    let path = rest
        .split_once('/')
        .map_or("", |(_, p)| p)
        .trim_matches('/');
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let staging = std::env::temp_dir().join(format!("cairn-{}-{stamp}", std::process::id()));
    fs::create_dir_all(&staging).map_err(Error::io("create a staging folder", &staging))?;
    Ok((staging.join(path), folder.to_owned()))
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
