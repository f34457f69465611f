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
filename) for I/O; ``PolicyError`` for a WebAssembly policy that cannot load or fails; ``RuntimeError``
for failed uploads; ``InternalError`` for a bug (a Rust panic never crosses into Python as anything else).
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
    #: The cause: ``"trap"``, ``"out-of-fuel"``, ``"deadline-exceeded"``, ``"memory-limit"``,
    #: ``"invalid-result"``, ``"init-refused"``, ``"not-wasm"``, ... (cairn_policy's ``PolicyError::kind``).
    kind: str

class InternalError(RuntimeError):
    """A bug in cairn (a Rust panic), turned into an exception at the boundary. The saver that hit
    it refuses further calls; the previous checkpoint is intact."""

class Config:
    """A checked cairn config: a TOML file (or none), with explicit ``[checkpoint]`` keys on top.

    ``checkpoint`` holds the keys the caller set explicitly, as Python values: names as ``str`` or
    ``None`` (disabled, TOML's ``false``), ``save_interval`` as a time string, an int (epochs) or
    ``{"wasm": path, "config": {...}}``, ``ignore_keys`` as a list of globs, ``None`` or
    ``{"wasm": path, "config": {...}}``. They are rendered as TOML into the file's ``[checkpoint]``
    table and checked exactly like file keys; each is first checked alone, so a ``ValueError``
    names the keyword at fault (a mistake in the file names its line). A relative ``.wasm`` path
    is relative to the working directory for a keyword, to the file's folder in the file. A
    ``[train]`` table (``cairn run``'s simulated trainer) is accepted and ignored.
    """

    def __init__(self, path: Optional[str] = None, *, checkpoint: Optional[dict[str, Any]] = None) -> None: ...
    def checkpoint(self) -> dict[str, Any]:
        """Every ``[checkpoint]`` key, resolved (explicit > file > Composer's default), as above;
        ``save_interval`` as written, a ``.wasm`` path as resolved."""
    @property
    def run_name(self) -> Optional[str]:
        """The file's top-level ``run_name``, if it sets one."""
    @property
    def remote_url(self) -> Optional[str]:
        """The file's ``[remote] url`` if it sets one (``None``: no remote store configured)."""
    @property
    def python_callables_allowed(self) -> bool:
        """``False`` when the operator's platform file (``CAIRN_PLATFORM``) says
        ``python_callables = false``: Python callables run in-process, unsandboxed."""

