//! What a save does once its snapshot is taken and filtered: the checkpoint is written durably,
//! then Composer's steps after `torch.save` (`_save_checkpoint` in
//! `composer/callbacks/checkpoint_saver.py`): the `latest` link moves to it, its upload is queued,
//! and retention runs.
//!
//! A [`Committer`] owns what those steps touch. It runs on the training thread for a synchronous
//! save and on the background writer for a save behind training (`async_save`), never on both at
//! once: the writer's thread takes it and hands it back with the [`Outcome`], so "one save in
//! flight" is a matter of ownership, not of locks.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use cairn_format::durable::{self, Replace};
use cairn_format::{CheckpointFormat, FormatError, Prebuilt, Value};
use cairn_policy::{Ranks, Timestamp};

use std::collections::HashSet as Set;
use std::time::Duration;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::local::{latest, scan};
use crate::remote::{UploadJob, UploadStatus, Uploader};
use crate::role::Role;
use crate::sharded::{self, Checksum, CommitJob, CommitStore, Coordinator, ShardRecord};
use crate::template::{Template, Vars};

/// How a saver names things: both the training thread and the writer need it.
#[derive(Clone, Debug)]
pub(crate) struct Naming {
    pub run_name: String,
    pub ranks: Ranks,
    /// The local folder checkpoints go to.
    pub folder: PathBuf,
    pub filename: Template,
    pub latest_filename: Option<Template>,
}

impl Naming {
    pub fn vars<'a>(&'a self, timestamp: Option<&'a Timestamp>) -> Vars<'a> {
        Vars {
            run_name: &self.run_name,
            ranks: self.ranks,
            timestamp,
        }
    }

    /// Where the checkpoint taken at `timestamp` goes.
    pub fn checkpoint_path(&self, timestamp: &Timestamp) -> PathBuf {
        let name = self.filename.render(&self.vars(Some(timestamp)));
        self.folder.join(name.trim_start_matches('/'))
    }

    /// The `latest` link a save at `vars`' timestamp moves (the leading `/` stripped, as Composer
    /// does). `None` without a `latest_filename`, or when it has time variables and `vars` no
    /// timestamp.
    pub fn latest_link(&self, vars: &Vars<'_>) -> Option<PathBuf> {
        let t = self.latest_filename.as_ref()?;
        if vars.timestamp.is_none() && !t.is_constant_in_time() {
            return None;
        }
        Some(self.folder.join(t.render(vars).trim_start_matches('/')))
    }

    /// The checkpoints the folder holds under the filename template, oldest first.
    pub fn scan(&self) -> Result<Vec<scan::Found>> {
        scan::checkpoints(&self.folder, &self.filename, &self.vars(None))
            .map_err(Error::io("list", &self.folder))
    }
}

/// The remote half of a save: every checkpoint is uploaded as `remote_file_name`, and the remote
/// `latest` pointer moves only after the object it names is confirmed.
pub(crate) struct RemoteNames {
    /// Shared with the training thread, which polls it for failures at every event.
    pub uploader: Arc<Uploader>,
    pub remote_file_name: Template,
    pub latest_remote_file_name: Option<Template>,
    /// Orders the remote `latest` updates: a later save's pointer never loses to an earlier one.
    pub sequence: u64,
}

/// A checkpoint to write.
pub(crate) struct WriteJob {
    pub path: PathBuf,
    pub timestamp: Timestamp,
    /// What goes in the file (for a save behind training, its storages are in staging buffers,
    /// which go back to the pool when this is dropped).
    pub content: Content,
    /// When the save began, after any wait for the previous one: its `seconds` count from here.
    pub started: Instant,
    /// Whether retention runs after it (a caller that still hands the file on runs it later).
    pub rotate: bool,
}

/// What a [`WriteJob`] writes.
pub(crate) enum Content {
    /// The checkpoint dict as the filter left it, in the saver's format.
    Tree(Value),
    /// A pickle made by the caller with its records (cairn's Python package), written verbatim;
    /// `archive` is the zip folder of a plain `.pt`.
    Prebuilt {
        checkpoint: Prebuilt,
        archive: Option<String>,
    },
}

