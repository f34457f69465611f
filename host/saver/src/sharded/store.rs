//! Where the protocol's objects live, and the operations on them.
//!
//! One code path serves both places: the remote store when checkpoints are uploaded (ranks on
//! different machines share nothing else), or the checkpoint folder itself, opened as an
//! object_store `LocalFileSystem` with fsync, when they are not (then the ranks must share the
//! folder: one machine, or a shared filesystem). `LocalFileSystem` implements
//! `PutMode::Create` with a hard link, which the kernel refuses atomically when the name is
//! taken; S3 with `If-None-Match: *`. Either way "create the manifest" is answered by the store,
//! never by a check-then-put.
//!
//! Names, for a step `S` (global rank 0's shard name):
//!
//! * `S.commit/rank-<R>.json` — rank R's [`ShardRecord`], a plain put (an attempt's record
//!   replaces an earlier attempt's);
//! * `S.commit/manifest.json` — the step's [`Manifest`], create-only.

use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::error::CommitError;
use super::manifest::{Manifest, ShardRecord};
use crate::remote::{RemoteStore, StoreError};

/// Appended to a step's name to name the folder (prefix) of its records and manifest.
pub const COMMIT_SUFFIX: &str = ".commit";
/// The manifest's name inside the step's `.commit` folder.
pub const MANIFEST_NAME: &str = "manifest.json";

/// The manifest's name for step `step` (relative, like the step).
pub fn manifest_name(step: &str) -> String {
    format!("{step}{COMMIT_SUFFIX}/{MANIFEST_NAME}")
}

/// Rank `rank`'s record name for step `step`.
pub fn record_name(step: &str, rank: u32) -> String {
    format!("{step}{COMMIT_SUFFIX}/rank-{rank}.json")
}

/// What [`CommitStore::create_manifest`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    /// This call created it.
    Created,
    /// The store refused: a manifest was there already, with the same shards (an earlier attempt
    /// of this very put, retried after its answer was lost, or an identical commit).
    AlreadyIdentical,
    /// The store refused: another coordinator committed the step with other shards.
    AlreadyDifferent(Box<Manifest>),
}

/// The store the protocol's objects go to. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CommitStore {
    store: RemoteStore,
    /// `Some` when the store is the checkpoint folder itself.
    folder: Option<PathBuf>,
}

impl CommitStore {
    /// The remote store checkpoints are uploaded to.
    pub fn remote(store: RemoteStore) -> CommitStore {
        CommitStore {
            store,
            folder: None,
        }
    }

    /// The checkpoint folder itself (created if missing), every write fsync'd.
    pub fn folder(dir: &Path) -> Result<CommitStore, StoreError> {
        let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let url = format!("file://{}", absolute.display());
        Ok(CommitStore {
            store: RemoteStore::from_url(&url)?,
            folder: Some(dir.to_path_buf()),
        })
    }

    /// The underlying store.
    pub fn store(&self) -> &RemoteStore {
        &self.store
    }

    /// The checkpoint folder, when the store is the folder itself.
    pub fn local_folder(&self) -> Option<&Path> {
        self.folder.as_deref()
    }

    /// The store's URL, for messages.
    pub fn url(&self) -> &str {
        self.store.url()
    }

    /// The key of a name relative to the store's prefix (or the folder).
    pub fn key(&self, name: &str) -> Result<ObjectPath, CommitError> {
        Ok(self.store.key(name)?)
    }

    /// Where a shard is, for the coordinator's check and a reader's: its object in a remote
    /// store, its file in the folder.
    pub fn shard_key(&self, shard: &ShardRecord) -> Result<ObjectPath, CommitError> {
        match (&self.folder, &shard.object) {
            (None, Some(object)) => self.key(object),
            (None, None) => Err(CommitError::Invalid {
                key: record_name(&shard.step, shard.rank),
                url: self.url().to_owned(),
                reason: "it names no object, but the step is committed through a store".into(),
            }),
            (Some(_), _) => self.key(&shard.file),
        }
    }

    fn store_error(
        &self,
        action: &'static str,
        key: &ObjectPath,
    ) -> impl FnOnce(object_store::Error) -> CommitError {
        let (key, url) = (key.to_string(), self.url().to_owned());
        move |source| CommitError::Store {
            action,
            key,
            url,
            source: Box::new(source),
        }
    }

