//! The on-disk cache of compiled components, which must never become an attack surface.
//!
//! A compiled artifact is native code that wasmtime loads with only light checks
//! (`Component::deserialize_file` is `unsafe` for that reason), so cairn loads only artifacts
//! it wrote itself: beside each artifact `<key>.cwasm` sits `<key>.tag`, a keyed BLAKE3 MAC
//! over the cache key and the artifact, made with a random key the host keeps in the cache
//! directory (created `0600`). An artifact whose tag is missing or wrong — damaged,
//! truncated, written by another tool or copied from another machine — is removed and the
//! component recompiled. The cache key is the BLAKE3 hash of the `.wasm` bytes, cairn's
//! version and the engine's compatibility hash, so a changed policy, a new cairn or different
//! engine settings never reuse an old artifact.
//!
//! Why this shape: a warm start must be cheap even for an 18 MB Python component with a
//! 40 MB artifact. The artifact is memory-mapped (for the check and by wasmtime), never
//! copied onto the heap, and BLAKE3 checks it several times faster than SHA-256 would.
//!
//! What the tag does not protect against: someone who can read the key file, i.e. the same
//! user. The directory is the user's own (`$CAIRN_CACHE_DIR`, else `$XDG_CACHE_HOME/cairn`,
//! else `~/.cache/cairn`).

use cairn_format::durable::{self, Replace};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use super::compile::CompileError;
use super::file::WasmFile;

/// Load an artifact compiled just now for `engine` (in this process or by its compile worker).
fn deserialize(engine: &Engine, artifact: &[u8]) -> Result<Component, CompileError> {
    // SAFETY: the artifact was produced just now by wasmtime for an engine of the same
    // settings, in this process or in the compile worker the embedding application named
    // (the same library); wasmtime still checks its header against this engine.
    unsafe { Component::deserialize(engine, artifact) }.map_err(|e| {
        CompileError::Other(format!(
            "the compiled artifact does not load: {}",
            crate::error::chain(&e)
        ))
    })
}

/// Tag file header: identifies a cairn tag of this layout.
const MAGIC: &[u8; 8] = b"CAIRNT2\0";
const TAG_LEN: usize = 32;

/// Where compiled components are kept, and the key that vouches for them.
#[derive(Clone, Debug)]
pub struct CompileCache {
    dir: Option<PathBuf>,
}

/// How a component was obtained, for logs and the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Compiled now (and stored, if the cache is writable).
    Compiled,
    /// Loaded from an artifact cairn wrote earlier.
    Cached,
    /// A cache entry was present but not vouched for: removed and recompiled.
    Recompiled,
}

