//! Keeping a local checkpoint alive while it is uploaded.
//!
//! Composer copies every checkpoint into a staging directory before uploading it, so that local
//! rotation may delete the original at once; that costs a full copy on the training thread and
//! doubles disk use. cairn pins the file instead with an **open file handle**, taken synchronously
//! when the upload is enqueued:
//!
//! * On Unix an open file's data outlives its name: if rotation (or the user) unlinks the path, the
//!   upload still reads the original bytes, and the space is freed when the upload closes it.
//! * The saver publishes checkpoints by writing a temporary file and renaming it over the final
//!   name, so a newer checkpoint written to the same path gets a new inode and never changes the
//!   bytes being uploaded. (A writer that truncates and rewrites a file *in place* would; cairn's
//!   saver never does that.)
//! * Opening is O(1) — no copy, no extra disk, no staging directory to clean up after a crash,
//!   and no requirement that the filesystem supports hard links.
//!
//! The handle is shared (`Arc`) so parallel multipart parts read it with positional reads
//! (`pread`), which need no seek and no lock.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

/// An open, read-only handle on a local checkpoint, and its size when it was pinned.
#[derive(Debug, Clone)]
pub struct PinnedFile {
    file: Arc<File>,
    path: PathBuf,
    len: u64,
}

impl PinnedFile {
    /// Open `path` for reading and record its size. Fails if the file is missing or not a
    /// regular file.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is not a regular file",
            ));
        }
        Ok(Self {
            file: Arc::new(file),
            path: path.to_path_buf(),
            len: meta.len(),
        })
    }

    /// The path the file had when it was pinned (it may since have been unlinked).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size in bytes at pin time; this many bytes are uploaded.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Read `len` bytes at `offset`. Blocking: call it from `spawn_blocking`. A file that shrank
    /// since it was pinned is an error rather than a short upload.
    pub fn read_range(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_file_survives_unlink_and_replacement() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ckpt.pt");
        std::fs::write(&path, b"old checkpoint").unwrap();
        let pin = PinnedFile::open(&path).unwrap();
        // Rotation deletes it, then a new checkpoint is published under the same name.
        std::fs::remove_file(&path).unwrap();
        let tmp_new = tmp.path().join("ckpt.pt.tmp");
        std::fs::write(&tmp_new, b"NEW CHECKPOINT!!").unwrap();
        std::fs::rename(&tmp_new, &path).unwrap();
        assert_eq!(pin.len(), 14);
        assert_eq!(&pin.read_range(0, 14).unwrap()[..], b"old checkpoint");
        assert_eq!(&pin.read_range(4, 5).unwrap()[..], b"check");
        assert!(
            pin.read_range(10, 5).is_err(),
            "reading past the end must fail"
        );
    }

    #[test]
    fn directories_cannot_be_pinned() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(PinnedFile::open(tmp.path()).is_err());
        assert!(PinnedFile::open(&tmp.path().join("missing")).is_err());
    }
}
