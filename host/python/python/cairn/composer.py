"""``cairn.composer.CheckpointSaver``: Composer's ``CheckpointSaver``, writing through cairn.

A subclass of ``composer.callbacks.CheckpointSaver`` with the same keyword arguments, defaults and
validation, plus ``config=`` (a cairn TOML; explicit keywords override its ``[checkpoint]`` keys).
Because it *is* a Composer ``CheckpointSaver``, the Trainer treats the first one in ``callbacks`` as its
saver: ``save_folder=None``, ``autoresume=True`` and ``load_path=`` work as with Composer's own.

What is kept from Composer, unchanged: the scheduling (``batch_checkpoint``, ``epoch_checkpoint``,
``iteration_checkpoint`` with Composer's interval predicate and its one-save-per-batch rule), the
checkpoint dict (``state.state_dict()`` + ``get_rng_state()``, built on every rank because both are
collective), the names (Composer's own formatting), ``state_dict``/``load_state_dict`` (so
``state['callbacks']['CheckpointSaver']`` is the same entry and files are interchangeable).

What cairn does instead (``_save_checkpoint``, the one hook that also serves
``Trainer.save_checkpoint_to_save_folder``): the write, durable (fsync of file and folder, atomic
``latest``), ``ignore_keys`` globs and WebAssembly filters, uploads with the remote ``.symlink`` written
only after the object is confirmed, and retention. Tensor bytes go from the tensors' memory to the file
without passing through Python, with the GIL released.

Differences from Composer (listed in the README): a compressed ``.pt.*`` needs no command-line tool;
an existing checkpoint file is never silently replaced (``FileExistsError`` unless ``overwrite``); a bare
number is not a time string; the conflict scan escapes the file name. Python callables for
``save_interval``/``ignore_keys`` run in-process, **unsandboxed**, as Composer runs them.
"""

from __future__ import annotations

import logging
import os
import pathlib
import tempfile
import warnings
from typing import Any, Callable, Optional, Union

import torch
from composer.callbacks import CheckpointSaver as _ComposerCheckpointSaver
from composer.core import Event, State, Time, Timestamp
from composer.loggers import Logger
from composer.utils import (
    PartialFilePath,
    checkpoint,
    create_interval_scheduler,
    create_symlink_file,
    dist,
    parse_uri,
    reproducibility,
)
from composer.utils.compression import get_compressor, is_compressed_pt

from composer.utils.object_store import ObjectStore

import cairn
from cairn import _pickle

# Composer's CheckpointSaver defaults for the remote names (callbacks/checkpoint_saver.py).
_COMPOSER_REMOTE_NAMES = {
    "remote_file_name": "{run_name}/checkpoints/ep{epoch}-ba{batch}-rank{rank}.pt",
    "latest_remote_file_name": "{run_name}/checkpoints/latest-rank{rank}.pt",
}


def _is_uri(folder: str) -> bool:
    return "://" in folder

log = logging.getLogger(__name__)

__all__ = ["CheckpointSaver"]

_UNSET: Any = type("_Unset", (), {"__repr__": lambda self: "<default>"})()

#: Composer 0.32.1's defaults (callbacks/checkpoint_saver.py:252-268); a TOML may replace them.
COMPOSER_DEFAULTS: dict[str, Any] = {
    "folder": "{run_name}/checkpoints",
    "filename": "ep{epoch}-ba{batch}-rank{rank}.pt",
    "remote_file_name": "{run_name}/checkpoints/ep{epoch}-ba{batch}-rank{rank}.pt",
    "latest_filename": "latest-rank{rank}.pt",
    "latest_remote_file_name": "{run_name}/checkpoints/latest-rank{rank}.pt",
    "save_interval": "1ep",
    "overwrite": False,
    "num_checkpoints_to_keep": -1,
    "weights_only": False,
    "ignore_keys": None,
    "num_concurrent_uploads": 1,
    "upload_timeout_in_seconds": 3600,
}

#: Store URL schemes cairn uploads to (Composer's: s3, oci, gs, azure, libcloud, dbfs).
_SCHEMES = {"s3", "gs", "az", "azure", "abfs", "file", "memory"}

_EVENTS = {
    Event.BATCH_CHECKPOINT: "batch",
    Event.EPOCH_CHECKPOINT: "epoch",
    Event.ITERATION_CHECKPOINT: "iteration",
}


