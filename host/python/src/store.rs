//! `ObjectStore`: cairn's store, for the reads Composer's `Trainer` makes during autoresume.
//!
//! The Trainer fetches the remote `latest` through the saver's `remote_uploader.remote_backend`
//! (composer/trainer/trainer.py, `_try_checkpoint_download`), which must be a Composer
//! `ObjectStore`; the Python layer wraps this class in one. `get_file` asks for the object's size,
//! gets `FileNotFoundError`, retries `<name>.symlink`, downloads and reads it, and downloads the
//! checkpoint it names (composer/utils/file_helpers.py, `get_file`).

use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;

use cairn::remote::RemoteStore;
use futures::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload};
use pyo3::exceptions::{PyFileExistsError, PyFileNotFoundError, PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::failure::{Failure, detached};

/// See `_native.pyi`.
#[pyclass(frozen, module = "cairn._native")]
pub struct ObjectStore {
    store: RemoteStore,
    runtime: tokio::runtime::Runtime,
}

impl ObjectStore {
    fn key(&self, name: &str) -> Result<Key, Failure> {
        self.store
            .key(name)
            .map_err(|e| Failure::Py(PyValueError::new_err(e.to_string())))
    }

    fn store_error(&self, name: &str, e: object_store::Error) -> Failure {
        let message = format!(
            "'{name}' in '{}': {}",
            self.store.url(),
            cairn::remote::error_chain(&e)
        );
        Failure::Py(match e {
            object_store::Error::NotFound { .. } => PyFileNotFoundError::new_err(message),
            _ => PyOSError::new_err(message),
        })
    }
}

#[pymethods]
impl ObjectStore {
    #[new]
    fn new(url: &str) -> PyResult<ObjectStore> {
        let store = RemoteStore::from_url(url).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PyOSError::new_err(format!("cannot start the store's runtime: {e}")))?;
        Ok(ObjectStore { store, runtime })
    }

    /// The object's URI (`s3://bucket/name`).
    fn get_uri(&self, object_name: &str) -> String {
        format!(
            "{}/{}",
            self.store.url().trim_end_matches('/'),
            object_name.trim_start_matches('/')
        )
    }

    /// The object's size; `FileNotFoundError` when it is absent.
    fn get_object_size(&self, py: Python<'_>, object_name: &str) -> PyResult<u64> {
        detached(py, || {
            let key = self.key(object_name)?;
            let head = self.runtime.block_on(self.store.object_store().head(&key));
            Ok(head.map_err(|e| self.store_error(object_name, e))?.size)
        })
    }

    /// Download to `filename` (written under a temporary name, then renamed); `FileExistsError`
    /// when it exists and `overwrite` is false, `FileNotFoundError` when the object is absent.
    #[pyo3(signature = (object_name, filename, overwrite = false))]
    fn download_object(
        &self,
        py: Python<'_>,
        object_name: &str,
        filename: PathBuf,
        overwrite: bool,
    ) -> PyResult<()> {
        if filename.exists() && !overwrite {
            return Err(PyFileExistsError::new_err(format!(
                "{} already exists and overwrite is false",
                filename.display()
            )));
        }
        detached(py, || {
            let key = self.key(object_name)?;
            let local = |e: std::io::Error| {
                Failure::Py(PyOSError::new_err(format!("{}: {e}", filename.display())))
            };
            let temp = cairn::format::durable::temp_path_for(&filename);
            let result = self.runtime.block_on(async {
                let got = self.store.object_store().get(&key).await;
                let mut stream = got
                    .map_err(|e| self.store_error(object_name, e))?
                    .into_stream();
                let mut file = File::create(&temp).map_err(local)?;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| self.store_error(object_name, e))?;
                    file.write_all(&chunk).map_err(local)?;
                }
                file.sync_all().map_err(local)?;
                fs::rename(&temp, &filename).map_err(local)
            });
            if result.is_err() {
                let _ = fs::remove_file(&temp);
            }
            result
        })
    }

    /// Upload `filename` as `object_name` (replacing it).
    fn upload_object(&self, py: Python<'_>, object_name: &str, filename: PathBuf) -> PyResult<()> {
        detached(py, || {
            let key = self.key(object_name)?;
            let bytes = fs::read(&filename).map_err(|e| {
                Failure::Py(PyOSError::new_err(format!("{}: {e}", filename.display())))
            })?;
            let put = self
                .runtime
                .block_on(self.store.object_store().put(&key, PutPayload::from(bytes)));
            put.map(drop).map_err(|e| self.store_error(object_name, e))
        })
    }
}
