//! The remote behaviour, written once and run against every kind of store cairn serves in tests:
//! `memory://`, `file://` (the embedded default) and a real S3 server (s3s-fs on loopback).
//! Uploads small and multipart land byte-exact, the `.symlink` pointer holds exactly the
//! bucket-relative key of the newest upload, `overwrite = false` refuses to replace objects, and
//! a process with nothing local resumes from the remote pointer.

use std::sync::Arc;
use std::time::Duration;

use cairn::remote::{RemoteStore, UploadJob, UploadOptions, Uploader, download_latest};
use cairn_testkit::s3::S3Server;
use cairn_testkit::{MIB, within, write_file};
use object_store::ObjectStoreExt;
use object_store::memory::InMemory;

/// One kind of store, able to open the same store again (as a new process would).
struct Backend {
    url: String,
    open: Box<dyn Fn(&str) -> RemoteStore + Send + Sync>,
    _keep: Option<Box<dyn Send + Sync>>,
}

impl Backend {
    fn memory() -> Backend {
        let inner = Arc::new(InMemory::new());
        Backend {
            url: "memory://".into(),
            open: Box::new(move |prefix| {
                RemoteStore::from_object_store(inner.clone(), "memory://", prefix).unwrap()
            }),
            _keep: None,
        }
    }

    fn file() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        Backend {
            url: format!("file://{}", root.display()),
            open: Box::new(move |prefix| {
                let dir = root.join(prefix);
                RemoteStore::from_url(&format!("file://{}", dir.display())).unwrap()
            }),
            _keep: Some(Box::new(dir)),
        }
    }

    fn s3() -> Option<Backend> {
        let server = Arc::new(S3Server::start()?);
        let keep = server.clone();
        Some(Backend {
            url: format!("s3://{}", cairn_testkit::s3::BUCKET),
            open: Box::new(move |prefix| server.store(prefix)),
            _keep: Some(Box::new(keep)),
        })
    }

    fn store(&self, prefix: &str) -> RemoteStore {
        (self.open)(prefix)
    }
}

/// The bytes of an object, read back through the store itself.
fn read(store: &RemoteStore, name: &str) -> Option<Vec<u8>> {
    let key = store.key(name).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let got = store.object_store().get(&key).await.ok()?;
        Some(got.bytes().await.unwrap().to_vec())
    })
}

fn options() -> UploadOptions {
    UploadOptions {
        timeout: Duration::from_secs(60),
        part_size_min: 8 * MIB,
        part_concurrency: 4,
        retry_backoff: Duration::from_millis(50),
        abort_timeout: Duration::from_secs(5),
        ..UploadOptions::default()
    }
}

fn job(path: &std::path::Path, name: &str, seq: u64) -> UploadJob {
    UploadJob {
        local_path: path.to_path_buf(),
        object_name: name.to_string(),
        latest_pointer: Some("run/latest-rank0.pt".to_string()),
        sequence: seq,
    }
}

fn uploads_land_byte_exact_with_an_exact_pointer(backend: Backend) {
    let store = backend.store("prefix/a");
    let dir = tempfile::tempdir().unwrap();
    let (small, small_data) = write_file(dir.path(), "ep0-ba1-rank0.pt", 1000, 1);
    let (large, large_data) = write_file(dir.path(), "ep1-ba2-rank0.pt", 20 * MIB + 3, 2);
    let uploader = Uploader::new(store.clone(), options()).unwrap();
    uploader
        .enqueue(job(&small, "run/ep0-ba1-rank0.pt", 0))
        .unwrap();
    let t2 = uploader
        .enqueue(job(&large, "run/ep1-ba2-rank0.pt", 1))
        .unwrap();
    assert_eq!(t2.bytes, 20 * MIB as u64 + 3);
    let report = uploader.finish();
    assert_eq!((report.uploaded, report.failed), (2, 0), "{report:?}");
    assert_eq!(report.bytes, 1000 + 20 * MIB as u64 + 3);
    assert_eq!(read(&store, "run/ep0-ba1-rank0.pt").unwrap(), small_data);
    assert_eq!(read(&store, "run/ep1-ba2-rank0.pt").unwrap(), large_data);
    // Exactly the key relative to the bucket (the store's root), no newline.
    let pointer = read(&store, "run/latest-rank0.pt.symlink").unwrap();
    let want = if backend.url.starts_with("file://") {
        "run/ep1-ba2-rank0.pt"
    } else {
        "prefix/a/run/ep1-ba2-rank0.pt"
    };
    assert_eq!(String::from_utf8(pointer).unwrap(), want, "{}", backend.url);
}

