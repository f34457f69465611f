//! `Saver`: cairn's `CheckpointSaver` for one run, driven from Python.
//!
//! Python decides *when* (Composer's own scheduling, or [`Saver::should_save`]) and builds the
//! checkpoint; this object checks the name, filters, writes durably, moves `latest`, uploads and
//! rotates. The saver sits in a mutex that is only ever locked with the GIL released
//! ([`failure::detached`]): a thread holding the GIL never waits for another that needs it back.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cairn::format::Prebuilt;
use cairn::policy::{Ranks, TrainingState};
use cairn::{CheckpointSaver, CommitReport, PrebuiltOptions, RunNameOrigin, Taken, Template, Vars};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::config::Config;
use crate::failure::{Failure, detached};
use crate::memory;
use crate::state;

/// Which name templates the caller sets (Composer's `init` may have filled MLflow ids into them).
const NAMES: [&str; 4] = [
    "filename",
    "latest_filename",
    "remote_file_name",
    "latest_remote_file_name",
];

/// See `_native.pyi`.
#[pyclass(module = "cairn._native")]
pub struct Saver {
    inner: Mutex<CheckpointSaver>,
    config: cairn::Config,
    folder: PathBuf,
    uploads: bool,
    /// This process's ranks: `torch.distributed`'s when the caller passes them, else the
    /// launcher's environment (`RANK`, `WORLD_SIZE`, ...).
    ranks: Ranks,
}

/// What one save did.
#[pyclass(frozen, get_all, module = "cairn._native")]
pub struct SaveResult {
    /// The checkpoint's path.
    path: String,
    /// Its size on disk; for a save written behind training, the tensor bytes copied into staging.
    bytes: u64,
    /// Seconds from the call to its return (GIL released throughout): the durable rename and
    /// `latest` for a synchronous save, the copy into staging for one behind training.
    seconds: f64,
    /// Seconds training was held by the save (the wait for the previous one included).
    blocked_seconds: f64,
    /// The part of `blocked_seconds` spent waiting for the previous save behind training.
    waited_seconds: f64,
    /// True when the file is being written behind training (`async_save`): it is durable once
    /// `poll` reports it as `("written", path)`, and its failure is raised there.
    behind: bool,
    /// Local checkpoints retention deleted during this save.
    deleted: Vec<String>,
}

impl Saver {
    fn lock(&self) -> Result<MutexGuard<'_, CheckpointSaver>, Failure> {
        self.inner.lock().map_err(|_| {
            Failure::Panic(
                "this saver stopped at an internal error in an earlier call; make a new one".into(),
            )
        })
    }
}

