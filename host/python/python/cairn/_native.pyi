"""The native module (PyO3, ``host/python/src``): the interface the pure-Python layer is written against.

Conventions
-----------
``Timestamp`` is Composer's ``Timestamp`` as a flat tuple, in ``Timestamp.state_dict()`` order: ten
counters then four wall-clock durations in float seconds::

    (iteration, epoch, batch, sample, token, epoch_in_iteration, token_in_iteration,
     batch_in_epoch, sample_in_epoch, token_in_epoch, total_wct, iteration_wct, epoch_wct, batch_wct)

``StorageRef`` is ``(key, owner, data_ptr, nbytes)``: the record ``data/<key>`` of the pickle, the object
that owns the memory (a ``torch.UntypedStorage`` or a pinned host tensor; cairn holds a reference for as
long as it reads the bytes), the address of the first byte and the length. ``nbytes == 0`` is allowed
with any ``data_ptr`` (torch uses 0 for empty storages).

Every method that writes, uploads, waits or runs a WebAssembly policy releases the GIL.

Errors: ``ValueError`` for a bad config or argument (the message names the key, and the TOML line for a
file); ``FileExistsError`` for a checkpoint that may conflict or exists; ``OSError`` (with errno and
filename) for I/O; ``PolicyError`` for a failed WebAssembly policy; ``RuntimeError`` for failed uploads.
"""

from typing import Any, Literal, Optional, Sequence, Union

__version__: str

Timestamp = tuple[int, int, int, int, int, int, int, int, int, int, float, float, float, float]
StorageRef = tuple[str, Any, int, int]
Event = Literal["batch", "epoch", "iteration"]

class PolicyError(RuntimeError):
    """A WebAssembly policy failed and ``[sandbox] on_error = "fail"``."""

    #: The component's file name (``every_n.wasm``).
    policy: str
    #: ``"trap"``, ``"fuel"``, ``"timeout"``, ``"memory"``, ``"invalid-output"`` or ``"init"``.
    kind: str

class Config:
    """A checked cairn config: a TOML file (or none), with explicit ``[checkpoint]`` keys on top.

    ``checkpoint`` holds the keys the caller set explicitly, as Python values: names as ``str`` or
    ``None`` (disabled, TOML's ``false``), ``save_interval`` as a time string, an int (epochs) or
    ``{"wasm": path, "config": {...}}``, ``ignore_keys`` as a list of globs, ``None`` or
    ``{"wasm": path, "config": {...}}``. They override the file's ``[checkpoint]`` keys and are checked
    exactly like them. Relative ``.wasm`` paths resolve against ``base_dir`` (default: the TOML's
    folder, else the working directory). Raises ``ValueError`` naming the key (and line).
    """

    def __init__(
        self,
        path: Optional[str] = None,
        *,
        checkpoint: dict[str, Any] = ...,
        base_dir: Optional[str] = None,
    ) -> None: ...
    def checkpoint(self) -> dict[str, Any]:
        """Every ``[checkpoint]`` key, resolved (explicit > file > Composer's default), as above."""
    @property
    def run_name(self) -> Optional[str]:
        """The file's top-level ``run_name``, if it sets one."""
    @property
    def remote_url(self) -> Optional[str]:
        """The file's ``[remote] url`` if it sets one (``None``: no remote store configured)."""

