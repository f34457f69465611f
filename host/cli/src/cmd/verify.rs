//! `cairn verify PATH`: integrity of one checkpoint file, or of a whole checkpoint folder.
//!
//! For a folder every checkpoint file in it (and its sub-folders) is fully verified, and every
//! `latest*` entry must resolve to a complete checkpoint. A `latest` entry is either a symlink
//! or — where the filesystem has no symlinks — a small pointer file holding the relative name
//! of the checkpoint. A remote pointer (`*.symlink`, in a `file://` store or a bucket mirrored
//! on disk) holds the checkpoint's key relative to the store's root instead, and is resolved as
//! the store resolves it. A sharded step (a `<step>.commit` folder) is sound when its manifest is
//! there and every shard it lists is found with its size and CRC-64/NVME and verifies; a step
//! without a manifest is reported as uncommitted, naming the ranks whose records are there. In a
//! folder of sharded steps (one with a `.commit` folder), a checkpoint that no manifest there
//! lists is reported too: a shard of a step that never committed, even one whose rank died before
//! any record of it was published.
//! Sound files print one `ok` line on stdout; each problem prints one line
//! on stderr, and any problem makes the exit status non-zero. A file is read by its content (a
//! compressed file under a `.pt` name verifies, with a note on stderr that the name disagrees).
//! If stdout is closed early (`cairn verify DIR | head -1`), checking goes on and the exit
//! status still says whether every file was sound.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::read::{ReadArgs, note_mismatch};
use crate::out::{Lines, printable};
use cairn::format::{CheckpointFormat, ReadLimits, verify_checkpoint_with};
use cairn::remote::store::object_name;
use cairn::remote::{SYMLINK_SUFFIX, is_staging_file};
use cairn::sharded::store::{COMMIT_SUFFIX, MANIFEST_NAME};
use cairn::sharded::{Manifest, ShardRecord};

/// Arguments of `cairn verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A checkpoint file or a checkpoint folder.
    path: PathBuf,
    #[command(flatten)]
    read: ReadArgs,
}

/// What one verification run carries: the bounds, where `ok` lines go, the problems found.
struct Check {
    limits: ReadLimits,
    out: Lines,
    problems: Vec<String>,
}

