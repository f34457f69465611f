//! Moving one pinned local file to one object, within a deadline.
//!
//! * Files up to `part_size_min` go in one `PUT`; larger files in a multipart upload whose part
//!   size grows with the file — at least `part_size_min` and at least `size / 9000` (rounded up to
//!   a MiB), so S3's 10,000-part limit holds with room to spare — with `part_concurrency` parts in
//!   flight at once.
//! * Each HTTP request is retried by object_store itself (5xx, throttling, dropped connections on
//!   idempotent requests) per [`StoreOptions::retry`](super::StoreOptions). On top of that, a whole
//!   upload that still fails with a transient error is started again, up to `max_attempts` times,
//!   with exponential backoff and jitter (Composer: 3 attempts, ~1 s then ~2 s).
//! * The deadline bounds everything: attempts, backoff sleeps, parts, completion and the final
//!   size check. When it passes, or an attempt fails, an unfinished multipart upload is aborted
//!   (with its own short bound) so the store does not keep billing for orphaned parts.
//! * `overwrite = false`: a single `PUT` uses `PutMode::Create` (`If-None-Match: *` on S3), which
//!   the store enforces atomically. object_store's multipart API has no create-only completion, so
//!   a multipart upload is preceded by a HEAD check; the window between that check and completion
//!   is the one case where a concurrent writer could still be overwritten.
//! * Success means the object was confirmed by HEAD to exist with exactly the file's size.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{MultipartUpload, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout, timeout_at};

use super::pin::PinnedFile;
use super::store::RemoteStore;

const MIB: u64 = 1024 * 1024;

/// S3 allows 10,000 parts; aiming at 9,000 leaves slack for rounding.
const TARGET_MAX_PARTS: u64 = 9_000;

/// The part size for a file of `size` bytes: at least `min` and at least `size / 9000`, rounded up
/// to a whole MiB so parts are equal-sized (Cloudflare R2 requires that).
pub fn part_size_for(size: u64, min: usize) -> usize {
    let needed = size.div_ceil(TARGET_MAX_PARTS);
    let part = needed.max(min as u64).div_ceil(MIB) * MIB;
    usize::try_from(part).unwrap_or(usize::MAX)
}

/// How one file is uploaded.
#[derive(Debug, Clone)]
pub struct TransferOptions {
    /// Refuse to replace an existing object.
    pub overwrite: bool,
    /// Smallest multipart part (and the size up to which a single `PUT` is used).
    pub part_size_min: usize,
    /// Parts of one upload in flight at once.
    pub part_concurrency: usize,
    /// Whole-upload attempts on transient errors (≥ 1).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubled for each further one, plus up to 50 % jitter.
    pub retry_backoff: Duration,
    /// Bound on aborting an unfinished multipart upload after a failure or timeout.
    pub abort_timeout: Duration,
}

/// What became of an unfinished multipart upload when an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleanup {
    /// There was nothing to clean up (single `PUT`, or the failure came before the upload began).
    Nothing,
    /// The multipart upload was aborted; no parts remain.
    Aborted,
    /// Aborting failed too; the store may keep the parts until a lifecycle rule removes them.
    AbortFailed(String),
}

impl fmt::Display for Cleanup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cleanup::Nothing => Ok(()),
            Cleanup::Aborted => write!(f, "; the unfinished multipart upload was aborted"),
            Cleanup::AbortFailed(e) => write!(
                f,
                "; aborting the unfinished multipart upload also failed ({e}), so its parts may remain until a bucket lifecycle rule removes them"
            ),
        }
    }
}

/// Why a file could not be uploaded.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// `overwrite = false` and the object is already there.
    #[error(
        "object '{key}' already exists in '{url}' and overwrite is false{}",
        if *.after_retry { " (an earlier attempt of this upload, cut off mid-request, may have created it)" } else { "" }
    )]
    AlreadyExists {
        /// The bucket-relative key.
        key: String,
        /// The store's URL.
        url: String,
        /// Whether this was found on a retry.
        after_retry: bool,
    },
    /// The local file could not be read.
    #[error("cannot read local file '{path}' for upload to '{key}': {source}")]
    Read {
        /// The local path.
        path: String,
        /// The bucket-relative key.
        key: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The store refused or failed the upload (after object_store's own request retries and
    /// cairn's whole-upload retries).
    #[error(
        "uploading '{key}' to '{url}' failed after {attempts} attempt(s): {}{cleanup}",
        super::error_chain(.source)
    )]
    Store {
        /// The bucket-relative key.
        key: String,
        /// The store's URL.
        url: String,
        /// Whole-upload attempts made.
        attempts: u32,
        /// The store's own error.
        source: object_store::Error,
        /// What happened to an unfinished multipart upload.
        cleanup: Cleanup,
    },
    /// The deadline (`upload_timeout_in_seconds`) passed first.
    #[error(
        "uploading '{key}' to '{url}' did not finish within {:.1} s (upload_timeout_in_seconds){}{cleanup}",
        .limit.as_secs_f64(),
        .last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default()
    )]
    TimedOut {
        /// The bucket-relative key.
        key: String,
        /// The store's URL.
        url: String,
        /// The bound that was exceeded.
        limit: Duration,
        /// The error of the last failed attempt, if any.
        last_error: Option<String>,
        /// What happened to an unfinished multipart upload.
        cleanup: Cleanup,
    },
    /// The upload reported success but the object is missing or has the wrong size.
    #[error(
        "after uploading '{key}' to '{url}', the store reports {} instead of {expected} bytes",
        .found.map(|n| format!("{n} bytes")).unwrap_or_else(|| "no object".to_string())
    )]
    NotConfirmed {
        /// The bucket-relative key.
        key: String,
        /// The store's URL.
        url: String,
        /// The local file's size.
        expected: u64,
        /// The object's size, if it exists.
        found: Option<u64>,
    },
}