class Saver:
    """cairn's saver for one run. Python decides *when* (Composer's scheduling, or ``should_save``);
    this object names, filters, writes durably, points ``latest``, uploads and rotates.

    ``folder`` and the four name templates override the config's (Composer's ``init`` may have filled
    MLflow placeholders in them). ``local_folder`` is where files go when ``folder`` is a store URL
    (Composer's ``mkdtemp()/<path>``). ``remote_url``: the store checkpoints are uploaded to; ``None``
    uploads nothing (the Python side may then hand files to Composer's loggers, as Composer does).
    """

    def __init__(
        self,
        config: Config,
        *,
        run_name: str,
        folder: Optional[str] = None,
        local_folder: Optional[str] = None,
        filename: Optional[str] = None,
        latest_filename: Optional[str] = ...,
        remote_file_name: Optional[str] = ...,
        latest_remote_file_name: Optional[str] = ...,
        remote_url: Optional[str] = None,
    ) -> None: ...
    @property
    def folder(self) -> str:
        """The local folder, with ``{run_name}`` and the dist variables rendered."""
    @property
    def uploads(self) -> bool:
        """True when this saver uploads to a store itself."""
    def render(
        self,
        which: Literal["filename", "latest_filename", "remote_file_name", "latest_remote_file_name"],
        timestamp: Timestamp,
    ) -> Optional[str]:
        """A name as cairn renders it (``filename`` joined to the folder); ``None`` when disabled."""
    def fit_start(self, timestamp: Timestamp, *, scan: bool = True) -> None:
        """Create the folder, remove a crashed save's temporary files, check remote access, and (with
        ``scan``) raise ``FileExistsError`` for a file that may conflict with a future checkpoint."""
    def should_save(self, state: dict[str, Any], event: Event) -> bool:
        """The configured ``save_interval`` (time string or WebAssembly), for ``cairn.Saver`` and for a
        ``{"wasm": ...}`` interval under Composer. ``state``: ``timestamp``, ``previous_timestamp``
        (or ``None``), ``max_duration`` ``(value, unit)``, ``dataloader_len`` (or ``None``),
        ``metrics`` ``{name: float}``. Does not apply the one-save-per-batch rule."""
    def save(
        self,
        path: str,
        timestamp: Timestamp,
        event: Optional[Event],
        pickle: bytes,
        storages: Sequence[StorageRef],
        *,
        archive_name: str = "archive",
        filter: bool = True,
        rotate: bool = True,
    ) -> "SaveResult":
        """Write the checkpoint whose ``data.pkl`` is ``pickle`` and whose ``data/<key>`` records are
        ``storages`` to ``path``, in the format its extension selects. With ``filter`` and an
        ``ignore_keys`` in the config (globs or WebAssembly) the pickle is read into cairn's tree,
        filtered and re-pickled; otherwise it is written verbatim (byte-identical to ``torch.save``).
        Then: fsync file and folder, swap ``latest``, enqueue the upload (the remote ``.symlink`` follows
        once the object is confirmed), apply retention unless ``rotate=False`` (the caller then calls
        :meth:`rotate` itself). ``archive_name`` is the zip's folder: ``"archive"`` is what ``torch.save``
        writes to a file object, as Composer does. GIL released throughout; every pointer is read
        before this returns (the caller may mutate tensors afterwards)."""
    def rotate(self) -> list[str]:
        """Apply ``num_checkpoints_to_keep`` now; returns the deleted paths."""
    def poll(self) -> list[tuple[str, str]]:
        """``(kind, message)`` for what happened since the last call: ``("warning", ...)`` (a glob that
        matched nothing), ``("upload-failed", ...)``, ``("upload-exists", ...)``."""
    def saved_checkpoints(self) -> list[str]:
        """This run's checkpoints still on local disk, oldest first, as the paths given to ``save``."""
    def finish(self) -> Optional[dict[str, Any]]:
        """``FIT_END``: wait for every upload and the remote ``latest``; apply the retention that waited
        for them. Returns the upload totals (``None`` without a store); raises ``RuntimeError`` listing
        failed uploads (``FileExistsError`` if the only failures are existing objects)."""
    def close(self) -> None:
        """Idempotent; like ``finish`` but never raises (Composer's ``post_close``)."""
    def download_remote_latest(self) -> Optional[str]:
        """Download the checkpoint the remote ``latest`` pointer names into the local folder."""

class SaveResult:
    path: str
    bytes: int
    seconds: float
    #: Local checkpoints retention deleted during this save.
    deleted: list[str]

class ObjectStore:
    """A store URL (``s3://bucket``, ``gs://``, ``az://``, ``file://``, ``memory://``), for reads the
    Trainer makes through Composer's ``ObjectStore`` API during autoresume."""

    def __init__(self, url: str) -> None: ...
    def get_uri(self, object_name: str) -> str: ...
    def get_object_size(self, object_name: str) -> int:
        """``FileNotFoundError`` when absent."""
    def download_object(self, object_name: str, filename: str, overwrite: bool = False) -> None:
        """``FileNotFoundError`` / ``FileExistsError`` as Composer's stores raise them."""
    def upload_object(self, object_name: str, filename: str) -> None: ...
