"""Composer's checkpoint write vs cairn's, on a ~1 GB training state, interleaved.

    .venv/bin/python bench/composer_vs_cairn.py [--gib 1.0] [--rounds 5] [--dir /path/on/target/disk]

The state is what Composer checkpoints for a model trained with Adam: ``{'state': {model, optimizers
(two moments per parameter), schedulers, timestamp, ...}, 'rng': [...]}`` built the way
``State.state_dict()`` shapes it, with a few large fp32 parameters (and one bf16, one int64 buffer)
summing to ``--gib``.

Variants, run in turn every round (so drift in the page cache or disk hits them alike):

- ``composer``: Composer 0.32.1's write, ``utils/checkpoint.py:_write_checkpoint_file`` (``torch.save``
  into an open file; no fsync: what Composer does);
- ``composer+fsync``: the same, then ``fsync`` of the file (the durability cairn always provides);
- ``cairn``: ``cairn._pickle.dumps`` + ``cairn._native.Saver.save`` (durable: fsync of file and folder,
  ``latest`` swapped), when the native module is built.

For each: wall seconds (median and min), GB/s, peak RSS above the state (``VmHWM`` after resetting it
through ``/proc/self/clear_refs``), and how much a second Python thread got done while the save ran
(its counter rate relative to an idle baseline: 0 = the GIL was held throughout). Ratios are
cairn / composer and cairn / composer+fsync.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "host", "python", "python"))


def build_state(gib: float) -> dict:
    """A Composer-shaped checkpoint dict whose tensors total about ``gib`` GiB (weights + 2 Adam moments)."""
    import collections
    import datetime
    import random

    import numpy as np

    weights_bytes = int(gib * (1 << 30) / 3)
    n = 8
    per = weights_bytes // n // 4
    model = collections.OrderedDict()
    for i in range(n):
        model[f"layers.{i}.weight"] = torch.randn(per)
    model["embed.bf16"] = torch.randn(1 << 20).to(torch.bfloat16)
    model["buffer.steps"] = torch.arange(1 << 16)
    opt_state = {
        k: {"step": torch.tensor(10.0), "exp_avg": torch.randn_like(v, dtype=torch.float32),
            "exp_avg_sq": torch.rand_like(v, dtype=torch.float32)}
        for k, v in model.items() if v.dtype == torch.float32
    }  # yapf: disable
    td = datetime.timedelta
    ts = {"iteration": 0, "epoch": 1, "batch": 100, "sample": 3200, "token": 0, "epoch_in_iteration": 1,
          "token_in_iteration": 0, "batch_in_epoch": 0, "sample_in_epoch": 0, "token_in_epoch": 0,
          "total_wct": td(seconds=12.5), "iteration_wct": td(seconds=12.5), "epoch_wct": td(0), "batch_wct": td(0)}
    return {
        "state": {
            "model": model,
            "optimizers": {"Adam": {"state": opt_state, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999),
                                                                          "params": list(opt_state)}]}},
            "schedulers": {"LambdaLR": {"base_lrs": [1e-3], "last_epoch": 100, "_step_count": 101}},
            "algorithms": [],
            "callbacks": {"CheckpointSaver": {"all_saved_checkpoints_to_timestamp": [("ck/ep1-ba100-rank0.pt", ts)]}},
            "scaler": {},
            "timestamp": {"Timestamp": ts},
            "rank_zero_seed": 17,
            "run_name": "bench",
            "dataset_state": {"train": None, "eval": {}},
            "integrations": {},
            "metadata": {"torch_version": torch.__version__, "device": "cpu", "precision": "fp32", "world_size": 1},
        },
        "rng": [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.random.get_rng_state()}],
    }


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
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


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


def composer_write(state, path, fsync):
    # composer/utils/checkpoint.py:1135-1138 (uncompressed): open(filename, 'wb') + torch.save(state_dict, f)
    with open(path, "wb") as f:
        torch.save(state, f)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def make_cairn_writer(folder):
    import cairn
    from cairn import _pickle

    native = cairn._require_native()
    config = native.Config(None, checkpoint={"folder": folder, "remote_file_name": None, "overwrite": True,
                                             "num_checkpoints_to_keep": 1})
    saver = native.Saver(config, run_name="bench", remote_url=None)
    saver.fit_start((0,) * 10 + (0.0,) * 4, scan=False)
    counter = iter(range(1 << 30))

    def write(state, path):
        i = next(counter)
        sk = _pickle.dumps(state)
        saver.save(path, (0, 1, i, 0, 0, 1, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0), "batch", sk.pickle,
                   [r.as_tuple() for r in sk.storages])

    return write


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=None, help="folder on the disk to measure (default: a temp dir)")
    args = ap.parse_args()

    root = tempfile.mkdtemp(prefix="cairn-bench-", dir=args.dir)
    state = build_state(args.gib)
    size = state_bytes(state)
    print(f"state: {size / (1 << 30):.2f} GiB in tensors; folder {root}")

    variants = {
        "composer": lambda p: composer_write(state, p, fsync=False),
        "composer+fsync": lambda p: composer_write(state, p, fsync=True),
    }
    try:
        variants["cairn"] = (lambda w: (lambda p: w(state, p)))(make_cairn_writer(root))
    except ImportError as e:
        print(f"cairn: skipped ({e})")

    counter = Counter()
    idle = counter.rate(0.5)
    results = {k: {"sec": [], "peak": [], "thread": []} for k in variants}
    for r in range(args.rounds):
        for name, write in variants.items():
            path = os.path.join(root, f"{name}-{r}.pt")
            base = rss("VmRSS")
            reset_peak()
            n0, t0 = counter.n, time.perf_counter()
            write(path)
            dt = time.perf_counter() - t0
            results[name]["sec"].append(dt)
            results[name]["peak"].append(max(0, rss("VmHWM") - base))
            results[name]["thread"].append((counter.n - n0) / dt / idle)
            os.remove(path)
            try:
                os.sync()
            except AttributeError:
                pass
    counter.stop()

    print(f"{'variant':16s} {'median s':>9s} {'min s':>7s} {'GB/s':>6s} {'peak RSS +MiB':>14s} {'2nd thread':>10s}")
    for name, r in results.items():
        med = statistics.median(r["sec"])
        print(f"{name:16s} {med:9.3f} {min(r['sec']):7.3f} {size / med / 1e9:6.2f} "
              f"{statistics.median(r['peak']) / (1 << 20):14.1f} {statistics.median(r['thread']):10.2f}")
    if "cairn" in results:
        c = statistics.median(results["cairn"]["sec"])
        for ref in ("composer", "composer+fsync"):
            print(f"cairn / {ref}: {c / statistics.median(results[ref]['sec']):.2f}x time")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