def _is_wasm_spec(value: Any) -> bool:
    return isinstance(value, dict) and "wasm" in value


def _timestamp(t: Timestamp) -> tuple:
    """Composer's Timestamp as the native tuple (see _native.pyi)."""
    return (
        int(t.iteration), int(t.epoch), int(t.batch), int(t.sample), int(t.token),
        int(t.epoch_in_iteration), int(t.token_in_iteration), int(t.batch_in_epoch),
        int(t.sample_in_epoch), int(t.token_in_epoch),
        t.total_wct.total_seconds(), t.iteration_wct.total_seconds(),
        t.epoch_wct.total_seconds(), t.batch_wct.total_seconds(),
    )  # yapf: disable


def _training_state(state: State) -> dict[str, Any]:
    """What a WebAssembly ``save_interval`` sees (PRODUCT.md, "The WIT contract")."""
    metrics: dict[str, float] = {}
    for source in (state.train_metric_values, state.eval_metric_values, state.total_loss_dict):
        for name, value in source.items():
            try:
                metrics[name] = float(value)
            except (TypeError, ValueError):
                pass
    max_duration = state.max_duration
    dataloader_len = state.dataloader_len
    return {
        "timestamp": _timestamp(state.timestamp),
        "previous_timestamp": None if state.previous_timestamp is None else _timestamp(state.previous_timestamp),
        "max_duration": None if max_duration is None else (int(max_duration.value), max_duration.unit.value),
        "dataloader_len": None if dataloader_len is None else int(dataloader_len),
        "metrics": metrics,
    }


class _WasmInterval:
    """``save_interval`` for ``{"wasm": ...}``: a ``(state, event) -> bool`` callable, as Composer requires
    (it asserts ``callable(self.save_interval)``, checkpoint_saver.py:372, and EMA calls it too,
    algorithms/ema/ema.py:250-253). One answer per (batch, event): the policy may keep state, and
    EMA asking before the saver must not make it advance twice."""

    def __init__(self, saver: CheckpointSaver, spec: dict[str, Any]):
        self._saver = saver
        self.spec = spec
        self._memo: Optional[tuple[tuple[int, str], bool]] = None

    def __call__(self, state: State, event: Event) -> bool:
        name = _EVENTS.get(event)
        if name is None:
            return False
        key = (int(state.timestamp.batch), name)
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        answer = bool(self._saver._started().should_save(_training_state(state), name))
        self._memo = (key, answer)
        return answer

    def __repr__(self) -> str:
        return f"WasmInterval({self.spec.get('wasm')!r})"


class _CairnObjectStore(ObjectStore):
    """A Composer ``ObjectStore`` over cairn's store, for the Trainer's autoresume download
    (trainer.py:1833-1834 appends ``remote_uploader.remote_backend``; file_helpers.py:674 requires an
    ``ObjectStore`` instance)."""

    def __init__(self, url: str):
        self._store = cairn._require_native().ObjectStore(url)

    def get_uri(self, object_name: str) -> str:
        return self._store.get_uri(object_name)

    def upload_object(self, object_name, filename, callback=None) -> None:
        self._store.upload_object(object_name, str(filename))

    def get_object_size(self, object_name: str) -> int:
        return self._store.get_object_size(object_name)

    def download_object(self, object_name, filename, overwrite=False, callback=None) -> None:
        self._store.download_object(object_name, str(filename), overwrite)


class _RemoteHalf:
    """Stands where Composer keeps its ``RemoteUploader`` (``self.remote_uploader``): the Trainer reads
    only ``remote_backend``; the uploads themselves run in cairn."""

    def __init__(self, url: str):
        self.url = url
        self._backend: Optional[_CairnObjectStore] = None

    @property
    def remote_backend(self) -> _CairnObjectStore:
        if self._backend is None:
            self._backend = _CairnObjectStore(self.url)
        return self._backend