/// One attempt's error, before it is turned into a [`TransferError`].
enum AttemptError {
    Exists,
    Read(std::io::Error),
    Store(object_store::Error),
}

impl AttemptError {
    /// Errors worth starting the whole upload again for: the ones object_store reports after its
    /// own request retries gave up (HTTP status, connection, timeouts) or a crashed part task.
    fn is_transient(&self) -> bool {
        matches!(
            self,
            AttemptError::Store(object_store::Error::Generic { .. })
                | AttemptError::Store(object_store::Error::JoinError { .. })
        )
    }

    fn describe(&self) -> String {
        match self {
            AttemptError::Exists => "the object already exists".to_string(),
            AttemptError::Read(e) => e.to_string(),
            AttemptError::Store(e) => super::error_chain(e),
        }
    }
}

impl From<object_store::Error> for AttemptError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => AttemptError::Exists,
            other => AttemptError::Store(other),
        }
    }
}

/// Upload `file` to `key`, confirm it by HEAD, and return the number of bytes uploaded. Must run
/// on a tokio runtime; never outlives `deadline` by more than `abort_timeout`. `limit` is the bound
/// `deadline` was computed from, for messages.
pub async fn upload_file(
    store: &RemoteStore,
    key: &ObjectPath,
    file: &PinnedFile,
    opts: &TransferOptions,
    deadline: Instant,
    limit: Duration,
) -> Result<Confirmed, TransferError> {
    let max_attempts = opts.max_attempts.max(1);
    let mut last_error: Option<AttemptError> = None;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut multipart: Option<Box<dyn MultipartUpload>> = None;
        let outcome = timeout_at(
            deadline,
            attempt_once(store, key, file, opts, &mut multipart),
        )
        .await;
        let cleanup = abort_unfinished(multipart, opts.abort_timeout).await;
        let error = match outcome {
            Ok(Ok(())) => break,
            Ok(Err(e)) => e,
            Err(_elapsed) => {
                return Err(TransferError::TimedOut {
                    key: key.to_string(),
                    url: store.url().to_string(),
                    limit,
                    last_error: last_error.map(|e| e.describe()),
                    cleanup,
                });
            }
        };
        let backoff = backoff(opts.retry_backoff, attempt);
        let retry =
            error.is_transient() && attempt < max_attempts && Instant::now() + backoff < deadline;
        if !retry {
            return Err(match error {
                AttemptError::Exists => TransferError::AlreadyExists {
                    key: key.to_string(),
                    url: store.url().to_string(),
                    after_retry: attempt > 1,
                },
                AttemptError::Read(source) => TransferError::Read {
                    path: file.path().display().to_string(),
                    key: key.to_string(),
                    source,
                },
                AttemptError::Store(source) => TransferError::Store {
                    key: key.to_string(),
                    url: store.url().to_string(),
                    attempts: attempt,
                    source,
                    cleanup,
                },
            });
        }
        last_error = Some(error);
        tokio::time::sleep(backoff).await;
    }
    let confirmed = confirm(store, key, file.len(), deadline, limit).await?;
    Ok(confirmed)
}

/// What the store said when an upload was confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    /// The object's size (the file's).
    pub bytes: u64,
    /// The store's identity of the object (its ETag), when the store gives one.
    pub e_tag: Option<String>,
}

