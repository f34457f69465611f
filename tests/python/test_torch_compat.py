"""cairn's checkpoint files against the real PyTorch and the real Composer.

- Files cairn writes (via `cairn filter` of torch-written fixtures) load with
  `torch.load(weights_only=True)` and with `mmap=True`, with equal tensors, views and sharing.
- Checkpoints written by a real Composer Trainer (full, weights-only, .tar.gz, .pt.zst) inspect
  correctly, and after `cairn filter --ignore-keys 'state/optimizers'` still load through
  Composer's own loader with every other object equal.

The binary is $CAIRN_BIN (default: target/debug/cairn at the repository root; built with cargo if
missing). Run: pytest tests/python  (see requirements.txt).
"""

import datetime
import glob
import gzip
import bz2
import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile

import lz4.frame
import numpy as np
import pytest
import torch
import zstandard

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
FIXTURE_NAMES = ["dtypes", "views", "objects", "module", "composer_like"]

# What Composer's loader allows beyond torch's defaults (composer-checkpointing.md §6.3).
SAFE_GLOBALS = [
    datetime.timedelta,
    np.ndarray,
    np.dtype,
    (np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct,
    torch.torch_version.TorchVersion,
] + [type(np.dtype(t)) for t in (np.float64, np.float32, np.int32, np.int64, np.uint32, np.uint8)]


@pytest.fixture(scope="session")
def cairn():
    path = os.environ.get("CAIRN_BIN", os.path.join(ROOT, "target", "debug", "cairn"))
    if not os.path.exists(path):
        subprocess.run(["cargo", "build", "--bin", "cairn"], cwd=ROOT, check=True)
    assert os.path.exists(path), f"cairn binary not found at {path}"

    def run(*args, check=True):
        p = subprocess.run([path, *map(str, args)], capture_output=True, text=True)
        if check:
            assert p.returncode == 0, p.stderr
        return p

    return run


def load_weights_only(path, **kw):
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        return torch.load(path, weights_only=True, **kw)


def decompress(path, tmp):
    """The plain .pt inside any cairn/Composer checkpoint, using Python's own tools."""
    os.makedirs(tmp, exist_ok=True)
    if path.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.lzma")):
        with tarfile.open(path) as t:
            t.extractall(tmp, filter="data")
        return os.path.join(tmp, "composer_states.pt")
    openers = {
        ".pt.gz": gzip.open,
        ".pt.bz2": bz2.open,
        ".pt.xz": lzma.open,
        ".pt.lzma": lambda p: lzma.open(p, format=lzma.FORMAT_ALONE),
        ".pt.lz4": lz4.frame.open,
        ".pt.zst": lambda p: zstandard.open(p, "rb"),
    }
    for ext, opener in openers.items():
        if path.endswith(ext):
            out = os.path.join(tmp, "plain.pt")
            with opener(path) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
            return out
    return path


def assert_equal(a, b, path=""):
    """Deep equality: types, dict order, tensor dtype/shape/stride/offset/values, Parameters."""
    assert type(a) is type(b), (path, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert a.stride() == b.stride() and a.storage_offset() == b.storage_offset(), path
        assert a.requires_grad == b.requires_grad, path
        assert torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), path
        for k in a:
            assert_equal(a[k], b[k], f"{path}/{k}")
        assert getattr(a, "_metadata", None) == getattr(b, "_metadata", None), path
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{path}/{i}")
    elif isinstance(a, float) and a != a:
        assert b != b, path
    else:
        assert a == b, (path, a, b)


OUTPUT_EXTS = [".pt", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.lzma",
               ".pt.gz", ".pt.bz2", ".pt.lz4", ".pt.lzma", ".pt.xz", ".pt.zst"]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
@pytest.mark.parametrize("ext", OUTPUT_EXTS)
def test_cairn_written_files_load_in_torch(cairn, tmp_path, name, ext):
    src = os.path.join(FIXTURES, f"{name}.pt")
    out = str(tmp_path / f"out{ext}")
    cairn("filter", src, "-o", out, "--ignore-keys", "no-such-key")
    cairn("verify", out)
    plain = decompress(out, str(tmp_path))
    want = torch.load(src, weights_only=False)
    assert_equal(want, load_weights_only(plain))
    assert_equal(want, load_weights_only(plain, mmap=True))


def test_shared_storage_survives(cairn, tmp_path):
    out = tmp_path / "v.pt"
    cairn("filter", os.path.join(FIXTURES, "views.pt"), "-o", out, "--ignore-keys", "empty")
    v = load_weights_only(out, mmap=True)
    ptr = v["base"].untyped_storage().data_ptr()
    assert all(v[k].untyped_storage().data_ptr() == ptr for k in ("row", "col", "t"))
    assert "empty" not in v


def test_safetensors_output_loads_with_the_safetensors_layout(cairn, tmp_path):
    out = tmp_path / "w.safetensors"
    cairn("filter", os.path.join(FIXTURES, "dtypes.pt"), "-o", out, "--ignore-keys", "int8")
    raw = out.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    assert "int8" not in header and header["float32"]["dtype"] == "F32"
    assert "cairn.tree" in header["__metadata__"]
    # Read the float32 tensor back with numpy from the documented layout.
    start, end = header["float32"]["data_offsets"]
    vals = np.frombuffer(raw[8 + n + start:8 + n + end], dtype="<f4")
    assert vals.tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("ext", [".pt", ".pt.zst", ".tar"])
def test_shared_objects_stay_shared_through_cairn(cairn, tmp_path, ext):
    """torch.save writes an object referenced twice once (memo) and torch.load gives it back
    once: a 'billion laughs' of 40 levels is 2^40 lists as a tree. cairn reads it as a graph,
    writes it back the same way, and torch.load sees the same identities."""
    level = [torch.arange(4, dtype=torch.float32)]
    for _ in range(40):
        level = [level, level]
    big = torch.zeros(1 << 20)
    src = tmp_path / "shared.pt"
    torch.save({"laughs": level, "aliases": [big] * 1000, "pair": (level, level)}, src)
    out = str(tmp_path / f"out{ext}")
    cairn("filter", src, "-o", out, "--ignore-keys", "no-such-key")
    cairn("verify", out)
    # The 1,000 references to one tensor are rebuilt one by one (~130 bytes each).
    assert os.path.getsize(out) < os.path.getsize(src) + 256 * 1024
    back = load_weights_only(decompress(out, str(tmp_path)))
    node = back["laughs"]
    for _ in range(40):
        assert node[0] is node[1]
        node = node[0]
    assert torch.equal(node[0], torch.arange(4, dtype=torch.float32))
    # A tensor referenced again is written again over the same storage (one record).
    ptr = back["aliases"][0].untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() == ptr for t in back["aliases"])
    assert back["pair"][0] is back["pair"][1] is back["laughs"]
    entries = json.loads(cairn("inspect", "--json", out).stdout)["entries"]
    # The aliases; laughs: its tensor and one shared entry per level; the pair (a tuple).
    assert len(entries) == 1000 + 41 + 1, len(entries)


