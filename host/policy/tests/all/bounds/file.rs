//! Class 6: reading the component file. Only a regular file is read, and only up to
//! `max_component_mib`, checked with `fstat` before reading; anything else is named for what it
//! is, at once.

use super::*;
use cairn_policy::PolicyHost;
use std::time::Duration;

fn check(path: &std::path::Path) -> PolicyError {
    let path = path.to_owned();
    common::within(Duration::from_secs(30), move || {
        PolicyHost::default()
            .with_log(std::sync::Arc::new(|_: &str| {}))
            .check(&path)
            .expect_err("refused")
    })
}

#[test]
fn devices_fifos_directories_and_sockets_are_named_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.wasm");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let sub = dir.path().join("dir.wasm");
    std::fs::create_dir(&sub).unwrap();
    let sock = dir.path().join("sock.wasm");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let link = dir.path().join("zero.wasm");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    for (path, what) in [
        (std::path::PathBuf::from("/dev/zero"), "a character device"),
        ("/dev/urandom".into(), "a character device"),
        (link, "a character device"),
        (fifo, "a FIFO"),
        (sub, "a directory"),
        (sock, "a socket"),
    ] {
        let err = check(&path);
        assert_eq!(err.kind(), "not-a-file", "{}: {err}", path.display());
        let msg = err.to_string();
        assert!(
            msg.contains(what) && msg.contains(&*path.to_string_lossy()),
            "{msg}"
        );
    }
}

#[test]
fn a_file_over_the_size_limit_is_refused_before_it_is_read() {
    let Some(cost) = common::measure::isolated(
        "bounds::file::a_file_over_the_size_limit_is_refused_before_it_is_read",
        || {
            let dir = tempfile::tempdir().unwrap();
            // Sparse files: 2 GiB with a component header, 100 GiB, and 65 MiB (just over).
            for (name, size) in [
                ("m.wasm", 2u64 << 30),
                ("huge.wasm", 100 << 30),
                ("over.wasm", 65 << 20),
            ] {
                let path = dir.path().join(name);
                let f = std::fs::File::create(&path).unwrap();
                std::io::Write::write_all(&mut &f, b"\0asm\x0d\0\x01\0").unwrap();
                f.set_len(size).unwrap();
                let err = check(&path);
                assert_eq!(err.kind(), "file-too-large", "{err}");
                let msg = err.to_string();
                assert!(
                    msg.contains(&size.to_string())
                        && msg.contains("64 MiB")
                        && msg.contains("[sandbox] max_component_mib"),
                    "{msg}"
                );
            }
            // The limit is the job's to set.
            let path = dir.path().join("small.wasm");
            std::fs::write(&path, vec![0u8; 3 << 20]).unwrap();
            let (host, _) = common::host();
            let sandbox = SandboxConfig {
                max_component_mib: 2,
                ..SandboxConfig::default()
            };
            let err = host
                .save_policy(&PolicySpec::new(&path), &sandbox, &RunInfo::default())
                .err()
                .unwrap();
            assert_eq!(err.kind(), "file-too-large", "{err}");
        },
    ) else {
        return;
    };
    // Nothing was read: a 2 GiB file read whole was 2 GB of RSS.
    assert!(cost.max_rss < 150 * MIB, "{} bytes", cost.max_rss);
    assert!(cost.wall < Duration::from_secs(120), "{:?}", cost.wall);
}