/// Confirm by HEAD that `key` exists with `expected` bytes, before `deadline`.
pub async fn confirm(
    store: &RemoteStore,
    key: &ObjectPath,
    expected: u64,
    deadline: Instant,
    limit: Duration,
) -> Result<Confirmed, TransferError> {
    let not_confirmed = |found| TransferError::NotConfirmed {
        key: key.to_string(),
        url: store.url().to_string(),
        expected,
        found,
    };
    match timeout_at(deadline, store.object_store().head(key)).await {
        Err(_) => Err(TransferError::TimedOut {
            key: key.to_string(),
            url: store.url().to_string(),
            limit,
            last_error: Some("confirming the object's size did not finish".to_string()),
            cleanup: Cleanup::Nothing,
        }),
        Ok(Ok(meta)) if meta.size == expected => Ok(Confirmed {
            bytes: meta.size,
            e_tag: meta.e_tag,
        }),
        Ok(Ok(meta)) => Err(not_confirmed(Some(meta.size))),
        Ok(Err(object_store::Error::NotFound { .. })) => Err(not_confirmed(None)),
        Ok(Err(source)) => Err(TransferError::Store {
            key: key.to_string(),
            url: store.url().to_string(),
            attempts: 1,
            source,
            cleanup: Cleanup::Nothing,
        }),
    }
}

async fn attempt_once(
    store: &RemoteStore,
    key: &ObjectPath,
    file: &PinnedFile,
    opts: &TransferOptions,
    multipart: &mut Option<Box<dyn MultipartUpload>>,
) -> Result<(), AttemptError> {
    let os = store.object_store();
    let size = file.len();
    let single = size <= opts.part_size_min as u64;
    if !opts.overwrite && (!single || !store.supports_conditional_create()) {
        match os.head(key).await {
            Ok(_) => return Err(AttemptError::Exists),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if single {
        let bytes = read_range(file, 0, size as usize).await?;
        let mode = if opts.overwrite || !store.supports_conditional_create() {
            PutMode::Overwrite
        } else {
            PutMode::Create
        };
        let put = PutOptions {
            mode,
            ..Default::default()
        };
        os.put_opts(key, PutPayload::from(bytes), put).await?;
        return Ok(());
    }

    let part_size = part_size_for(size, opts.part_size_min) as u64;
    let upload = multipart.insert(os.put_multipart(key).await?);
    let mut parts = JoinSet::new();
    let mut offset = 0u64;
    while offset < size {
        while parts.len() >= opts.part_concurrency.max(1) {
            join_one(&mut parts).await?;
        }
        let len = part_size.min(size - offset) as usize;
        let bytes = read_range(file, offset, len).await?;
        parts.spawn(upload.put_part(PutPayload::from(bytes)));
        offset += len as u64;
    }
    while !parts.is_empty() {
        join_one(&mut parts).await?;
    }
    upload.complete().await?;
    *multipart = None;
    Ok(())
}

async fn join_one(parts: &mut JoinSet<object_store::Result<()>>) -> Result<(), AttemptError> {
    match parts.join_next().await {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(e.into()),
        Some(Err(join)) => Err(AttemptError::Store(object_store::Error::JoinError {
            source: join,
        })),
    }
}

async fn read_range(
    file: &PinnedFile,
    offset: u64,
    len: usize,
) -> Result<bytes::Bytes, AttemptError> {
    let file = file.clone();
    match tokio::task::spawn_blocking(move || file.read_range(offset, len)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(AttemptError::Read(e)),
        Err(join) => Err(AttemptError::Store(object_store::Error::JoinError {
            source: join,
        })),
    }
}

async fn abort_unfinished(upload: Option<Box<dyn MultipartUpload>>, bound: Duration) -> Cleanup {
    let Some(mut upload) = upload else {
        return Cleanup::Nothing;
    };
    match timeout(bound, upload.abort()).await {
        Ok(Ok(())) => Cleanup::Aborted,
        Ok(Err(e)) => Cleanup::AbortFailed(super::error_chain(&e)),
        Err(_) => Cleanup::AbortFailed(format!("no answer within {:.1} s", bound.as_secs_f64())),
    }
}

/// `base × 2^(attempt-1)` plus up to 50 % jitter, so restarted uploads from many ranks spread out.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << (attempt - 1).min(16));
    let jitter_fraction = (RandomState::new().hash_one(Instant::now()) % 1000) as f64 / 2000.0;
    exp + base.mul_f64(jitter_fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_grows_so_parts_stay_under_ten_thousand() {
        let min = 8 * MIB as usize;
        assert_eq!(part_size_for(0, min), min);
        assert_eq!(part_size_for(40 * MIB, min), min);
        for size in [
            MIB,
            100 * MIB,
            70 * 1024 * MIB,
            1024 * 1024 * MIB,
            5 * 1024 * 1024 * MIB,
        ] {
            let part = part_size_for(size, min) as u64;
            assert!(part >= min as u64);
            assert_eq!(part % MIB, 0, "whole MiB parts");
            assert!(size.div_ceil(part) <= 10_000, "{size}: {part}");
        }
        // 100 GiB needs parts above the minimum.
        assert!(part_size_for(100 * 1024 * MIB, min) > min);
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        let base = Duration::from_millis(100);
        for attempt in 1..5 {
            let b = backoff(base, attempt);
            let exp = base * (1 << (attempt - 1));
            assert!(b >= exp && b <= exp + base / 2, "{attempt}: {b:?}");
        }
    }
}
