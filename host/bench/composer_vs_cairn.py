"""Composer's CheckpointSaver vs cairn's, on the same ~1 GB Composer training state, interleaved.

    pip install ./host/python            # a release build: what users get
    python host/bench/composer_vs_cairn.py [--gib 1.0] [--rounds 5] [--dir /path/on/target/disk]

A Composer ``Trainer`` trains an MLP with Adam for one batch on CPU, so its ``State`` holds what a
real checkpoint holds: weights and two Adam moments per parameter (about ``--gib`` in all), the
scheduler, metrics, timestamp, RNG states. Then each saver's ``_save_checkpoint(state, logger)``
(what ``BATCH_CHECKPOINT`` and ``Trainer.save_checkpoint_to_save_folder`` call) saves that state,
in turn every round (rotating which goes first), so drift in the page cache or the disk hits
them alike:

- ``composer``: ``composer.callbacks.CheckpointSaver`` 0.32.1: ``state.state_dict()`` and the RNG
  state, ``torch.save`` into an open file, the ``latest`` symlink. No fsync: what Composer does;
- ``composer+fsync``: the same, then ``fsync`` of the file (the durability cairn always provides);
- ``cairn``: ``cairn.composer.CheckpointSaver``: the same dict, pickled by Python, tensors streamed by
  cairn with the GIL released; fsync of file and folder, atomic ``latest``;
- ``cairn-async``: the same with ``async_save=True``: timed is what the save call holds training
  for (the pickle, the copy of every tensor into the staging buffer); the write behind training
  is then waited for, outside the timing, and reported as "behind s".

Printed per variant: wall seconds (median, min), GB/s, peak RSS above the process before the save
(``VmHWM`` after a reset through ``/proc/self/clear_refs``), and, in two extra rounds of their own
(the spinning thread takes a core, so it is not running during the timed rounds), how much a second
Python thread got done during the save relative to its idle rate (0: the GIL was held throughout).
Then the ratios.
Files are deleted (and the disk synced) between saves; both savers write into ``--dir``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time

import torch


def build_trainer(gib: float, folder: str):
    """A Trainer whose State checkpoints to about ``gib`` GiB, and the two savers in its callbacks."""
    from composer import Trainer
    from composer.callbacks import CheckpointSaver as ComposerSaver
    from composer.models import ComposerClassifier
    from torch.utils.data import DataLoader, TensorDataset
    from torchmetrics.classification import MulticlassAccuracy

    from cairn.composer import CheckpointSaver as CairnSaver

    width = 4096
    layers = max(1, round(gib * (1 << 30) / 3 / (width * width * 4)))  # weights + 2 Adam moments
    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)], torch.nn.Linear(width, 4))
    model = ComposerClassifier(net, num_classes=4, train_metrics=MulticlassAccuracy(num_classes=4, average="micro"))
    data = DataLoader(TensorDataset(torch.randn(4, width), torch.randint(0, 4, (4,))), batch_size=4)
    never = lambda state, event: False  # noqa: E731 - the benchmark calls the saves itself
    common = dict(save_interval=never, remote_file_name=None, latest_remote_file_name=None, overwrite=True)
    savers = {
        "composer": ComposerSaver(folder=os.path.join(folder, "composer"), **common),
        "cairn": CairnSaver(folder=os.path.join(folder, "cairn"), **common),
        "cairn-async": CairnSaver(folder=os.path.join(folder, "cairn-async"), async_save=True, **common),
    }
    trainer = Trainer(model=model, train_dataloader=data, max_duration="1ba", callbacks=list(savers.values()),
                      optimizers=torch.optim.Adam(model.parameters(), lr=1e-3), device="cpu", run_name="bench",
                      progress_bar=False, log_to_console=False, save_metrics=True)
    trainer.fit()
    return trainer, savers


def state_bytes(obj) -> int:
    seen, total = set(), 0

    def walk(o):
        nonlocal total
        if isinstance(o, torch.Tensor):
            s = o.untyped_storage()
            if s.data_ptr() not in seen:
                seen.add(s.data_ptr())
                total += s.nbytes()
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(obj)
    return total


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class Counter:
    """A Python thread counting as fast as the GIL lets it."""

    def __init__(self):
        self.n = 0
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop:
            self.n += 1

    def rate(self, seconds: float) -> float:
        a = self.n
        time.sleep(seconds)
        return (self.n - a) / seconds

    def stop(self):
        self._stop = True
        self._t.join()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=None, help="folder on the disk to measure (default: a temp dir)")
    args = ap.parse_args()

    import cairn

    root = tempfile.mkdtemp(prefix="cairn-bench-", dir=args.dir)
    trainer, savers = build_trainer(args.gib, root)
    state, logger = trainer.state, trainer.logger
    size = state_bytes({"state": state.state_dict()})
    print(f"Composer state: {size / (1 << 30):.2f} GiB in tensors; cairn {cairn.__version__}; folder {root}")

    behind: list = []

    def save(name: str, fsync: bool = False) -> str:
        saver = savers[name]
        saver._save_checkpoint(state, logger)
        if name == "cairn-async":
            t = time.perf_counter()
            saver._native_saver.flush()
            behind.append(time.perf_counter() - t)
            return saver._native_saver.saved_checkpoints()[-1]
        path = saver.saved_checkpoints[-1]
        if fsync:
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
        return path

    variants = {
        "composer": lambda: save("composer"),
        "composer+fsync": lambda: save("composer", fsync=True),
        "cairn": lambda: save("cairn"),
        "cairn-async": lambda: save("cairn-async"),
    }
    def measure(name: str, counter=None, idle: float = 1.0) -> None:
        os.sync()
        base = rss("VmRSS")
        reset_peak()
        n0, t0 = counter.n if counter else 0, time.perf_counter()
        nb = len(behind)
        path = variants[name]()
        dt = time.perf_counter() - t0 - (behind[-1] if len(behind) > nb else 0.0)
        if counter is None:
            results[name]["sec"].append(dt)
            results[name]["peak"].append(max(0, rss("VmHWM") - base))
        else:
            results[name]["thread"].append((counter.n - n0) / dt / idle)
        os.remove(path)

    results = {k: {"sec": [], "peak": [], "thread": []} for k in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # each variant first in turn
            measure(name)
    # The second thread takes a core: measured in rounds of their own, not in the timings above.
    counter = Counter()
    idle = counter.rate(0.5)
    for _ in range(2):
        for name in variants:
            measure(name, counter, idle)
    counter.stop()
    trainer.close()

    print(f"{'variant':16s} {'median s':>9s} {'min s':>7s} {'GB/s':>6s} {'peak RSS +MiB':>14s} {'2nd thread':>10s}")
    for name, r in results.items():
        med = statistics.median(r["sec"])
        print(f"{name:16s} {med:9.3f} {min(r['sec']):7.3f} {size / med / 1e9:6.2f} "
              f"{statistics.median(r['peak']) / (1 << 20):14.1f} {statistics.median(r['thread']):10.2f}")
    c = statistics.median(results["cairn"]["sec"])
    for ref in ("composer", "composer+fsync"):
        print(f"cairn (durable) vs {ref}: {statistics.median(results[ref]['sec']) / c:.2f}x faster")
    a = statistics.median(results["cairn-async"]["sec"])
    print(f"cairn-async: training held {a:.3f} s per save (the write behind it took a median "
          f"{statistics.median(behind):.3f} s more); "
          f"{100 * a / statistics.median(results['composer']['sec']):.1f}% of the time Composer holds it, "
          f"{100 * a / c:.1f}% of cairn's synchronous save")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
