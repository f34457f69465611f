"""A small Composer model trained on CPU, with either saver, and what it saved.

``run(saver_factory, ...)`` trains in the current directory and returns a ``Run``: every save as
(event, epoch, batch, path) in order, the loss of every batch, the files of the folder, where
``latest`` points, and the saver. ``comparable(torch.load(path))`` turns a checkpoint into a structure
two runs can be compared with (tensors as dtype/shape/bytes; wall-clock durations dropped, since they
differ between any two runs).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from composer import Trainer
from composer.core import Callback, Event, State
from composer.loggers import Logger
from composer.models import ComposerClassifier
from composer.optim import CosineAnnealingScheduler
from torchmetrics.classification import MulticlassAccuracy

EVENTS = {Event.BATCH_CHECKPOINT: "batch", Event.EPOCH_CHECKPOINT: "epoch", Event.ITERATION_CHECKPOINT: "iteration"}


def make_model(width: int = 16) -> ComposerClassifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 4))
    return ComposerClassifier(net, num_classes=4, train_metrics=MulticlassAccuracy(num_classes=4, average="micro"))


def make_loader(samples: int, batch_size: int) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(samples, 8, generator=g)
    y = torch.randint(0, 4, (samples,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


class Recorder(Callback):
    """Placed after the saver: notes each save (the saver's history grew) and each batch's loss."""

    def __init__(self, saver):
        self.saver = saver
        self.saves: list[tuple[str, int, int, str]] = []
        self.losses: list[tuple[int, float]] = []
        self._seen = 0

    def _check(self, state: State, event: Event):
        history = list(self.saver.all_saved_checkpoints_to_timestamp)
        if len(history) > self._seen:
            for path in history[self._seen:]:
                self.saves.append((EVENTS[event], int(state.timestamp.epoch), int(state.timestamp.batch), path))
            self._seen = len(history)

    def fit_start(self, state: State, logger: Logger):
        self._seen = len(self.saver.all_saved_checkpoints_to_timestamp)

    def batch_end(self, state: State, logger: Logger):
        self.losses.append((int(state.timestamp.batch), float(state.loss)))

    def batch_checkpoint(self, state: State, logger: Logger):
        self._check(state, Event.BATCH_CHECKPOINT)

    def epoch_checkpoint(self, state: State, logger: Logger):
        self._check(state, Event.EPOCH_CHECKPOINT)

    def iteration_checkpoint(self, state: State, logger: Logger):
        self._check(state, Event.ITERATION_CHECKPOINT)


@dataclass
class Run:
    saves: list
    losses: list
    files: dict
    latest: Optional[str]
    saver: Any
    trainer: Any = field(repr=False, default=None)


def run(
    saver_factory: Callable[..., Any],
    *,
    save_interval: Any,
    max_duration: str,
    samples: int,
    batch_size: int,
    folder: str = "ck",
    run_name: str = "side-by-side",
    load_path: Optional[str] = None,
    autoresume: bool = False,
    saver_kwargs: Optional[dict] = None,
    trainer_kwargs: Optional[dict] = None,
) -> Run:
    saver = saver_factory(folder=folder, save_interval=save_interval, **(saver_kwargs or {}))
    recorder = Recorder(saver)
    model = make_model()
    trainer = Trainer(
        model=model,
        train_dataloader=make_loader(samples, batch_size),
        max_duration=max_duration,
        optimizers=torch.optim.Adam(model.parameters(), lr=1e-2),
        schedulers=CosineAnnealingScheduler(t_max="8ba"),  # not max_duration: split runs must match
        callbacks=[saver, recorder],
        save_metrics=True,
        run_name=run_name,
        device="cpu",
        seed=17,
        progress_bar=False,
        log_to_console=False,
        load_path=load_path,
        autoresume=autoresume,
        **(trainer_kwargs or {}),
    )
    try:
        trainer.fit()
    finally:
        trainer.close()
    files = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        p = os.path.join(folder, name)
        files[name] = ("link", os.readlink(p)) if os.path.islink(p) else ("file", os.path.getsize(p) > 0)
    latest = os.path.join(folder, "latest-rank0.pt")
    latest_target = os.readlink(latest) if os.path.islink(latest) else None
    return Run(recorder.saves, recorder.losses, files, latest_target, saver, trainer)


def comparable(obj: Any) -> Any:
    """A checkpoint as plain data: tensors by content, wall-clock fields dropped."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        return ("tensor", str(t.dtype), tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    if isinstance(obj, dict):
        return (type(obj).__name__, [(k, comparable(v)) for k, v in obj.items() if not str(k).endswith("_wct")])
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, [comparable(v) for v in obj])
    if isinstance(obj, np.ndarray):
        return ("ndarray", str(obj.dtype), obj.shape, obj.tobytes())
    if isinstance(obj, datetime.timedelta):
        return ("timedelta",)
    return obj


def load(path: str) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)
