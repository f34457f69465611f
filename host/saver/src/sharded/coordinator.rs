//! The commit thread: global rank 0's wait for every rank's record, the create-only manifest, and
//! `latest`, for each step, in the background.
//!
//! Training never waits on other ranks: [`Coordinator::enqueue`] returns at once and each step's
//! commit runs as its own task, bounded by `commit_timeout_s` from the moment rank 0 handed it
//! over. The task lists the step's `.commit` folder, reads each new record, and once every rank
//! 0..world_size has one, checks every shard is in the store as its record describes (size and
//! ETag, so a record left by an earlier attempt never vouches for a shard written since). Then it
//! creates the manifest, create-only, and only after the store accepted it moves the remote
//! `.symlink` and the local link (neither ever moves backwards). Between looks it sleeps one poll
//! interval, or less when woken ([`Coordinator::wake`], e.g. after a `torch.distributed` barrier
//! guarantees the records are there).
//!
//! Outcomes come back like uploads do: failures through [`Coordinator::poll_failures`] at the next
//! event (`[remote] on_failure` decides), successes in [`Coordinator::committed`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until, timeout_at};

use super::error::CommitError;
use super::manifest::{MANIFEST_FORMAT, Manifest, ShardRecord, now_unix_ms};
use super::store::{CommitStore, Created, manifest_name};
use crate::local::latest;
use crate::remote::latest::LatestPointers;

/// Default time between two looks at a step's records.
pub const DEFAULT_POLL: Duration = Duration::from_millis(50);

/// One step for the coordinator to commit.
#[derive(Clone, Debug)]
pub struct CommitJob {
    /// The step (global rank 0's shard name, relative to the commit store).
    pub step: String,
    /// The run's name; records of other runs do not count.
    pub run_name: String,
    /// How many ranks must have a record.
    pub world_size: u32,
    /// The training position.
    pub epoch: u64,
    /// The training position.
    pub batch: u64,
    /// Rank 0's save index in this process: `latest` never moves to a lower one.
    pub sequence: u64,
    /// `commit_timeout_s`.
    pub timeout: Duration,
    /// The remote `.symlink` to point at the step (rank 0's shard object), if there is one.
    pub remote_latest: Option<(ObjectPath, ObjectPath)>,
    /// The local link and what it will name (rank 0's local shard), if there is one.
    pub local_latest: Option<(PathBuf, PathBuf)>,
}

/// A step the coordinator committed.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Committed {
    /// The step.
    pub step: String,
    /// The manifest's bucket-relative key (or path relative to the folder).
    pub manifest: String,
    /// Bytes of every shard together.
    pub bytes: u64,
    /// Ranks.
    pub world_size: u32,
    /// Milliseconds from the last rank's record to the manifest being created.
    pub latency_ms: u64,
    /// Seconds from rank 0 handing the step over to its commit.
    pub waited_s: f64,
}

/// A step that did not commit.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CommitFailure {
    /// The step.
    pub step: String,
    /// One sentence: what happened, naming the missing ranks.
    pub message: String,
}

impl std::fmt::Display for CommitFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    idle: Condvar,
}

#[derive(Default)]
struct State {
    pending: usize,
    unreported: Vec<CommitFailure>,
    failures: Vec<CommitFailure>,
    committed: Vec<Committed>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The protocol's thread and store, for every rank: records are published and manifests read
/// through it, and on global rank 0 it commits each step.
pub struct Coordinator {
    runtime: Option<Runtime>,
    store: CommitStore,
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    pointers: Arc<LatestPointers>,
    local_sequence: Arc<Mutex<Option<u64>>>,
    /// Records published before this (Unix ms, this machine's clock) were left by an earlier
    /// attempt: the ranks of the current one all started after the coordinator did... or the
    /// coordinator started after they published, and then the step times out rather than
    /// committing a stale record.
    started_unix_ms: u64,
    poll: Duration,
}

impl Coordinator {
    /// Start the commit thread for `store`.
    pub fn new(store: CommitStore, poll: Duration) -> Result<Coordinator, CommitError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cairn-commit")
            .enable_all()
            .build()
            .map_err(CommitError::Runtime)?;
        Ok(Coordinator {
            runtime: Some(runtime),
            store,
            shared: Arc::default(),
            wake: Arc::default(),
            pointers: Arc::default(),
            local_sequence: Arc::default(),
            started_unix_ms: now_unix_ms(),
            poll,
        })
    }