fn concurrent_uploads_land_and_the_pointer_names_the_newest(backend: Backend) {
    let store = backend.store("");
    let dir = tempfile::tempdir().unwrap();
    let opts = UploadOptions {
        num_concurrent_uploads: 3,
        ..options()
    };
    let uploader = Uploader::new(store.clone(), opts).unwrap();
    let mut files = Vec::new();
    for i in 0..6u64 {
        let name = format!("run/ep{i}.pt");
        let (path, data) = write_file(dir.path(), &format!("ep{i}.pt"), 9 * MIB + 1, i);
        uploader.enqueue(job(&path, &name, i)).unwrap();
        files.push((name, data));
    }
    let report = uploader.finish();
    assert_eq!((report.uploaded, report.failed), (6, 0), "{report:?}");
    for (name, data) in &files {
        assert_eq!(&read(&store, name).unwrap(), data, "{name}");
    }
    assert_eq!(
        read(&store, "run/latest-rank0.pt.symlink").unwrap(),
        b"run/ep5.pt"
    );
}

fn overwrite_false_refuses_to_replace_objects(backend: Backend) {
    let store = backend.store("p");
    let dir = tempfile::tempdir().unwrap();
    let (small, small_data) = write_file(dir.path(), "a/small.pt", 1000, 1);
    let (big, big_data) = write_file(dir.path(), "a/big.pt", 17 * MIB, 2);
    let first = Uploader::new(store.clone(), options()).unwrap();
    first.enqueue(job(&small, "small.pt", 0)).unwrap();
    first.enqueue(job(&big, "big.pt", 1)).unwrap();
    assert_eq!(first.finish().uploaded, 2);

    let (small2, _) = write_file(dir.path(), "b/small.pt", 1000, 3);
    let (big2, _) = write_file(dir.path(), "b/big.pt", 17 * MIB, 4);
    let second = Uploader::new(store.clone(), options()).unwrap();
    second.enqueue(job(&small2, "small.pt", 2)).unwrap();
    second.enqueue(job(&big2, "big.pt", 3)).unwrap();
    let report = second.finish();
    assert_eq!((report.uploaded, report.failed), (0, 2), "{report:?}");
    for f in &report.failures {
        assert!(
            f.message.contains("already exists") && f.message.contains("overwrite is false"),
            "{}",
            f.message
        );
    }
    assert_eq!(read(&store, "small.pt").unwrap(), small_data);
    assert_eq!(read(&store, "big.pt").unwrap(), big_data);
    let pointer = String::from_utf8(read(&store, "run/latest-rank0.pt.symlink").unwrap()).unwrap();
    assert!(
        pointer.ends_with("big.pt"),
        "a refused upload moved the pointer: {pointer}"
    );
}

fn resume_downloads_the_latest_after_the_local_folder_is_gone(backend: Backend) {
    let store = backend.store("jobs/7");
    let work = tempfile::tempdir().unwrap();
    let folder = work.path().join("checkpoints");
    assert_eq!(
        download_latest(&store, "run/latest-rank0.pt", &folder).unwrap(),
        None,
        "nothing to resume yet"
    );
    let (p1, _) = write_file(&folder, "ep1.pt", 3 * MIB, 1);
    let (p2, d2) = write_file(&folder, "ep2.pt", 12 * MIB + 5, 2);
    let opts = UploadOptions {
        num_concurrent_uploads: 2,
        ..options()
    };
    let uploader = Uploader::new(store, opts).unwrap();
    uploader.enqueue(job(&p1, "run/ep1.pt", 1)).unwrap();
    uploader.enqueue(job(&p2, "run/ep2.pt", 2)).unwrap();
    assert_eq!(uploader.finish().uploaded, 2);
    std::fs::remove_dir_all(&folder).unwrap();

    // A new process: the store opened afresh, nothing local.
    let store = backend.store("jobs/7");
    let got = download_latest(&store, "run/latest-rank0.pt", &folder)
        .unwrap()
        .expect("a checkpoint to resume from");
    assert_eq!(got, folder.join("ep2.pt"));
    assert_eq!(std::fs::read(&got).unwrap(), d2);
    let names: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["ep2.pt"], "no temporary files left");
}

/// Every conformance check, once per backend.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod memory {
            $(#[test]
            fn $check() {
                super::within(std::time::Duration::from_secs(120), || super::$check(super::Backend::memory()));
            })*
        }
        mod file {
            $(#[test]
            fn $check() {
                super::within(std::time::Duration::from_secs(120), || super::$check(super::Backend::file()));
            })*
        }
        mod s3 {
            $(#[test]
            fn $check() {
                let Some(backend) = super::Backend::s3() else { return };
                super::within(std::time::Duration::from_secs(120), move || super::$check(backend));
            })*
        }
    };
}

conformance!(
    uploads_land_byte_exact_with_an_exact_pointer,
    concurrent_uploads_land_and_the_pointer_names_the_newest,
    overwrite_false_refuses_to_replace_objects,
    resume_downloads_the_latest_after_the_local_folder_is_gone,
);
