//! The remote `latest` pointer: a small object `<latest_remote_file_name>.symlink` whose content
//! is the bucket-relative key of the newest checkpoint, with no trailing newline (Composer's
//! readers use the content verbatim).
//!
//! Two rules make the pointer trustworthy:
//!
//! 1. It is written only after the checkpoint it names was confirmed present with the right size
//!    (the caller guarantees this: it calls [`LatestPointers::advance`] only after
//!    [`transfer::upload_file`](super::transfer::upload_file) succeeded).
//! 2. It never moves backwards. Uploads run concurrently, so checkpoint N+1 may finish before N
//!    (Composer PR #3376). Each pointer remembers the highest save sequence it has named; an older
//!    checkpoint finishing later is not written. Writes to pointers are serialised, so the check
//!    and the write cannot interleave with another checkpoint's.

use std::collections::HashMap;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use tokio::sync::Mutex;
use tokio::time::{Instant, timeout_at};

use super::store::RemoteStore;

/// Appended to `latest_remote_file_name` to name the pointer object, as Composer does.
pub const SYMLINK_SUFFIX: &str = ".symlink";

/// Why a pointer could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PointerError {
    /// The store failed the write.
    #[error(
        "writing the latest pointer '{pointer}' in '{url}' (to name '{target}') failed: {}",
        super::error_chain(.source)
    )]
    Store {
        /// The pointer's key.
        pointer: String,
        /// The checkpoint key it was to name.
        target: String,
        /// The store's URL.
        url: String,
        /// The store's own error.
        source: object_store::Error,
    },
    /// The checkpoint's time bound passed first.
    #[error(
        "writing the latest pointer '{pointer}' in '{url}' (to name '{target}') did not finish within {:.1} s (upload_timeout_in_seconds)",
        .limit.as_secs_f64()
    )]
    TimedOut {
        /// The pointer's key.
        pointer: String,
        /// The checkpoint key it was to name.
        target: String,
        /// The store's URL.
        url: String,
        /// The bound that was exceeded.
        limit: Duration,
    },
}

/// What [`LatestPointers::advance`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advance {
    /// The pointer now names the checkpoint.
    Written,
    /// A newer checkpoint (this save sequence) is already named; nothing was written.
    AlreadyNewer(u64),
}

/// The highest save sequence each pointer has named, for this process.
#[derive(Debug, Default)]
pub struct LatestPointers {
    /// Serialises check-and-write, so two checkpoints finishing together cannot interleave.
    writing: Mutex<()>,
    /// What each pointer names now. A plain lock, held only for map access, so readers (the
    /// report) never wait behind a slow write.
    named: std::sync::Mutex<HashMap<ObjectPath, (u64, String)>>,
}

impl LatestPointers {
    /// Point `pointer` at `target` (a confirmed checkpoint of save `sequence`), unless it already
    /// names a later save. The pointer is overwritten in place: the store makes each `PUT` atomic,
    /// so a reader sees the old or the new key, never a mix. Waiting for another checkpoint's
    /// pointer write counts against this checkpoint's `deadline` too.
    pub async fn advance(
        &self,
        store: &RemoteStore,
        pointer: &ObjectPath,
        target: &ObjectPath,
        sequence: u64,
        deadline: Instant,
        limit: Duration,
    ) -> Result<Advance, PointerError> {
        let content = target.as_ref().to_string();
        let write = async {
            let _writing = self.writing.lock().await;
            if let Some((newest, _)) = self.named_map().get(pointer)
                && *newest >= sequence
            {
                return Ok(Advance::AlreadyNewer(*newest));
            }
            let payload = PutPayload::from(content.clone().into_bytes());
            store.object_store().put(pointer, payload).await?;
            self.named_map()
                .insert(pointer.clone(), (sequence, content.clone()));
            Ok(Advance::Written)
        };
        match timeout_at(deadline, write).await {
            Ok(Ok(advance)) => Ok(advance),
            Ok(Err(source)) => Err(PointerError::Store {
                pointer: pointer.to_string(),
                target: target.to_string(),
                url: store.url().to_string(),
                source,
            }),
            Err(_) => Err(PointerError::TimedOut {
                pointer: pointer.to_string(),
                target: target.to_string(),
                url: store.url().to_string(),
                limit,
            }),
        }
    }

    fn named_map(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectPath, (u64, String)>> {
        self.named.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key each pointer names now, as written by this process. Never waits for a write.
    pub fn current(&self) -> Vec<(String, String)> {
        let mut all: Vec<_> = self
            .named_map()
            .iter()
            .map(|(p, (_, t))| (p.to_string(), t.clone()))
            .collect();
        all.sort();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    async fn read(store: &RemoteStore, key: &str) -> String {
        let bytes = store
            .object_store()
            .get(&ObjectPath::from(key))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn pointer_never_moves_backwards() {
        let store = RemoteStore::from_url("memory://runs/a").unwrap();
        let pointers = LatestPointers::default();
        let ptr = store.key("latest-rank0.pt.symlink").unwrap();
        let far = Instant::now() + Duration::from_secs(10);
        let lim = Duration::from_secs(10);
        let k = |n| store.key(&format!("ep{n}.pt")).unwrap();
        assert_eq!(
            pointers
                .advance(&store, &ptr, &k(2), 2, far, lim)
                .await
                .unwrap(),
            Advance::Written
        );
        assert_eq!(
            read(&store, "runs/a/latest-rank0.pt.symlink").await,
            "runs/a/ep2.pt"
        );
        // Save 1 finishes after save 2: not written.
        assert_eq!(
            pointers
                .advance(&store, &ptr, &k(1), 1, far, lim)
                .await
                .unwrap(),
            Advance::AlreadyNewer(2)
        );
        assert_eq!(
            read(&store, "runs/a/latest-rank0.pt.symlink").await,
            "runs/a/ep2.pt"
        );
        pointers
            .advance(&store, &ptr, &k(3), 3, far, lim)
            .await
            .unwrap();
        assert_eq!(
            read(&store, "runs/a/latest-rank0.pt.symlink").await,
            "runs/a/ep3.pt"
        );
        assert_eq!(
            pointers.current(),
            vec![(
                "runs/a/latest-rank0.pt.symlink".to_string(),
                "runs/a/ep3.pt".to_string()
            )]
        );
    }
}
