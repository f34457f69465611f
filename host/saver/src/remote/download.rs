//! Resume from remote: read the `latest` pointer and download the checkpoint it names.
//!
//! The file is written under a temporary name in the destination directory, fsynced, renamed into
//! place and the directory fsynced, so a crash mid-download never leaves a truncated file under
//! the checkpoint's name for a later resume to trust. It is fetched in ranged GETs of
//! [`CHUNK`] bytes, so memory stays bounded for checkpoints of any size and each range is retried
//! by the store client on its own.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

use super::latest::SYMLINK_SUFFIX;
use super::store::{RemoteStore, StoreError};

/// Bytes per ranged GET.
pub const CHUNK: u64 = 16 * 1024 * 1024;

/// Why the remote checkpoint could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The pointer name is not a valid key.
    #[error(transparent)]
    Name(#[from] StoreError),
    /// Reading the pointer failed for a reason other than its absence.
    #[error(
        "cannot read the latest pointer '{pointer}' in '{url}': {}",
        super::error_chain(.source)
    )]
    Pointer {
        /// The pointer's key.
        pointer: String,
        /// The store's URL.
        url: String,
        /// The store's own error.
        source: object_store::Error,
    },
    /// The pointer's content is not a key.
    #[error(
        "the latest pointer '{pointer}' in '{url}' does not contain an object key: {content:?}"
    )]
    PointerContent {
        /// The pointer's key.
        pointer: String,
        /// The store's URL.
        url: String,
        /// What it contains (at most 200 bytes).
        content: String,
    },
    /// The pointer names an object that is not there.
    #[error("the latest pointer '{pointer}' in '{url}' names '{target}', which does not exist")]
    Missing {
        /// The pointer's key.
        pointer: String,
        /// The key it names.
        target: String,
        /// The store's URL.
        url: String,
    },
    /// Downloading the checkpoint failed.
    #[error("cannot download '{target}' from '{url}': {}", super::error_chain(.source))]
    Store {
        /// The checkpoint key.
        target: String,
        /// The store's URL.
        url: String,
        /// The store's own error.
        source: object_store::Error,
    },
    /// The object changed size while it was downloaded.
    #[error("'{target}' in '{url}' changed while it was downloaded (expected {expected} bytes)")]
    Changed {
        /// The checkpoint key.
        target: String,
        /// The store's URL.
        url: String,
        /// The size HEAD reported.
        expected: u64,
    },
    /// The local file could not be written.
    #[error("cannot write '{}': {source}", path.display())]
    Local {
        /// The local path.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// Read `<latest_name>.symlink` (the formatted `latest_remote_file_name`, without the suffix,
/// relative to the store URL's prefix), download the checkpoint it names into `dest_dir` under the
/// key's last segment, and return that path. `Ok(None)` when there is no pointer: nothing to resume.
///
/// Synchronous (it runs its own small runtime); call it from the CLI, not from async code.
pub fn download_latest(
    store: &RemoteStore,
    latest_name: &str,
    dest_dir: &Path,
) -> Result<Option<PathBuf>, DownloadError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| DownloadError::Local {
            path: dest_dir.to_path_buf(),
            source,
        })?;
    runtime.block_on(download_latest_async(store, latest_name, dest_dir))
}

/// [`download_latest`] for callers already on a tokio runtime.
pub async fn download_latest_async(
    store: &RemoteStore,
    latest_name: &str,
    dest_dir: &Path,
) -> Result<Option<PathBuf>, DownloadError> {
    let pointer = store.key(&format!("{latest_name}{SYMLINK_SUFFIX}"))?;
    let Some(target) = read_pointer(store, &pointer).await? else {
        return Ok(None);
    };
    download_object(store, &pointer, &target, dest_dir)
        .await
        .map(Some)
}

/// The key a pointer names, or `None` if the pointer does not exist.
pub async fn read_pointer(
    store: &RemoteStore,
    pointer: &ObjectPath,
) -> Result<Option<ObjectPath>, DownloadError> {
    let pointer_error = |source| DownloadError::Pointer {
        pointer: pointer.to_string(),
        url: store.url().to_string(),
        source,
    };
    let bytes = match store.object_store().get(pointer).await {
        Ok(result) => result.bytes().await.map_err(pointer_error)?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(pointer_error(e)),
    };
    let bad = || DownloadError::PointerContent {
        pointer: pointer.to_string(),
        url: store.url().to_string(),
        content: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
    };
    // cairn writes no newline; tolerate one from other writers (an editor, `echo`).
    let text = std::str::from_utf8(&bytes).map_err(|_| bad())?.trim();
    if text.is_empty() {
        return Err(bad());
    }
    ObjectPath::parse(text).map(Some).map_err(|_| bad())
}

