//! The two small JSON objects of the commit protocol: each rank's [`ShardRecord`] and the step's
//! [`Manifest`]. Both name their format and version, so a reader meets a newer layout with a
//! clear refusal rather than a guess.

use serde::{Deserialize, Serialize};

use super::checksum::Checksum;

/// The `format` of a shard record.
pub const RECORD_FORMAT: &str = "cairn-shard-record/1";
/// The `format` of a commit manifest.
pub const MANIFEST_FORMAT: &str = "cairn-commit/1";

/// One rank's statement that its shard of a step is in place: published (a plain put under
/// `<step>.commit/rank-<R>.json`) once the shard is durable (local) or confirmed in the store
/// (remote), never before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// [`RECORD_FORMAT`].
    pub format: String,
    /// The step: global rank 0's shard name (the object name in the store, or the file name in
    /// the folder, relative to the store's prefix or the folder).
    pub step: String,
    /// The run's name.
    pub run_name: String,
    /// This shard's global rank.
    pub rank: u32,
    /// How many ranks the step has.
    pub world_size: u32,
    /// The shard's file, relative to the rank's checkpoint folder.
    pub file: String,
    /// The shard's object name (relative to the store's prefix), when it was uploaded.
    pub object: Option<String>,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its CRC-64/NVME.
    pub crc64nvme: Checksum,
    /// The store's identity of the shard as confirmed (its ETag), when the store gives one: the
    /// coordinator checks it is still the object there, so a record left by an earlier attempt
    /// never vouches for a shard written since.
    pub etag: Option<String>,
    /// The training position of the step.
    pub epoch: u64,
    /// The training position of the step.
    pub batch: u64,
    /// When the record was published (Unix milliseconds, the rank's clock).
    pub published_unix_ms: u64,
}

/// The commit of a step: created once, create-only (`PutMode::Create`, `If-None-Match: *` on S3),
/// by global rank 0 after every rank's record was in place and every shard was found as its
/// record describes. A step without one is not a checkpoint: no reader trusts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: String,
    /// The step (global rank 0's shard name).
    pub step: String,
    /// The run's name.
    pub run_name: String,
    /// How many ranks (and shards) the step has.
    pub world_size: u32,
    /// The training position of the step.
    pub epoch: u64,
    /// The training position of the step.
    pub batch: u64,
    /// Every shard, by rank.
    pub shards: Vec<ShardRecord>,
    /// When the coordinator created the manifest (Unix milliseconds, its clock).
    pub committed_unix_ms: u64,
    /// The checksum algorithm (`crc64nvme`).
    pub checksum: String,
}

impl Manifest {
    /// Milliseconds from the last shard's record to the manifest (the commit's own latency, one
    /// poll interval included).
    pub fn commit_latency_ms(&self) -> u64 {
        let last = self
            .shards
            .iter()
            .map(|s| s.published_unix_ms)
            .max()
            .unwrap_or(self.committed_unix_ms);
        self.committed_unix_ms.saturating_sub(last)
    }

    /// How to order steps, oldest first: by training position (commits of consecutive steps may
    /// finish out of order), then by commit time and name.
    pub fn training_order(&self) -> (u64, u64, u64, &str) {
        (self.batch, self.epoch, self.committed_unix_ms, &self.step)
    }

    /// Total bytes of the step's shards.
    pub fn bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.bytes).sum()
    }

    /// The shard of global rank `rank`.
    pub fn shard(&self, rank: u32) -> Option<&ShardRecord> {
        self.shards.iter().find(|s| s.rank == rank)
    }

    /// Parse a manifest, refusing other formats and manifests that do not list exactly one shard
    /// per rank.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if m.format != MANIFEST_FORMAT {
            return Err(format!(
                "its format is '{}', not '{MANIFEST_FORMAT}'",
                m.format
            ));
        }
        let mut ranks: Vec<u32> = m.shards.iter().map(|s| s.rank).collect();
        ranks.sort_unstable();
        if ranks != (0..m.world_size).collect::<Vec<_>>() {
            return Err(format!(
                "it lists the ranks {ranks:?} for a world size of {}",
                m.world_size
            ));
        }
        Ok(m)
    }

    /// The manifest as stored: pretty JSON, so `cat` shows it.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a manifest always serialises")
    }
}

impl ShardRecord {
    /// Parse a record, refusing other formats.
    pub fn parse(bytes: &[u8]) -> Result<ShardRecord, String> {
        let r: ShardRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if r.format != RECORD_FORMAT {
            return Err(format!(
                "its format is '{}', not '{RECORD_FORMAT}'",
                r.format
            ));
        }
        Ok(r)
    }

    /// The record as stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record always serialises")
    }
}

/// Milliseconds since the Unix epoch, by this machine's clock.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
