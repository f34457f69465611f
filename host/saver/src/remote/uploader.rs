//! The background uploader the saver talks to.
//!
//! The saver runs on the training thread and must never wait for the network. The uploader owns
//! its own tokio runtime; [`Uploader::enqueue`] only opens the file (to pin it, see
//! [`pin`](super::pin)), records the job and hands it to the runtime, so it returns in
//! microseconds whatever the network does. Everything else — the transfer, retries, the time bound,
//! the size check, the `latest` pointer — happens on the runtime's threads.
//!
//! Results come back through cheap, non-blocking queries: [`Uploader::poll_failures`] at every
//! event, [`Uploader::status`] / [`Uploader::in_flight`] for local retention, and
//! [`Uploader::finish`] at the end of training, which waits (bounded by the per-upload timeouts)
//! and returns an [`UploadReport`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::{Instant, timeout_at};

use crate::sharded::{CommitStore, ShardRecord};

use super::latest::{LatestPointers, SYMLINK_SUFFIX};
use super::pin::PinnedFile;
use super::store::{RemoteStore, StoreError};
use super::transfer::{TransferOptions, upload_file};

/// How checkpoints are uploaded. `Default` is Composer's `CheckpointSaver` defaults plus cairn's
/// transfer settings.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Checkpoint uploads in flight at once (`num_concurrent_uploads`, Composer default 1).
    pub num_concurrent_uploads: usize,
    /// Bound on each checkpoint's upload, from when it starts (not from when it was queued) to
    /// its `latest` pointer being written (`upload_timeout_in_seconds`, default 3600 s).
    pub timeout: Duration,
    /// Replace existing objects (`overwrite`, default false).
    pub overwrite: bool,
    /// Smallest multipart part; files up to this size go in one `PUT` (default 8 MiB).
    pub part_size_min: usize,
    /// Parts of one upload in flight at once (default 4).
    pub part_concurrency: usize,
    /// Whole-upload attempts on transient errors (default 3, as Composer).
    pub max_attempts: u32,
    /// Backoff before the second attempt, doubled for each further one (default 1 s).
    pub retry_backoff: Duration,
    /// Bound on aborting an unfinished multipart upload (default 30 s).
    pub abort_timeout: Duration,
    /// Threads of the uploader's runtime (default 2: uploads are I/O-bound).
    pub worker_threads: usize,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            num_concurrent_uploads: 1,
            timeout: Duration::from_secs(3600),
            overwrite: false,
            part_size_min: 8 * 1024 * 1024,
            part_concurrency: 4,
            max_attempts: 3,
            retry_backoff: Duration::from_secs(1),
            abort_timeout: Duration::from_secs(30),
            worker_threads: 2,
        }
    }
}

/// One checkpoint file to upload.
#[derive(Debug, Clone)]
pub struct UploadJob {
    /// The local checkpoint, already durable. It is pinned when enqueued, so it may be deleted or
    /// replaced (by rename) right after.
    pub local_path: PathBuf,
    /// The object name (formatted `remote_file_name`), relative to the store URL's prefix.
    pub object_name: String,
    /// The formatted `latest_remote_file_name` **without** the `.symlink` suffix (it is
    /// appended), or `None` for no pointer. After this checkpoint is confirmed, the object
    /// `<latest_pointer>.symlink` is set to the checkpoint's bucket-relative key — unless a later
    /// save (higher `sequence`) is already named there.
    pub latest_pointer: Option<String>,
    /// Monotonic save index within this run (0, 1, 2...), for the never-backwards rule.
    pub sequence: u64,
}

/// What [`Uploader::enqueue`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadTicket {
    /// Unique within this uploader, in enqueue order.
    pub id: u64,
    /// The bucket-relative key the checkpoint is uploaded to (what a pointer will contain).
    pub key: String,
    /// Bytes that will be uploaded (the file's size when it was pinned).
    pub bytes: u64,
}

/// A checkpoint (or pointer) that could not be uploaded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UploadFailure {
    /// The object name of the job (or of its `.symlink` pointer, if only that failed).
    pub object_name: String,
    /// The local checkpoint; it is left untouched.
    pub local_path: PathBuf,
    /// One sentence: what failed, where, and the store's own error.
    pub message: String,
}