    /// The store the protocol's objects go to.
    pub fn store(&self) -> &CommitStore {
        &self.store
    }

    /// Run `future` on the commit thread and wait for it (for the training thread's own short
    /// protocol steps: publishing a local record, reading manifests at resume).
    pub fn block_on<T>(&self, future: impl std::future::Future<Output = T>) -> T {
        self.runtime
            .as_ref()
            .expect("the runtime lives until the coordinator is dropped")
            .block_on(future)
    }

    /// Commit `job` in the background (global rank 0).
    pub fn enqueue(&self, job: CommitJob) {
        self.shared.lock().pending += 1;
        let task = StepTask {
            store: self.store.clone(),
            wake: Arc::clone(&self.wake),
            pointers: Arc::clone(&self.pointers),
            local_sequence: Arc::clone(&self.local_sequence),
            started_unix_ms: self.started_unix_ms,
            poll: self.poll,
        };
        let shared = Arc::clone(&self.shared);
        let runtime = self.runtime.as_ref().expect("runtime lives until close");
        let step = job.step.clone();
        let work = runtime.spawn(async move { task.commit(job).await });
        runtime.spawn(async move {
            let outcome = match work.await {
                Ok(outcome) => outcome.map_err(|e| e.to_string()),
                Err(join) => Err(format!("the commit task of step '{step}' crashed: {join}")),
            };
            let mut state = shared.lock();
            state.pending -= 1;
            match outcome {
                Ok(done) => state.committed.push(done),
                Err(message) => {
                    let failure = CommitFailure { step, message };
                    state.unreported.push(failure.clone());
                    state.failures.push(failure);
                }
            }
            shared.idle.notify_all();
        });
    }

    /// Look at the records now rather than at the next poll (after a barrier, say).
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// Steps that failed to commit since the last call. Never blocks.
    pub fn poll_failures(&self) -> Vec<CommitFailure> {
        std::mem::take(&mut self.shared.lock().unreported)
    }

    /// Every step committed so far, in the order their commits finished.
    pub fn committed(&self) -> Vec<Committed> {
        self.shared.lock().committed.clone()
    }

    /// Every step that failed to commit so far.
    pub fn failures(&self) -> Vec<CommitFailure> {
        self.shared.lock().failures.clone()
    }

    /// Commits still waiting or running.
    pub fn pending(&self) -> usize {
        self.shared.lock().pending
    }

    /// Wait until no commit is pending, or `limit` has passed (each commit is bounded by its own
    /// `commit_timeout_s` anyway); whether none is pending.
    pub fn wait(&self, limit: Option<Duration>) -> bool {
        self.wake();
        crate::idle::wait_until_idle(self.shared.lock(), &self.shared.idle, limit, |s| {
            s.pending > 0
        })
    }
}