impl CompileCache {
    /// The cache at the default place (see the module doc); `None` disables caching.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("CAIRN_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("cairn"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("cairn"))
    }

    /// A cache in `dir`, or no cache at all.
    pub fn new(dir: Option<PathBuf>) -> CompileCache {
        CompileCache { dir }
    }

    /// The directory, if caching is on.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The compiled form of `wasm` for `engine`: from the cache when cairn wrote a valid
    /// entry, else compiled by `compile` (which gives wasmtime's artifact: see `compile.rs`)
    /// and stored. Cache problems never fail the load; they are reported through `log` and the
    /// component is compiled. A cache hit compiles nothing and starts nothing.
    pub(crate) fn load(
        &self,
        engine: &Engine,
        wasm: &WasmFile,
        compile: &dyn Fn(Vec<u8>) -> Result<Vec<u8>, CompileError>,
        log: &dyn Fn(&str),
    ) -> Result<(Component, Origin), CompileError> {
        let read = |wasm: &WasmFile| {
            wasm.read()
                .map_err(|e| CompileError::Other(format!("cannot read it: {e}")))
        };
        let Some(dir) = &self.dir else {
            compiling(wasm, log, None);
            let artifact = compile(read(wasm)?)?;
            return Ok((deserialize(engine, &artifact)?, Origin::Compiled));
        };
        let secret = match self.secret(dir) {
            Ok(s) => s,
            Err(e) => {
                log(&format!(
                    "compile cache {} unusable ({e}); compiling",
                    dir.display()
                ));
                compiling(wasm, log, None);
                let artifact = compile(read(wasm)?)?;
                return Ok((deserialize(engine, &artifact)?, Origin::Compiled));
            }
        };
        let entry = Entry::new(dir, cache_key(engine, wasm.digest()));
        let mut origin = Origin::Compiled;
        if entry.artifact.exists() {
            match entry.vouched(&secret) {
                Ok(true) => {
                    // SAFETY: the artifact carries a tag made with the host's secret key over
                    // this cache key, so it is an artifact this host compiled for an engine
                    // with the same version and settings. Entries are replaced by rename,
                    // never rewritten in place, so the mapping cannot change under wasmtime.
                    match unsafe { Component::deserialize_file(engine, &entry.artifact) } {
                        Ok(c) => return Ok((c, Origin::Cached)),
                        Err(e) => log(&format!(
                            "compile cache entry {} rejected by wasmtime ({e}); recompiling",
                            entry.artifact.display()
                        )),
                    }
                }
                Ok(false) => log(&format!(
                    "compile cache entry {} was not written by this cairn (bad tag); recompiling",
                    entry.artifact.display()
                )),
                Err(e) => log(&format!(
                    "compile cache entry {} unreadable ({e}); recompiling",
                    entry.artifact.display()
                )),
            }
            entry.remove();
            origin = Origin::Recompiled;
        }
        // Key the entry by the bytes compiled, in case the file changed since it was hashed.
        compiling(wasm, log, Some(dir));
        let bytes = read(wasm)?;
        let entry = Entry::new(dir, cache_key(engine, blake3::hash(&bytes).as_bytes()));
        let artifact = compile(bytes)?;
        let component = deserialize(engine, &artifact)?;
        if let Err(e) = entry.store(&secret, &artifact) {
            log(&format!(
                "cannot write compile cache entry {} ({e})",
                entry.artifact.display()
            ));
        }
        Ok((component, origin))
    }

    /// The host's secret key, created on first use (32 random bytes, mode 0600).
    fn secret(&self, dir: &Path) -> std::io::Result<[u8; 32]> {
        fs::create_dir_all(dir)?;
        let path = dir.join("key");
        if let Ok(bytes) = fs::read(&path)
            && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
        {
            return Ok(key);
        }
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        // Two processes racing here both rename; the loser re-reads the winner's key.
        durable::write_durably_mode(&path, Replace::Allowed, Some(0o600), |f| f.write_all(&key))?;
        let bytes = fs::read(&path)?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| std::io::Error::other("key file has the wrong size"))
    }
}

/// Say what is about to take a while: compiling a large component (a Python one is ~18 MB) takes
/// seconds, once; a silent pause looks like a hang.
fn compiling(wasm: &WasmFile, log: &dyn Fn(&str), cache: Option<&Path>) {
    let mb = wasm.len() as f64 / 1e6;
    let later = match cache {
        Some(dir) => format!("kept in {} for later runs", dir.display()),
        None => "the compile cache is off".to_owned(),
    };
    log(&format!(
        "compiling {} ({mb:.1} MB) for this machine; {later}",
        wasm.name()
    ));
}

/// How much the cache holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheUsage {
    /// Compiled components.
    pub entries: u64,
    /// Bytes on disk, tags and key included.
    pub bytes: u64,
}

impl CompileCache {
    /// What the cache holds now (nothing when caching is off or the folder does not exist).
    pub fn usage(&self) -> std::io::Result<CacheUsage> {
        self.walk(|_| Ok(()))
    }

    /// Remove every compiled component and the key (a new key is made at the next compile);
    /// returns what was removed. Files cairn did not write are left alone.
    pub fn clear(&self) -> std::io::Result<CacheUsage> {
        let removed = self.walk(|path| fs::remove_file(path))?;
        if let Some(dir) = &self.dir {
            match fs::remove_file(dir.join("key")) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(removed)
    }

    /// Visit every file of the cache's own (`*.cwasm`, `*.tag`, `key`), counting them.
    fn walk(
        &self,
        mut visit: impl FnMut(&Path) -> std::io::Result<()>,
    ) -> std::io::Result<CacheUsage> {
        let mut usage = CacheUsage::default();
        let Some(dir) = &self.dir else {
            return Ok(usage);
        };
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(usage),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let ext = path.extension().and_then(|e| e.to_str());
            let ours = matches!(ext, Some("cwasm") | Some("tag")) || entry.file_name() == "key";
            if !ours || !entry.file_type()?.is_file() {
                continue;
            }
            usage.bytes += entry.metadata()?.len();
            if ext == Some("cwasm") {
                usage.entries += 1;
            }
            if entry.file_name() != "key" {
                visit(&path)?;
            }
        }
        Ok(usage)
    }
}