class Saver:
    """cairn's saver for one run. Python decides *when* (Composer's scheduling, or ``should_save``);
    this object names, filters, writes durably, points ``latest``, uploads and rotates.

    ``local_folder`` replaces the config's folder (Composer's ``init`` may have filled MLflow
    placeholders; a store URL folder is staged in Composer's ``mkdtemp()/<path>``). ``names``
    replaces name templates: ``{"filename": str, "latest_filename": str | None,
    "remote_file_name": str | None, "latest_remote_file_name": str | None}`` (absent keys keep the
    config's). ``remote_url``: the store checkpoints are uploaded to; ``None`` uploads nothing
    (the Python side may then hand files to Composer's loggers, as Composer does), unless the
    config's folder is itself a store URL. ``rank`` and ``world_size`` (both or neither):
    ``torch.distributed``'s, when the process group was not started by a launcher that set
    ``RANK`` and ``WORLD_SIZE`` (which are read otherwise). ``run_name`` is the run's name on every
    rank (a multi-rank run needs one, so ranks and resumes agree).
    """

    def __init__(
        self,
        config: Config,
        *,
        run_name: str,
        local_folder: Optional[str] = None,
        names: Optional[dict[str, Optional[str]]] = None,
        remote_url: Optional[str] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ) -> None: ...
    @property
    def folder(self) -> str:
        """The local folder, with ``{run_name}`` and the dist variables rendered."""
    @property
    def uploads(self) -> bool:
        """True when this saver uploads to a store itself."""
    @property
    def sharded(self) -> bool:
        """``sharded = true``: every rank saves its own shard, and global rank 0 commits each step
        (a manifest created once, create-only) before ``latest`` moves."""
    @property
    def ranks(self) -> tuple[int, int]:
        """``(rank, world_size)`` as this saver sees them."""
    def render(
        self,
        which: Literal["filename", "latest_filename", "remote_file_name", "latest_remote_file_name"],
        timestamp: Timestamp,
    ) -> Optional[str]:
        """A name as cairn renders it (local names joined to the folder); ``None`` when disabled."""
    def fit_start(self, timestamp: Timestamp) -> None:
        """Create the folder, remove a crashed save's temporary files, check remote access, and
        (unless ``overwrite``) raise ``FileExistsError`` for a file that may conflict with a future
        checkpoint."""
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
        ``storages`` to ``path`` (which must be the name ``filename`` renders at ``timestamp``:
        ``ValueError`` otherwise), in the format its extension selects. With ``filter`` and an
        ``ignore_keys`` in the config (globs or WebAssembly) the pickle is read into cairn's tree,
        filtered and re-pickled; otherwise it is written verbatim (byte-identical to ``torch.save``).
        Then: fsync file and folder, swap ``latest``, enqueue the upload (the remote ``.symlink`` follows
        once the object is confirmed), apply retention unless ``rotate=False`` (the caller then calls
        :meth:`rotate` itself). ``archive_name`` is the zip's folder: ``"archive"`` is what ``torch.save``
        writes to a file object, as Composer does. GIL released throughout; every pointer is read
        before this returns (the caller may mutate tensors afterwards). With ``async_save`` the
        records are copied into staging and the rest runs behind training (``behind`` is then
        true); a save waits first for the one in flight, and raises its failure."""
    def rotate(self) -> list[str]:
        """Apply ``num_checkpoints_to_keep`` now; returns the deleted paths."""
    def poll(self) -> list[tuple[str, str]]:
        """``(kind, message)`` for what happened since the last call: ``("warning", ...)`` (a glob that
        matched nothing), ``("upload-failed", ...)`` (an upload failed after its retries: the
        Python layer raises it at the next ``batch_end``, as Composer does), sharded on global
        rank 0, ``("commit-failed", ...)`` (a step was not committed within ``commit_timeout_s``,
        naming the missing ranks; both failures come as warnings with ``on_failure = "warn"``),
        ``("written", path)`` (a save behind training is durable) and ``("save-failed", ...)`` (one
        failed: raise it)."""
    def flush(self) -> None:
        """Wait for the save being written behind training, if any; raise its failure."""
    @property
    def is_async(self) -> bool:
        """True when saves are written behind training (``async_save``)."""
    def saved_checkpoints(self) -> list[str]:
        """This run's checkpoints still on local disk, oldest first, as the paths given to ``save``."""
    def finish(self) -> Optional[dict[str, Any]]:
        """``FIT_END``: wait for every upload and the remote ``latest``; apply the retention that waited
        for them. Returns the upload totals (``None`` without a store); raises ``RuntimeError`` when an
        upload failed."""
    def close(self) -> Optional[str]:
        """Like ``finish`` but never raises (Composer's ``post_close``): returns the problem, if any."""
    def resume(self) -> Optional[tuple[str, str]]:
        """``(path, why)`` of the checkpoint to continue from, or ``None``. Sharded: this rank's own
        shard of the newest committed step of this run (from the folder when it matches the step's
        manifest, else downloaded); a step saved by another world size is a ``ValueError`` (cairn does
        not reshard). Call it before the first save."""
    def wait_for_commits(self, limit: Optional[float] = None) -> dict[str, Any]:
        """Sharded, global rank 0: look at the records now (after a ``torch.distributed`` collective
        that follows every rank's save, each local record is in place) and wait at most ``limit``
        seconds (``None``: until every commit handed over so far finished, each bounded by
        ``commit_timeout_s``). ``{"committed": [step, ...], "failed": [(step, message), ...],
        "pending": n}`` so far; other ranks and non-sharded savers get an empty report at once."""
    def download_remote_latest(self) -> Optional[str]:
        """Download the checkpoint the remote ``latest`` pointer names into the local folder."""

class SaveResult:
    path: str
    #: Size on disk; for a save behind training, the tensor bytes copied into staging.
    bytes: int
    #: From the call to its return.
    seconds: float
    #: Seconds training was held (any wait for the previous save included).
    blocked_seconds: float
    #: The part of ``blocked_seconds`` spent waiting for the previous save behind training.
    waited_seconds: float
    #: True when the file is being written behind training (``async_save``).
    behind: bool
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
