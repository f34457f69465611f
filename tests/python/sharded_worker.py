"""One rank of a sharded ``cairn.Saver`` run, started by ``torchrun`` (test_cairn_sharded.py).

Each rank joins a gloo process group (CPU, loopback), trains a small model whose data depend on its
rank, and saves its own shard every ``--interval`` batches until ``--until`` batches; global rank 0
commits each step. With ``--resume`` it first loads its own shard of the newest committed step. With
``--fail-rank R --fail-at B``, rank R's state callable raises at batch B (a rank failing mid-save:
it writes nothing for that step). With ``--async-save`` the shards are written behind training. Each rank writes what it saw to ``--out/rank<R>.json``.
"""

import argparse
import json
import os

import torch
import torch.distributed as dist

import cairn


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--folder", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--until", type=int, required=True)
    p.add_argument("--interval", default="2ba")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--fail-at", type=int, default=-1)
    p.add_argument("--commit-timeout", type=float, default=60.0)
    p.add_argument("--async-save", action="store_true")
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(100 + rank)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    saver = cairn.Saver(
        folder=args.folder,
        run_name="sharded-gloo",
        sharded=True,
        save_interval=args.interval,
        max_duration=f"{args.until}ba",
        commit_timeout_s=args.commit_timeout,
        async_save=args.async_save,
    )
    report = {
        "rank": rank,
        "world_size": world,
        "saver_ranks": [saver.rank, saver.world_size],
        "is_async": saver._native.is_async,
    }

    if args.resume:
        path = saver.latest()
        state = saver.load(path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizers"])
        report["resumed_from"] = path
        report["resumed_batch"] = saver.clock.batch
        report["resumed_shard_rank"] = int(state["shard_rank"])
        report["resumed_weight"] = model.weight.detach().flatten().tolist()

    def state():
        if rank == args.fail_rank and saver.clock.batch == args.fail_at:
            raise RuntimeError(f"rank {rank} fails its save at batch {saver.clock.batch}")
        return {"model": model.state_dict(), "optimizers": opt.state_dict(), "shard_rank": rank}

    saved = {}
    while not saver.done:
        x = torch.randn(8, 4) + rank
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        path = saver.step(state)
        if path is not None:
            saved[saver.clock.batch] = {"path": path, "weight": model.weight.detach().flatten().tolist()}
            report["saved"] = saved
            _write(args.out, rank, report)
    saver.close()
    report["commits"] = saver.commits()
    _write(args.out, rank, report)
    dist.destroy_process_group()


def _write(out: str, rank: int, report: dict) -> None:
    tmp = os.path.join(out, f".rank{rank}.json")
    with open(tmp, "w") as f:
        json.dump(report, f)
    os.replace(tmp, os.path.join(out, f"rank{rank}.json"))


if __name__ == "__main__":
    main()