/// Largest file read as a `latest` pointer: a relative name, not a checkpoint.
const MAX_POINTER_BYTES: u64 = 4096;
/// How deep sub-folders are searched for checkpoints.
const MAX_DEPTH: usize = 8;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let meta = std::fs::metadata(&args.path)
        .map_err(|e| anyhow::anyhow!("{} cannot be checked: {e}", args.path.display()))?;
    let mut check = Check {
        limits: args.read.limits(),
        out: Lines::stdout(),
        problems: Vec::new(),
    };
    if meta.is_dir() {
        verify_folder(&args.path, 0, &mut check);
    } else {
        verify_file(&args.path, &mut check);
    }
    for p in &check.problems {
        eprintln!("cairn: {}", printable(p));
    }
    Ok(if check.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn verify_file(path: &Path, check: &mut Check) -> bool {
    match verify_checkpoint_with(path, &check.limits) {
        Ok(r) => {
            let count = crate::plural::count;
            check.out.line(format_args!(
                "ok {} ({}, {}, {}, {})",
                printable(&path.display().to_string()),
                r.format,
                count(r.file_bytes, "byte", "bytes"),
                count(r.summary.tensors as u64, "tensor", "tensors"),
                count(r.summary.storages as u64, "storage", "storages")
            ));
            note_mismatch(&r, path);
            true
        }
        Err(e) => {
            check.problems.push(e.to_string());
            false
        }
    }
}

/// Does this name look like a checkpoint file (rather than a log, a temp file, ...)?
fn is_checkpoint_name(name: &str) -> bool {
    if name.starts_with('.') {
        return false;
    }
    match CheckpointFormat::from_name(name) {
        Ok(CheckpointFormat::Pt) => name.ends_with(".pt"),
        Ok(_) => true,
        Err(_) => false,
    }
}

/// Verify every checkpoint under `dir`; returns how many checkpoint entries were found.
fn verify_folder(dir: &Path, depth: usize, check: &mut Check) -> usize {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            check
                .problems
                .push(format!("{} cannot be listed: {e}", dir.display()));
            return 0;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    let committed = committed_shards(&paths);
    let mut found = 0;
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if is_staging_file(&name) {
            // A killed upload's staging file in a `file://` store: not an object of the store.
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if name.ends_with(SYMLINK_SUFFIX) && meta.is_file() {
            found += 1;
            check_remote_pointer(dir, &path, check);
        } else if name.starts_with("latest") {
            found += 1;
            check_latest(dir, &path, &meta, check);
        } else if meta.is_dir() && name.ends_with(COMMIT_SUFFIX) {
            found += 1;
            check_step(dir, &path, &name, check);
        } else if meta.is_dir() && depth < MAX_DEPTH {
            found += verify_folder(&path, depth + 1, check);
        } else if meta.is_file() && is_checkpoint_name(&name) {
            found += 1;
            match &committed {
                Some(listed) if !listed.contains(&canonical(&path)) => {
                    check.problems.push(format!(
                        "{} is listed by no commit manifest beside it: a shard of a step that never committed (no reader trusts it)",
                        path.display()
                    ));
                }
                _ => {
                    verify_file(&path, check);
                }
            }
        }
    }
    if found == 0 && depth == 0 {
        check
            .problems
            .push(format!("{} holds no checkpoint files", dir.display()));
    }
    found
}

/// In a folder of sharded steps (`paths` has a `<step>.commit` folder): every file some manifest
/// there lists, wherever it is. `None` elsewhere.
fn committed_shards(paths: &[PathBuf]) -> Option<HashSet<PathBuf>> {
    let mut listed = HashSet::new();
    let mut sharded = false;
    for commit in paths {
        let is_step = commit
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(COMMIT_SUFFIX));
        if !is_step || !commit.is_dir() {
            continue;
        }
        sharded = true;
        let Some(dir) = commit.parent() else { continue };
        let Ok(bytes) = std::fs::read(commit.join(MANIFEST_NAME)) else {
            continue;
        };
        let Ok(manifest) = Manifest::parse(&bytes) else {
            continue;
        };
        listed.extend(
            manifest
                .shards
                .iter()
                .filter_map(|shard| locate_shard(dir, shard))
                .map(|p| canonical(&p)),
        );
    }
    sharded.then_some(listed)
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// A `latest` entry must name an existing, complete checkpoint.
fn check_latest(dir: &Path, path: &Path, meta: &std::fs::Metadata, check: &mut Check) {
    let problems = &mut check.problems;
    let target = if meta.file_type().is_symlink() {
        match std::fs::read_link(path) {
            Ok(t) => dir.join(t),
            Err(e) => return problems.push(format!("{} cannot be read: {e}", path.display())),
        }
    } else if meta.is_file() && meta.len() <= MAX_POINTER_BYTES && !looks_binary(path) {
        match std::fs::read_to_string(path) {
            Ok(text) => dir.join(text.trim()),
            Err(e) => return problems.push(format!("{} cannot be read: {e}", path.display())),
        }
    } else {
        // A regular checkpoint that happens to be named latest*: verify it as one.
        verify_file(path, check);
        return;
    };
    if !target.exists() {
        return problems.push(format!(
            "{} points to {}, which does not exist",
            path.display(),
            target.display()
        ));
    }
    if target.is_dir() {
        return problems.push(format!(
            "{} points to the folder {}; sharded checkpoints are not verified",
            path.display(),
            target.display()
        ));
    }
    let mut commit = target.clone().into_os_string();
    commit.push(COMMIT_SUFFIX);
    let commit = PathBuf::from(commit);
    if commit.is_dir() && !commit.join(MANIFEST_NAME).is_file() {
        return problems.push(format!(
            "{} points to {}, whose sharded step is not committed",
            path.display(),
            target.display()
        ));
    }
    match verify_checkpoint_with(&target, &check.limits) {
        Err(e) => problems.push(format!(
            "{} points to a checkpoint that fails verification: {e}",
            path.display()
        )),
        Ok(r) => {
            check.out.line(format_args!(
                "ok {} -> {}",
                printable(&path.display().to_string()),
                printable(&target.display().to_string())
            ));
            note_mismatch(&r, &target);
        }
    }
}

/// A remote `latest` pointer holds the checkpoint's key relative to the store's root (Composer's
/// `.symlink` objects), and the root is some folder above the pointer: the pointer itself lives at
/// `<root>/<latest_remote_file_name>.symlink`. Resolve the key as the store does, from the nearest
/// enclosing folder under which it exists.
fn check_remote_pointer(dir: &Path, path: &Path, check: &mut Check) {
    let text = match std::fs::metadata(path) {
        Ok(m) if m.len() <= MAX_POINTER_BYTES => std::fs::read_to_string(path),
        Ok(m) => {
            return check.problems.push(format!(
                "{} is {} bytes, too large for a remote latest pointer",
                path.display(),
                m.len()
            ));
        }
        Err(e) => Err(e),
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            return check
                .problems
                .push(format!("{} cannot be read: {e}", path.display()));
        }
    };
    // cairn writes no newline; other writers (an editor, `echo`) may.
    let key = text.trim();
    if let Err(reason) = object_name(key) {
        return check.problems.push(format!(
            "{} does not hold an object key ({key:?}: {reason})",
            path.display()
        ));
    }
    let Some(target) = dir
        .ancestors()
        .map(|root| root.join(key))
        .find(|t| t.is_file())
    else {
        return check.problems.push(format!(
            "{} names '{key}', which is under no folder above it (the store's root)",
            path.display()
        ));
    };
    match verify_checkpoint_with(&target, &check.limits) {
        Ok(_) => check.out.line(format_args!(
            "ok {} -> {}",
            printable(&path.display().to_string()),
            printable(&target.display().to_string())
        )),
        Err(e) => check.problems.push(format!(
            "{} names {}, which fails verification: {e}",
            path.display(),
            target.display()
        )),
    }
}

