//! Resume from the newest committed step: every rank loads its own shard of it.
//!
//! The step is chosen from the manifests alone (the committed step of this run furthest into
//! training: commits of consecutive steps may finish out of order), so every rank chooses the same step from the same listing,
//! whatever its local folder holds; `latest` is there for other readers. The rank's shard is
//! taken from its folder when it is there with the manifest's size and checksum, else downloaded
//! from the store; one that matches neither is an error naming it, never a silent fall back to
//! another step (the ranks would then resume from different places).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::resume::{ResumePoint, ResumeReason};

use super::checksum::Checksum;
use super::coordinator::Coordinator;
use super::manifest::{Manifest, ShardRecord};

/// The newest committed step of `run_name`, with this rank's shard loaded. `None` when the store
/// holds no committed step of this run.
pub(crate) fn find(
    coordinator: &Coordinator,
    run_name: &str,
    rank: u32,
    world_size: u32,
    folder: &Path,
    limits: &cairn_format::ReadLimits,
) -> Result<Option<ResumePoint>> {
    let store = coordinator.store();
    let listed = coordinator.block_on(store.committed())?;
    let mut skipped = Vec::new();
    let mut newest: Option<(String, Manifest)> = None;
    for (key, manifest) in listed {
        match manifest {
            Ok(m) if m.run_name == run_name => {
                let newer = newest
                    .as_ref()
                    .is_none_or(|(_, n)| m.training_order() > n.training_order());
                if newer {
                    newest = Some((key.to_string(), m));
                }
            }
            Ok(_) => {}
            Err(e) => skipped.push((PathBuf::from(key.as_ref()), e.to_string())),
        }
    }
    let Some((key, manifest)) = newest else {
        return Ok(None);
    };
    if manifest.world_size != world_size {
        return Err(Error::Resume {
            path: PathBuf::from(&key),
            reason: format!(
                "its step was saved by {} ranks and this run has {world_size}; cairn does not reshard",
                manifest.world_size
            ),
        });
    }
    let shard = manifest.shard(rank).ok_or_else(|| Error::Resume {
        path: PathBuf::from(&key),
        reason: format!("it lists no shard for rank {rank}"),
    })?;
    let path = own_shard(coordinator, shard, folder, &key)?;
    let (tree, timestamp) = crate::resume::load(&path, limits)?;
    let history = crate::checkpoint::read_history(&tree).unwrap_or_default();
    Ok(Some(ResumePoint {
        path,
        tree,
        timestamp,
        history,
        reason: ResumeReason::Committed {
            step: manifest.step.clone(),
            manifest: key,
        },
        skipped,
    }))
}

/// This rank's shard in its folder, downloaded first when the folder's copy is missing or is not
/// the committed one.
fn own_shard(
    coordinator: &Coordinator,
    shard: &ShardRecord,
    folder: &Path,
    manifest: &str,
) -> Result<PathBuf> {
    let path = folder.join(&shard.file);
    let local = matches_record(&path, shard);
    if let Ok(()) = local {
        return Ok(path);
    }
    let store = coordinator.store();
    let (Some(object), None) = (&shard.object, store.local_folder()) else {
        return Err(Error::Resume {
            path,
            reason: format!(
                "it is rank {}'s shard of the committed step in {manifest}, but {}",
                shard.rank,
                local.err().unwrap_or_default()
            ),
        });
    };
    let key = store.key(object)?;
    let dir = path.parent().unwrap_or(folder).to_path_buf();
    let downloaded = coordinator.block_on(crate::remote::download::download_object(
        store.store(),
        &key,
        &key,
        &dir,
    ))?;
    if downloaded != path {
        std::fs::rename(&downloaded, &path)
            .map_err(Error::io("rename the downloaded shard", &path))?;
    }
    matches_record(&path, shard).map_err(|reason| Error::Resume {
        path: path.clone(),
        reason: format!("it was downloaded from '{object}', but {reason}"),
    })?;
    Ok(path)
}

/// Whether the file is the shard the record describes: its size, then its checksum.
pub(crate) fn matches_record(path: &Path, shard: &ShardRecord) -> Result<(), String> {
    let size = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) => return Err(format!("it cannot be read ({e})")),
    };
    if size != shard.bytes {
        return Err(format!(
            "it has {size} bytes and the manifest says {}",
            shard.bytes
        ));
    }
    let sum = Checksum::of_file(path).map_err(|e| format!("it cannot be read ({e})"))?;
    if sum != shard.crc64nvme {
        return Err(format!(
            "its CRC-64/NVME is {sum} and the manifest says {}",
            shard.crc64nvme
        ));
    }
    Ok(())
}
