//! A real S3-compatible server for tests: the `s3s-fs` binary (`cargo install s3s-fs --version
//! 0.14.1 --features binary`), started on a free loopback port with a temporary data directory.
//!
//! s3s-fs stores bucket `b`, key `k` at `<root>/b/k`, and keeps unfinished multipart parts as
//! `<root>/.upload_id-<id>.part-<n>`, so tests can check both the bytes that landed and that no
//! aborted upload left parts behind.
//!
//! If the binary is absent the tests that need it fail, naming the command that installs it; a
//! developer without it may set `CAIRN_SKIP_S3=1` to skip them with a loud message instead.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cairn::remote::{RemoteStore, StoreOptions};
use object_store::{BackoffConfig, RetryConfig};

pub const ACCESS_KEY: &str = "cairn-test-access";
pub const SECRET_KEY: &str = "cairn-test-secret-key";
pub const BUCKET: &str = "ckpts";

/// A running s3s-fs process; killed on drop.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub addr: std::net::SocketAddr,
    root: tempfile::TempDir,
}

fn binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("S3S_FS") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("s3s-fs"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
        let p = home.join("bin/s3s-fs");
        p.is_file().then_some(p)
    })
}

impl S3Server {
    /// Start a server with bucket [`BUCKET`]. Panics when s3s-fs is not installed, unless
    /// `CAIRN_SKIP_S3=1`: then `None`, after a loud message.
    pub fn start() -> Option<Self> {
        let Some(bin) = binary() else {
            let msg = "s3s-fs not found: install it with `cargo install s3s-fs --version 0.14.1 --features binary` (or set S3S_FS=/path/to/s3s-fs)";
            if !std::env::var("CAIRN_SKIP_S3").is_ok_and(|v| v == "1") {
                panic!("{msg}; CAIRN_SKIP_S3=1 skips the tests that need it");
            }
            eprintln!("\n**********\nSKIPPED: {msg}\n**********\n");
            return None;
        };
        let root = tempfile::tempdir().expect("temp dir");
        // Creating the bucket is exactly what s3s-fs's CreateBucket does: a directory.
        std::fs::create_dir(root.path().join(BUCKET)).expect("bucket dir");
        let mut child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .env("RUST_LOG", "s3s_fs=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Keep draining stdout for the server's whole life so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && let Some(at) = line.find("server is running at http://") {
                    let addr = line[at + "server is running at http://".len()..].trim();
                    let _ = tx.send(addr.to_string());
                    sent = true;
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("s3s-fs did not report its address within 20 s");
            }
        };
        let addr: std::net::SocketAddr = addr.parse().expect("socket address");
        Some(Self {
            child,
            endpoint: format!("http://{addr}"),
            addr,
            root,
        })
    }

    /// The `AWS_*` variables a user would export to reach `endpoint` (this server, or a proxy
    /// in front of it).
    pub fn env(endpoint: &str) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Store options with short, test-sized retries and timeouts, reaching `endpoint`.
    pub fn options(endpoint: &str) -> StoreOptions {
        StoreOptions {
            retry: RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(20),
                    max_backoff: Duration::from_millis(200),
                    base: 2.0,
                },
                max_retries: 4,
                retry_timeout: Duration::from_secs(10),
            },
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            env: Some(Self::env(endpoint)),
        }
    }

    /// `s3://ckpts/<prefix>` through this server directly.
    pub fn store(&self, prefix: &str) -> RemoteStore {
        self.store_via(&self.endpoint, prefix)
    }

    /// `s3://ckpts/<prefix>` through `endpoint` (e.g. a fault proxy in front of this server).
    pub fn store_via(&self, endpoint: &str, prefix: &str) -> RemoteStore {
        let url = format!("s3://{BUCKET}/{prefix}");
        RemoteStore::from_url_with(&url, &Self::options(endpoint)).expect("s3 store")
    }

    /// Where the server keeps the object with bucket-relative `key`.
    pub fn object_file(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }

    /// Multipart parts of uploads that were neither completed nor aborted.
    pub fn leftover_parts(&self) -> Vec<String> {
        list_names(self.root.path())
            .into_iter()
            .filter(|n| n.starts_with(".upload_id-") && n.contains(".part-"))
            .collect()
    }

    /// The server's process id (for CPU accounting).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

fn list_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
