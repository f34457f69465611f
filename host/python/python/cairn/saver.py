"""``cairn.Saver``: cairn's checkpoint saver for plain PyTorch training loops (no Composer).

It keeps Composer's semantics where a loop has them: a training clock (``Timestamp``), the
``save_interval`` time strings (``"500ba"``, ``"1ep"``, ``"0.25dur"``, or a WebAssembly policy), the
end-of-training save, the names, ``latest`` link and remote ``.symlink``, retention, and a checkpoint
shaped like Composer's (``{'state': {...your entries..., 'timestamp', 'run_name', 'callbacks'},
'rng': [...]}``), so Composer's ``Trainer(load_path=...)`` reads the entries it knows.

    import cairn, torch

    saver = cairn.Saver(folder="ckpts", save_interval="100ba", max_duration="1000ba")
    start = saver.load()                   # {} on a fresh run; restores the clock and RNG on resume
    if start:
        model.load_state_dict(start["model"]); opt.load_state_dict(start["optimizers"])
    for x, y in loader:
        ...; opt.step()
        saver.step(lambda: {"model": model.state_dict(), "optimizers": opt.state_dict()})
        if saver.done:
            break
    saver.close()                          # waits for uploads and the remote ``latest``

The state is passed as a callable so it is built only when a checkpoint is due. Tensor bytes are
written from the tensors' memory with the GIL released; do not change the tensors while ``step`` or
``save`` runs (they return once every byte is written, or with ``async_save=True`` once every byte
is copied into staging: the file is then written behind training, and a failure is raised by the
next save or by ``close``; sharded too, each rank's record is then published once its shard is
durable, and global rank 0 commits the step behind training). ``last_save`` tells how long training was held.

Sharded (``sharded=True``, or ``[checkpoint] sharded = true``): every rank saves its own state under
its own name (``filename`` with ``{rank}``), and global rank 0 commits each step once every rank's
shard is in place; ``load()`` gives each rank its own shard of the newest committed step. Ranks are
``torch.distributed``'s when a process group is initialised (else the launcher's ``RANK``,
``WORLD_SIZE``); with a process group each save ends in a collective, so every rank must save at the
same steps (they do: they share the clock and ``save_interval``).

    dist.init_process_group("gloo")
    saver = cairn.Saver(folder="ckpts", run_name="job-7", sharded=True, save_interval="100ba",
                        max_duration="1000ba")
    start = saver.load()                   # this rank's shard of the newest committed step
"""

from __future__ import annotations

import datetime
import os
import random
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Mapping, Optional, Union

import cairn
from cairn import _pickle

__all__ = ["Saver", "Clock"]

StateLike = Union[Mapping[str, Any], Callable[[], Mapping[str, Any]]]