/// BLAKE3 of (wasm hash, cairn version, engine compatibility hash).
fn cache_key(engine: &Engine, wasm_digest: &[u8; 32]) -> [u8; 32] {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let mut d = blake3::Hasher::new();
    d.update(wasm_digest);
    d.update(env!("CARGO_PKG_VERSION").as_bytes());
    d.update(&h.finish().to_le_bytes());
    *d.finalize().as_bytes()
}

/// One cache entry: the artifact as wasmtime wrote it, and its tag beside it.
struct Entry {
    key: [u8; 32],
    artifact: PathBuf,
    tag: PathBuf,
}

impl Entry {
    fn new(dir: &Path, key: [u8; 32]) -> Entry {
        let stem = hex::encode(&key[..20]);
        Entry {
            key,
            artifact: dir.join(format!("{stem}.cwasm")),
            tag: dir.join(format!("{stem}.tag")),
        }
    }

    /// Does the tag file hold the tag `secret` makes for this key and artifact?
    fn vouched(&self, secret: &[u8; 32]) -> std::io::Result<bool> {
        let Ok(tag_file) = fs::read(&self.tag) else {
            return Ok(false);
        };
        let Some(tag) = tag_file
            .strip_prefix(MAGIC.as_slice())
            .and_then(|t| <[u8; TAG_LEN]>::try_from(t).ok())
        else {
            return Ok(false);
        };
        let file = fs::File::open(&self.artifact)?;
        // SAFETY: cache entries are only ever replaced by rename, never truncated or written
        // in place, so the mapping stays valid while it is read.
        let artifact = unsafe { memmap2::Mmap::map(&file)? };
        // `blake3::Hash` compares in constant time.
        Ok(mac(secret, &self.key, &artifact) == blake3::Hash::from_bytes(tag))
    }

    /// Write artifact then tag, each to a temporary file, synced and renamed into place: a
    /// reader sees either no entry, an artifact without a valid tag (recompiled), or both.
    fn store(&self, secret: &[u8; 32], artifact: &[u8]) -> std::io::Result<()> {
        let mut tag = MAGIC.to_vec();
        tag.extend_from_slice(mac(secret, &self.key, artifact).as_bytes());
        durable::write_durably(&self.artifact, Replace::Allowed, |f| f.write_all(artifact))?;
        durable::write_durably(&self.tag, Replace::Allowed, |f| f.write_all(&tag))
    }

    fn remove(&self) {
        let _ = fs::remove_file(&self.tag);
        let _ = fs::remove_file(&self.artifact);
    }
}

/// The keyed BLAKE3 MAC of (cache key, artifact).
fn mac(secret: &[u8; 32], key: &[u8; 32], artifact: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(key);
    h.update(artifact);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_bind_secret_key_and_artifact() {
        let dir = tempfile::tempdir().unwrap();
        let secret = [7u8; 32];
        let entry = Entry::new(dir.path(), [1u8; 32]);
        entry.store(&secret, b"artifact").unwrap();
        assert!(entry.vouched(&secret).unwrap());
        assert!(!entry.vouched(&[8u8; 32]).unwrap(), "another host's secret");
        let moved = Entry::new(dir.path(), [2u8; 32]);
        fs::copy(&entry.artifact, &moved.artifact).unwrap();
        fs::copy(&entry.tag, &moved.tag).unwrap();
        assert!(
            !moved.vouched(&secret).unwrap(),
            "an entry copied to another key"
        );
        fs::write(&entry.artifact, b"artifacT").unwrap();
        assert!(!entry.vouched(&secret).unwrap(), "a changed artifact");
        fs::write(&entry.tag, b"CAIRNT2\0short").unwrap();
        assert!(!entry.vouched(&secret).unwrap(), "a truncated tag");
        fs::remove_file(&entry.tag).unwrap();
        assert!(!entry.vouched(&secret).unwrap(), "no tag");
    }

    #[test]
    fn mac_is_keyed_blake3() {
        // blake3's own keyed mode over the concatenation: nothing cairn-made in the crypto.
        let mut whole = [1u8; 32].to_vec();
        whole.extend_from_slice(b"art");
        assert_eq!(
            mac(&[7u8; 32], &[1u8; 32], b"art"),
            blake3::keyed_hash(&[7u8; 32], &whole)
        );
    }
}