pub(crate) async fn download_object(
    store: &RemoteStore,
    pointer: &ObjectPath,
    target: &ObjectPath,
    dest_dir: &Path,
) -> Result<PathBuf, DownloadError> {
    let os = store.object_store();
    let store_error = |source| DownloadError::Store {
        target: target.to_string(),
        url: store.url().to_string(),
        source,
    };
    let size = match os.head(target).await {
        Ok(meta) => meta.size,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(DownloadError::Missing {
                pointer: pointer.to_string(),
                target: target.to_string(),
                url: store.url().to_string(),
            });
        }
        Err(e) => return Err(store_error(e)),
    };
    let name = target.filename().unwrap_or("checkpoint");
    let dest = dest_dir.join(name);
    let temp = dest_dir.join(format!(".{name}.download-{}", std::process::id()));
    let local = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DownloadError::Local { path, source }
    };
    fs::create_dir_all(dest_dir).map_err(local(dest_dir))?;
    let result = async {
        let mut file = File::create(&temp).map_err(local(&temp))?;
        let mut offset = 0;
        while offset < size {
            let end = (offset + CHUNK).min(size);
            let bytes = os
                .get_range(target, offset..end)
                .await
                .map_err(store_error)?;
            if bytes.len() as u64 != end - offset {
                return Err(DownloadError::Changed {
                    target: target.to_string(),
                    url: store.url().to_string(),
                    expected: size,
                });
            }
            file.write_all(&bytes).map_err(local(&temp))?;
            offset = end;
        }
        file.sync_all().map_err(local(&temp))?;
        fs::rename(&temp, &dest).map_err(local(&dest))?;
        File::open(dest_dir)
            .and_then(|d| d.sync_all())
            .map_err(local(dest_dir))?;
        Ok(dest.clone())
    }
    .await;
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::PutPayload;

    fn put(store: &RemoteStore, key: &str, data: &[u8]) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(
            store
                .object_store()
                .put(&ObjectPath::from(key), PutPayload::from(data.to_vec())),
        )
        .unwrap();
    }

    #[test]
    fn no_pointer_means_nothing_to_resume() {
        let store = RemoteStore::from_url("memory://p").unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            download_latest(&store, "latest.pt", dir.path()).unwrap(),
            None
        );
    }

    #[test]
    fn pointer_to_missing_object_is_a_clear_error() {
        let store = RemoteStore::from_url("memory://p").unwrap();
        put(&store, "p/latest.pt.symlink", b"p/ep3.pt");
        let dir = tempfile::tempdir().unwrap();
        let err = download_latest(&store, "latest.pt", dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("names 'p/ep3.pt', which does not exist"),
            "{err}"
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no partial file"
        );
    }

    #[test]
    fn empty_pointer_is_a_clear_error() {
        let store = RemoteStore::from_url("memory://").unwrap();
        put(&store, "latest.pt.symlink", b"\n");
        let dir = tempfile::tempdir().unwrap();
        let err = download_latest(&store, "latest.pt", dir.path()).unwrap_err();
        assert!(matches!(err, DownloadError::PointerContent { .. }), "{err}");
    }

    #[test]
    fn downloads_what_the_pointer_names_in_chunks() {
        let store = RemoteStore::from_url("memory://runs").unwrap();
        let data: Vec<u8> = (0..(CHUNK as usize * 2 + 12345))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        put(&store, "runs/ck/ep2.pt", &data);
        put(&store, "runs/latest.pt.symlink", b"runs/ck/ep2.pt");
        let dir = tempfile::tempdir().unwrap();
        let path = download_latest(&store, "latest.pt", &dir.path().join("new"))
            .unwrap()
            .unwrap();
        assert_eq!(path, dir.path().join("new/ep2.pt"));
        assert_eq!(fs::read(&path).unwrap(), data);
        assert_eq!(fs::read_dir(dir.path().join("new")).unwrap().count(), 1);
    }
}