@dataclass(frozen=True)
class Clock:
    """Composer's ``Timestamp`` (core/time.py): counters and wall-clock seconds."""

    iteration: int = 0
    epoch: int = 0
    batch: int = 0
    sample: int = 0
    token: int = 0
    epoch_in_iteration: int = 0
    token_in_iteration: int = 0
    batch_in_epoch: int = 0
    sample_in_epoch: int = 0
    token_in_epoch: int = 0
    total_wct: float = 0.0
    iteration_wct: float = 0.0
    epoch_wct: float = 0.0
    batch_wct: float = 0.0

    def as_tuple(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))

    def next_batch(self, samples: int, tokens: int, seconds: float) -> "Clock":
        return replace(
            self,
            batch=self.batch + 1,
            batch_in_epoch=self.batch_in_epoch + 1,
            sample=self.sample + samples,
            sample_in_epoch=self.sample_in_epoch + samples,
            token=self.token + tokens,
            token_in_epoch=self.token_in_epoch + tokens,
            token_in_iteration=self.token_in_iteration + tokens,
            total_wct=self.total_wct + seconds,
            iteration_wct=self.iteration_wct + seconds,
            epoch_wct=self.epoch_wct + seconds,
            batch_wct=seconds,
        )

    def next_epoch(self) -> "Clock":
        return replace(
            self,
            epoch=self.epoch + 1,
            epoch_in_iteration=self.epoch_in_iteration + 1,
            batch_in_epoch=0,
            sample_in_epoch=0,
            token_in_epoch=0,
            epoch_wct=0.0,
            batch_wct=0.0,
        )

    def state_dict(self) -> dict[str, Any]:
        """``Timestamp.state_dict()``: ints, and ``datetime.timedelta`` for the wall-clock fields."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = datetime.timedelta(seconds=v) if f.name.endswith("_wct") else int(v)
        return out

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> "Clock":
        kw = {}
        for f in fields(cls):
            if f.name in d:
                v = d[f.name]
                kw[f.name] = v.total_seconds() if isinstance(v, datetime.timedelta) else int(v)
        return cls(**kw)


class Saver:
    """Save checkpoints from a plain PyTorch loop.

    Takes Composer's ``CheckpointSaver`` arguments (same names and defaults), ``config`` (a cairn TOML
    whose ``[checkpoint]`` keys the explicit arguments override), ``max_duration`` (a time string; needed
    by interval schedules: the last checkpoint is taken when it is reached), ``run_name`` (default: the
    TOML's, else ``"cairn-run"``) and ``rng`` (save Python/numpy/torch RNG states like Composer; default
    True). A callable ``save_interval`` is called as ``fn(saver, event)`` and runs in-process.
    """

    def __init__(
        self,
        folder: Optional[str] = None,
        filename: Optional[str] = None,
        *,
        save_interval: Any = None,
        max_duration: Optional[str] = None,
        config: Optional[Union[str, os.PathLike]] = None,
        run_name: Optional[str] = None,
        rng: bool = True,
        dataloader_len: Optional[int] = None,
        **checkpoint: Any,
    ):
        native = cairn._require_native()
        explicit = dict(checkpoint)
        if folder is not None:
            explicit["folder"] = os.fspath(folder)
        if filename is not None:
            explicit["filename"] = os.fspath(filename)
        self._callable_interval: Optional[Callable[["Saver", str], bool]] = None
        if callable(save_interval):
            self._callable_interval = save_interval
        elif save_interval is not None:
            explicit["save_interval"] = save_interval
        self._ignore_keys_fn = explicit.pop("ignore_keys") if callable(explicit.get("ignore_keys")) else None
        self._config = native.Config(None if config is None else os.fspath(config), checkpoint=explicit)
        if (self._callable_interval or self._ignore_keys_fn) and not self._config.python_callables_allowed:
            raise ValueError(
                "the operator's platform file (CAIRN_PLATFORM) does not allow Python callables for "
                "save_interval or ignore_keys: give a time string, a glob list or {'wasm': ...} instead"
            )
        resolved = self._config.checkpoint()
        self.run_name = run_name or self._config.run_name or "cairn-run"
        self.weights_only = bool(resolved["weights_only"])
        self.max_duration = max_duration
        self.dataloader_len = dataloader_len
        self.rng = rng
        self.sharded = bool(resolved["sharded"])
        self._dist = _process_group()
        ranks = {} if self._dist is None else {"rank": self._dist.get_rank(), "world_size": self._dist.get_world_size()}
        self._native = native.Saver(
            self._config, run_name=self.run_name, remote_url=self._config.remote_url, **ranks
        )
        self.rank, self.world_size = self._native.ranks
        if self.sharded and self._dist is not None and self.world_size > 1:
            # Global rank 0's coordinator counts only records published after it started (older ones
            # are an earlier attempt's): no rank may save before every saver exists.
            self._dist.barrier()
        self._max = _parse_max_duration(max_duration) if max_duration is not None else None
        self.clock = Clock()
        self.previous: Optional[Clock] = None
        self.history: list[tuple[str, dict[str, Any]]] = []
        self._last_saved_batch: Optional[int] = None
        self._started = False
        self._staging: Optional[_pickle.HostStaging] = None
        #: The native result of the newest save: ``path``, ``bytes``, ``seconds``, ``blocked_seconds``
        #: (training held, any wait for the previous save included), ``waited_seconds``, ``behind``.
        self.last_save: Any = None

    # ---- the loop --------------------------------------------------------------------------------

    def step(
        self,
        state: StateLike,
        *,
        samples: int = 0,
        tokens: int = 0,
        seconds: float = 0.0,
        metrics: Optional[Mapping[str, float]] = None,
    ) -> Optional[str]:
        """One batch (optimizer step) finished: advance the clock and save if ``BATCH_CHECKPOINT`` is due.
        Returns the checkpoint's path when one was written."""
        self._fit_start()
        self.previous, self.clock = self.clock, self.clock.next_batch(samples, tokens, seconds)
        return self._event("batch", state, metrics)

    def end_epoch(self, state: StateLike, *, metrics: Optional[Mapping[str, float]] = None) -> Optional[str]:
        """The dataloader is exhausted: advance the epoch and save if ``EPOCH_CHECKPOINT`` is due."""
        self._fit_start()
        self.previous, self.clock = self.clock, self.clock.next_epoch()
        return self._event("epoch", state, metrics)

    def save(self, state: StateLike, *, event: Optional[str] = None) -> str:
        """Save now, whatever the interval (Composer's ``save_checkpoint_to_save_folder``)."""
        self._fit_start()
        self._last_saved_batch = self.clock.batch
        name = self._native.render("filename", self.clock.as_tuple())
        self.history.append((name, self.clock.state_dict()))
        collective = self.sharded and self._dist is not None and self.world_size > 1
        error: Optional[BaseException] = None
        try:
            ckpt = self._checkpoint(state() if callable(state) else state)
            skeleton = _pickle.dumps(ckpt)
            del ckpt
            staged = any(r.storage.device.type != "cpu" for r in skeleton.storages)
            if staged:
                self._staging = self._staging or _pickle.HostStaging()
                self._staging.stage(skeleton)
            try:
                result = self._native.save(
                    name, self.clock.as_tuple(), event, skeleton.pickle, [r.as_tuple() for r in skeleton.storages]
                )
            finally:
                if staged:
                    self._staging.release()
        except BaseException as e:
            self.history.pop()
            if not collective:
                raise
            error = e  # reach the collective first, so the other ranks do not hang
        if collective:
            self._all_saved(error is None)
            if error is not None:
                raise error
        self.last_save = result
        self._warn(self._native.poll())
        return result.path

    def _all_saved(self, saved: bool) -> None:
        """Sharded, with a process group: wait for every rank's save (its shard and, without a store,
        its record are in place once it returns; with ``async_save``, once it was staged) and learn
        whether all of them saved. Then global
        rank 0 commits the step: without a store at once, the records being there (``latest`` has
        moved when ``save`` returns); with one, its commit thread is woken and commits once every
        upload is confirmed. When a rank failed, the step stays uncommitted (rank 0 reports it after
        ``commit_timeout_s``) and that rank raises its error."""
        import torch

        device = torch.device("cpu")
        if self._dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        flag = torch.tensor([1 if saved else 0], dtype=torch.int32, device=device)
        self._dist.all_reduce(flag, op=self._dist.ReduceOp.MIN)
        if self.rank == 0 and int(flag.item()) == 1:
            # Written behind training (async_save), or uploaded, the shards are not all in place yet:
            # the commit thread is only woken, and commits the step when the last record appears.
            later = self._native.uploads or self._native.is_async
            self._native.wait_for_commits(0.0 if later else None)

    @property
    def done(self) -> bool:
        """True once ``max_duration`` is reached."""
        return self._max is not None and self._max.reached(self.clock)

    @property
    def saved_checkpoints(self) -> list[str]:
        return self._native.saved_checkpoints()

    def close(self) -> None:
        """Wait for uploads and the remote ``latest`` (sharded, on global rank 0: for the commits);
        raises if an upload failed or a step was not committed."""
        self._native.finish()

    def commits(self) -> dict[str, Any]:
        """Sharded, global rank 0: what its commits came to so far, ``{"committed": [step, ...],
        "failed": [(step, message), ...], "pending": n}`` (a step is global rank 0's shard name).
        Other ranks get an empty report."""
        return self._native.wait_for_commits(0.0)

    def __enter__(self) -> "Saver":
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._native.close()

    # ---- resume ----------------------------------------------------------------------------------

    def latest(self) -> Optional[str]:
        """The checkpoint ``latest`` names: the local link, else the remote pointer (downloaded).
        Sharded: this rank's own shard of the newest committed step (downloaded when the folder does
        not hold it as the step's manifest lists it)."""
        if self.sharded:
            found = self._native.resume()
            return None if found is None else found[0]
        link = self._native.render("latest_filename", self.clock.as_tuple())
        if link is not None and os.path.exists(link):
            return link
        return self._native.download_remote_latest()

    def load(self, path: Optional[str] = None, *, map_location: Any = "cpu", weights_only: bool = False) -> dict:
        """Load ``path`` (default: :meth:`latest`) and restore the clock, the saver's history and the RNG
        states. Returns your entries of ``state`` (``{}`` when there is nothing to resume)."""
        import torch

        path = path or self.latest()
        if path is None:
            return {}
        ckpt = torch.load(path, map_location=map_location, weights_only=weights_only)
        state = dict(ckpt["state"])
        ts = state.pop("timestamp", None)
        if ts is not None:
            self.clock = Clock.from_state_dict(ts["Timestamp"])
            self.previous = None
        state.pop("run_name", None)
        callbacks = dict(state.pop("callbacks", {}))
        mine = callbacks.pop("CheckpointSaver", {})
        self.history = [(p, t) for p, t in mine.get("all_saved_checkpoints_to_timestamp", [])]
        if callbacks:
            state["callbacks"] = callbacks
        if self.rng and "rng" in ckpt:
            _load_rng(ckpt["rng"])
        return state

    # ---- internals -------------------------------------------------------------------------------

    def _fit_start(self) -> None:
        if not self._started:
            self._native.fit_start(self.clock.as_tuple())
            self._started = True

    def _event(self, event: str, state: StateLike, metrics: Optional[Mapping[str, float]]) -> Optional[str]:
        if self._callable_interval is not None:
            due = bool(self._callable_interval(self, event))
        else:
            due = bool(self._native.should_save(self._training_state(metrics), event))
        if due and self._last_saved_batch != self.clock.batch:  # one save per batch, as Composer
            return self.save(state, event=event)
        return None

    def _training_state(self, metrics: Optional[Mapping[str, float]]) -> dict[str, Any]:
        if self._max is None:
            raise ValueError("cairn.Saver needs max_duration (e.g. '10ep' or '5000ba') to follow save_interval")
        return {
            "timestamp": self.clock.as_tuple(),
            "previous_timestamp": None if self.previous is None else self.previous.as_tuple(),
            "max_duration": (self._max.value, self._max.unit),
            "dataloader_len": self.dataloader_len,
            "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        }

    def _checkpoint(self, user: Mapping[str, Any]) -> dict[str, Any]:
        """Composer's layout (checkpoint.rs `build`, state.py:1028-1090 order)."""
        user = dict(user)
        if self.weights_only:
            state = {k: user[k] for k in ("model", "integrations", "metadata") if k in user}
            ckpt: dict[str, Any] = {"state": state}
        else:
            callbacks = dict(user.pop("callbacks", {}))
            callbacks["CheckpointSaver"] = {"all_saved_checkpoints_to_timestamp": list(self.history)}
            user["callbacks"] = callbacks
            user["timestamp"] = {"Timestamp": self.clock.state_dict()}
            user["run_name"] = self.run_name
            order = ["model", "optimizers", "schedulers", "algorithms", "callbacks", "scaler", "timestamp",
                     "rank_zero_seed", "train_metrics", "eval_metrics", "run_name", "dataset_state",
                     "integrations", "metadata"]  # yapf: disable
            state = {k: user.pop(k) for k in order if k in user}
            state.update(user)
            ckpt = {"state": state}
            if self.rng:
                ckpt["rng"] = [_rng_state()]
        if self._ignore_keys_fn is not None:
            self._ignore_keys_fn(ckpt)  # in-process, unsandboxed
            ckpt["state"] = ckpt.get("state", {})
        return ckpt

    def _warn(self, events: list) -> None:
        import warnings

        for kind, message in events:
            if kind == "upload-exists":
                raise FileExistsError(message)
            if kind in ("upload-failed", "commit-failed", "save-failed"):  # on_failure = "fail"
                raise RuntimeError(message)
            if kind == "written":  # a save behind training is durable (async_save)
                continue
            warnings.warn(message)


def _process_group() -> Any:
    """``torch.distributed`` when a process group is initialised, else ``None``."""
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


@dataclass(frozen=True)
class _MaxDuration:
    value: int
    unit: str

    _FIELD = {"ep": "epoch", "ba": "batch", "sp": "sample", "tok": "token", "iter": "iteration"}

    def reached(self, clock: Clock) -> bool:
        return getattr(clock, self._FIELD[self.unit]) >= self.value


def _parse_max_duration(text: str) -> _MaxDuration:
    import re

    m = re.fullmatch(r"\s*([0-9_]+)\s*(ep|ba|sp|tok|iter)\s*", str(text), re.IGNORECASE)
    if not m or int(m.group(1).replace("_", "")) <= 0:
        raise ValueError(f"max_duration {text!r}: expected a positive count in ep, ba, sp, tok or iter")
    return _MaxDuration(int(m.group(1).replace("_", "")), m.group(2).lower())


def _rng_state() -> dict[str, Any]:
    """composer/utils/reproducibility.py:185-192 (one rank)."""
    import numpy as np
    import torch

    out: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def _load_rng(states: list) -> None:
    import numpy as np
    import torch

    if not states:
        return
    s = states[0]
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if "cuda" in s and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.set_rng_state(s["cuda"])