impl fmt::Display for UploadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Where the upload of a local file stands, for local retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadStatus {
    /// Never enqueued (or enqueued under a different path spelling).
    NotTracked,
    /// Queued or uploading.
    InFlight,
    /// The newest upload of this path was confirmed in the store.
    Uploaded,
    /// The newest upload of this path failed; the local file is the only copy.
    Failed,
}

impl UploadStatus {
    /// Whether retention that needs the remote copy (`num_checkpoints_to_keep = 0`) may delete the
    /// local file now: only once its upload finished.
    pub fn may_delete(self) -> bool {
        matches!(self, UploadStatus::Uploaded)
    }
}

/// Totals for the `cairn run` summary (serialisable for `--json` output).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct UploadReport {
    /// Checkpoints uploaded and confirmed.
    pub uploaded: usize,
    /// Checkpoints whose upload failed.
    pub failed: usize,
    /// Bytes of confirmed uploads.
    pub bytes: u64,
    /// Wall-clock seconds during which at least one upload was running.
    pub seconds: f64,
    /// Every failure, oldest first (including those already returned by `poll_failures`).
    pub failures: Vec<UploadFailure>,
    /// Each `latest` pointer written, and the key it names now: `(pointer key, checkpoint key)`.
    pub pointers: Vec<(String, String)>,
}

impl UploadReport {
    /// Bytes per second while uploading (0 when nothing was uploaded).
    pub fn throughput(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / self.seconds
        } else {
            0.0
        }
    }
}

impl fmt::Display for UploadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "uploads: {} ok, {} failed, {:.1} MiB in {:.2} s ({:.1} MiB/s)",
            self.uploaded,
            self.failed,
            self.bytes as f64 / (1024.0 * 1024.0),
            self.seconds,
            self.throughput() / (1024.0 * 1024.0)
        )
    }
}

