//! The local folder a `folder` given as a URL stages checkpoints in before they are uploaded.
//!
//! Composer makes a fresh `mkdtemp()` per saver and never removes it, so every checkpoint of every
//! run stays behind in the temporary folder. cairn names its staging folders
//! `cairn-staging-<pid>-<nanos>`, removes its own when the saver closes, and at start removes those
//! of processes that are gone (a crash, a kill) — never one whose process still runs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const PREFIX: &str = "cairn-staging-";

/// A staging folder this process owns.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
}

impl Staging {
    /// Create a fresh staging folder under `parent` (the system's temporary folder), after
    /// removing the stale ones there. Returns it and the stale folders removed.
    pub fn create(parent: &Path) -> io::Result<(Staging, Vec<PathBuf>)> {
        let removed = remove_stale(parent)?;
        let dir = Staging::path_in(parent);
        fs::create_dir_all(&dir)?;
        Ok((Staging { dir }, removed))
    }

    /// The name a staging folder of this process would have, without creating it.
    pub fn path_in(parent: &Path) -> PathBuf {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        parent.join(format!("{PREFIX}{}-{stamp}", std::process::id()))
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Remove the folder and everything in it.
    pub fn remove(self) -> io::Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Remove the staging folders under `parent` whose process is gone.
pub fn remove_stale(parent: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(parent) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if pid as u32 != std::process::id() && !alive(pid) && entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// Whether a process with this id exists (`kill(pid, 0)`; `EPERM` means it exists but is not
/// ours). A reused id keeps a stale folder until a later start, never the other way round.
fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return true;
    }
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_folders_of_dead_processes_go_and_live_ones_stay() {
        let tmp = tempfile::tempdir().unwrap();
        // A process that has exited: its id is free (until reused, which would keep the folder).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = tmp.path().join(format!("{PREFIX}{dead}-1"));
        let live = tmp.path().join(format!("{PREFIX}1-1"));
        let other = tmp.path().join("cairn-staging-notapid");
        for d in [&stale, &live, &other] {
            fs::create_dir_all(d.join("sub")).unwrap();
        }
        let (staging, removed) = Staging::create(tmp.path()).unwrap();
        assert_eq!(removed, vec![stale.clone()]);
        assert!(!stale.exists() && live.exists() && other.exists());
        fs::write(staging.dir().join("ep1.pt"), b"x").unwrap();
        let dir = staging.dir().to_owned();
        staging.remove().unwrap();
        assert!(!dir.exists());
    }
}
