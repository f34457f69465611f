"""cairn.Saver, the framework-free API, in a plain PyTorch loop."""

import os

import pytest
import torch

from conftest import needs_native


def small_model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    return m, torch.optim.Adam(m.parameters(), lr=1e-2)


def train_step(m, opt):
    x = torch.randn(3, 4)
    loss = m(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss)


@needs_native
def test_save_and_load_round_trip(tmp_path, monkeypatch):
    import cairn

    monkeypatch.chdir(tmp_path)
    m, opt = small_model()
    saver = cairn.Saver(folder="ck", filename="step{batch}.pt", run_name="plain")
    train_step(m, opt)
    saver.clock = saver.clock.next_batch(3, 0, 0.5)
    path = saver.save(lambda: {"model": m.state_dict(), "optimizers": opt.state_dict()})
    assert path == "ck/step1.pt"
    assert os.readlink("ck/latest-rank0.pt") == "step1.pt"

    ckpt = torch.load(path, weights_only=False)
    assert list(ckpt) == ["state", "rng"]
    assert list(ckpt["state"]) == ["model", "optimizers", "callbacks", "timestamp", "run_name"]
    assert ckpt["state"]["timestamp"]["Timestamp"]["batch"] == 1
    assert ckpt["state"]["callbacks"]["CheckpointSaver"]["all_saved_checkpoints_to_timestamp"][0][0] == path

    fresh = cairn.Saver(folder="ck", filename="step{batch}.pt", run_name="plain")
    state = fresh.load()
    assert fresh.clock.batch == 1 and fresh.clock.total_wct == 0.5
    assert [p for p, _ in fresh.history] == [path]
    for k, v in m.state_dict().items():
        assert torch.equal(state["model"][k], v)


@needs_native
def test_interval_schedule_in_a_plain_loop(tmp_path, monkeypatch):
    import cairn

    monkeypatch.chdir(tmp_path)
    m, opt = small_model()
    saver = cairn.Saver(folder="ck", save_interval="3ba", max_duration="8ba", run_name="plain", dataloader_len=4)
    written = []
    while not saver.done:
        train_step(m, opt)
        p = saver.step(lambda: {"model": m.state_dict()}, samples=3)
        if saver.clock.batch_in_epoch == 4:
            p = p or saver.end_epoch(lambda: {"model": m.state_dict()})
        if p:
            written.append(p)
    saver.close()
    # Composer's schedule for 3ba over 8 batches of 4 per epoch: ba3, ba6, and the final save at
    # BATCH_CHECKPOINT of ba8 (max_duration is in batches, so before the epoch counter moves).
    assert written == ["ck/ep0-ba3-rank0.pt", "ck/ep1-ba6-rank0.pt", "ck/ep1-ba8-rank0.pt"]


@needs_native
def test_bad_config_is_value_error(tmp_path):
    import cairn

    with pytest.raises(ValueError, match="save_interval"):
        cairn.Saver(folder=str(tmp_path), save_interval="1", max_duration="2ba")  # a bare number is not a time