/// Why the uploader could not start or accept a job.
#[derive(Debug, thiserror::Error)]
pub enum UploaderError {
    /// The runtime's threads could not be started.
    #[error("cannot start the upload threads: {0}")]
    Runtime(std::io::Error),
    /// The object or pointer name is not a valid key.
    #[error(transparent)]
    Name(#[from] StoreError),
    /// The local checkpoint cannot be opened.
    #[error("cannot upload '{}': {source}", path.display())]
    Open {
        /// The local path.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// Background uploads of checkpoint files. See the module docs.
pub struct Uploader {
    runtime: Option<Runtime>,
    shared: Arc<Shared>,
    store: RemoteStore,
    options: Arc<UploadOptions>,
    slots: Arc<Semaphore>,
    pointers: Arc<LatestPointers>,
    /// Per object key, a signal that fires when the last job enqueued for that key ends. Uploads
    /// of one key run in enqueue order, so with `overwrite = true` an older checkpoint can never
    /// land on top of a newer one with the same name.
    last_for_key: Mutex<HashMap<String, oneshot::Receiver<()>>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    idle: Condvar,
}

#[derive(Default)]
struct State {
    next_id: u64,
    pending: usize,
    in_flight: HashMap<PathBuf, usize>,
    /// Every job queued or running, by id: its object name and local file (for `close`).
    running: HashMap<u64, (String, PathBuf)>,
    last_outcome: HashMap<PathBuf, bool>,
    unreported: Vec<UploadFailure>,
    report: UploadReport,
    active: usize,
    busy_since: Option<Instant>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-updated in a way that matters
        // more than losing the report, so recover the guard rather than propagate the poison.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Uploader {
    /// Start the upload threads for `store`.
    pub fn new(store: RemoteStore, options: UploadOptions) -> Result<Self, UploaderError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.worker_threads.max(1))
            .thread_name("cairn-upload")
            .enable_all()
            .build()
            .map_err(UploaderError::Runtime)?;
        Ok(Self {
            runtime: Some(runtime),
            shared: Arc::default(),
            store,
            slots: Arc::new(Semaphore::new(options.num_concurrent_uploads.max(1))),
            options: Arc::new(options),
            pointers: Arc::default(),
            last_for_key: Mutex::default(),
        })
    }

    /// The store uploads go to.
    pub fn store(&self) -> &RemoteStore {
        &self.store
    }

    /// Queue a checkpoint for upload and return at once. Fails only if a name is not a valid key
    /// or the local file cannot be opened; upload failures are reported later.
    pub fn enqueue(&self, job: UploadJob) -> Result<UploadTicket, UploaderError> {
        self.enqueue_with(job, None)
    }

    /// Queue one rank's shard of a sharded step: once the object is confirmed, `record` is
    /// published with the ETag the confirmation saw (instead of moving a pointer, which is the
    /// coordinator's part). With `overwrite = false` an existing object is replaced only while the
    /// step is uncommitted: it is then a leftover of an attempt that never committed, which no
    /// reader trusts.
    pub fn enqueue_shard(
        &self,
        job: UploadJob,
        record: ShardRecord,
    ) -> Result<UploadTicket, UploaderError> {
        self.enqueue_with(job, Some(record))
    }

    fn enqueue_with(
        &self,
        job: UploadJob,
        record: Option<ShardRecord>,
    ) -> Result<UploadTicket, UploaderError> {
        let key = self.store.key(&job.object_name)?;
        let pointer = match &job.latest_pointer {
            Some(name) => Some(self.store.key(&format!("{name}{SYMLINK_SUFFIX}"))?),
            None => None,
        };
        let file = PinnedFile::open(&job.local_path).map_err(|source| UploaderError::Open {
            path: job.local_path.clone(),
            source,
        })?;
        let id = {
            let mut state = self.shared.lock();
            state.next_id += 1;
            state.pending += 1;
            *state.in_flight.entry(job.local_path.clone()).or_default() += 1;
            let id = state.next_id - 1;
            state
                .running
                .insert(id, (job.object_name.clone(), job.local_path.clone()));
            id
        };
        let ticket = UploadTicket {
            id,
            key: key.to_string(),
            bytes: file.len(),
        };

        let store = self.store.clone();
        let options = Arc::clone(&self.options);
        let slots = Arc::clone(&self.slots);
        let pointers = Arc::clone(&self.pointers);
        let shared = Arc::clone(&self.shared);
        let runtime = self.runtime.as_ref().expect("runtime lives until finish");
        let mut transfer = TransferOptions {
            overwrite: options.overwrite,
            part_size_min: options.part_size_min,
            part_concurrency: options.part_concurrency,
            max_attempts: options.max_attempts,
            retry_backoff: options.retry_backoff,
            abort_timeout: options.abort_timeout,
        };
        let object_name = job.object_name;
        let sequence = job.sequence;
        let local_path = job.local_path;
        let name = object_name.clone();
        let (done, done_rx) = oneshot::channel::<()>();
        let previous = self
            .last_for_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ticket.key.clone(), done_rx);
        let work = runtime.spawn(async move {
            // Dropped when this job ends, however it ends, releasing the next job of this key.
            let _done = done;
            if let Some(previous) = previous {
                // Err means the previous job ended without sending: also "ended".
                let _ = previous.await;
            }
            // Waiting for the previous job of this key comes first, so a waiting job never holds
            // one of the `num_concurrent_uploads` slots. The semaphore is never closed, so
            // `acquire_owned` cannot fail.
            let _slot = slots.acquire_owned().await.ok();
            let started = Instant::now();
            shared.begin(started);
            // `checked_add`: a bound beyond what the clock can represent means "no bound".
            let deadline = started
                .checked_add(options.timeout)
                .unwrap_or_else(|| started + FAR_FUTURE);
            if let Some(record) = &record
                && !transfer.overwrite
            {
                transfer.overwrite = shard_replaceable(&store, &key, record, deadline)
                    .await
                    .map_err(|message| (name.clone(), message))?;
            }
            let confirmed = upload_file(&store, &key, &file, &transfer, deadline, options.timeout)
                .await
                .map_err(|e| (name.clone(), e.to_string()))?;
            let bytes = confirmed.bytes;
            if let Some(record) = record {
                cairn_format::failpoint!("sharded::before-record", |e: std::io::Error| (
                    name.clone(),
                    e.to_string()
                ));
                let published = timeout_at(
                    deadline,
                    crate::sharded::publish_confirmed(&store, record, confirmed.e_tag),
                )
                .await;
                match published {
                    Ok(Ok(())) => return Ok(bytes),
                    Ok(Err(e)) => return Err((name.clone(), e.to_string())),
                    Err(_) => {
                        return Err((
                            name.clone(),
                            format!(
                                "publishing the shard record of '{name}' did not finish within {:.1} s (upload_timeout_in_seconds)",
                                options.timeout.as_secs_f64()
                            ),
                        ));
                    }
                }
            }
            cairn_format::failpoint!("upload::before-pointer", |e: std::io::Error| (
                name.clone(),
                e.to_string()
            ));
            if let Some(pointer) = pointer {
                pointers
                    .advance(&store, &pointer, &key, sequence, deadline, options.timeout)
                    .await
                    .map_err(|e| (format!("{}{SYMLINK_SUFFIX}", pointer), e.to_string()))?;
            }
            Ok(bytes)
        });
        // A second task observes the first, so even a panic in the upload is recorded and
        // `finish` cannot wait forever.
        let shared = Arc::clone(&self.shared);
        let pointers = Arc::clone(&self.pointers);
        runtime.spawn(async move {
            let outcome = match work.await {
                Ok(result) => result,
                Err(join) => Err((
                    object_name.clone(),
                    format!("the upload task of '{object_name}' crashed: {join}"),
                )),
            };
            let named = pointers.current();
            shared.end(id, &local_path, outcome, named);
        });
        Ok(ticket)
    }

