"""cairn._pickle.dumps: the pickle torch.save writes, and the storages it references, without copying.

``data.pkl`` must be byte-identical to ``torch.save``'s and every storage must be the exact bytes of the
matching ``data/<key>`` record, read from the (data_ptr, nbytes) handed to the native writer: then the
file cairn writes loads in ``torch.load`` as the very same objects, whatever they are.
"""

import collections
import ctypes
import datetime
import enum
import io
import zipfile

import numpy as np
import pytest
import torch

from cairn import _pickle


def torch_records(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    z = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    return {n.split("/", 1)[1]: z.read(n) for n in z.namelist()}


def check_same_as_torch(obj):
    records = torch_records(obj)
    sk = _pickle.dumps(obj)
    assert sk.pickle == records["data.pkl"]
    assert sorted(k for k in records if k.startswith("data/")) == sorted(f"data/{r.key}" for r in sk.storages)
    for r in sk.storages:
        got = ctypes.string_at(r.data_ptr, r.nbytes) if r.nbytes else b""
        assert got == records[f"data/{r.key}"], r.key
    return sk


class Color(enum.Enum):
    RED = 1


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int16, torch.int32,
          torch.int64, torch.uint8, torch.bool]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype(dtype):
    t = (torch.arange(24) % 7).to(dtype).reshape(2, 3, 4)
    check_same_as_torch({"t": t, "scalar": t[0, 0, 0].clone(), "empty": torch.empty(0, dtype=dtype)})


def test_views_and_shared_storages_are_written_once():
    base = torch.arange(20, dtype=torch.float32)
    obj = {"base": base, "view": base[3:9], "strided": base.reshape(4, 5).t(), "tied": base}
    sk = check_same_as_torch(obj)
    assert len(sk.storages) == 1 and sk.storages[0].nbytes == 80
    assert sk.storages[0].data_ptr == base.untyped_storage().data_ptr()  # no copy


def test_parameters_grads_and_metadata():
    lin = torch.nn.Linear(3, 2)
    check_same_as_torch({"p": lin.weight, "sd": lin.state_dict(), "rg": torch.ones(2, requires_grad=True)})


def test_arbitrary_objects():
    obj = {
        "td": datetime.timedelta(seconds=3.25),
        "np": np.arange(5, dtype=np.uint32),
        "rng": np.random.get_state(),
        "enum": Color.RED,
        "od": collections.OrderedDict(a=1),
        "tuple": (1, 2.5, None, "x", b"\x00\xff"),
        "big": 2**80,
        "set": {1, 2},
        "shared": [torch.ones(2)] * 2,
    }
    check_same_as_torch(obj)


def test_composer_checkpoint_dict(tmp_path, monkeypatch):
    pytest.importorskip("composer")
    import composer_harness as h
    from composer.callbacks import CheckpointSaver
    from composer.utils import reproducibility

    monkeypatch.chdir(tmp_path)
    r = h.run(CheckpointSaver, save_interval="2ba", max_duration="1ep", samples=8, batch_size=4)
    state = r.trainer.state
    ckpt = {"state": state.state_dict(), "rng": reproducibility.get_rng_state()}
    sk = check_same_as_torch(ckpt)
    assert sk.storage_bytes > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensors_are_staged_into_pinned_buffers():
    t = torch.arange(1000, dtype=torch.float32, device="cuda")
    sk = _pickle.dumps({"t": t})
    staging = _pickle.HostStaging()
    staging.stage(sk)
    ref = sk.storages[0]
    assert ref.storage.is_pinned()
    assert ctypes.string_at(ref.data_ptr, ref.nbytes) == t.cpu().numpy().tobytes()
    assert sk.pickle == torch_records({"t": t})["data.pkl"]  # location stays cuda:0
    staging.release()