/// What became of a [`WriteJob`].
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The checkpoint is not saved. `durable`: its file is complete under its name all the same
    /// (a step after the write failed), so the run's history keeps it.
    Failed { durable: bool, error: Error },
    /// The checkpoint is durable, `latest` names it and its upload is queued; retention ran, and
    /// `retention` says whether it failed partway.
    Committed {
        bytes: u64,
        /// From [`WriteJob::started`] to the upload being queued.
        seconds: f64,
        /// The checkpoints retention deleted.
        deleted: Vec<PathBuf>,
        retention: Result<()>,
    },
}

/// Writes checkpoints and takes the steps after: see the module docs.
pub(crate) struct Committer {
    pub naming: Naming,
    pub role: Role,
    /// Sharded saves: the commit protocol's store and thread (every rank).
    pub sharding: Option<Sharding>,
    pub format: CheckpointFormat,
    pub overwrite: bool,
    pub num_checkpoints_to_keep: i64,
    pub remote: Option<RemoteNames>,
    /// Local files whose upload failed, recorded when the uploader is closed (until then it says
    /// so itself): with `num_checkpoints_to_keep = 0` they are the only copy.
    pub failed_uploads: HashSet<PathBuf>,
    /// The newest checkpoint this saver wrote: retention never deletes it.
    pub newest: Option<(PathBuf, Timestamp)>,
}

impl Committer {
    /// Write `job`'s checkpoint durably, then [`Committer::commit`] it.
    pub fn save(&mut self, job: WriteJob) -> Outcome {
        let WriteJob {
            path,
            timestamp,
            content,
            started,
            rotate,
        } = job;
        let format = self.format;
        // A shard's record carries its checksum: computed in the writing pass, not read back.
        let sum = self.sharding.is_some();
        let summed = |w: cairn_format::Written| (w.bytes, Some(Checksum(w.crc64nvme)));
        let written = self.write(&path, &timestamp, |file| match &content {
            Content::Tree(tree) if sum => {
                cairn_format::write_checkpoint_summed(&path, format, tree, file).map(summed)
            }
            Content::Tree(tree) => {
                cairn_format::write_checkpoint(&path, format, tree, file).map(|n| (n, None))
            }
            Content::Prebuilt {
                checkpoint,
                archive,
            } if sum => cairn_format::write_prebuilt_summed(
                &path,
                format,
                checkpoint,
                archive.as_deref(),
                file,
            )
            .map(summed),
            Content::Prebuilt {
                checkpoint,
                archive,
            } => cairn_format::write_prebuilt(&path, format, checkpoint, archive.as_deref(), file)
                .map(|n| (n, None)),
        });
        let (bytes, crc64nvme) = match written {
            Ok(written) => written,
            Err(error) => {
                return Outcome::Failed {
                    durable: false,
                    error,
                };
            }
        };
        // The staging buffers go back to the pool as soon as the bytes are on disk.
        drop(content);
        self.commit(path, timestamp, bytes, crc64nvme, started, rotate)
    }