    /// Failures since the last call, oldest first. Never blocks on the network.
    pub fn poll_failures(&self) -> Vec<UploadFailure> {
        std::mem::take(&mut self.shared.lock().unreported)
    }

    /// Whether an upload of `local` (the same path spelling as in the job) is queued or running.
    pub fn in_flight(&self, local: &Path) -> bool {
        self.status(local) == UploadStatus::InFlight
    }

    /// Where the upload of `local` stands; see [`UploadStatus::may_delete`].
    pub fn status(&self, local: &Path) -> UploadStatus {
        let state = self.shared.lock();
        if state.in_flight.get(local).is_some_and(|n| *n > 0) {
            UploadStatus::InFlight
        } else {
            match state.last_outcome.get(local) {
                None => UploadStatus::NotTracked,
                Some(true) => UploadStatus::Uploaded,
                Some(false) => UploadStatus::Failed,
            }
        }
    }

    /// Uploads queued or running.
    pub fn pending(&self) -> usize {
        self.shared.lock().pending
    }

    /// The totals so far, with every failure (including those already returned by
    /// [`Uploader::poll_failures`]). Never blocks on the network.
    pub fn report(&self) -> UploadReport {
        self.shared.lock().report.clone()
    }

    /// Wait until no upload is queued or running, or until `limit` has passed; whether every
    /// upload ended. Each upload is bounded by `timeout` plus `abort_timeout` on its own, so
    /// `None` waits at most that long per queued upload. The uploader stays usable.
    pub fn wait(&self, limit: Option<Duration>) -> bool {
        crate::idle::wait_until_idle(self.shared.lock(), &self.shared.idle, limit, |s| {
            s.pending > 0
        })
    }

    /// Wait for every queued upload, stop the upload threads and return the totals, including
    /// every failure. See [`Uploader::wait`] for how long it waits.
    pub fn finish(self) -> UploadReport {
        self.close(None)
    }

    /// Give the uploads until `limit` to finish (Composer's `post_close`), then stop the upload
    /// threads. An upload still running then is abandoned and reported as a failure; the
    /// `latest` pointer names the newest checkpoint confirmed before that.
    pub fn close(mut self, limit: Option<Duration>) -> UploadReport {
        if !self.wait(limit) {
            let mut state = self.shared.lock();
            let seconds = limit.map_or(0.0, |l| l.as_secs_f64());
            let mut abandoned: Vec<(u64, (String, PathBuf))> = state.running.drain().collect();
            abandoned.sort_by_key(|(id, _)| *id);
            for (_, (object_name, local_path)) in abandoned {
                let failure = UploadFailure {
                    message: format!(
                        "the upload of '{object_name}' to '{}' did not finish within {seconds} s of closing the saver; it was abandoned",
                        self.store.url()
                    ),
                    object_name,
                    local_path,
                };
                state.report.failed += 1;
                state.report.failures.push(failure.clone());
                state.unreported.push(failure);
            }
            state.pending = 0;
        }
        let report = self.shared.lock().report.clone();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
        report
    }
}

