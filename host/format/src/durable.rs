//! Durable, atomic file creation: the first half of "one save, in order" (reference §3 and
//! checkpoint-io §2.2).
//!
//! A checkpoint is written under a temporary name in its own folder, fsync'd, renamed into place
//! (refusing to replace an existing file unless told to), and the folder is fsync'd, so that a
//! crash at any moment leaves either the complete new file or nothing under the checkpoint's
//! name. Temporary names start with [`TEMP_PREFIX`] so leftovers of a crash can be recognised
//! and removed at the next start.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of every temporary file cairn creates in a checkpoint folder.
pub const TEMP_PREFIX: &str = ".cairn-tmp.";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary path next to `target` (same folder, so the rename never crosses a
/// filesystem).
pub fn temp_path_for(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = target.parent().unwrap_or(Path::new("."));
    dir.join(format!("{TEMP_PREFIX}{}.{n}.{name}", std::process::id()))
}

/// Whether an existing file under the final name may be replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    /// Fail with `AlreadyExists` if the name is taken.
    Never,
    /// Replace it atomically.
    Allowed,
}

/// Create `target` durably with the bytes `write` puts into the open file. On any error the
/// temporary file is removed and `target` is untouched. Returns what `write` returned.
pub fn write_durably<T>(
    target: &Path,
    replace: Replace,
    write: impl FnOnce(&mut File) -> io::Result<T>,
) -> io::Result<T> {
    write_durably_mode(target, replace, None, write)
}

/// [`write_durably`] creating the file with Unix permission bits `mode` (e.g. `0o600` for a
/// secret), set from the start rather than after the bytes are in.
pub fn write_durably_mode<T>(
    target: &Path,
    replace: Replace,
    mode: Option<u32>,
    write: impl FnOnce(&mut File) -> io::Result<T>,
) -> io::Result<T> {
    let dir = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let temp = temp_path_for(target);
    let result = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        if let Some(mode) = mode {
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let mut file = options.open(&temp)?;
        let value = write(&mut file)?;
        crate::failpoint!("durable::after-write");
        file.sync_all()?;
        drop(file);
        crate::failpoint!("durable::after-fsync");
        rename(&temp, target, replace)?;
        crate::failpoint!("durable::after-rename");
        sync_dir(dir)?;
        Ok(value)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// [`write_durably`] for a writer with its own error type: the outer error is the durable
/// machinery's (creating, syncing, renaming; `AlreadyExists` for a taken name), the inner one the
/// writer's. Either way the temporary file is removed and `target` is untouched.
pub fn try_write_durably<T, E>(
    target: &Path,
    replace: Replace,
    write: impl FnOnce(&mut File) -> Result<T, E>,
) -> io::Result<Result<T, E>> {
    let mut failed = None;
    let result = write_durably(target, replace, |file| match write(file) {
        Ok(value) => Ok(value),
        Err(e) => {
            failed = Some(e);
            Err(io::Error::other("the writer failed"))
        }
    });
    match (result, failed) {
        (_, Some(e)) => Ok(Err(e)),
        (Ok(value), None) => Ok(Ok(value)),
        (Err(e), None) => Err(e),
    }
}

/// Rename `from` to `to`; with [`Replace::Never`] an existing `to` is an `AlreadyExists` error
/// and is left as it was (`renameat2(RENAME_NOREPLACE)`, or a hard link where that is missing).
pub fn rename(from: &Path, to: &Path, replace: Replace) -> io::Result<()> {
    match replace {
        Replace::Allowed => fs::rename(from, to),
        Replace::Never => rename_noreplace(from, to),
    }
}

#[cfg(target_os = "linux")]
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // Filesystems without RENAME_NOREPLACE: link() also refuses an existing name.
        Some(libc::EINVAL) | Some(libc::ENOSYS) => link_then_unlink(from, to),
        _ => Err(err),
    }
}

#[cfg(not(target_os = "linux"))]
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    link_then_unlink(from, to)
}

fn link_then_unlink(from: &Path, to: &Path) -> io::Result<()> {
    fs::hard_link(from, to)?;
    fs::remove_file(from)
}

/// fsync a directory, so the names created or removed in it survive a power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Remove the temporary files a crashed cairn left in `dir`. Returns what was removed.
pub fn remove_leftovers(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
            removed.push(path);
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn writes_atomically_and_refuses_to_replace() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub/ck.pt");
        let n = write_durably(&target, Replace::Never, |f| f.write_all(b"one").map(|_| 3)).unwrap();
        assert_eq!(n, 3);
        assert_eq!(fs::read(&target).unwrap(), b"one");
        let err = write_durably(&target, Replace::Never, |f| f.write_all(b"two")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&target).unwrap(), b"one");
        write_durably(&target, Replace::Allowed, |f| f.write_all(b"two")).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        assert_eq!(
            fs::read_dir(target.parent().unwrap()).unwrap().count(),
            1,
            "no temp left"
        );
    }

    #[test]
    fn a_failing_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("ck.pt");
        let err = write_durably(&target, Replace::Never, |f| {
            f.write_all(b"partial")?;
            Err::<(), _>(io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn leftovers_are_recognised_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(temp_path_for(&dir.path().join("ck.pt")), b"x").unwrap();
        fs::write(dir.path().join("ck.pt"), b"keep").unwrap();
        let removed = remove_leftovers(dir.path()).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(
            remove_leftovers(&dir.path().join("missing"))
                .unwrap()
                .is_empty()
        );
    }
}
