//! Sharded saves, committed through the store: every rank writes its own shard, and a step
//! becomes a checkpoint only when global rank 0 has created its manifest.
//!
//! The protocol (PyTorch DCP's `.metadata`, Orbax's `commit_success.txt`, made safe for several
//! machines by a create-only put):
//!
//! 1. Every rank writes its shard durably under its own name (`filename` with `{rank}`), and
//!    computes its [CRC-64/NVME](checksum).
//! 2. Once the shard is durable (no store) or its upload is confirmed with its size (a store), the
//!    rank publishes its [`ShardRecord`] — name, object, size, checksum, ETag — as
//!    `<step>.commit/rank-<R>.json`, where `<step>` is global rank 0's shard name for that save.
//!    A record is never published for a shard that is not in place.
//! 3. Global rank 0 ([`Coordinator`]) lists the step's records until all `world_size` are there and
//!    every shard is found as its record describes, or `commit_timeout_s` passes (then the error
//!    names the missing ranks, and `[remote] on_failure` decides whether training stops).
//! 4. It creates `<step>.commit/manifest.json` with `PutMode::Create`: the store itself refuses a
//!    second manifest, so two coordinators (a restarted rank 0) cannot both commit a step.
//! 5. Only then does `latest` move — the remote `.symlink` and the local link, both naming rank
//!    0's shard (the manifest sits beside it, at `<that name>.commit/manifest.json`).
//!
//! Readers trust only committed steps: resume loads each rank's own shard of the newest committed
//! step (checking its size and checksum against the manifest), `cairn verify` reports steps
//! without a manifest and shards that do not match it, and retention deletes whole steps,
//! manifest first. A step left uncommitted (a rank died or failed mid-save) is never read; a later
//! attempt at the same step replaces its shards, and its leftovers are deleted once a newer step
//! is committed and the commit timeout has passed.
//!
//! Where the objects live: in the remote store when checkpoints are uploaded (the only thing
//! ranks on different machines share), else in the checkpoint folder itself, which the ranks
//! must then share (one machine, or a shared filesystem); see [`CommitStore`].
//!
//! In Python with a `torch.distributed` process group, a barrier after the save guarantees every
//! local record is in place; rank 0's [`CheckpointSaver::wait_for_commits`](crate::CheckpointSaver::wait_for_commits)
//! then wakes the commit thread, which finds them at its first look: the barrier replaces the
//! polling, and the manifest and the order stay the same. With `async_save` the shards are
//! still being written when the barrier passes: rank 0 only wakes the commit thread, and the
//! step commits at the poll after the last record appears.

pub mod checksum;
mod coordinator;
mod error;
pub mod manifest;
pub(crate) mod resume;
pub(crate) mod retention;
pub mod store;

pub use checksum::Checksum;
pub use coordinator::{CommitFailure, CommitJob, Committed, Coordinator, DEFAULT_POLL};
pub use error::CommitError;
pub use manifest::{Manifest, ShardRecord, now_unix_ms};
pub use store::{CommitStore, Created, manifest_name, record_name};

use crate::remote::RemoteStore;

/// Publish a rank's record once its upload was confirmed: the ETag the confirmation saw and the
/// time go in, then the record is put next to the step's other records (the uploader calls this
/// after the shard's size was confirmed, never before).
pub async fn publish_confirmed(
    store: &RemoteStore,
    mut record: ShardRecord,
    e_tag: Option<String>,
) -> Result<(), CommitError> {
    record.etag = e_tag;
    record.published_unix_ms = now_unix_ms();
    CommitStore::remote(store.clone()).publish(&record).await
}