class CheckpointSaver(_ComposerCheckpointSaver):
    """Composer's ``CheckpointSaver`` (same arguments, defaults and validation), saving through cairn.

    Extra: ``config`` (a cairn TOML whose ``[checkpoint]`` keys the explicit arguments override);
    ``save_interval`` and ``ignore_keys`` also take ``{"wasm": "policy.wasm", "config": {...}}``.
    Python callables are accepted and run in-process, unsandboxed, as in Composer.
    """

    # The class is named exactly like Composer's: State.state_dict keys callbacks by
    # type(cb).__qualname__ (core/state.py:1047, loaded back at :1579-1586), so checkpoints written by
    # either saver resume with the other one and keep all_saved_checkpoints_to_timestamp.

    def __init__(
        self,
        folder: Union[str, pathlib.Path] = _UNSET,
        filename: Union[str, pathlib.Path] = _UNSET,
        remote_file_name: Optional[Union[str, pathlib.Path]] = _UNSET,
        latest_filename: Optional[Union[str, pathlib.Path]] = _UNSET,
        latest_remote_file_name: Optional[Union[str, pathlib.Path]] = _UNSET,
        save_interval: Union[Time, str, int, dict, Callable[[State, Event], bool]] = _UNSET,
        *,
        overwrite: bool = _UNSET,
        num_checkpoints_to_keep: int = _UNSET,
        weights_only: bool = _UNSET,
        ignore_keys: Optional[Union[list[str], dict, Callable[[dict], None]]] = _UNSET,
        num_concurrent_uploads: int = _UNSET,
        upload_timeout_in_seconds: int = _UNSET,
        async_save: bool = _UNSET,
        staging_budget_mib: Optional[int] = _UNSET,
        config: Optional[Union[str, os.PathLike]] = None,
    ):
        native = cairn._require_native()
        explicit = {
            k: v for k, v in {
                "folder": folder,
                "filename": filename,
                "remote_file_name": remote_file_name,
                "latest_filename": latest_filename,
                "latest_remote_file_name": latest_remote_file_name,
                "save_interval": save_interval,
                "overwrite": overwrite,
                "num_checkpoints_to_keep": num_checkpoints_to_keep,
                "weights_only": weights_only,
                "ignore_keys": ignore_keys,
                "num_concurrent_uploads": num_concurrent_uploads,
                "upload_timeout_in_seconds": upload_timeout_in_seconds,
                "async_save": async_save,
                "staging_budget_mib": staging_budget_mib,
            }.items() if v is not _UNSET
        }

        interval = explicit.get("save_interval", _UNSET)
        if interval is not _UNSET and not callable(interval) and not _is_wasm_spec(interval):
            # Composer's own check first, so a bad interval raises what Composer raises
            # (ValueError / TypeError / RuntimeError, utils/misc.py:84 via Time.from_input).
            create_interval_scheduler(interval)

        # Composer checks compressed names first (CompressorNotFound); keep its exception type.
        for key in ("filename", "remote_file_name", "latest_filename", "latest_remote_file_name"):
            name = explicit.get(key)
            if isinstance(name, str) and is_compressed_pt(name):
                get_compressor(name)

        # Python-only values stay here; cairn checks everything else (ValueError naming the key).
        self._python_save_interval = explicit.get("save_interval") if callable(explicit.get("save_interval")) else None
        self._python_ignore_keys = explicit.get("ignore_keys") if callable(explicit.get("ignore_keys")) else None
        overrides = {k: _to_config_value(k, v) for k, v in explicit.items() if not callable(v)}
        if isinstance(overrides.get("save_interval"), Time):
            t = overrides["save_interval"]
            overrides["save_interval"] = f"{t.value}{t.unit.value}"
        if self._python_save_interval is not None:
            overrides.pop("save_interval", None)
        if self._python_ignore_keys is not None:
            overrides["ignore_keys"] = None
        self._config = native.Config(None if config is None else os.fspath(config), checkpoint=overrides)
        if _is_uri(self._config.checkpoint()["folder"]):
            # cairn (like Composer's Trainer) names a URL folder's objects <url path>/<filename>
            # unless remote names are set; Composer's CheckpointSaver class names them by its own
            # defaults from the bucket's root. Pass those defaults, so the class behaves as Composer's.
            written = set(self._config.written_keys)
            for key, default in _COMPOSER_REMOTE_NAMES.items():
                if key not in written:
                    overrides[key] = default
            self._config = native.Config(None if config is None else os.fspath(config), checkpoint=overrides)
        if (self._python_save_interval or self._python_ignore_keys) and not self._config.python_callables_allowed:
            raise ValueError(
                "the operator's platform file (CAIRN_PLATFORM) does not allow Python callables for "
                "save_interval or ignore_keys: give a time string, a glob list or {'wasm': ...} instead"
            )
        resolved = self._config.checkpoint()
        if resolved["sharded"]:
            raise NotImplementedError(
                "cairn.composer.CheckpointSaver writes Composer's monolithic checkpoints; sharded = true "
                "(one shard per rank, committed by rank 0) is cairn.Saver's for now"
            )

        # --- Composer's constructor (callbacks/checkpoint_saver.py:271-325), with cairn's values ---
        folder = str(resolved["folder"])
        backend, bucket, local_folder = parse_uri(folder)
        if local_folder == "":
            local_folder = "."
        self._remote_url: Optional[str] = self._config.remote_url
        if backend != "":
            if backend not in _SCHEMES:
                # Composer: RemoteUploader raises this at construction (utils/remote_uploader.py:155-163).
                raise NotImplementedError(
                    f"There is no implementation for the cloud backend {backend} via URI. Please use one of the "
                    f"supported object stores ({', '.join(sorted(_SCHEMES))})."
                )
            # Composer stages a URI folder's files in mkdtemp() (line 277) and names objects by the formatted
            # remote_file_name from the bucket's root: the folder's path is not a prefix (the Trainer adds it
            # to remote_file_name itself when it builds the saver, trainer.py:1410). file:// has no bucket:
            # its whole URL is the store.
            local_folder = os.path.join(tempfile.mkdtemp(), local_folder)
            self._remote_url = folder if backend == "file" else f"{backend}://{bucket}"
        filename = str(resolved["filename"])
        remote_file_name = resolved["remote_file_name"]
        latest_filename = resolved["latest_filename"]
        latest_remote_file_name = resolved["latest_remote_file_name"]
        for name in (filename, remote_file_name, latest_filename, latest_remote_file_name):
            if name is not None and is_compressed_pt(name):
                # Composer also calls .check_exists() (line 287): cairn compresses natively and needs no
                # CLI tool, but an unknown compressor is still CompressorNotFound.
                get_compressor(name)

        interval = resolved["save_interval"] if self._python_save_interval is None else self._python_save_interval
        if callable(interval):
            self.save_interval = interval
        elif _is_wasm_spec(interval):
            self.save_interval = _WasmInterval(self, interval)
        else:
            self.save_interval = create_interval_scheduler(interval)
        self.last_checkpoint_batch: Optional[Time] = None

        self.folder = local_folder
        self.filename = PartialFilePath(filename.lstrip("/"), local_folder)
        self.latest_filename = PartialFilePath(latest_filename.lstrip("/"), local_folder) if latest_filename else None
        self.remote_file_name = PartialFilePath(remote_file_name) if remote_file_name else None
        self.latest_remote_file_name = PartialFilePath(latest_remote_file_name) if latest_remote_file_name else None

        self.overwrite = bool(resolved["overwrite"])
        self.saved_checkpoints: list[str] = []
        self.all_saved_checkpoints_to_timestamp: dict[str, Timestamp] = {}
        self.num_checkpoints_to_keep = int(resolved["num_checkpoints_to_keep"])
        self.weights_only = bool(resolved["weights_only"])
        self.ignore_keys = self._python_ignore_keys if self._python_ignore_keys is not None else resolved["ignore_keys"]

        self.start_batch = None
        self.rank_saves_symlinks: bool = False
        self.tmp_dir_for_symlink = tempfile.TemporaryDirectory()
        self.num_concurrent_uploads = int(resolved["num_concurrent_uploads"])
        self.upload_timeout_in_seconds = resolved["upload_timeout_in_seconds"]
        self._symlink_upload_wait_before_next_try_in_seconds = 30.0
        self.pid = os.getpid()
        self.symlink_count = 0
        self.symlink_upload_tasks = []
        if backend != "" and self.num_concurrent_uploads < 1:
            # RemoteUploader's check (utils/remote_uploader.py:128-131).
            raise ValueError(
                f"num_concurrent_uploads and num_attempts must be >= 1, but got {self.num_concurrent_uploads} and 3"
            )
        # Never a Composer RemoteUploader (it spawns process pools at construction); the Trainer reads
        # only .remote_backend from it, to fetch the remote latest during autoresume.
        self.remote_uploader = _RemoteHalf(self._remote_url) if self._remote_url is not None else None

        # --- cairn's half ---
        self._native_saver: Any = None
        self._event: Optional[str] = None
        self._staging: Optional[_pickle.HostStaging] = None

    # ----------------------------------------------------------------------------------------------
    # Events. The three checkpoint events stay Composer's: they only note which event is running.

    def init(self, state: State, logger: Logger) -> None:
        # Composer's init fills MLflow placeholders and creates the folder (checkpoint_saver.py:327-358);
        # it would also call remote_uploader.init() (line 355-356), which cairn's fit_start replaces.
        remote, self.remote_uploader = self.remote_uploader, None
        try:
            super().init(state, logger)
        finally:
            self.remote_uploader = remote
        if self._native_saver is not None:
            self._native_saver.close()
        native = cairn._require_native()
        self._native_saver = native.Saver(
            self._config,
            run_name=state.run_name,
            local_folder=self.folder,
            names={
                "filename": self.filename.filename,
                "latest_filename": None if self.latest_filename is None else self.latest_filename.filename,
                "remote_file_name": None if self.remote_file_name is None else self.remote_file_name.filename,
                "latest_remote_file_name":
                    None if self.latest_remote_file_name is None else self.latest_remote_file_name.filename,
            },
            remote_url=self._remote_url,
        )

    def fit_start(self, state: State, logger: Logger) -> None:
        if state.fsdp_sharded_state_dict_enabled:
            raise NotImplementedError("cairn writes monolithic checkpoints; sharded FSDP state dicts are not supported yet")
        # Composer: conflict scan on every rank unless overwrite (checkpoint_saver.py:361-365), then a
        # barrier (367). cairn's scan raises the same FileExistsError, escapes the name, and also removes
        # a crashed save's temporary files and checks remote credentials.
        self._started().fit_start(_timestamp(state.timestamp))
        dist.barrier()
        self.start_batch = state.timestamp.batch

    def batch_checkpoint(self, state: State, logger: Logger):
        self._event = "batch"
        super().batch_checkpoint(state, logger)

    def epoch_checkpoint(self, state: State, logger: Logger):
        self._event = "epoch"
        super().epoch_checkpoint(state, logger)

    def iteration_checkpoint(self, state: State, logger: Logger):
        self._event = "iteration"
        super().iteration_checkpoint(state, logger)

    def batch_end(self, state: State, logger: Logger) -> None:
        # Composer re-raises a failed upload here (remote_uploader.check_workers, line 595).
        if self._native_saver is not None:
            self._report(self._native_saver.poll())

    def fit_end(self, state: State, logger: Logger) -> None:
        # Composer waits for uploads and the remote symlink here (lines 621-642) and never saves.
        if self._native_saver is not None:
            self._native_saver.finish()

    def post_close(self) -> None:
        # Composer waits and shuts its uploader down, logging errors (lines 644-650).
        if self._native_saver is not None:
            problem = self._native_saver.close()
            if problem:
                log.error(f"cairn could not finish its uploads: {problem}")

    # ----------------------------------------------------------------------------------------------
    # The save.

    def _save_checkpoint(self, state: State, logger: Logger) -> None:
        """Composer's ``CheckpointSaver._save_checkpoint`` (checkpoint_saver.py:436-573) through cairn.

        Also what ``Trainer.save_checkpoint_to_save_folder`` calls (trainer.py:3696), bypassing the
        interval but not the one-save-per-batch bookkeeping.
        """
        native = self._started()
        event, self._event = self._event, None
        self.last_checkpoint_batch = state.timestamp.batch

        filename_with_placeholders = self.filename.format(state, keep_placeholders=True)
        save_filename = checkpoint.get_save_filename(state, filename_with_placeholders)
        # Before building the dict, so the checkpoint's own callback state lists it (line 442-443).
        history = self.all_saved_checkpoints_to_timestamp
        before = history.get(save_filename)
        history[save_filename] = state.timestamp
        try:
            saved = self._write(state, save_filename, event)
        except BaseException:
            # A failed save is not in the history (Composer keeps it; cairn's Rust saver pops it too).
            if before is None:
                del history[save_filename]
            else:
                history[save_filename] = before
            raise
        self.symlink_count += 1
        if saved is None:  # a rank that does not write (line 458-461)
            return
        self.rank_saves_symlinks = True
        if self.remote_file_name is not None and not native.uploads:
            if saved.behind:
                native.flush()  # Composer's loggers take the file itself: it must be on disk first
            self._upload_through_loggers(state, logger, saved.path)
            if self.num_checkpoints_to_keep >= 0:
                native.rotate()  # after the loggers took their copy (Composer's order, line 570-573)
        self.saved_checkpoints = native.saved_checkpoints()

    def _write(self, state: State, save_filename: str, event: Optional[str]) -> Any:
        """utils/checkpoint.py:1141-1151 and 1023-1113: build the dict on every rank (collective), write
        on global rank 0, barrier."""
        torch.cuda.empty_cache()
        if self.weights_only:
            ckpt = {
                "state": {
                    "model": state.get_model_state_dict(),
                    "integrations": state._get_integrations_state_dict(),
                    "metadata": state._get_state_metadata(),
                },
            }
        else:
            ckpt = {"state": state.state_dict(), "rng": reproducibility.get_rng_state()}
        if self._python_ignore_keys is not None:
            # A Python callable runs in-process, unsandboxed, exactly as in Composer (line 1045-1052).
            self._python_ignore_keys(ckpt)
            ckpt["state"] = ckpt.get("state", {})

        saved = None
        error: Optional[BaseException] = None
        if dist.get_global_rank() == 0:
            try:
                saved = self._write_rank0(ckpt, save_filename, state, event)
            except BaseException as e:  # reach the barrier first, so other ranks do not hang
                error = e
        del ckpt
        dist.barrier()
        if error is not None:
            raise error
        return saved

    def _write_rank0(self, ckpt: dict, save_filename: str, state: State, event: Optional[str]) -> Any:
        skeleton = _pickle.dumps(ckpt)
        staged = any(ref.storage.device.type != "cpu" for ref in skeleton.storages)
        if staged:
            if self._staging is None:
                self._staging = _pickle.HostStaging()
            self._staging.stage(skeleton)
        native = self._native_saver
        try:
            saved = native.save(
                save_filename,
                _timestamp(state.timestamp),
                event,
                skeleton.pickle,
                [ref.as_tuple() for ref in skeleton.storages],
                # Handing the file to Composer's loggers comes first; retention waits for it.
                rotate=native.uploads or self.remote_file_name is None,
            )
        finally:
            if staged:
                self._staging.release()
        self._report(native.poll())
        return saved

    def _upload_through_loggers(self, state: State, logger: Logger, saved_path: str) -> None:
        """A local folder without a cairn store: Composer hands the file to its logger destinations
        (checkpoint_saver.py:516-568, the ``remote_uploader is None`` branches)."""
        remote_file_name = self.remote_file_name.format(state).lstrip("/")
        try:
            logger.upload_file(remote_file_name=remote_file_name, file_path=saved_path, overwrite=self.overwrite)
        except FileExistsError as e:
            raise FileExistsError(
                f"Uploading checkpoint failed with error: {e}. overwrite was set to {self.overwrite}. "
                "To overwrite checkpoints with Trainer, set save_overwrite to True.",
            ) from e
        if self.latest_remote_file_name is not None:
            symlink_name = self.latest_remote_file_name.format(state).lstrip("/") + ".symlink"
            symlink_filename = os.path.join(self.tmp_dir_for_symlink.name, f"latest.{self.symlink_count}.symlink")
            create_symlink_file(remote_file_name, symlink_filename)
            logger.upload_file(remote_file_name=symlink_name, file_path=symlink_filename, overwrite=True)

    # ----------------------------------------------------------------------------------------------

    def _started(self) -> Any:
        if self._native_saver is None:
            raise RuntimeError("cairn's CheckpointSaver has not seen Event.INIT; pass it to a Trainer's callbacks")
        return self._native_saver

    def _report(self, events: list) -> None:
        for kind, message in events:
            if kind == "upload-exists":
                raise FileExistsError(message)
            if kind in ("upload-failed", "save-failed"):
                raise RuntimeError(message)
            if kind == "written":  # a save behind training is durable (async_save)
                self.saved_checkpoints = self._native_saver.saved_checkpoints()
                continue
            warnings.warn(message)


def _to_config_value(key: str, value: Any) -> Any:
    """A keyword argument as a ``[checkpoint]`` value for cairn's config checker."""
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if key == "ignore_keys" and isinstance(value, (list, tuple)) and len(value) == 0:
        return None  # Composer treats an empty list as none (`if ignore_keys:`)
    if isinstance(value, tuple):
        return list(value)
    return value