@pytest.mark.parametrize("tool,ext", [("gzip", "gz"), ("bzip2", "bz2"), ("lz4", "lz4"), ("lzma", "lzma"),
                                      ("xz", "xz"), ("zstd", "zst")])
def test_compressed_files_match_the_tools_composer_runs(cairn, tmp_path, tool, ext):
    """Composer pipes through `<tool>` and reads with `<tool> -dc`: both directions must work."""
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    src = os.path.join(FIXTURES, "views.pt")
    ours = tmp_path / f"ours.pt.{ext}"
    cairn("filter", src, "-o", ours, "--ignore-keys", "no-such-key")
    plain = tmp_path / "plain.pt"
    with open(plain, "wb") as f:
        subprocess.run([tool, "-dc", str(ours)], stdout=f, check=True)
    assert_equal(torch.load(src, weights_only=False), load_weights_only(plain))
    theirs = tmp_path / f"theirs.pt.{ext}"
    with open(theirs, "wb") as f:
        subprocess.run([tool, "-c", src], stdout=f, check=True)
    cairn("verify", theirs)


# ---------- real Composer ----------

COMPOSER_SCRIPT = r"""
import os, sys, torch, torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
from composer import Trainer
from composer.models import ComposerClassifier
from composer.callbacks import CheckpointSaver
torch.manual_seed(0)
out, ext, weights_only = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
class M(nn.Module):
    def __init__(s):
        super().__init__(); s.emb = nn.Embedding(50, 8); s.fc = nn.Linear(8, 2)
    def forward(s, x): return s.fc(s.emb(x).mean(1))
ds = TensorDataset(torch.randint(0, 50, (8, 4)), torch.randint(0, 2, (8,)))
model = ComposerClassifier(M(), num_classes=2)
saver = CheckpointSaver(folder=out, filename="ep{epoch}-ba{batch}-rank{rank}" + ext,
                        latest_filename="latest-rank{rank}" + ext, save_interval="2ba",
                        weights_only=weights_only, overwrite=True, remote_file_name=None)
Trainer(model=model, train_dataloader=DataLoader(ds, batch_size=4), max_duration="2ba", callbacks=[saver],
        optimizers=torch.optim.Adam(model.parameters()), device="cpu", progress_bar=False,
        log_to_console=False).fit()
"""

COMPOSER_CASES = [(".pt", False), (".pt", True), (".tar.gz", False), (".pt.zst", False)]


