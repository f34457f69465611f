"""Saves written behind training (``async_save=True``) from Python: cairn.Saver and the Composer class.

The file a save behind training writes must be the file a synchronous save writes; training may
change its tensors as soon as the save returns; a failure behind training is raised at the next save
(or at close), never lost.
"""

import os
import shutil

import pytest
import torch

import composer_harness as h
from conftest import needs_native


def state_of(weights):
    return {"model": {"w": weights}}


@needs_native
def test_async_files_equal_synchronous_ones(tmp_path, monkeypatch):
    import cairn

    monkeypatch.chdir(tmp_path)
    saved = {}
    for mode in (False, True):
        torch.manual_seed(3)
        w = torch.randn(256, 256)
        saver = cairn.Saver(folder=f"ck-{mode}", save_interval="2ba", max_duration="10ba", run_name="r",
                            rng=False, async_save=mode)
        results = []
        for _ in range(10):
            w.add_(0.5)
            if saver.step(lambda: state_of(w)):
                results.append(saver.last_save)
        saver.close()
        assert [r.behind for r in results] == [mode] * 5
        for r in results:
            assert 0 <= r.waited_seconds <= r.blocked_seconds
        saved[mode] = sorted(os.listdir(f"ck-{mode}"))
    assert saved[False] == saved[True]
    for name in saved[True]:
        a, b = h.load(f"ck-False/{name}"), h.load(f"ck-True/{name}")
        assert torch.equal(a["state"]["model"]["w"], b["state"]["model"]["w"])
        history = b["state"]["callbacks"]["CheckpointSaver"]["all_saved_checkpoints_to_timestamp"]
        assert [(p.replace("ck-True", "ck-False"), t) for p, t in history] == \
            a["state"]["callbacks"]["CheckpointSaver"]["all_saved_checkpoints_to_timestamp"]


@needs_native
def test_training_may_change_tensors_once_the_save_returns(tmp_path, monkeypatch):
    import cairn

    monkeypatch.chdir(tmp_path)
    w = torch.zeros(1 << 20)  # 4 MiB: the writer is still busy when training changes it
    saver = cairn.Saver(folder="ck", run_name="r", rng=False, async_save=True)
    saver.clock = saver.clock.next_batch(1, 0, 0.0)
    path = saver.save(state_of(w))
    assert saver.last_save.behind
    w.fill_(7.0)
    saver.close()
    assert torch.equal(h.load(path)["state"]["model"]["w"], torch.zeros(1 << 20))


@needs_native
def test_a_failure_behind_training_is_raised_at_the_next_save(tmp_path, monkeypatch):
    import cairn

    monkeypatch.chdir(tmp_path)
    w = torch.ones(64)
    saver = cairn.Saver(folder="ck", filename="b{batch}.pt", run_name="r", rng=False, async_save=True)
    saver.clock = saver.clock.next_batch(1, 0, 0.0)
    saver.save(state_of(w))
    saver._native.flush()
    # The second save's latest link cannot replace a folder: its writer fails after the file is durable.
    os.remove("ck/latest-rank0.pt")
    os.makedirs("ck/latest-rank0.pt/blocker")
    saver.clock = saver.clock.next_batch(1, 0, 0.0)
    second = saver.save(state_of(w))
    assert saver.last_save.behind
    saver.clock = saver.clock.next_batch(1, 0, 0.0)
    with pytest.raises(Exception, match="b2.pt"):
        saver.save(state_of(w))
    shutil.rmtree("ck/latest-rank0.pt")
    assert os.path.exists(second)  # durable: a failure after the write keeps the file


@needs_native
def test_a_name_taken_is_refused_before_staging(tmp_path, monkeypatch):
    import cairn

    monkeypatch.chdir(tmp_path)
    saver = cairn.Saver(folder="ck", filename="b{batch}.pt", run_name="r", rng=False, async_save=True)
    saver.clock = saver.clock.next_batch(1, 0, 0.0)
    saver.save(state_of(torch.ones(4)))
    with pytest.raises(FileExistsError):
        saver.save(state_of(torch.ones(4)))  # the same batch, the same name
    saver.close()


@needs_native
def test_composer_trainer_with_async_save(tmp_path, monkeypatch):
    pytest.importorskip("composer")
    from cairn.composer import CheckpointSaver

    monkeypatch.chdir(tmp_path)
    sync = h.run(lambda **kw: CheckpointSaver(**kw), save_interval="2ba", max_duration="2ep", samples=16,
                 batch_size=4, folder="sync")
    behind = h.run(lambda **kw: CheckpointSaver(**kw, async_save=True), save_interval="2ba", max_duration="2ep",
                   samples=16, batch_size=4, folder="async")
    assert behind.saver._native_saver.is_async
    assert sync.files == behind.files and sync.latest == behind.latest
    for name, (kind, _) in behind.files.items():
        if kind == "file":
            a, b = h.load(f"sync/{name}"), h.load(f"async/{name}")
            assert h.comparable(a["state"]["model"]) == h.comparable(b["state"]["model"])
            assert h.comparable(a["state"]["optimizers"]) == h.comparable(b["state"]["optimizers"])
    names = lambda r: [os.path.basename(p) for p in r.saver.saved_checkpoints]  # noqa: E731
    assert names(behind) == names(sync) and names(sync)

    # Resume from the async run's latest reaches the same state as the synchronous one.
    resumed = h.run(lambda **kw: CheckpointSaver(**kw, async_save=True), save_interval="2ba", max_duration="3ep",
                    samples=16, batch_size=4, folder="async", load_path="async/latest-rank0.pt")
    assert resumed.saves and resumed.saves[0][2] > 8