    /// Create `path` durably with what `write` puts in it: a temporary file, fsync, rename,
    /// folder fsync (never replacing a checkpoint unless `overwrite`). On any failure nothing is
    /// left under `path` and the previous checkpoint is untouched.
    fn write<T>(
        &self,
        path: &Path,
        timestamp: &Timestamp,
        write: impl Fn(&mut fs::File) -> std::result::Result<T, FormatError>,
    ) -> Result<T> {
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
            Ok(Ok(written)) => Ok(written),
            Ok(Err(format)) => Err(format.into()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Error::AlreadyExists {
                path: path.to_path_buf(),
            }),
            Err(e) => Err(Error::io("save", path)(e)),
        }
    }

    /// Composer's steps after a checkpoint file is durable, in its order: the `latest` link moves
    /// to it, its upload is queued (the remote `latest` follows once the object is confirmed), it
    /// becomes the newest checkpoint, and retention runs (when `rotate`). Sharded, the shard's
    /// record is published instead, with its checksum (`crc64nvme`, when the write computed it).
    fn commit(
        &mut self,
        path: PathBuf,
        timestamp: Timestamp,
        bytes: u64,
        crc64nvme: Option<Checksum>,
        started: Instant,
        rotate: bool,
    ) -> Outcome {
        let linked = match self.sharding {
            None => self
                .move_latest(&path, &timestamp)
                .and_then(|()| self.upload(&path, &timestamp, None)),
            // `save` sums every sharded write; reading the shard back is only the fallback.
            Some(_) => match crc64nvme {
                Some(sum) => Ok(sum),
                None => Checksum::of_file(&path).map_err(Error::io("read back", &path)),
            }
            .and_then(|sum| self.publish_shard(&path, &timestamp, bytes, sum)),
        };
        if let Err(error) = linked {
            return Outcome::Failed {
                durable: true,
                error,
            };
        }
        let seconds = started.elapsed().as_secs_f64();
        self.newest = Some((path, timestamp));
        let mut deleted = Vec::new();
        let retention = if rotate {
            self.rotate(&mut deleted)
        } else {
            Ok(())
        };
        Outcome::Committed {
            bytes,
            seconds,
            deleted,
            retention,
        }
    }

    /// Point the local `latest` at `path` (atomically; not with `num_checkpoints_to_keep = 0`,
    /// whose checkpoints exist locally only until uploaded).
    fn move_latest(&self, path: &Path, timestamp: &Timestamp) -> Result<()> {
        if self.num_checkpoints_to_keep == 0 {
            return Ok(());
        }
        if let Some(link) = self.naming.latest_link(&self.naming.vars(Some(timestamp))) {
            latest::swap(&link, path).map_err(Error::io("move the latest pointer", &link))?;
        }
        Ok(())
    }

    /// Hand a durable checkpoint to the uploader (it returns at once; the upload runs in the
    /// background and the remote `latest` follows once the object is confirmed).
    fn upload(
        &mut self,
        path: &Path,
        timestamp: &Timestamp,
        record: Option<ShardRecord>,
    ) -> Result<()> {
        let vars = self.naming.vars(Some(timestamp));
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

    /// Sharded, after the shard is durable: the rank's record is published once the shard is in
    /// place (now, or when its upload is confirmed), and global rank 0 hands the step to the
    /// commit thread, which creates the manifest and only then moves `latest`.
    fn publish_shard(
        &mut self,
        path: &Path,
        timestamp: &Timestamp,
        bytes: u64,
        crc64nvme: Checksum,
    ) -> Result<()> {
        let record = self.shard_record(timestamp, bytes, crc64nvme);
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
    fn shard_record(&self, timestamp: &Timestamp, bytes: u64, crc64nvme: Checksum) -> ShardRecord {
        let sharding = self.sharding.as_ref().expect("sharded");
        let vars = self.naming.vars(Some(timestamp));
        let object = self.remote.as_ref().map(|r| {
            r.remote_file_name
                .render(&vars)
                .trim_start_matches('/')
                .to_owned()
        });
        let ranks = self.naming.ranks;
        ShardRecord {
            format: sharded::manifest::RECORD_FORMAT.to_owned(),
            step: sharding.step(&self.naming.run_name, ranks, timestamp),
            run_name: self.naming.run_name.clone(),
            rank: ranks.rank,
            world_size: ranks.world_size,
            file: self
                .naming
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
        }
    }

    /// Global rank 0: hand the step to the commit thread, with where `latest` goes once it is
    /// committed (rank 0's shard: the manifest sits beside it).
    fn enqueue_commit(&mut self, timestamp: &Timestamp) {
        let naming = &self.naming;
        let writer = Vars {
            ranks: Role::writer_ranks(naming.ranks),
            ..naming.vars(Some(timestamp))
        };
        let local_latest = match self.num_checkpoints_to_keep {
            0 => None,
            _ => naming.latest_link(&writer).map(|link| {
                let own = naming.filename.render(&writer);
                (link, naming.folder.join(own.trim_start_matches('/')))
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
        let step = sharding.step(&naming.run_name, naming.ranks, timestamp);
        let store = sharding.coordinator.store();
        let remote_latest =
            pointer.and_then(|p| Some((store.key(&p).ok()?, store.key(&step).ok()?)));
        sharding.sequence += 1;
        sharding.coordinator.enqueue(CommitJob {
            step,
            run_name: naming.run_name.clone(),
            world_size: naming.ranks.world_size,
            epoch: timestamp.epoch,
            batch: timestamp.batch,
            sequence: sharding.sequence,
            timeout: sharding.commit_timeout,
            remote_latest,
            local_latest,
        });
    }

    /// Sharded: is the step at `ts` uncommitted (so a shard already under this rank's name is a
    /// leftover of an attempt that never committed)? Always `false` when not sharded.
    pub(crate) fn uncommitted_leftover(&self, ts: &Timestamp) -> Result<bool> {
        let Some(sharding) = &self.sharding else {
            return Ok(false);
        };
        let step = sharding.step(&self.naming.run_name, self.naming.ranks, ts);
        let store = sharding.coordinator.store();
        Ok(sharding
            .coordinator
            .block_on(store.manifest(&step))?
            .is_none())
    }

    /// Sharded, global rank 0: delete whole committed steps beyond `num_checkpoints_to_keep`
    /// where they were committed in the folder (never the step `latest` names), and the
    /// leftovers of steps that never committed, wherever they are.
    fn rotate_steps(&mut self) -> Result<()> {
        let (Some(sharding), Role::Shard { coordinator: true }) = (&self.sharding, self.role)
        else {
            return Ok(());
        };
        let mut pinned = Set::new();
        let newest = self.newest.as_ref().map(|(_, ts)| ts);
        if let Some(link) = self.naming.latest_link(&self.naming.vars(newest))
            && let Ok(Some(target)) = latest::resolve(&link)
            && let Ok(relative) = target.strip_prefix(&self.naming.folder)
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
    /// What it deleted goes into `deleted`, also when it fails partway.
    pub fn rotate(&mut self, deleted: &mut Vec<PathBuf>) -> Result<()> {
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
            let newest = self.newest.as_ref().map(|(_, ts)| ts);
            if let Some(link) = self.naming.latest_link(&self.naming.vars(newest)) {
                let target =
                    latest::resolve(&link).map_err(Error::io("read the latest pointer", &link))?;
                pinned.extend(target.and_then(|p| p.canonicalize().ok()));
            }
            pinned.extend(
                self.newest
                    .as_ref()
                    .and_then(|(p, _)| p.canonicalize().ok()),
            );
        }
        let mut found = self.naming.scan()?;
        scan::by_write_order(&mut found);
        let excess = found.len().saturating_sub(keep);
        let before = deleted.len();
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
            deleted.push(f.path);
        }
        if deleted.len() > before {
            durable::sync_dir(&self.naming.folder)
                .map_err(Error::io("sync", &self.naming.folder))?;
        }
        Ok(())
    }
}

/// Retention's delete (a failpoint sits just before it).
fn delete_checkpoint(path: &Path) -> io::Result<()> {
    cairn_format::failpoint!("rotate::before-delete");
    fs::remove_file(path)
}

/// The `.commit` folder beside rank 0's shard of a step.
fn commit_folder(shard: &Path) -> PathBuf {
    let mut name = shard.as_os_str().to_owned();
    name.push(sharded::store::COMMIT_SUFFIX);
    PathBuf::from(name)
}

/// The sharded half of a save (see [`crate::sharded`]).
pub(crate) struct Sharding {
    /// Shared with the saver, which waits for and reports the commits while a save is written
    /// behind training (the committer is then on the writer thread).
    pub coordinator: Arc<Coordinator>,
    /// Each step's name in the commit store, rendered for global rank 0: `remote_file_name` when
    /// the store is the remote one, `filename` when it is the folder.
    step_name: Template,
    pub commit_timeout: Duration,
    /// Global rank 0's save index: `latest` never moves to a lower one.
    sequence: u64,
}

impl Sharding {
    pub fn new(config: &Config, folder: &Path, remote: Option<&RemoteNames>) -> Result<Sharding> {
        let (store, step_name) = match remote {
            Some(r) => (
                CommitStore::remote(r.uploader.store().clone()),
                r.remote_file_name.clone(),
            ),
            None => {
                fs::create_dir_all(folder)
                    .map_err(Error::io("create the checkpoint folder", folder))?;
                (CommitStore::folder(folder)?, config.filename.clone())
            }
        };
        Ok(Sharding {
            coordinator: Arc::new(Coordinator::new(store, sharded::DEFAULT_POLL)?),
            step_name,
            commit_timeout: Duration::from_secs_f64(config.commit_timeout_s),
            sequence: 0,
        })
    }

    /// The step of a save at `timestamp`: global rank 0's shard name in the commit store.
    pub fn step(&self, run_name: &str, ranks: Ranks, timestamp: &Timestamp) -> String {
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