/// With `overwrite = false`, may the shard upload replace an object already under its key?
/// Only while the step has no manifest: the object is then an uncommitted attempt's leftover.
async fn shard_replaceable(
    store: &RemoteStore,
    key: &object_store::path::Path,
    record: &ShardRecord,
    deadline: Instant,
) -> Result<bool, String> {
    let commits = CommitStore::remote(store.clone());
    let found = timeout_at(deadline, commits.manifest(&record.step))
        .await
        .map_err(|_| {
            format!(
                "checking whether step '{}' is committed did not finish in time",
                record.step
            )
        })?
        .map_err(|e| e.to_string())?;
    match found {
        None => Ok(true),
        Some(_) => Err(format!(
            "object '{key}' already exists in '{}' and overwrite is false (step '{}' is committed)",
            store.url(),
            record.step
        )),
    }
}

/// Stands for "no bound" when `upload_timeout_in_seconds` is beyond what the clock can add.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl Drop for Uploader {
    /// Dropped without `finish` (e.g. training failed): stop at once, never block.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Shared {
    fn begin(&self, now: Instant) {
        let mut state = self.lock();
        if state.active == 0 {
            state.busy_since = Some(now);
        }
        state.active += 1;
    }

    fn end(
        &self,
        id: u64,
        local: &Path,
        outcome: Result<u64, (String, String)>,
        pointers: Vec<(String, String)>,
    ) {
        let mut state = self.lock();
        if state.running.remove(&id).is_none() {
            // `close` gave up on this job and reported it already.
            return;
        }
        // `begin` may not have run if the task crashed before it; don't underflow.
        if state.active > 0 {
            state.active -= 1;
            if state.active == 0
                && let Some(since) = state.busy_since.take()
            {
                state.report.seconds += since.elapsed().as_secs_f64();
            }
        }
        if let Some(n) = state.in_flight.get_mut(local) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.in_flight.remove(local);
            }
        }
        match outcome {
            Ok(bytes) => {
                state.report.uploaded += 1;
                state.report.bytes += bytes;
                state.last_outcome.insert(local.to_path_buf(), true);
            }
            Err((object_name, message)) => {
                let failure = UploadFailure {
                    object_name,
                    local_path: local.to_path_buf(),
                    message,
                };
                state.report.failed += 1;
                state.report.failures.push(failure.clone());
                state.unreported.push(failure);
                state.last_outcome.insert(local.to_path_buf(), false);
            }
        }
        state.report.pointers = pointers;
        state.pending -= 1;
        if state.pending == 0 {
            self.idle.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::fmt;
    use std::time::Instant as StdInstant;

    use async_trait::async_trait;
    use futures::stream::BoxStream;
    use object_store::memory::InMemory;
    use object_store::path::Path as ObjectPath;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
        ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    };

    use super::*;

    /// A real in-memory store with per-key scripted behaviour for ordering tests: hold the first
    /// `PUT` of a key until released, fail it as a store would after its retries, or keep one byte less than it
    /// acknowledged (a store lying about a write).
    #[derive(Debug, Default)]
    struct Scripted {
        inner: InMemory,
        held: Mutex<HashMap<String, Arc<Semaphore>>>,
        failing: Mutex<HashSet<String>>,
        short: Mutex<HashSet<String>>,
    }

    impl Scripted {
        fn hold(&self, key: &str) -> Arc<Semaphore> {
            let gate = Arc::new(Semaphore::new(0));
            self.held
                .lock()
                .unwrap()
                .insert(key.to_string(), Arc::clone(&gate));
            gate
        }
    }

    impl fmt::Display for Scripted {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "Scripted({})", self.inner)
        }
    }

    #[async_trait]
    impl ObjectStore for Scripted {
        async fn put_opts(
            &self,
            location: &ObjectPath,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            let key = location.to_string();
            // Only the first `PUT` of a held key waits.
            let gate = self.held.lock().unwrap().remove(&key);
            if let Some(gate) = gate {
                let _pass = gate.acquire().await;
            }
            if self.failing.lock().unwrap().contains(&key) {
                return Err(object_store::Error::Generic {
                    store: "Scripted",
                    source: "injected 503 Slow Down".into(),
                });
            }
            if self.short.lock().unwrap().contains(&key) {
                let bytes = bytes::Bytes::from(payload);
                let kept = bytes.slice(..bytes.len() - 1);
                return self.inner.put_opts(location, kept.into(), opts).await;
            }
            self.inner.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            location: &ObjectPath,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &ObjectPath,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.inner.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<ObjectPath>>,
        ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
            self.inner.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &ObjectPath,
            to: &ObjectPath,
            options: CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    fn scripted() -> (Arc<Scripted>, RemoteStore) {
        let scripted = Arc::new(Scripted::default());
        let store = RemoteStore::from_object_store(scripted.clone(), "memory://scripted", "")
            .expect("valid prefix");
        (scripted, store)
    }

    fn fast_options() -> UploadOptions {
        UploadOptions {
            num_concurrent_uploads: 2,
            timeout: Duration::from_secs(10),
            part_size_min: 1024 * 1024,
            max_attempts: 2,
            retry_backoff: Duration::from_millis(10),
            abort_timeout: Duration::from_secs(1),
            ..UploadOptions::default()
        }
    }

    fn write_file(dir: &Path, name: &str, len: usize, seed: u8) -> (PathBuf, Vec<u8>) {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u64 * 2654435761 % 251) as u8 ^ seed)
            .collect();
        let path = dir.join(name);
        std::fs::write(&path, &data).unwrap();
        (path, data)
    }

    fn job(path: &Path, name: &str, pointer: Option<&str>, sequence: u64) -> UploadJob {
        UploadJob {
            local_path: path.to_path_buf(),
            object_name: name.to_string(),
            latest_pointer: pointer.map(str::to_string),
            sequence,
        }
    }

    fn get(store: &RemoteStore, key: &str) -> Option<Vec<u8>> {
        futures::executor::block_on(async {
            match store.object_store().get(&ObjectPath::from(key)).await {
                Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("{e}"),
            }
        })
    }

    fn put(store: &RemoteStore, key: &str, data: &[u8]) {
        futures::executor::block_on(
            store
                .object_store()
                .put(&ObjectPath::from(key), PutPayload::from(data.to_vec())),
        )
        .unwrap();
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let start = StdInstant::now();
        while !cond() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out waiting until {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_later_save_finishing_first_is_never_overtaken() {
        let dir = tempfile::tempdir().unwrap();
        let (scripted, store) = scripted();
        let gate = scripted.hold("ep1.pt");
        let uploader = Uploader::new(store.clone(), fast_options()).unwrap();
        let (p1, d1) = write_file(dir.path(), "ep1.pt", 1000, 1);
        let (p2, _) = write_file(dir.path(), "ep2.pt", 1000, 2);
        uploader
            .enqueue(job(&p1, "ep1.pt", Some("latest.pt"), 1))
            .unwrap();
        uploader
            .enqueue(job(&p2, "ep2.pt", Some("latest.pt"), 2))
            .unwrap();
        wait_until("ep2 is uploaded", || {
            uploader.status(&p2) == UploadStatus::Uploaded
        });
        assert_eq!(get(&store, "latest.pt.symlink").unwrap(), b"ep2.pt");
        assert!(uploader.in_flight(&p1));
        assert!(!uploader.status(&p1).may_delete());
        assert!(uploader.status(&p2).may_delete());
        gate.add_permits(1);
        let report = uploader.finish();
        assert_eq!((report.uploaded, report.failed), (2, 0), "{report:?}");
        assert_eq!(report.bytes, 2000);
        assert_eq!(get(&store, "ep1.pt").unwrap(), d1);
        assert_eq!(
            get(&store, "latest.pt.symlink").unwrap(),
            b"ep2.pt",
            "the pointer moved back to ep1"
        );
        assert_eq!(
            report.pointers,
            vec![("latest.pt.symlink".to_string(), "ep2.pt".to_string())]
        );
    }

    #[test]
    fn no_pointer_unless_the_object_is_confirmed_with_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let (scripted, store) = scripted();
        scripted.short.lock().unwrap().insert("ep1.pt".to_string());
        let uploader = Uploader::new(store.clone(), fast_options()).unwrap();
        let (p1, _) = write_file(dir.path(), "ep1.pt", 1000, 1);
        uploader
            .enqueue(job(&p1, "ep1.pt", Some("latest.pt"), 1))
            .unwrap();
        let report = uploader.finish();
        assert_eq!(report.failed, 1);
        let msg = &report.failures[0].message;
        assert!(msg.contains("reports 999 bytes instead of 1000"), "{msg}");
        assert_eq!(get(&store, "latest.pt.symlink"), None);
    }

    #[test]
    fn a_failed_upload_is_reported_once_by_poll_again_at_finish_and_gets_no_pointer() {
        let dir = tempfile::tempdir().unwrap();
        let (scripted, store) = scripted();
        scripted
            .failing
            .lock()
            .unwrap()
            .insert("ep1.pt".to_string());
        let uploader = Uploader::new(store.clone(), fast_options()).unwrap();
        let (p1, d1) = write_file(dir.path(), "ep1.pt", 1000, 1);
        uploader
            .enqueue(job(&p1, "ep1.pt", Some("latest.pt"), 1))
            .unwrap();
        wait_until("the upload ended", || uploader.pending() == 0);
        let failures = uploader.poll_failures();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].object_name, "ep1.pt");
        assert_eq!(failures[0].local_path, p1);
        let msg = &failures[0].message;
        assert!(
            msg.contains("'ep1.pt'") && msg.contains("memory://scripted"),
            "{msg}"
        );
        assert!(
            msg.contains("after 2 attempt(s)") && msg.contains("injected 503"),
            "{msg}"
        );
        assert!(uploader.poll_failures().is_empty(), "reported twice");
        assert_eq!(uploader.status(&p1), UploadStatus::Failed);
        assert!(!uploader.status(&p1).may_delete());
        let report = uploader.finish();
        assert_eq!(report.failures, failures);
        assert_eq!(get(&store, "latest.pt.symlink"), None);
        assert_eq!(std::fs::read(&p1).unwrap(), d1, "local checkpoint touched");
    }

    #[test]
    fn overwrite_false_refuses_existing_objects_single_and_multipart() {
        let dir = tempfile::tempdir().unwrap();
        let store = RemoteStore::from_url("memory://r").unwrap();
        put(&store, "r/small.pt", b"theirs");
        put(&store, "r/big.pt", b"theirs too");
        let (small, _) = write_file(dir.path(), "small.pt", 1000, 1);
        let (big, big_data) = write_file(dir.path(), "big.pt", 3 * 1024 * 1024 + 17, 2);
        let uploader = Uploader::new(store.clone(), fast_options()).unwrap();
        uploader
            .enqueue(job(&small, "small.pt", Some("l"), 1))
            .unwrap();
        uploader.enqueue(job(&big, "big.pt", Some("l"), 2)).unwrap();
        let report = uploader.finish();
        assert_eq!(report.failed, 2, "{report:?}");
        for f in &report.failures {
            assert!(
                f.message
                    .contains("already exists in 'memory://r' and overwrite is false"),
                "{}",
                f.message
            );
        }
        assert_eq!(get(&store, "r/small.pt").unwrap(), b"theirs");
        assert_eq!(get(&store, "r/big.pt").unwrap(), b"theirs too");
        assert_eq!(get(&store, "r/l.symlink"), None);

        let options = UploadOptions {
            overwrite: true,
            ..fast_options()
        };
        let uploader = Uploader::new(store.clone(), options).unwrap();
        uploader.enqueue(job(&big, "big.pt", Some("l"), 2)).unwrap();
        let report = uploader.finish();
        assert_eq!(report.uploaded, 1, "{report:?}");
        assert_eq!(get(&store, "r/big.pt").unwrap(), big_data);
        assert_eq!(get(&store, "r/l.symlink").unwrap(), b"r/big.pt");
    }

    #[test]
    fn a_checkpoint_deleted_locally_mid_upload_is_still_uploaded_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (scripted, store) = scripted();
        let gate = scripted.hold("ep1.pt");
        let uploader = Uploader::new(store.clone(), fast_options()).unwrap();
        let (p1, d1) = write_file(dir.path(), "ep1.pt", 5000, 1);
        let ticket = uploader.enqueue(job(&p1, "ep1.pt", None, 1)).unwrap();
        assert_eq!((ticket.key.as_str(), ticket.bytes), ("ep1.pt", 5000));
        std::fs::remove_file(&p1).unwrap();
        gate.add_permits(1);
        let report = uploader.finish();
        assert_eq!(report.uploaded, 1, "{report:?}");
        assert_eq!(get(&store, "ep1.pt").unwrap(), d1);
    }

    #[test]
    fn the_timeout_bounds_a_hung_upload_and_enqueue_does_not_wait() {
        let dir = tempfile::tempdir().unwrap();
        let (scripted, store) = scripted();
        let _gate = scripted.hold("ep1.pt");
        let options = UploadOptions {
            timeout: Duration::from_millis(300),
            num_concurrent_uploads: 1,
            ..fast_options()
        };
        let uploader = Uploader::new(store.clone(), options).unwrap();
        let (p1, _) = write_file(dir.path(), "ep1.pt", 1000, 1);
        let (p2, _) = write_file(dir.path(), "ep2.pt", 1000, 2);
        let start = StdInstant::now();
        uploader
            .enqueue(job(&p1, "ep1.pt", Some("latest"), 1))
            .unwrap();
        uploader
            .enqueue(job(&p2, "ep2.pt", Some("latest"), 2))
            .unwrap();
        assert!(
            start.elapsed() < Duration::from_millis(50),
            "enqueue waited"
        );
        let report = uploader.finish();
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        assert_eq!((report.uploaded, report.failed), (1, 1), "{report:?}");
        let msg = &report.failures[0].message;
        assert!(msg.contains("did not finish within 0.3 s"), "{msg}");
        assert_eq!(get(&store, "latest.symlink").unwrap(), b"ep2.pt");
        assert_eq!(get(&store, "ep1.pt"), None);
    }

    #[test]
    fn uploads_of_one_object_name_land_in_enqueue_order() {
        let dir = tempfile::tempdir().unwrap();
        let (scripted, store) = scripted();
        // The first upload of "ckpt.pt" is held; the second, with other bytes, must wait for it
        // rather than land first and be overwritten by the older one.
        let gate = scripted.hold("ckpt.pt");
        let options = UploadOptions {
            overwrite: true,
            num_concurrent_uploads: 4,
            ..fast_options()
        };
        let uploader = Uploader::new(store.clone(), options).unwrap();
        let (old, _) = write_file(dir.path(), "old.pt", 1000, 1);
        let (new, new_data) = write_file(dir.path(), "new.pt", 1000, 2);
        uploader
            .enqueue(job(&old, "ckpt.pt", Some("l"), 1))
            .unwrap();
        wait_until("the older upload is held", || {
            !scripted.held.lock().unwrap().contains_key("ckpt.pt")
        });
        uploader
            .enqueue(job(&new, "ckpt.pt", Some("l"), 2))
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            uploader.in_flight(&new),
            "the newer upload overtook the older"
        );
        gate.add_permits(1);
        let report = uploader.finish();
        assert_eq!(report.uploaded, 2, "{report:?}");
        assert_eq!(get(&store, "ckpt.pt").unwrap(), new_data);
        assert_eq!(get(&store, "l.symlink").unwrap(), b"ckpt.pt");
    }

    #[test]
    fn enqueue_rejects_missing_files_and_bad_names_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = RemoteStore::from_url("memory://").unwrap();
        let uploader = Uploader::new(store, fast_options()).unwrap();
        let missing = dir.path().join("missing.pt");
        let err = uploader
            .enqueue(job(&missing, "m.pt", None, 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.pt"), "{err}");
        let (p, _) = write_file(dir.path(), "a.pt", 10, 0);
        let err = uploader
            .enqueue(job(&p, "a/../b.pt", None, 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("'a/../b.pt'"), "{err}");
        assert_eq!(uploader.status(&p), UploadStatus::NotTracked);
        assert_eq!(uploader.finish(), UploadReport::default());
    }
}
