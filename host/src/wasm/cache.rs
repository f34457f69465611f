//! The on-disk cache of compiled components, which must never become an attack surface.
//!
//! A compiled artifact is native code that wasmtime loads with only light checks
//! (`Component::deserialize` is `unsafe` for that reason), so cairn loads only artifacts it
//! wrote itself: each file carries an HMAC-SHA256 tag computed with a random key that the
//! host keeps in the cache directory (created `0600`), over the cache key and the artifact.
//! A file with a wrong tag — damaged, truncated, written by another tool or copied from
//! another machine — is removed and the component recompiled. The cache key is the SHA-256 of
//! the `.wasm` bytes, cairn's version and the engine's compatibility hash, so a changed
//! policy, a new cairn or different engine settings never reuse an old artifact.
//!
//! What the tag does not protect against: someone who can read the key file, i.e. the same
//! user. The directory is the user's own (`$CAIRN_CACHE_DIR`, else `$XDG_CACHE_HOME/cairn`,
//! else `~/.cache/cairn`).

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// File header: identifies a cairn artifact of this layout.
const MAGIC: &[u8; 8] = b"CAIRNC1\0";
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
    /// entry, else compiled (and stored). Cache problems never fail the load; they are
    /// reported through `log` and the component is compiled.
    pub fn load(
        &self,
        engine: &Engine,
        wasm: &[u8],
        log: &dyn Fn(&str),
    ) -> wasmtime::Result<(Component, Origin)> {
        let Some(dir) = &self.dir else {
            return Ok((Component::new(engine, wasm)?, Origin::Compiled));
        };
        let key = cache_key(engine, wasm);
        let path = dir.join(format!("{}.cwasm", hex::encode(&key[..20])));
        let secret = match self.secret(dir) {
            Ok(s) => s,
            Err(e) => {
                log(&format!(
                    "compile cache {} unusable ({e}); compiling",
                    dir.display()
                ));
                return Ok((Component::new(engine, wasm)?, Origin::Compiled));
            }
        };
        let mut origin = Origin::Compiled;
        if let Ok(file) = fs::read(&path) {
            match verified_artifact(&file, &secret, &key) {
                Some(artifact) => {
                    // SAFETY: the artifact carries a tag made with the host's secret key over
                    // this cache key, so it is an artifact this host compiled for an engine
                    // with the same version and settings.
                    match unsafe { Component::deserialize(engine, artifact) } {
                        Ok(c) => return Ok((c, Origin::Cached)),
                        Err(e) => log(&format!(
                            "compile cache entry {} rejected by wasmtime ({e}); recompiling",
                            path.display()
                        )),
                    }
                }
                None => log(&format!(
                    "compile cache entry {} was not written by this cairn (bad tag); recompiling",
                    path.display()
                )),
            }
            let _ = fs::remove_file(&path);
            origin = Origin::Recompiled;
        }
        let artifact = engine.precompile_component(wasm)?;
        // SAFETY: produced just now by this engine.
        let component = unsafe { Component::deserialize(engine, &artifact)? };
        if let Err(e) = store(&path, &secret, &key, &artifact) {
            log(&format!(
                "cannot write compile cache entry {} ({e})",
                path.display()
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
        let tmp = dir.join(format!("key.{}.tmp", std::process::id()));
        {
            let mut opts = fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            f.write_all(&key)?;
            f.sync_all()?;
        }
        // Two processes racing here both rename; the loser re-reads the winner's key.
        fs::rename(&tmp, &path)?;
        let bytes = fs::read(&path)?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| std::io::Error::other("key file has the wrong size"))
    }
}

/// SHA-256 of (wasm hash, cairn version, engine compatibility hash).
fn cache_key(engine: &Engine, wasm: &[u8]) -> [u8; 32] {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let mut d = Sha256::new();
    d.update(Sha256::digest(wasm));
    d.update(env!("CARGO_PKG_VERSION").as_bytes());
    d.update(h.finish().to_le_bytes());
    d.finalize().into()
}

fn store(path: &Path, secret: &[u8; 32], key: &[u8; 32], artifact: &[u8]) -> std::io::Result<()> {
    let tag = hmac(secret, &[key, artifact]);
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&tag)?;
        f.write_all(artifact)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

/// The artifact inside `file` if its tag is the one `secret` makes for `key`.
fn verified_artifact<'a>(file: &'a [u8], secret: &[u8; 32], key: &[u8; 32]) -> Option<&'a [u8]> {
    let rest = file.strip_prefix(MAGIC.as_slice())?;
    if rest.len() < TAG_LEN {
        return None;
    }
    let (tag, artifact) = rest.split_at(TAG_LEN);
    let want = hmac(secret, &[key, artifact]);
    // Constant-time comparison.
    let diff = tag
        .iter()
        .zip(want.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    (diff == 0).then_some(artifact)
}

/// HMAC-SHA256 (RFC 2104) over the concatenation of `parts`.
fn hmac(secret: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, b) in secret.iter().enumerate() {
        ipad[i] ^= b;
        opad[i] ^= b;
    }
    let mut inner = Sha256::new();
    inner.update(ipad);
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(opad);
    outer.update(inner.finalize());
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_style_vector() {
        // Key of 32 0x0b bytes, message "Hi There" (checked against Python's hmac module).
        let tag = hmac(&[0x0b; 32], &[b"Hi ", b"There"]);
        assert_eq!(
            hex::encode(tag),
            "198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7"
        );
    }

    #[test]
    fn tags_bind_key_and_artifact() {
        let secret = [7u8; 32];
        let key = [1u8; 32];
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&hmac(&secret, &[&key, b"art"]));
        file.extend_from_slice(b"art");
        assert_eq!(verified_artifact(&file, &secret, &key), Some(&b"art"[..]));
        assert_eq!(verified_artifact(&file, &[8u8; 32], &key), None);
        assert_eq!(verified_artifact(&file, &secret, &[2u8; 32]), None);
        let last = file.len() - 1;
        file[last] ^= 1;
        assert_eq!(verified_artifact(&file, &secret, &key), None);
        assert_eq!(verified_artifact(b"CAIRNC1\0short", &secret, &key), None);
    }
}
