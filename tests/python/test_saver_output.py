"""What `cairn run` saves, read by the real PyTorch.

Every checkpoint the saver writes loads with `torch.load(weights_only=True)` (with the globals
Composer itself allows: `datetime.timedelta` for the timestamp's wall clocks) and with `mmap=True`;
it has Composer's layout; `latest` loads as well; weights-only and `ignore_keys` shape the file.

The binary is $CAIRN_BIN (default: target/debug/cairn at the repository root).
"""

import datetime
import os
import subprocess

import pytest
import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def cairn_bin():
    path = os.environ.get("CAIRN_BIN", os.path.join(ROOT, "target", "debug", "cairn"))
    if not os.path.exists(path):
        subprocess.run(["cargo", "build", "--bin", "cairn"], cwd=ROOT, check=True)
    return path


def run_job(tmp_path, checkpoint_extra=""):
    config = tmp_path / "job.toml"
    config.write_text(
        'run_name = "py"\n'
        "[checkpoint]\n"
        'folder = "ck"\n'
        'save_interval = "2ba"\n'
        "remote_file_name = false\n"
        f"{checkpoint_extra}\n"
        "[train]\n"
        'max_duration = "4ba"\n'
        "batches_per_epoch = 3\n"
        "seconds_per_batch = 0\n"
        "model_mib = 1\n"
    )
    p = subprocess.run(
        [cairn_bin(), "run", "--config", str(config), "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    return tmp_path / "ck"


def load(path, **kw):
    with torch.serialization.safe_globals([datetime.timedelta]):
        return torch.load(path, weights_only=True, **kw)


def test_full_checkpoints_load_in_torch_with_composer_layout(tmp_path):
    ck = run_job(tmp_path)
    files = sorted(f for f in os.listdir(ck) if f.startswith("ep"))
    assert files == ["ep0-ba2-rank0.pt", "ep1-ba4-rank0.pt"]
    for name in files:
        plain = load(ck / name)
        mapped = load(ck / name, mmap=True)
        assert set(plain) == {"state", "rng"}
        state = plain["state"]
        assert list(state)[:2] == ["model", "optimizers"]
        for key in ("timestamp", "run_name", "callbacks", "integrations", "metadata", "rank_zero_seed"):
            assert key in state, key
        ts = state["timestamp"]["Timestamp"]
        assert isinstance(ts["total_wct"], datetime.timedelta)
        assert ts["batch"] == int(name.split("-ba")[1].split("-")[0])
        history = state["callbacks"]["CheckpointSaver"]["all_saved_checkpoints_to_timestamp"]
        assert history[-1][0].endswith(name)
        model = state["model"]
        assert all(t.dtype == torch.float32 for t in model.values())
        assert sum(t.numel() for t in model.values()) * 4 == 1 << 20
        adam = state["optimizers"]["Adam"]
        assert adam["param_groups"][0]["betas"] == (0.9, 0.999)
        # Optimizer state keyed by parameter name, as Composer's get_optimizer_state_dict saves it.
        assert adam["param_groups"][0]["params"] == list(model)
        for k, t in model.items():
            assert torch.equal(t, mapped["state"]["model"][k])
            assert adam["state"][k]["exp_avg"].shape == t.shape
            assert torch.equal(adam["state"][k]["exp_avg_sq"], mapped["state"]["optimizers"]["Adam"]["state"][k]["exp_avg_sq"])
            assert (adam["state"][k]["exp_avg_sq"] >= 0).all()
    latest = load(ck / "latest-rank0.pt")
    assert latest["state"]["timestamp"]["Timestamp"]["batch"] == 4


def test_weights_only_and_ignore_keys_shape_the_file(tmp_path):
    ck = run_job(tmp_path, "weights_only = true")
    sd = load(ck / "ep1-ba4-rank0.pt")
    assert set(sd) == {"state"}
    assert set(sd["state"]) == {"model", "integrations", "metadata"}

    other = tmp_path / "other"
    other.mkdir()
    ck = run_job(other, 'ignore_keys = ["state/optimizers", "rng"]')
    sd = load(ck / "ep1-ba4-rank0.pt")
    assert set(sd) == {"state"}
    assert "optimizers" not in sd["state"] and "model" in sd["state"]


@pytest.mark.parametrize("ext", [".pt.zst", ".tar.gz", ".pt.lz4"])
def test_compressed_and_tar_checkpoints_hold_a_loadable_pt(tmp_path, ext):
    ck = run_job(tmp_path, f'filename = "ep{{epoch}}-ba{{batch}}{ext}"\nlatest_filename = "latest{ext}"')
    name = f"ep1-ba4{ext}"
    assert (ck / name).exists()
    out = tmp_path / "plain.pt"
    p = subprocess.run([cairn_bin(), "filter", str(ck / name), "-o", str(out), "--ignore-keys", "nothing"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert load(out)["state"]["timestamp"]["Timestamp"]["batch"] == 4
