//! The local `latest` pointer: which checkpoint a resume should load.
//!
//! Composer replaces its `latest-rank0.pt` symlink by unlink-then-create, leaving a moment with
//! no pointer; cairn creates the new link under a temporary name and renames it over the old
//! one, so every observer sees either the old or the new target. The target is relative, as
//! Composer writes it. Where the filesystem refuses symlinks (network drives, Composer #2942),
//! the pointer is a small file holding the relative name instead, swapped the same way; readers
//! accept either.

use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use cairn_format::durable::{Replace, sync_dir, temp_path_for, write_durably};

/// Largest pointer file cairn will read as a pointer (a checkpoint is never this small).
const MAX_POINTER_FILE: u64 = 4096;

/// How the pointer was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointerKind {
    /// An OS symlink.
    Symlink,
    /// A file holding the relative name (where symlinks are refused).
    File,
}

/// Point `link` at `target`, atomically. Returns how the pointer was stored.
pub fn swap(link: &Path, target: &Path) -> io::Result<PointerKind> {
    let dir = link
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let relative = relative_to(target, dir);
    let temp = temp_path_for(link);
    match symlink(&relative, &temp) {
        Ok(()) => {
            if let Err(e) = rename_link(&temp, link) {
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
            sync_dir(dir)?;
            Ok(PointerKind::Symlink)
        }
        Err(e) if symlinks_refused(&e) => {
            let _ = fs::remove_file(&temp);
            let name = relative.to_string_lossy().into_owned();
            write_durably(link, Replace::Allowed, |f| f.write_all(name.as_bytes()))?;
            Ok(PointerKind::File)
        }
        Err(e) => Err(e),
    }
}

/// The swap itself: the new link renamed over the old one (a failpoint sits just before it).
fn rename_link(temp: &Path, link: &Path) -> io::Result<()> {
    cairn_format::failpoint!("latest::before-rename");
    fs::rename(temp, link)
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(_target: &Path, _link: &Path) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Errors that mean "this filesystem does not do symlinks" (524 is Linux's ENOTSUPP, which
/// CIFS returns).
fn symlinks_refused(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Unsupported
        || matches!(
            e.raw_os_error(),
            Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS | 524)
        )
}

/// Where `link` points, if it is a pointer: a symlink (one level, relative to its folder), or
/// a small file holding a relative name. `None` when there is no pointer.
pub fn resolve(link: &Path) -> io::Result<Option<PathBuf>> {
    let dir = link.parent().unwrap_or(Path::new("."));
    let meta = match fs::symlink_metadata(link) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if meta.file_type().is_symlink() {
        return Ok(Some(dir.join(fs::read_link(link)?)));
    }
    if meta.is_file() && meta.len() <= MAX_POINTER_FILE {
        let bytes = fs::read(link)?;
        if let Ok(name) = std::str::from_utf8(&bytes)
            && is_relative_name(name)
        {
            return Ok(Some(dir.join(name)));
        }
    }
    Ok(None)
}

/// A pointer file's content must be a plain relative path: nothing that could escape upward
/// beyond what Composer's own relative targets do, no control characters.
fn is_relative_name(name: &str) -> bool {
    !name.is_empty()
        && !name.chars().any(char::is_control)
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::ParentDir))
}

/// `target` relative to `dir` (Composer's `os.path.relpath`), for paths that share a prefix.
pub fn relative_to(target: &Path, dir: &Path) -> PathBuf {
    let (target, dir) = (normalize(target), normalize(dir));
    let t: Vec<Component> = target.components().collect();
    let d: Vec<Component> = dir.components().collect();
    let common = t.iter().zip(&d).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..d.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out
}

fn normalize(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|c| c.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_a_relative_symlink_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("latest-rank0.pt");
        fs::write(dir.path().join("ep1.pt"), b"1").unwrap();
        fs::write(dir.path().join("ep2.pt"), b"2").unwrap();
        assert_eq!(
            swap(&link, &dir.path().join("ep1.pt")).unwrap(),
            PointerKind::Symlink
        );
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("ep1.pt"));
        swap(&link, &dir.path().join("ep2.pt")).unwrap();
        assert_eq!(fs::read(&link).unwrap(), b"2");
        assert_eq!(resolve(&link).unwrap().unwrap(), dir.path().join("ep2.pt"));
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            3,
            "no temporary link left"
        );
    }

    #[test]
    fn links_in_subfolders_point_up() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("sub/latest.pt");
        fs::write(dir.path().join("ep1.pt"), b"1").unwrap();
        swap(&link, &dir.path().join("ep1.pt")).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("../ep1.pt"));
        assert_eq!(fs::read(&link).unwrap(), b"1");
    }

    #[test]
    fn pointer_files_are_read_like_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("latest.pt");
        fs::write(&link, "ep3.pt").unwrap();
        assert_eq!(resolve(&link).unwrap().unwrap(), dir.path().join("ep3.pt"));
        fs::write(&link, "PK\x03\x04 not a pointer").unwrap();
        assert_eq!(resolve(&link).unwrap(), None);
        fs::write(&link, "/etc/passwd").unwrap();
        assert_eq!(resolve(&link).unwrap(), None);
        assert_eq!(resolve(&dir.path().join("none")).unwrap(), None);
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_to(Path::new("/a/b/c.pt"), Path::new("/a/b")),
            Path::new("c.pt")
        );
        assert_eq!(
            relative_to(Path::new("/a/c.pt"), Path::new("/a/b")),
            Path::new("../c.pt")
        );
        assert_eq!(
            relative_to(Path::new("/a/b/./x/c.pt"), Path::new("/a/b/")),
            Path::new("x/c.pt")
        );
    }
}
