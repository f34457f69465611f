//! Issue 6: the compile cache is not an attack surface. Only artifacts cairn wrote (tagged
//! with the host's key) are loaded; a damaged or foreign entry is recompiled, never loaded.

use cairn_testkit as common;

use std::fs;

use cairn_policy::{CompileCache, Origin, PolicyHost, SandboxConfig, World};

fn entries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect()
}

#[test]
fn only_artifacts_cairn_wrote_are_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = common::rust_policy("every_n");
    let load = || {
        let host = PolicyHost::new(CompileCache::new(Some(dir.path().to_owned())))
            .with_log(std::sync::Arc::new(|_: &str| {}));
        host.load(&wasm, World::SaveInterval, &SandboxConfig::default())
            .unwrap()
            .origin
    };
    assert_eq!(load(), Origin::Compiled);
    assert_eq!(load(), Origin::Cached);
    let [entry] = entries(dir.path()).try_into().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is private");
    }

    // A flipped bit anywhere: recompiled, and the good entry rewritten.
    let mut bytes = fs::read(&entry).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&entry, &bytes).unwrap();
    assert_eq!(load(), Origin::Recompiled);
    assert_eq!(load(), Origin::Cached);

    // A foreign artifact (a real wasmtime artifact for the same engine, but not tagged by
    // this host's key): without a tag, or with a forged one, it is recompiled, never loaded.
    let tag = entry.with_extension("tag");
    fs::remove_file(&tag).unwrap();
    assert_eq!(load(), Origin::Recompiled);
    let mut forged = b"CAIRNT2\0".to_vec();
    forged.extend_from_slice(&[0u8; 32]);
    fs::write(&tag, &forged).unwrap();
    assert_eq!(load(), Origin::Recompiled);
    assert_eq!(load(), Origin::Cached);

    // Another key (another host, another user): the entry is not trusted.
    fs::write(dir.path().join("key"), [9u8; 32]).unwrap();
    assert_eq!(load(), Origin::Recompiled);
    assert_eq!(load(), Origin::Cached);

    // Garbage in place of the entry.
    fs::write(&entry, b"not an artifact").unwrap();
    assert_eq!(load(), Origin::Recompiled);
}