    /// Publish a rank's record (replacing an earlier attempt's).
    pub async fn publish(&self, record: &ShardRecord) -> Result<(), CommitError> {
        let key = self.key(&record_name(&record.step, record.rank))?;
        self.store
            .object_store()
            .put(&key, PutPayload::from(record.to_bytes()))
            .await
            .map_err(self.store_error("publish the shard record", &key))?;
        Ok(())
    }

    /// The objects under a step's `.commit` folder: records by rank, and whether the manifest is
    /// there.
    pub async fn list_step(&self, step: &str) -> Result<StepListing, CommitError> {
        let prefix = self.key(&format!("{step}{COMMIT_SUFFIX}"))?;
        let objects: Vec<ObjectMeta> = self
            .store
            .object_store()
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(self.store_error("list", &prefix))?;
        let mut listing = StepListing::default();
        for meta in objects {
            let name = meta.location.filename().unwrap_or_default();
            if name == MANIFEST_NAME {
                listing.manifest = true;
            } else if let Some(rank) = name
                .strip_prefix("rank-")
                .and_then(|r| r.strip_suffix(".json"))
                .and_then(|r| r.parse::<u32>().ok())
            {
                listing.records.push((rank, meta));
            }
        }
        listing.records.sort_by_key(|(r, _)| *r);
        Ok(listing)
    }

    /// Read and parse one record.
    pub async fn record(&self, key: &ObjectPath) -> Result<ShardRecord, CommitError> {
        let bytes = self.get(key, "read the shard record").await?;
        ShardRecord::parse(&bytes).map_err(|reason| CommitError::Invalid {
            key: key.to_string(),
            url: self.url().to_owned(),
            reason,
        })
    }

    async fn get(
        &self,
        key: &ObjectPath,
        action: &'static str,
    ) -> Result<bytes::Bytes, CommitError> {
        let os = self.store.object_store();
        let result = os.get(key).await.map_err(self.store_error(action, key))?;
        result.bytes().await.map_err(self.store_error(action, key))
    }

    /// The metadata of the object (or file) `name` as the store has it now.
    pub async fn head(&self, name: &str) -> Result<ObjectMeta, CommitError> {
        let key = self.key(name)?;
        self.store
            .object_store()
            .head(&key)
            .await
            .map_err(self.store_error("check", &key))
    }

