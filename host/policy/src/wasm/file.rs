//! The policy file as cairn first meets it: read once, streaming, to hash it and sniff its first
//! bytes, so a warm start (the compile cache has it) never holds the whole file.
//!
//! A path names whatever a tenant's config says, so opening it must not be an attack either: it
//! is opened non-blocking (a FIFO without a writer would block `open` forever), then only a
//! regular file is accepted (`/dev/zero` reads forever, a directory not at all), and only up to a
//! size read from `fstat` before anything is read. The open file is kept, so the bytes compiled
//! later are the same file's, not whatever the path names by then.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::error::PolicyError;

/// A policy file: its BLAKE3 digest and first bytes, taken in one streaming pass (18 MB for a
/// Python component).
pub struct WasmFile {
    path: PathBuf,
    file: std::fs::File,
    digest: [u8; 32],
    head: Vec<u8>,
    len: u64,
}

impl WasmFile {
    /// Open and hash the file at `path`, if it is a regular file of at most `max_bytes`.
    pub fn open(path: &Path, max_bytes: u64) -> Result<WasmFile, PolicyError> {
        let fail = |e: std::io::Error| PolicyError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
        let file = match options.open(path) {
            Ok(f) => f,
            // A socket cannot be opened at all: say what it is rather than "no such device".
            Err(e) => {
                return Err(match std::fs::metadata(path) {
                    Ok(m) if !m.is_file() => not_a_file(path, &m),
                    _ => fail(e),
                });
            }
        };
        let meta = file.metadata().map_err(fail)?;
        if !meta.is_file() {
            return Err(not_a_file(path, &meta));
        }
        let len = meta.len();
        if len > max_bytes {
            return Err(PolicyError::FileTooLarge {
                path: path.to_owned(),
                size: len,
                limit: max_bytes,
            });
        }
        let mut hasher = blake3::Hasher::new();
        let mut reader =
            std::io::BufReader::with_capacity(1 << 20, std::io::Read::take(&file, len));
        let mut head = Vec::with_capacity(8);
        loop {
            let chunk = reader.fill_buf().map_err(fail)?;
            if chunk.is_empty() {
                break;
            }
            let want = 8usize.saturating_sub(head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..want]);
            hasher.update(chunk);
            let n = chunk.len();
            reader.consume(n);
        }
        drop(reader);
        Ok(WasmFile {
            path: path.to_owned(),
            file,
            digest: *hasher.finalize().as_bytes(),
            head,
            len,
        })
    }

    /// The BLAKE3 hash of the bytes read by [`WasmFile::open`].
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The whole file (the size `open` found, from the file it opened), for compiling.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; usize::try_from(self.len).map_err(std::io::Error::other)?];
        read_at(&self.file, &mut bytes)?;
        Ok(bytes)
    }

    /// Its first bytes (up to 8), to tell a component from a core module.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Its file name, for messages.
    pub fn name(&self) -> String {
        self.path.file_name().map_or_else(
            || self.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    /// Its size in bytes, as hashed.
    pub fn len(&self) -> u64 {
        self.len
    }
}

/// The BLAKE3 digest (hex) and size of the component file at `path`, as cairn reads it to load it
/// (a regular file of at most `max_bytes`): what a platform file's `digests` and
/// `max_component_mib` are checked against.
pub fn identify(path: &Path, max_bytes: u64) -> Result<(String, u64), PolicyError> {
    let file = WasmFile::open(path, max_bytes)?;
    Ok((hex::encode(file.digest()), file.len()))
}

#[cfg(unix)]
fn read_at(file: &std::fs::File, buf: &mut [u8]) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, 0)
}

#[cfg(not(unix))]
fn read_at(mut file: &std::fs::File, buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::{Read, Seek};
    file.seek(std::io::SeekFrom::Start(0))?;
    file.read_exact(buf)
}

/// The error for a path that names something other than a regular file.
fn not_a_file(path: &Path, meta: &std::fs::Metadata) -> PolicyError {
    let t = meta.file_type();
    #[cfg(unix)]
    let special = {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            Some("a FIFO (named pipe)")
        } else if t.is_char_device() {
            Some("a character device")
        } else if t.is_block_device() {
            Some("a block device")
        } else if t.is_socket() {
            Some("a socket")
        } else {
            None
        }
    };
    #[cfg(not(unix))]
    let special = None;
    PolicyError::NotAFile {
        path: path.to_owned(),
        what: if t.is_dir() {
            "a directory"
        } else {
            special.unwrap_or("not a regular file")
        },
    }
}
