//! What can go wrong with a saver, as one type a caller can match.
//!
//! Each variant keeps its cause (the format, policy or store error, the operating system's error)
//! as a source, so the CLI prints one sentence and a Python binding raises the exception a
//! Composer user expects (`FileExistsError` for a taken name, `ValueError` for a bad config).

use std::io;
use std::path::PathBuf;

use cairn_format::FormatError;
use cairn_policy::PolicyError;

use crate::config::ConfigError;
use crate::remote::{DownloadError, StoreError, UploadFailure, UploaderError};
use crate::sharded::{CommitError, CommitFailure};

/// What a training loop's snapshot closure may fail with.
pub type SnapshotError = Box<dyn std::error::Error + Send + Sync>;

/// A saver error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is wrong (file, line, key and value in the message).
    #[error(transparent)]
    Config(Box<ConfigError>),
    /// A checkpoint's name is taken and `overwrite` is off (Composer's `FileExistsError`).
    #[error(
        "{} already exists; cairn never replaces a checkpoint unless overwrite = true",
        path.display()
    )]
    AlreadyExists {
        /// The checkpoint that is already there.
        path: PathBuf,
    },
    /// The folder holds a checkpoint from this run's future (Composer's `FileExistsError` at
    /// `fit_start`): saving on would overwrite it or be confused with it.
    #[error(
        "{} may conflict with a future checkpoint of the current run; delete that file, use a new folder, resume from it, or set overwrite = true",
        path.display()
    )]
    FutureCheckpoint {
        /// The newest such file.
        path: PathBuf,
    },
    /// A checkpoint file cannot be written or read.
    #[error(transparent)]
    Format(Box<FormatError>),
    /// A policy failed (and `on_error` did not forgive it).
    #[error(transparent)]
    Policy(Box<PolicyError>),
    /// The remote store cannot be used.
    #[error(transparent)]
    Store(Box<StoreError>),
    /// An upload could not be started.
    #[error(transparent)]
    Uploader(Box<UploaderError>),
    /// Uploads failed (after their retries).
    #[error("{}", uploads_failed(.0))]
    UploadsFailed(Vec<UploadFailure>),
    /// A sharded step's protocol failed (a record, a manifest, the store).
    #[error(transparent)]
    Commit(Box<CommitError>),
    /// Sharded steps were not committed: a rank's shard never came within `commit_timeout_s`, or
    /// another coordinator committed the step first.
    #[error("{}", steps_not_committed(.0))]
    StepsNotCommitted(Vec<CommitFailure>),
    /// Resuming from the remote `latest` pointer failed.
    #[error(transparent)]
    Download(Box<DownloadError>),
    /// A file or folder operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What cairn was doing (`create the checkpoint folder`, `delete old checkpoint`, ...).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The training loop's snapshot closure failed.
    #[error("the training loop could not provide its state: {0}")]
    Snapshot(#[source] SnapshotError),
    /// Several ranks and no `run_name`: each process would generate a different name.
    #[error(
        "no run_name is set and WORLD_SIZE is {world_size}: each rank would generate a different name (Composer broadcasts rank 0's; cairn's processes cannot), so set run_name in the config or RUN_NAME in every rank's environment"
    )]
    UnnamedDistributedRun {
        /// `WORLD_SIZE`.
        world_size: u32,
    },
    /// The saver was closed ([`CheckpointSaver::close`](crate::CheckpointSaver::close)); a new
    /// one is needed to save again.
    #[error("the checkpoint saver was closed; create a new one to save again")]
    Closed,
    /// A save written behind training (`async_save`) failed. It is returned by the next call
    /// into the saver (a checkpoint event, `fit_end`, `close`), as Composer raises a failed upload
    /// at the next event; `source` is what a synchronous save would have returned.
    #[error("saving {} behind training failed: {source}", path.display())]
    WrittenBehind {
        /// The checkpoint that was being written.
        path: PathBuf,
        /// What went wrong.
        source: Box<Error>,
    },
    /// The thread writing a save behind training panicked (a bug in cairn, reported as that
    /// save's failure rather than taking the training process down).
    #[error("the background writer stopped unexpectedly ({message}); this is a bug in cairn")]
    WriterPanicked {
        /// The panic's message.
        message: String,
    },
    /// The saver lost its background writer to an earlier failure and cannot save any more.
    #[error(
        "the checkpoint saver lost its background writer to an earlier failure; create a new saver to save again"
    )]
    WriterLost,
    /// A checkpoint to resume from holds something cairn cannot continue from.
    #[error("cannot resume from {}: {reason}", path.display())]
    Resume {
        /// The checkpoint.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The boxed variants keep [`Error`] small (it is returned on every save's path).
macro_rules! boxed_from {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        $(impl From<$ty> for Error {
            fn from(e: $ty) -> Error {
                Error::$variant(Box::new(e))
            }
        })*
    };
}

boxed_from!(
    Config(ConfigError),
    Format(FormatError),
    Policy(PolicyError),
    Store(StoreError),
    Uploader(UploaderError),
    Download(DownloadError),
    Commit(CommitError),
);

fn steps_not_committed(failures: &[CommitFailure]) -> String {
    match failures {
        [] => "every step was committed".to_owned(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!(
            "{} steps were not committed; the first: {first}",
            rest.len() + 1
        ),
    }
}

fn uploads_failed(failures: &[UploadFailure]) -> String {
    match failures {
        [] => "no upload failed".to_owned(),
        [one] => format!("upload failed: {one}"),
        [first, rest @ ..] => format!("{} uploads failed; the first: {first}", rest.len() + 1),
    }
}

impl Error {
    /// The error itself, or for a failure behind training what the save failed with (the one
    /// a synchronous save would have returned), to match on.
    pub fn cause(&self) -> &Error {
        match self {
            Error::WrittenBehind { source, .. } => source.cause(),
            other => other,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}

/// `Result` with cairn's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