#[pymethods]
impl Saver {
    #[new]
    #[pyo3(signature = (config, *, run_name, local_folder = None, names = None, remote_url = None, rank = None, world_size = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        config: &Config,
        run_name: String,
        local_folder: Option<String>,
        names: Option<&Bound<'_, PyDict>>,
        remote_url: Option<String>,
        rank: Option<u32>,
        world_size: Option<u32>,
    ) -> PyResult<Saver> {
        let ranks = ranks(rank, world_size)?;
        let mut c = config.inner.clone();
        // The caller names the run (Composer's `state.run_name`, or `cairn.Saver`'s), the same on
        // every rank: it is not a name generated for this process alone.
        if c.run_name != run_name || c.run_name_origin == RunNameOrigin::Generated {
            c.run_name_origin = RunNameOrigin::Config;
        }
        c.run_name = run_name;
        if let Some(folder) = local_folder {
            c.folder = template("folder", &folder)?;
        }
        if let Some(names) = names {
            for (key, value) in names.iter() {
                let key: String = key.extract()?;
                let value: Option<String> = value.extract()?;
                let parsed = value.as_deref().map(|v| template(&key, v)).transpose()?;
                match key.as_str() {
                    "filename" => {
                        c.filename = parsed.ok_or_else(|| {
                            PyValueError::new_err("checkpoint.filename cannot be None")
                        })?
                    }
                    "latest_filename" => c.latest_filename = parsed,
                    "remote_file_name" => c.remote_file_name = parsed,
                    "latest_remote_file_name" => c.latest_remote_file_name = parsed,
                    other => {
                        return Err(PyValueError::new_err(format!(
                            "'{other}' is not a name template (one of {})",
                            NAMES.join(", ")
                        )));
                    }
                }
            }
        }
        // Without a store, cairn uploads nothing (Composer hands files to its loggers instead);
        // a store URL as the folder is a store of its own (staged locally, uploaded there).
        match remote_url {
            Some(url) => c.remote_url = url,
            None if !cairn::remote::is_remote_url(c.folder.source()) => c.remote_file_name = None,
            None => {}
        }
        let uploads = c.remote_file_name.is_some();
        let config = c.clone();
        let host = crate::compile::policy_host(py)?;
        let inner = detached(py, move || {
            Ok(CheckpointSaver::with_ranks(&c, &host, ranks)?)
        })?;
        Ok(Saver {
            folder: inner.folder().to_path_buf(),
            inner: Mutex::new(inner),
            config,
            uploads,
            ranks,
        })
    }

    /// True when every rank saves its own shard and global rank 0 commits each step.
    #[getter]
    fn sharded(&self) -> bool {
        self.config.sharded
    }

    /// `(rank, world_size)` as this saver sees them.
    #[getter]
    fn ranks(&self) -> (u32, u32) {
        (self.ranks.rank, self.ranks.world_size)
    }

    /// The local folder, rendered.
    #[getter]
    fn folder(&self) -> String {
        self.folder.display().to_string()
    }

    /// True when this saver uploads to a store itself.
    #[getter]
    fn uploads(&self) -> bool {
        self.uploads
    }

    /// A name as cairn renders it at `timestamp` (local names joined to the folder); `None` when
    /// disabled.
    fn render(&self, which: &str, timestamp: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
        let ts = state::timestamp(timestamp)?;
        let vars = Vars {
            run_name: &self.config.run_name,
            ranks: self.ranks,
            timestamp: Some(&ts),
        };
        let local = |t: &Template| {
            let name = t.render(&vars);
            self.folder
                .join(name.trim_start_matches('/'))
                .display()
                .to_string()
        };
        let remote = |t: &Template| t.render(&vars).trim_start_matches('/').to_owned();
        let c = &self.config;
        Ok(match which {
            "filename" => Some(local(&c.filename)),
            "latest_filename" => c.latest_filename.as_ref().map(local),
            "remote_file_name" => c.remote_file_name.as_ref().map(remote),
            "latest_remote_file_name" => c.latest_remote_file_name.as_ref().map(remote),
            other => {
                return Err(PyValueError::new_err(format!(
                    "'{other}' is not a name template (one of {})",
                    NAMES.join(", ")
                )));
            }
        })
    }

    /// `FIT_START`: create the folder, remove a crashed save's temporary files, check the store,
    /// and (unless `overwrite`) raise `FileExistsError` for a checkpoint from this run's future.
    fn fit_start(&self, py: Python<'_>, timestamp: &Bound<'_, PyAny>) -> PyResult<()> {
        let ts = state::timestamp(timestamp)?;
        detached(py, || Ok(self.lock()?.fit_start(&ts)?))
    }

    /// The configured `save_interval` alone (no one-save-per-batch rule); GIL released.
    fn should_save(
        &self,
        py: Python<'_>,
        state: &Bound<'_, PyDict>,
        event: &str,
    ) -> PyResult<bool> {
        let t = state::training(state)?;
        let event = state::event(Some(event))?;
        let run_name = self.config.run_name.as_str();
        let ranks = self.ranks;
        detached(py, move || {
            let training = TrainingState {
                timestamp: t.timestamp,
                previous_timestamp: t.previous_timestamp,
                max_duration: t.max_duration,
                dataloader_len: t.dataloader_len,
                run_name,
                ranks,
                metrics: &t.metrics,
            };
            Ok(self.lock()?.should_save(&training, event)?)
        })
    }

    /// Write the checkpoint whose `data.pkl` is `pickle` and whose `data/<key>` records are
    /// `storages`; see `_native.pyi`. Every pointer is read before this returns.
    #[pyo3(signature = (path, timestamp, event, pickle, storages, *, archive_name = "archive", filter = true, rotate = true))]
    #[allow(clippy::too_many_arguments)]
    fn save(
        &self,
        py: Python<'_>,
        path: PathBuf,
        timestamp: &Bound<'_, PyAny>,
        event: Option<&str>,
        pickle: &[u8],
        storages: &Bound<'_, PyAny>,
        archive_name: &str,
        filter: bool,
        rotate: bool,
    ) -> PyResult<SaveResult> {
        let started = Instant::now();
        let ts = state::timestamp(timestamp)?;
        let event = state::event(event)?;
        let records = memory::records(storages)?;
        let checkpoint = Prebuilt::new(pickle.to_vec(), records)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let options = PrebuiltOptions {
            archive: Some(archive_name),
            filter,
            rotate,
        };
        let (saved, deleted) = detached(py, || {
            let mut saver = self.lock()?;
            let before = paths(&saver);
            let saved = saver.save_prebuilt(&path, &ts, event, &checkpoint, options)?;
            let after = paths(&saver);
            let deleted = before.into_iter().filter(|p| !after.contains(p)).collect();
            Ok((saved, deleted))
        })?;
        // The tensors' owners are released here, with the GIL held.
        drop(checkpoint);
        let taken = saved.ok_or_else(|| {
            PyRuntimeError::new_err(format!(
                "{} was not saved: the ignore_keys policy failed and its on_error is \"skip\" (see the warning)",
                path.display()
            ))
        })?;
        let (bytes, waited_seconds, behind) = match &taken {
            Taken::Written(s) => (s.bytes, s.waited_seconds, false),
            Taken::Staged(s) => (s.staged_bytes, s.waited_seconds, true),
        };
        Ok(SaveResult {
            path: path.display().to_string(),
            bytes,
            seconds: started.elapsed().as_secs_f64(),
            blocked_seconds: taken.blocked_seconds(),
            waited_seconds,
            behind,
            deleted,
        })
    }

    /// Wait for the save being written behind training (`async_save`), if any; raises its
    /// failure. GIL released.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        detached(py, || Ok(self.lock()?.flush()?))
    }

    /// Whether saves are written behind training (`async_save`).
    #[getter]
    fn is_async(&self, py: Python<'_>) -> PyResult<bool> {
        detached(py, || Ok(self.lock()?.is_async()))
    }

    /// Apply `num_checkpoints_to_keep` now; the deleted paths.
    fn rotate(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        detached(py, || {
            let mut saver = self.lock()?;
            let before = paths(&saver);
            saver.rotate()?;
            let after = paths(&saver);
            Ok(before.into_iter().filter(|p| !after.contains(p)).collect())
        })
    }

    /// `(kind, message)` for what happened since the last call: `("warning", ...)`,
    /// `("upload-failed", ...)`. With `[remote] on_failure = "fail"` (Composer's default) a failed
    /// upload is an `upload-failed` the Python layer raises at the next `batch_end`, as Composer
    /// does; with `"warn"` it is a warning.
    fn poll(&self, py: Python<'_>) -> PyResult<Vec<(String, String)>> {
        detached(py, || {
            let mut saver = self.lock()?;
            let behind = match saver.collect_written() {
                Ok(()) => None,
                Err(e @ cairn::Error::WrittenBehind { .. }) => Some(e.to_string()),
                Err(e) => return Err(e.into()),
            };
            let written: Vec<(String, String)> = saver
                .take_completed()
                .into_iter()
                .map(|s| ("written".to_owned(), s.path.display().to_string()))
                .collect();
            let failed = match saver.check_uploads() {
                Ok(()) => None,
                Err(e @ cairn::Error::UploadsFailed(_)) => Some(("upload-failed", e.to_string())),
                Err(e @ cairn::Error::StepsNotCommitted(_)) => {
                    Some(("commit-failed", e.to_string()))
                }
                Err(e) => return Err(e.into()),
            };
            let mut out: Vec<(String, String)> = saver
                .take_warnings()
                .into_iter()
                .map(|w| ("warning".to_owned(), w))
                .collect();
            out.extend(written);
            out.extend(behind.map(|f| ("save-failed".to_owned(), f)));
            out.extend(failed.map(|(kind, f)| (kind.to_owned(), f)));
            Ok(out)
        })
    }

    /// This run's checkpoints still on local disk, oldest first.
    fn saved_checkpoints(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        detached(py, || Ok(paths(&*self.lock()?)))
    }

    /// `FIT_END`: wait for every upload and the remote `latest`, then the retention that waited
    /// for them. The upload totals (`None` without a store); `RuntimeError` if any upload failed.
    fn finish<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let report = detached(py, || Ok(self.lock()?.fit_end()?))?;
        let Some(report) = report else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("uploaded", report.uploaded)?;
        d.set_item("bytes", report.bytes)?;
        d.set_item("seconds", report.seconds)?;
        Ok(Some(d))
    }

    /// Composer's `post_close`: give uploads in flight until `upload_timeout_in_seconds` to
    /// finish, write the newest confirmed remote `latest`, remove a URL folder's staging copy.
    /// Never raises: the first problem is returned as a message for the caller to log.
    fn close(&self, py: Python<'_>) -> Option<String> {
        let result = detached(py, || Ok(self.lock()?.close()?));
        match result {
            Ok(Some(report)) if !report.failures.is_empty() => {
                Some(cairn::Error::UploadsFailed(report.failures).to_string())
            }
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Sharded: find the newest committed step of this run and this rank's own shard of it (from
    /// the folder when it matches the manifest, else downloaded); `(path, why)`, or `None` when
    /// nothing of this run is committed. Call it before the first save. Not sharded: the
    /// checkpoint `latest` names, else the newest that verifies, else the remote `latest`.
    fn resume(&self, py: Python<'_>) -> PyResult<Option<(String, String)>> {
        let found = detached(py, || Ok(self.lock()?.resume()?))?;
        Ok(found.map(|point| (point.path.display().to_string(), point.reason.to_string())))
    }

    /// Global rank 0 of a sharded run: look at the records now (every rank's local record is in
    /// place after a `torch.distributed` barrier) and wait at most `limit` seconds (`None`: until
    /// every commit handed over so far has finished, each bounded by `commit_timeout_s`) for the
    /// commits. What they came to so far: `{"committed": [step...], "failed": [(step, message)...],
    /// "pending": n}`. Other ranks and non-sharded savers get an empty report at once.
    #[pyo3(signature = (limit = None))]
    fn wait_for_commits<'py>(
        &self,
        py: Python<'py>,
        limit: Option<f64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let limit = limit
            .map(|s| {
                Duration::try_from_secs_f64(s).map_err(|_| {
                    PyValueError::new_err(format!(
                        "limit={s}: expected a number of seconds, 0 or more"
                    ))
                })
            })
            .transpose()?;
        let report = detached(py, || Ok(self.lock()?.wait_for_commits(limit)))?;
        commit_report(py, &report)
    }

    /// Download the checkpoint the remote `latest` pointer names into the local folder; its path,
    /// or `None` when there is no store, no pointer or nothing under it yet.
    fn download_remote_latest(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let found = detached(py, || Ok(self.lock()?.download_remote_latest()?))?;
        Ok(found.map(|(_, path)| path.display().to_string()))
    }
}