/// A sharded step's `.commit` folder: its manifest must be there, and every shard it lists must be
/// found (as a file beside the step, or as an object under a folder above, the store's root) with
/// the manifest's size and checksum, and verify.
fn check_step(dir: &Path, commit: &Path, name: &str, check: &mut Check) {
    let problems = &mut check.problems;
    let step = name.strip_suffix(COMMIT_SUFFIX).unwrap_or(name);
    let manifest_path = commit.join(MANIFEST_NAME);
    let bytes = match std::fs::read(&manifest_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut ranks: Vec<u32> = std::fs::read_dir(commit)
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    let n = e.ok()?.file_name().to_string_lossy().into_owned();
                    n.strip_prefix("rank-")?.strip_suffix(".json")?.parse().ok()
                })
                .collect();
            ranks.sort_unstable();
            return problems.push(format!(
                "step {} is not committed: it has no manifest (records from ranks {ranks:?}); no reader trusts its shards",
                dir.join(step).display()
            ));
        }
        Err(e) => return problems.push(format!("{} cannot be read: {e}", manifest_path.display())),
    };
    let manifest = match Manifest::parse(&bytes) {
        Ok(m) => m,
        Err(e) => {
            return problems.push(format!(
                "{} is not a commit manifest: {e}",
                manifest_path.display()
            ));
        }
    };
    let mut bytes_total = 0;
    for shard in &manifest.shards {
        let Some(file) = locate_shard(dir, shard) else {
            problems.push(format!(
                "step {}: rank {}'s shard {} is not here",
                dir.join(step).display(),
                shard.rank,
                shard.object.as_deref().unwrap_or(&shard.file)
            ));
            continue;
        };
        if let Err(why) = shard_matches(&file, shard) {
            problems.push(format!(
                "step {}: rank {}'s shard {} does not match the manifest: {why}",
                dir.join(step).display(),
                shard.rank,
                file.display()
            ));
            continue;
        }
        if let Err(e) = verify_checkpoint_with(&file, &check.limits) {
            problems.push(e.to_string());
            continue;
        }
        bytes_total += shard.bytes;
    }
    check.out.line(format_args!(
        "ok step {} ({} shards, {}, committed {} ms after its last shard)",
        printable(step),
        manifest.world_size,
        crate::plural::count(bytes_total, "byte", "bytes"),
        manifest.commit_latency_ms()
    ));
}

/// Where a shard is: its file beside the step (the step committed in the folder), else its object
/// under a folder above (a `file://` store or a bucket on disk).
fn locate_shard(dir: &Path, shard: &ShardRecord) -> Option<PathBuf> {
    let beside = dir.join(Path::new(&shard.file).file_name().unwrap_or_default());
    if shard.object.is_none() && beside.is_file() {
        return Some(beside);
    }
    let object = shard.object.as_deref()?;
    // The object name is relative to the store's prefix, some folder above.
    dir.ancestors()
        .map(|root| root.join(object))
        .find(|p| p.is_file())
}

fn shard_matches(file: &Path, shard: &ShardRecord) -> Result<(), String> {
    let size = std::fs::metadata(file).map_err(|e| e.to_string())?.len();
    if size != shard.bytes {
        return Err(format!("{size} bytes, the manifest says {}", shard.bytes));
    }
    let sum = cairn::sharded::Checksum::of_file(file).map_err(|e| e.to_string())?;
    if sum != shard.crc64nvme {
        return Err(format!(
            "CRC-64/NVME {sum}, the manifest says {}",
            shard.crc64nvme
        ));
    }
    Ok(())
}

/// True when a file starts like a checkpoint (zip, gzip, bz2, xz, zstd, lz4, tar) or has NULs.
fn looks_binary(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return true;
    };
    let magics: [&[u8]; 6] = [
        b"PK",
        b"\x1f\x8b",
        b"BZh",
        b"\xfd7zXZ",
        b"\x28\xb5\x2f\xfd",
        b"\x04\x22\x4d\x18",
    ];
    magics.iter().any(|m| bytes.starts_with(m)) || bytes.contains(&0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names() {
        for n in ["ep1-ba2-rank0.pt", "a.tar.gz", "a.pt.zst", "w.safetensors"] {
            assert!(is_checkpoint_name(n), "{n}");
        }
        for n in ["log.txt", ".ep1.pt.cairn-tmp-1", "a.pt.foo", "README"] {
            assert!(!is_checkpoint_name(n), "{n}");
        }
    }
}