@pytest.fixture(scope="session")
def composer_checkpoints(tmp_path_factory):
    """One real Composer checkpoint per case: {(ext, weights_only): path}."""
    root = tmp_path_factory.mktemp("composer")
    made = {}
    for ext, weights_only in COMPOSER_CASES:
        out = root / f"{ext.strip('.').replace('.', '_')}-{int(weights_only)}"
        subprocess.run([sys.executable, "-c", COMPOSER_SCRIPT, out, ext, str(int(weights_only))],
                       check=True, capture_output=True, cwd=root)
        found = sorted(glob.glob(str(out / f"ep*-ba2-rank0{ext}")))
        assert len(found) == 1, os.listdir(out)
        made[(ext, weights_only)] = found[0]
    return made


def python_leaves(v, path=()):
    """Composer's path convention, as cairn inspect prints it."""
    if isinstance(v, dict) and v:
        for k, x in v.items():
            yield from python_leaves(x, path + (str(k),))
    elif isinstance(v, list) and v:
        for i, x in enumerate(v):
            yield from python_leaves(x, path + (str(i),))
    else:
        yield "/".join(path), v


def kind_of(v):
    if isinstance(v, torch.Tensor):
        return "tensor"
    for t, k in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"), (bytes, "bytes"),
                 (dict, "dict"), (list, "list"), (tuple, "tuple")):
        if type(v) is t or (k in ("dict",) and isinstance(v, dict)):
            return k
    return "none" if v is None else "object"


def composer_load(path, tmp):
    from composer.utils.checkpoint import safe_torch_load
    return safe_torch_load(decompress(path, tmp))


@pytest.mark.parametrize("case", COMPOSER_CASES, ids=lambda c: f"{c[0]}-{'weights' if c[1] else 'full'}")
def test_composer_checkpoint_inspects_correctly(cairn, composer_checkpoints, tmp_path, case):
    path = composer_checkpoints[case]
    tree = torch.load(decompress(path, str(tmp_path)), weights_only=False)
    out = json.loads(cairn("inspect", "--json", path).stdout)
    assert out["format"] == {".pt": "pt", ".tar.gz": "tar.gz", ".pt.zst": "pt.zst"}[case[0]]
    got = {e["path"]: e for e in out["entries"]}
    want = dict(python_leaves(tree))
    assert list(got) == list(want)
    for p, v in want.items():
        e = got[p]
        assert e["kind"] == kind_of(v), (p, e, type(v))
        if isinstance(v, torch.Tensor):
            assert e["dtype"] == str(v.dtype).removeprefix("torch.") and e["shape"] == list(v.shape), p
            assert e["nbytes"] == v.numel() * v.element_size(), p
    if case[1]:
        assert set(tree["state"]) == {"model", "metadata", "integrations"}


@pytest.mark.parametrize("case", COMPOSER_CASES, ids=lambda c: f"{c[0]}-{'weights' if c[1] else 'full'}")
@pytest.mark.parametrize("out_ext", [".pt", ".tar.gz", ".pt.zst"])
def test_filtered_composer_checkpoint_loads_in_composer(cairn, composer_checkpoints, tmp_path, case, out_ext):
    path = composer_checkpoints[case]
    original = composer_load(path, str(tmp_path / "orig"))
    out = str(tmp_path / f"filtered{out_ext}")
    p = cairn("filter", path, "-o", out, "--ignore-keys", "state/optimizers")
    if case[1]:
        assert "state/optimizers" in p.stderr  # no optimizers in a weights-only file: warned
    filtered = composer_load(out, str(tmp_path / "filtered"))
    original["state"].pop("optimizers", None)
    assert "optimizers" not in filtered["state"]
    assert_equal(original, filtered)


LOAD_SCRIPT = r"""
import sys, torch, torch.nn as nn
from composer import Trainer
from composer.models import ComposerClassifier
class M(nn.Module):
    def __init__(s):
        super().__init__(); s.emb = nn.Embedding(50, 8); s.fc = nn.Linear(8, 2)
    def forward(s, x): return s.fc(s.emb(x).mean(1))
path, ref, weights_only = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
torch.manual_seed(123)  # different initial weights: the load must overwrite them
model = ComposerClassifier(M(), num_classes=2)
Trainer(model=model, load_path=path, load_weights_only=weights_only, device="cpu",
        progress_bar=False, log_to_console=False)
want = torch.load(ref, weights_only=False)["state"]["model"]
got = model.state_dict()
assert list(got) == list(want), (list(got), list(want))
for k in want:
    assert torch.equal(got[k], want[k]), k
"""


@pytest.mark.parametrize("out_ext", [".pt", ".tar.gz", ".pt.zst"])
@pytest.mark.parametrize("ignore,weights_only", [("state/optimizers", True), ("no-such-key", False)])
def test_composer_trainer_resumes_from_cairn_output(cairn, composer_checkpoints, tmp_path, out_ext, ignore,
                                                    weights_only):
    """A real Trainer loads what cairn wrote (load_path), weights-only or a full resume."""
    src = composer_checkpoints[(".pt", False)]
    out = tmp_path / f"resume{out_ext}"
    cairn("filter", src, "-o", out, "--ignore-keys", ignore)
    p = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, out, src, str(int(weights_only))],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