impl Drop for Coordinator {
    /// Pending commits are abandoned: their steps stay uncommitted, which every reader handles.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What one step's task needs.
struct StepTask {
    store: CommitStore,
    wake: Arc<Notify>,
    pointers: Arc<LatestPointers>,
    local_sequence: Arc<Mutex<Option<u64>>>,
    started_unix_ms: u64,
    poll: Duration,
}

impl StepTask {
    async fn commit(self, job: CommitJob) -> Result<Committed, CommitError> {
        let begun = Instant::now();
        let deadline = begun + job.timeout;
        let shards = self.wait_for_shards(&job, begun, deadline).await?;
        let manifest = Manifest {
            format: MANIFEST_FORMAT.to_owned(),
            step: job.step.clone(),
            run_name: job.run_name.clone(),
            world_size: job.world_size,
            epoch: job.epoch,
            batch: job.batch,
            shards,
            committed_unix_ms: now_unix_ms(),
            checksum: super::checksum::ALGORITHM.to_owned(),
        };
        cairn_format::failpoint!("sharded::before-manifest", |e: std::io::Error| {
            CommitError::Io {
                action: "create the manifest of",
                path: PathBuf::from(&job.step),
                source: e,
            }
        });
        let created = bounded(
            self.store.url(),
            deadline,
            &job,
            begun,
            self.store.create_manifest(&manifest),
        )
        .await?;
        if let Created::AlreadyDifferent(_) = created {
            return Err(CommitError::CommittedByAnother {
                step: job.step.clone(),
                url: self.store.url().to_owned(),
            });
        }
        cairn_format::failpoint!("sharded::before-latest", |e: std::io::Error| {
            CommitError::Latest {
                step: job.step.clone(),
                reason: e.to_string(),
            }
        });
        self.move_latest(&job).await?;
        Ok(Committed {
            step: job.step.clone(),
            manifest: self.store.key(&manifest_name(&job.step))?.to_string(),
            bytes: manifest.bytes(),
            world_size: job.world_size,
            latency_ms: manifest.commit_latency_ms(),
            waited_s: begun.elapsed().as_secs_f64(),
        })
    }

    /// Look at the step's records until every rank's is in and matches its shard, or the
    /// deadline passes.
    async fn wait_for_shards(
        &self,
        job: &CommitJob,
        begun: Instant,
        deadline: Instant,
    ) -> Result<Vec<ShardRecord>, CommitError> {
        // Each record read once per version of its object.
        let mut seen: BTreeMap<u32, (ObjectMetaId, Result<ShardRecord, String>)> = BTreeMap::new();
        loop {
            let woken = self.wake.notified();
            let listing = bounded(
                self.store.url(),
                deadline,
                job,
                begun,
                self.store.list_step(&job.step),
            )
            .await?;
            // The records new since the last poll, read at once: one round trip for all ranks.
            let fresh: Vec<(u32, ObjectMetaId, object_store::ObjectMeta)> = listing
                .records
                .into_iter()
                .filter(|(rank, _)| *rank < job.world_size)
                .map(|(rank, meta)| (rank, ObjectMetaId::of(&meta), meta))
                .filter(|(rank, id, _)| !seen.get(rank).is_some_and(|(old, _)| old == id))
                .collect();
            let reads = futures::future::join_all(
                fresh
                    .iter()
                    .map(|(_, _, meta)| self.store.record(&meta.location)),
            );
            let reads = bounded(self.store.url(), deadline, job, begun, async {
                Ok(reads.await)
            })
            .await?;
            for ((rank, id, _), read) in fresh.into_iter().zip(reads) {
                let record = match read {
                    Ok(r) => self.usable(job, rank, r),
                    Err(e @ CommitError::Unanswered { .. }) => return Err(e),
                    Err(e) => Err(e.to_string()),
                };
                seen.insert(rank, (id, record));
            }
            if (0..job.world_size).all(|r| matches!(seen.get(&r), Some((_, Ok(_))))) {
                match self.check_shards(&seen, deadline, job, begun).await? {
                    Ok(records) => return Ok(records),
                    Err((rank, why)) => {
                        // Keep waiting: the rank may be about to publish a fresh record.
                        if let Some(entry) = seen.get_mut(&rank) {
                            entry.1 = Err(why);
                        }
                    }
                }
            }
            let next = (Instant::now() + self.poll).min(deadline);
            tokio::select! {
                _ = sleep_until(next) => {}
                _ = woken => {}
            }
            if Instant::now() >= deadline {
                let missing = (0..job.world_size)
                    .filter(|r| !seen.contains_key(r))
                    .collect();
                let stale = seen
                    .iter()
                    .filter_map(|(r, (_, rec))| rec.as_ref().err().map(|why| (*r, why.clone())))
                    .collect();
                return Err(CommitError::TimedOut {
                    step: job.step.clone(),
                    missing,
                    stale,
                    waited: begun.elapsed(),
                });
            }
        }
    }

