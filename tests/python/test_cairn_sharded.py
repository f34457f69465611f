"""Sharded saves from ``cairn.Saver`` under ``torchrun``: two rank processes in a gloo process group
(CPU, loopback), each writing its own shard through cairn's Python package, global rank 0 committing
each step with a create-only manifest; then a second ``torchrun`` that resumes every rank from its
own shard of the newest committed step (issue 15).

The ranks are real processes started by ``python -m torch.distributed.run --standalone
--nproc_per_node 2`` running ``sharded_worker.py``; the folder is checked from outside afterwards,
with ``torch.load`` and with ``cairn verify`` ($CAIRN_BIN, default target/debug/cairn).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, needs_native

HERE = os.path.dirname(__file__)
WORKER = os.path.join(HERE, "sharded_worker.py")


def _gloo_available() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available()


pytestmark = [
    needs_native,
    pytest.mark.skipif(not _gloo_available(), reason="torch.distributed with the gloo backend is not available"),
]


def torchrun(tmp_path, out, *args, expect_ok=True, folder=None):
    """Run the worker on two ranks (checkpoints in ``folder``, default ``tmp_path/ck``); the ranks'
    reports by rank."""
    os.makedirs(out, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RUN_NAME"):
        env.pop(var, None)
    p = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         WORKER, "--folder", folder or str(tmp_path / "ck"), "--out", str(out), *map(str, args)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    if expect_ok:
        assert p.returncode == 0, f"torchrun failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    else:
        assert p.returncode != 0, f"torchrun succeeded although a rank failed:\n{p.stderr[-3000:]}"
    reports = {}
    for rank in (0, 1):
        path = os.path.join(out, f"rank{rank}.json")
        if os.path.exists(path):
            with open(path) as f:
                reports[rank] = json.load(f)
    return reports, p


def manifest(ck, batch):
    path = ck / f"ep0-ba{batch}-rank0.pt.commit" / "manifest.json"
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def cairn_verify(folder):
    binary = os.environ.get("CAIRN_BIN", os.path.join(ROOT, "target", "debug", "cairn"))
    if not os.path.exists(binary):
        subprocess.run(["cargo", "build", "--bin", "cairn"], cwd=ROOT, check=True)
    return subprocess.run([binary, "verify", str(folder)], capture_output=True, text=True)


def shard_rank(path):
    return int(torch.load(path, weights_only=False)["state"]["shard_rank"])


@pytest.mark.parametrize("behind", [False, True], ids=["sync", "async_save"])
def test_two_ranks_under_torchrun_commit_every_step_and_each_resumes_its_own_shard(tmp_path, behind):
    ck = tmp_path / "ck"
    flags = ["--async-save"] if behind else []
    first, _ = torchrun(tmp_path, tmp_path / "first", "--until", 6, *flags)

    for rank in (0, 1):
        r = first[rank]
        assert r["world_size"] == 2 and r["saver_ranks"] == [rank, 2]
        assert r["is_async"] == behind
        assert sorted(map(int, r["saved"])) == [2, 4, 6]
        for batch, saved in r["saved"].items():
            assert saved["path"] == f"{ck}/ep0-ba{batch}-rank{rank}.pt"
            assert shard_rank(saved["path"]) == rank
    # Rank 0 committed every step, each manifest listing both shards as they are on disk.
    assert sorted(first[0]["commits"]["committed"]) == ["ep0-ba2-rank0.pt", "ep0-ba4-rank0.pt", "ep0-ba6-rank0.pt"]
    assert first[0]["commits"]["failed"] == [] and first[0]["commits"]["pending"] == 0
    assert first[1]["commits"] == {"committed": [], "failed": [], "pending": 0}
    for batch in (2, 4, 6):
        m = manifest(ck, batch)
        assert m is not None, f"step {batch} was not committed"
        assert m["world_size"] == 2 and m["run_name"] == "sharded-gloo" and m["batch"] == batch
        shards = {s["rank"]: s for s in m["shards"]}
        assert sorted(shards) == [0, 1]
        for rank, s in shards.items():
            assert s["file"] == f"ep0-ba{batch}-rank{rank}.pt"
            assert s["bytes"] == os.path.getsize(ck / s["file"])
    assert os.readlink(ck / "latest-rank0.pt") == "ep0-ba6-rank0.pt"
    verified = cairn_verify(ck)
    assert verified.returncode == 0, verified.stderr
    assert "ok step ep0-ba6-rank0.pt (2 shards" in verified.stdout, verified.stdout

    # A second torchrun: every rank loads its own shard of the newest committed step and goes on.
    second, _ = torchrun(tmp_path, tmp_path / "second", "--until", 8, "--resume", *flags)
    for rank in (0, 1):
        r = second[rank]
        assert r["resumed_from"] == f"{ck}/ep0-ba6-rank{rank}.pt"
        assert r["resumed_batch"] == 6
        assert r["resumed_shard_rank"] == rank
        assert r["resumed_weight"] == pytest.approx(first[rank]["saved"]["6"]["weight"])
        assert sorted(map(int, r["saved"])) == [8]
    assert second[0]["commits"]["committed"] == ["ep0-ba8-rank0.pt"]
    assert manifest(ck, 8) is not None
    assert os.readlink(ck / "latest-rank0.pt") == "ep0-ba8-rank0.pt"


def test_a_rank_failing_mid_save_leaves_its_step_uncommitted_and_both_resume_from_the_previous_commit(tmp_path):
    ck = tmp_path / "ck"
    # Rank 1's state callable raises at batch 6: it writes no shard and publishes no record.
    first, run = torchrun(
        tmp_path, tmp_path / "first", "--until", 6, "--fail-rank", 1, "--fail-at", 6, "--commit-timeout", 5,
        expect_ok=False,
    )
    assert "rank 1 fails its save at batch 6" in run.stdout + run.stderr
    assert manifest(ck, 2) is not None and manifest(ck, 4) is not None
    assert manifest(ck, 6) is None, "a step missing rank 1's shard was committed"
    assert not (ck / "ep0-ba6-rank1.pt").exists()
    assert os.readlink(ck / "latest-rank0.pt") == "ep0-ba4-rank0.pt"
    verified = cairn_verify(ck)
    assert verified.returncode != 0
    assert (
        f"step {ck}/ep0-ba6-rank0.pt is not committed: it has no manifest (records from ranks [0])" in verified.stderr
    ), verified.stderr

    second, _ = torchrun(tmp_path, tmp_path / "second", "--until", 8, "--resume")
    for rank in (0, 1):
        r = second[rank]
        assert r["resumed_from"] == f"{ck}/ep0-ba4-rank{rank}.pt"
        assert r["resumed_batch"] == 4
        assert r["resumed_shard_rank"] == rank
        assert r["resumed_weight"] == pytest.approx(first[rank]["saved"]["4"]["weight"])
        assert sorted(map(int, r["saved"])) == [6, 8]
    # Step 6 is saved again (rank 0's leftover shard replaced) and committed this time.
    assert second[0]["commits"]["committed"] == ["ep0-ba6-rank0.pt", "ep0-ba8-rank0.pt"]
    assert {s["rank"] for s in manifest(ck, 6)["shards"]} == {0, 1}
    assert shard_rank(ck / "ep0-ba6-rank1.pt") == 1
    assert os.readlink(ck / "latest-rank0.pt") == "ep0-ba8-rank0.pt"
    assert cairn_verify(ck).returncode == 0


def test_two_ranks_commit_through_the_s3_server_and_resume_by_download(tmp_path, s3):
    url, bucket = s3
    first, _ = torchrun(tmp_path, tmp_path / "first", "--until", 4, folder=f"{url}/runs")
    # Steps and objects are named relative to the store's prefix (runs/). Commits wait for uploads,
    # so they may finish out of order; latest never moves backwards.
    assert sorted(first[0]["commits"]["committed"]) == ["ep0-ba2-rank0.pt", "ep0-ba4-rank0.pt"]
    runs = bucket / "runs"
    for batch in (2, 4):
        with open(runs / f"ep0-ba{batch}-rank0.pt.commit" / "manifest.json") as f:
            m = json.load(f)
        for s in m["shards"]:
            assert s["object"] == f"ep0-ba{batch}-rank{s['rank']}.pt"
            assert s["bytes"] == os.path.getsize(runs / s["object"])
            assert shard_rank(runs / s["object"]) == s["rank"]
    with open(runs / "latest-rank0.pt.symlink") as f:
        assert f.read() == "runs/ep0-ba4-rank0.pt"

    # Nothing local (a URL folder is staged in a temporary folder, removed at close): each rank
    # downloads its own shard of the newest committed step.
    second, _ = torchrun(tmp_path, tmp_path / "second", "--until", 6, "--resume", folder=f"{url}/runs")
    for rank in (0, 1):
        r = second[rank]
        assert r["resumed_from"].endswith(f"/ep0-ba4-rank{rank}.pt")
        assert r["resumed_batch"] == 4 and r["resumed_shard_rank"] == rank
        assert r["resumed_weight"] == pytest.approx(first[rank]["saved"]["4"]["weight"])
    assert second[0]["commits"]["committed"] == ["ep0-ba6-rank0.pt"]
    with open(runs / "latest-rank0.pt.symlink") as f:
        assert f.read() == "runs/ep0-ba6-rank0.pt"


def test_sharded_is_a_checked_keyword_and_composer_integration_refuses_it(tmp_path, monkeypatch):
    import cairn

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"checkpoint\.filename 'ba\{batch\}\.pt' has no \{rank\}"):
        cairn.Saver(folder="ck", filename="ba{batch}.pt", run_name="r", sharded=True)
    with pytest.raises(ValueError, match=r"commit_timeout_s"):
        cairn.Saver(folder="ck", run_name="r", sharded=True, commit_timeout_s=0)
    one = cairn.Saver(folder="ck", run_name="r", sharded=True, commit_timeout_s=5)
    assert one.sharded and (one.rank, one.world_size) == (0, 1)

    pytest.importorskip("composer")
    from cairn.composer import CheckpointSaver

    (tmp_path / "job.toml").write_text('[checkpoint]\nfolder = "ck"\nsharded = true\n')
    with pytest.raises(NotImplementedError, match="sharded = true"):
        CheckpointSaver(config=str(tmp_path / "job.toml"))