    /// The shard's metadata as the store has it now; `None` when it is not there.
    pub async fn head_shard(&self, shard: &ShardRecord) -> Result<Option<ObjectMeta>, CommitError> {
        let key = self.shard_key(shard)?;
        match self.store.object_store().head(&key).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_error("check the shard", &key)(e)),
        }
    }

    /// Create the step's manifest, create-only. The store's own answer decides: a manifest that
    /// is already there is read back and compared, never overwritten.
    pub async fn create_manifest(&self, manifest: &Manifest) -> Result<Created, CommitError> {
        let key = self.key(&manifest_name(&manifest.step))?;
        let put = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let payload = PutPayload::from(manifest.to_bytes());
        match self.store.object_store().put_opts(&key, payload, put).await {
            Ok(_) => Ok(Created::Created),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let theirs = self
                    .manifest_at(&key)
                    .await?
                    .ok_or_else(|| CommitError::Invalid {
                        key: key.to_string(),
                        url: self.url().to_owned(),
                        reason:
                            "the store refused to create it as existing, then could not find it"
                                .into(),
                    })?;
                if same_shards(&theirs, manifest) {
                    Ok(Created::AlreadyIdentical)
                } else {
                    Ok(Created::AlreadyDifferent(Box::new(theirs)))
                }
            }
            Err(e) => Err(self.store_error("create the commit manifest", &key)(e)),
        }
    }

    /// The manifest of `step`, if the step is committed.
    pub async fn manifest(&self, step: &str) -> Result<Option<Manifest>, CommitError> {
        let key = self.key(&manifest_name(step))?;
        self.manifest_at(&key).await
    }

    /// The manifest at a bucket-relative key, if there is one.
    pub async fn manifest_at(&self, key: &ObjectPath) -> Result<Option<Manifest>, CommitError> {
        let os = self.store.object_store();
        let bytes = match os.get(key).await {
            Ok(r) => r
                .bytes()
                .await
                .map_err(self.store_error("read the commit manifest", key))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.store_error("read the commit manifest", key)(e)),
        };
        Manifest::parse(&bytes)
            .map(Some)
            .map_err(|reason| CommitError::Invalid {
                key: key.to_string(),
                url: self.url().to_owned(),
                reason,
            })
    }

    /// Every committed step under the store's prefix (or in the folder), with its manifest's key.
    /// Manifests that cannot be read are returned as errors beside them, so one damaged manifest
    /// does not hide the others.
    pub async fn committed(
        &self,
    ) -> Result<Vec<(ObjectPath, Result<Manifest, CommitError>)>, CommitError> {
        let root = self.key_prefix();
        let objects: Vec<ObjectMeta> = self
            .store
            .object_store()
            .list(root.as_ref())
            .try_collect()
            .await
            .map_err(self.store_error("list", &root.clone().unwrap_or_default()))?;
        let suffix = format!("{COMMIT_SUFFIX}/{MANIFEST_NAME}");
        let mut out = Vec::new();
        for meta in objects {
            if !meta.location.as_ref().ends_with(&suffix) {
                continue;
            }
            let manifest = match self.manifest_at(&meta.location).await {
                Ok(Some(m)) => Ok(m),
                Ok(None) => continue,
                Err(e) => Err(e),
            };
            out.push((meta.location, manifest));
        }
        Ok(out)
    }

    /// Every step with a `.commit` folder but no manifest: its name and its records.
    pub async fn uncommitted(&self) -> Result<Vec<(String, Vec<ShardRecord>)>, CommitError> {
        let root = self.key_prefix();
        let objects: Vec<ObjectMeta> = self
            .store
            .object_store()
            .list(root.as_ref())
            .try_collect()
            .await
            .map_err(self.store_error("list", &root.clone().unwrap_or_default()))?;
        let mut steps: std::collections::BTreeMap<String, (bool, Vec<ObjectPath>)> =
            Default::default();
        for meta in objects {
            let key = meta.location.as_ref();
            let Some((dir, name)) = key.rsplit_once('/') else {
                continue;
            };
            let Some(step_key) = dir.strip_suffix(COMMIT_SUFFIX) else {
                continue;
            };
            let entry = steps.entry(step_key.to_owned()).or_default();
            if name == MANIFEST_NAME {
                entry.0 = true;
            } else if name.starts_with("rank-") {
                entry.1.push(meta.location.clone());
            }
        }
        let mut out = Vec::new();
        for (step_key, (committed, records)) in steps {
            if committed {
                continue;
            }
            let mut parsed = Vec::new();
            for key in records {
                if let Ok(r) = self.record(&key).await {
                    parsed.push(r);
                }
            }
            out.push((step_key, parsed));
        }
        Ok(out)
    }

    /// Delete a step's `.commit` folder: the manifest first (from then on no reader trusts the
    /// step), then the records.
    pub async fn delete_commit(&self, step: &str) -> Result<(), CommitError> {
        let manifest = self.key(&manifest_name(step))?;
        self.delete(&manifest).await?;
        let listing = self.list_step(step).await?;
        for (_, meta) in listing.records {
            self.delete(&meta.location).await?;
        }
        if let Some(folder) = &self.folder {
            // LocalFileSystem leaves the emptied directory behind.
            let _ = std::fs::remove_dir(folder.join(format!("{step}{COMMIT_SUFFIX}")));
        }
        Ok(())
    }

    /// Delete one object; one already gone is fine.
    pub async fn delete(&self, key: &ObjectPath) -> Result<(), CommitError> {
        match self.store.object_store().delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_error("delete", key)(e)),
        }
    }

    fn key_prefix(&self) -> Option<ObjectPath> {
        // The store's prefix is joined to every name; an empty name is not a key, so take the
        // prefix from a probe name's parent.
        let probe = self.store.key("x").ok()?;
        let parts: Vec<_> = probe.parts().collect();
        (parts.len() > 1).then(|| parts[..parts.len() - 1].iter().cloned().collect())
    }
}

/// The `.commit` folder of one step.
#[derive(Debug, Default)]
pub struct StepListing {
    /// Records present, by rank, with their metadata.
    pub records: Vec<(u32, ObjectMeta)>,
    /// Whether the manifest is there.
    pub manifest: bool,
}

/// Two manifests commit the same bytes: the same shards, sizes and checksums.
fn same_shards(a: &Manifest, b: &Manifest) -> bool {
    let key = |m: &Manifest| {
        let mut v: Vec<_> = m
            .shards
            .iter()
            .map(|s| {
                (
                    s.rank,
                    s.file.clone(),
                    s.object.clone(),
                    s.bytes,
                    s.crc64nvme,
                )
            })
            .collect();
        v.sort();
        v
    };
    a.step == b.step && a.world_size == b.world_size && key(a) == key(b)
}
