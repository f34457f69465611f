//! Remote checkpoints: uploading finished checkpoint files to an object store, the remote `latest`
//! pointer, and resuming from a remote checkpoint.
//!
//! The saver is synchronous and must never wait on the network, so everything here runs on a tokio
//! runtime owned by the [`Uploader`]; the saver only calls cheap, non-blocking methods between
//! training steps. One concern per file:
//!
//! * [`store`] — which object store a URL names (`file://`, `memory://`, `s3://`, `gs://`, `az://`).
//! * [`pin`] — how a local file is kept alive while it is uploaded, whatever local rotation does.
//! * [`transfer`] — moving one file to one object: single put or parallel multipart, retries,
//!   the per-checkpoint time bound, abort on failure, `overwrite = false`.
//! * [`latest`] — the remote `latest` pointer (`<name>.symlink`), which only moves forwards.
//! * [`uploader`] — the background queue the saver talks to.
//! * [`download`] — resume: read the pointer, download what it names.
//!
//! Wiring, from the saver's point of view:
//!
//! 1. `Uploader::new(RemoteStore::from_url(url)?, options)` once, before training.
//! 2. After each checkpoint file is durable locally: `uploader.enqueue(UploadJob { .. })`.
//! 3. At every event (e.g. batch end): `uploader.poll_failures()`; report or fail on any.
//! 4. Retention: delete a local checkpoint only when `uploader.status(path)` allows it
//!    ([`UploadStatus::may_delete`]); with `num_checkpoints_to_keep = 0` that is `Uploaded`.
//! 5. At the end of training (`fit_end`): `uploader.wait(None)`, then `uploader.report()`; the
//!    uploader stays usable for the next fit.
//! 6. When the saver closes, however training ended: `uploader.close(Some(timeout))` (Composer's
//!    `post_close`) finishes what it can in time and stops the upload threads.

pub mod download;
pub mod latest;
pub mod pin;
pub mod store;
pub mod transfer;
pub mod uploader;

pub use download::{DownloadError, download_latest};

/// An error and its causes in one line. object_store's messages stop at the HTTP layer ("error
/// sending request"); the cause ("tcp connect error: Connection refused") is what a user can act
/// on. Causes whose text is already included are skipped, as many errors repeat their source.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let more = e.to_string();
        if !more.is_empty() && !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = e.source();
    }
    text
}
pub use latest::SYMLINK_SUFFIX;
pub use store::{RemoteStore, StoreError, StoreOptions, is_remote_url, is_staging_file};
pub use transfer::{TransferError, part_size_for};
pub use uploader::{
    UploadFailure, UploadJob, UploadOptions, UploadReport, UploadStatus, UploadTicket, Uploader,
    UploaderError,
};