/// The ranks the caller gave (from `torch.distributed`), with the launcher's local ones when it set
/// them; else the launcher's environment.
fn ranks(rank: Option<u32>, world_size: Option<u32>) -> PyResult<Ranks> {
    let env = Ranks::from_env();
    match (rank, world_size) {
        (None, None) => Ok(env),
        (Some(rank), Some(world_size)) if rank < world_size => {
            // LOCAL_RANK and friends only name files ({local_rank}, {node_rank}); without a
            // launcher every rank is taken to be on one node.
            let launched = env.world_size == world_size && env.rank == rank;
            Ok(if launched {
                env
            } else {
                Ranks {
                    rank,
                    local_rank: rank,
                    world_size,
                    local_world_size: world_size,
                    node_rank: 0,
                }
            })
        }
        (Some(rank), Some(world_size)) => Err(PyValueError::new_err(format!(
            "rank={rank} is not below world_size={world_size}"
        ))),
        _ => Err(PyValueError::new_err(
            "rank and world_size go together: give both (torch.distributed's get_rank() and get_world_size()) or neither",
        )),
    }
}

fn commit_report<'py>(py: Python<'py>, report: &CommitReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let committed: Vec<&str> = report.committed.iter().map(|c| c.step.as_str()).collect();
    d.set_item("committed", committed)?;
    let failed: Vec<(&str, &str)> = report
        .failed
        .iter()
        .map(|f| (f.step.as_str(), f.message.as_str()))
        .collect();
    d.set_item("failed", failed)?;
    d.set_item("pending", report.pending)?;
    Ok(d)
}

fn paths(saver: &CheckpointSaver) -> Vec<String> {
    saver
        .saved_checkpoints()
        .iter()
        .map(|s| s.path.display().to_string())
        .collect()
}

fn template(key: &str, value: &str) -> PyResult<Template> {
    Template::parse(value)
        .map_err(|e| PyValueError::new_err(format!("checkpoint.{key} '{value}': {e}")))
}
