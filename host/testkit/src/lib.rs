//! Shared helpers for the end-to-end tests: a real S3 server ([`s3`]), a fault-injecting proxy in
//! front of it ([`fault_proxy`]), the policy components built from source ([`policies`]), and a
//! watchdog so no network test can hang the suite.

#![allow(dead_code)]

pub mod fault_proxy;
pub mod measure;
pub mod policies;
pub mod s3;
pub mod wat;

#[allow(unused_imports)]
pub use policies::*;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// What a `cairn ... --json` command printed, after checking it succeeded (its stderr is the
/// failure message otherwise).
pub fn success_json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the command printed JSON")
}

/// Run `body` on its own thread and fail the test if it takes longer than `limit`. Panics inside
/// `body` are re-raised with their message.
pub fn within<T: Send + 'static>(limit: Duration, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let out = body();
        let _ = tx.send(());
        out
    });
    match rx.recv_timeout(limit) {
        Ok(()) => handle.join().expect("test body"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Ok(out) => out,
            Err(panic) => std::panic::resume_unwind(panic),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("test did not finish within {limit:?} (a network wait is unbounded)")
        }
    }
}

/// A file of `len` deterministic, incompressible-looking bytes.
pub fn write_file(dir: &Path, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        data.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    data.truncate(len);
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

pub const MIB: usize = 1024 * 1024;