    /// A record counts when it is this step's, this run's, this world size's, and was published
    /// after the coordinator started.
    fn usable(
        &self,
        job: &CommitJob,
        rank: u32,
        record: ShardRecord,
    ) -> Result<ShardRecord, String> {
        if record.rank != rank || record.step != job.step {
            return Err(format!(
                "it describes rank {}'s shard of step '{}'",
                record.rank, record.step
            ));
        }
        if record.run_name != job.run_name {
            return Err(format!("it belongs to run '{}'", record.run_name));
        }
        if record.world_size != job.world_size {
            return Err(format!(
                "it was saved with a world size of {}, not {}",
                record.world_size, job.world_size
            ));
        }
        if record.published_unix_ms < self.started_unix_ms {
            return Err(
                "it was published before this coordinator started (an earlier attempt's)".into(),
            );
        }
        Ok(record)
    }

    /// Every shard is in the store as its record says (size, and ETag where the store gives
    /// one); otherwise the first rank whose shard is not, and why.
    async fn check_shards(
        &self,
        seen: &BTreeMap<u32, (ObjectMetaId, Result<ShardRecord, String>)>,
        deadline: Instant,
        job: &CommitJob,
        begun: Instant,
    ) -> Result<Result<Vec<ShardRecord>, (u32, String)>, CommitError> {
        let records: Vec<ShardRecord> = seen
            .values()
            .filter_map(|(_, r)| r.as_ref().ok().cloned())
            .collect();
        let heads = futures::future::join_all(records.iter().map(|r| self.store.head_shard(r)));
        let heads = bounded(self.store.url(), deadline, job, begun, async {
            Ok(heads.await)
        })
        .await?;
        for (record, head) in records.iter().zip(heads) {
            let why = match head? {
                None => Some("its shard is not in the store".to_owned()),
                Some(meta) if meta.size != record.bytes => Some(format!(
                    "its shard has {} bytes, the record says {}",
                    meta.size, record.bytes
                )),
                Some(meta) if record.etag.is_some() && meta.e_tag != record.etag => {
                    Some("its shard was replaced after the record was published".to_owned())
                }
                Some(_) => None,
            };
            if let Some(why) = why {
                return Ok(Err((record.rank, why)));
            }
        }
        Ok(Ok(records))
    }

    /// The remote `.symlink` and the local link, each only forwards.
    async fn move_latest(&self, job: &CommitJob) -> Result<(), CommitError> {
        let failed = |reason: String| CommitError::Latest {
            step: job.step.clone(),
            reason,
        };
        if let Some((pointer, target)) = &job.remote_latest {
            let limit = Duration::from_secs(60);
            self.pointers
                .advance(
                    self.store.store(),
                    pointer,
                    target,
                    job.sequence,
                    Instant::now() + limit,
                    limit,
                )
                .await
                .map_err(|e| failed(e.to_string()))?;
        }
        if let Some((link, target)) = &job.local_latest {
            let mut newest = self
                .local_sequence
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if newest.is_none_or(|n| n < job.sequence) {
                latest::swap(link, target)
                    .map_err(|e| failed(format!("{}: {e}", link.display())))?;
                *newest = Some(job.sequence);
            }
        }
        Ok(())
    }
}

/// A record object's version: a republished record is read again.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ObjectMetaId(Option<String>, i64, u64);

impl ObjectMetaId {
    fn of(meta: &object_store::ObjectMeta) -> ObjectMetaId {
        ObjectMetaId(
            meta.e_tag.clone(),
            meta.last_modified.timestamp_nanos_opt().unwrap_or_default(),
            meta.size,
        )
    }
}

/// `future`, or a timeout error once the step's deadline passed.
async fn bounded<T>(
    url: &str,
    deadline: Instant,
    job: &CommitJob,
    begun: Instant,
    future: impl std::future::Future<Output = Result<T, CommitError>>,
) -> Result<T, CommitError> {
    match timeout_at(deadline, future).await {
        Ok(result) => result,
        Err(_) => Err(CommitError::Unanswered {
            step: job.step.clone(),
            url: url.to_owned(),
            waited: begun.elapsed(),
        }),
    }
}
