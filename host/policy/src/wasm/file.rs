//! The policy file as cairn first meets it: read once, streaming, to hash it and sniff its first
//! bytes, so a warm start (the compile cache has it) never holds the whole file.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::error::PolicyError;

/// A policy file: its BLAKE3 digest and first bytes, taken in one streaming pass (18 MB for a
/// Python component).
pub struct WasmFile {
    path: PathBuf,
    digest: [u8; 32],
    head: Vec<u8>,
    len: u64,
}

impl WasmFile {
    /// Hash the file at `path`.
    pub fn open(path: &Path) -> Result<WasmFile, PolicyError> {
        let fail = |e: std::io::Error| PolicyError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let file = std::fs::File::open(path).map_err(fail)?;
        let mut hasher = blake3::Hasher::new();
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let mut head = Vec::with_capacity(8);
        let mut len = 0u64;
        loop {
            let chunk = reader.fill_buf().map_err(fail)?;
            if chunk.is_empty() {
                break;
            }
            let want = 8usize.saturating_sub(head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..want]);
            hasher.update(chunk);
            let n = chunk.len();
            len += n as u64;
            reader.consume(n);
        }
        Ok(WasmFile {
            path: path.to_owned(),
            digest: *hasher.finalize().as_bytes(),
            head,
            len,
        })
    }

    /// The BLAKE3 hash of the bytes read by [`WasmFile::open`].
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The whole file, for compiling.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        std::fs::read(&self.path)
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

/// The BLAKE3 digest (hex) and size of the component file at `path`, as cairn reads it to load it:
/// what a platform file's `digests` and `max_component_mib` are checked against.
pub fn identify(path: &Path) -> Result<(String, u64), PolicyError> {
    let file = WasmFile::open(path)?;
    Ok((hex::encode(file.digest()), file.len()))
}
