//! Deleting whole steps, decided by global rank 0 alone (Composer: "rank 0 recursively deletes
//! its directory").
//!
//! * Committed steps beyond `num_checkpoints_to_keep` (the ones furthest into training are kept, and the
//!   step `latest` names never goes): the manifest is deleted first, so from then on no reader
//!   trusts the step, then every shard in the folder, then the records. Only where the step was
//!   committed in the checkpoint folder itself: remote objects are never deleted by retention
//!   (Composer's rule, and cairn's for non-sharded checkpoints).
//! * Uncommitted leftovers, in either place: a step with records but no manifest, all of whose
//!   records are older than the newest commit and than `commit_timeout_s` (so no coordinator can
//!   still be waiting for it), loses its shards and records.

use std::collections::HashSet;
use std::time::Duration;

use super::coordinator::Coordinator;
use super::error::CommitError;
use super::manifest::{Manifest, now_unix_ms};

/// What one pass deleted: the steps, by name.
#[derive(Debug, Default)]
pub(crate) struct Deleted {
    pub committed: Vec<String>,
    pub leftovers: Vec<String>,
}

/// Apply retention and leftover cleanup. `keep < 0` keeps every committed step; `pinned` are
/// steps never deleted (what `latest` names, the newest this saver committed).
pub(crate) fn rotate(
    coordinator: &Coordinator,
    keep: i64,
    pinned: &HashSet<String>,
    commit_timeout: Duration,
) -> Result<Deleted, CommitError> {
    coordinator.block_on(async {
        let store = coordinator.store();
        let mut committed: Vec<Manifest> = store
            .committed()
            .await?
            .into_iter()
            .filter_map(|(_, m)| m.ok())
            .collect();
        committed.sort_by(|a, b| a.training_order().cmp(&b.training_order()));
        let newest_commit = committed.iter().map(|m| m.committed_unix_ms).max();
        let mut deleted = Deleted::default();
        if let (Ok(keep), Some(folder)) = (usize::try_from(keep), store.local_folder()) {
            let excess = committed.len().saturating_sub(keep);
            for m in committed.iter().take(excess) {
                if pinned.contains(&m.step) {
                    continue;
                }
                store.delete_commit(&m.step).await?;
                for shard in &m.shards {
                    let path = folder.join(&shard.file);
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(source) => {
                            return Err(CommitError::Io {
                                action: "delete the shard",
                                path,
                                source,
                            });
                        }
                    }
                }
                deleted.committed.push(m.step.clone());
            }
        }
        let Some(newest_commit) = newest_commit else {
            return Ok(deleted);
        };
        let abandoned_before = now_unix_ms().saturating_sub(commit_timeout.as_millis() as u64);
        for (key, records) in store.uncommitted().await? {
            let step = strip_prefix(store, &key);
            let old = records.iter().all(|r| {
                r.published_unix_ms < newest_commit && r.published_unix_ms < abandoned_before
            });
            if !old || pinned.contains(&step) {
                continue;
            }
            for record in &records {
                // The shard first, its record after: a record never outlives nothing.
                if let Ok(key) = store.shard_key(record) {
                    store.delete(&key).await?;
                }
            }
            store.delete_commit(&step).await?;
            deleted.leftovers.push(step);
        }
        Ok(deleted)
    })
}

/// `uncommitted()` returns bucket-relative step keys; the store's operations take names relative
/// to its prefix.
fn strip_prefix(store: &super::store::CommitStore, key: &str) -> String {
    let probe = store
        .store()
        .key("x")
        .map(|k| k.to_string())
        .unwrap_or_default();
    let prefix = probe.strip_suffix("x").unwrap_or("");
    key.strip_prefix(prefix).unwrap_or(key).to_owned()
}
