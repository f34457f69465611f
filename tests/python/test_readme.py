"""The README's plain-PyTorch example, extracted from the README and run as written (so the README
cannot drift from the package): a fresh run saves on schedule, a rerun resumes and has nothing left."""

import os
import re
import subprocess
import sys

from conftest import ROOT, needs_native

pytestmark = needs_native


def readme_example() -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    marker = text.index("This block is run by tests/python/test_readme.py")
    return re.search(r"```python\n(.*?)```", text[marker:], re.S).group(1)


def test_the_readme_plain_loop_example_runs_and_resumes(tmp_path):
    code = readme_example()
    assert "cairn.Saver(" in code
    run = lambda: subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    first = run()
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "ckpts"
    assert sorted(os.listdir(folder)) == sorted([f"ep0-ba{b}-rank0.pt" for b in range(100, 1001, 100)] +
                                                ["latest-rank0.pt"])
    assert os.readlink(folder / "latest-rank0.pt") == "ep0-ba1000-rank0.pt"

    import torch

    ckpt = torch.load(folder / "ep0-ba500-rank0.pt", weights_only=False)
    assert set(ckpt["state"]) >= {"model", "optimizers", "timestamp", "run_name", "callbacks"}
    assert ckpt["state"]["timestamp"]["Timestamp"]["batch"] == 500 and "rng" in ckpt
    # A rerun resumes from latest (at the end already): nothing new, no conflict error.
    second = run()
    assert second.returncode == 0, second.stderr
    assert len(os.listdir(folder)) == 11
