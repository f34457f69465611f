"""Generate the small `.pt` fixtures under tests/fixtures/ with the real `torch.save`.

The Rust tests (host/tests/formats.rs) read these files and compare them against
`tests/fixtures/expected.json`, written here from the same objects, so the fixtures and their
expectations cannot drift apart. Keep everything tiny: the whole folder stays well under 100 KB.

Run: python tests/python/make_fixtures.py   (needs torch and numpy; see requirements.txt)
"""

import collections
import datetime
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures")

DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


def every_dtype():
    """One 2x3 tensor per dtype, values 0..5 (bool: alternating)."""
    out = collections.OrderedDict()
    for name, dt in DTYPES.items():
        if dt == torch.bool:
            t = torch.tensor([[True, False, True], [False, True, False]])
        else:
            t = torch.arange(6).reshape(2, 3).to(dt)
        out[name] = t
    return out


def views():
    """Tensors sharing one storage: a base, a row (offset), a column (stride), a transpose."""
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    return {
        "base": base,
        "row": base[1],
        "col": base[:, 2],
        "t": base.t(),
        "param": torch.nn.Parameter(torch.ones(2, 2)),
        "frozen": torch.nn.Parameter(torch.zeros(3), requires_grad=False),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }


def python_objects():
    """Plain Python values and the unmodelled objects Composer checkpoints hold."""
    return {
        "ints": [0, 1, -1, 255, 256, 65535, 65536, 2**31 - 1, 2**31, -(2**31) - 1, 2**62, 2**64 + 5, -(2**70)],
        "floats": [0.0, -1.5, 1e300, float("inf")],
        "strs": ["", "ascii", "héllo ☃"],
        "bytes": b"\x00\x01\xffabc",
        "nested": {"list": [1, [2, [3, {}]], []], "tuple": (1, "a", None, True, False), "empty": {}},
        "int_keys": {0: "zero", 7: "seven"},
        "timedelta": datetime.timedelta(days=1, seconds=2, microseconds=3),
        "numpy": np.arange(4, dtype=np.float64),
        "np_int": np.array([[1, 2], [3, 4]], dtype=np.int32),
        "torch_version": torch.__version__,
        "torch_version_obj": torch.torch_version.TorchVersion("2.7.0"),
        "rng_python": __import__("random").getstate(),
        "dtype": torch.float32,
    }


def module_state_dict():
    """A real nn.Module state dict: an OrderedDict carrying `_metadata`."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    return m.state_dict()


def describe(v):
    """A JSON description for the Rust test: kinds, dtypes, shapes, values."""
    if isinstance(v, torch.Tensor):
        return {
            "kind": "tensor",
            "dtype": str(v.dtype).replace("torch.", ""),
            "shape": list(v.shape),
            "stride": list(v.stride()),
            "offset": v.storage_offset(),
            "values": v.detach().flatten().to(torch.float64).tolist(),
            "parameter": isinstance(v, torch.nn.Parameter),
            "requires_grad": v.requires_grad,
        }
    if isinstance(v, dict):
        return {"kind": "dict", "items": {str(k): describe(x) for k, x in v.items()}}
    if isinstance(v, list):
        return {"kind": "list", "items": [describe(x) for x in v]}
    if isinstance(v, tuple):
        return {"kind": "tuple", "items": [describe(x) for x in v]}
    if isinstance(v, bool):
        return {"kind": "bool", "value": v}
    if isinstance(v, int):
        return {"kind": "int", "value": str(v)}
    if isinstance(v, float):
        return {"kind": "float", "value": repr(v)}
    if isinstance(v, torch.torch_version.TorchVersion):
        return {"kind": "object", "type": "torch.torch_version.TorchVersion"}
    if isinstance(v, str):
        return {"kind": "str", "value": v}
    if isinstance(v, bytes):
        return {"kind": "bytes", "value": v.hex()}
    if v is None:
        return {"kind": "none"}
    return {"kind": "object", "type": type(v).__module__ + "." + type(v).__qualname__}


def main():
    os.makedirs(OUT, exist_ok=True)
    fixtures = {
        "dtypes": every_dtype(),
        "views": views(),
        "objects": python_objects(),
        "module": module_state_dict(),
        "composer_like": {
            "state": {
                "model": module_state_dict(),
                "timestamp": {"Timestamp": {"epoch": 1, "batch": 2, "total_wct": datetime.timedelta(seconds=3)}},
                "rank_zero_seed": 17,
            },
            "rng": [{"python": (3, (1, 2, 3), None), "torch": torch.get_rng_state()[:16].clone()}],
        },
    }
    expected = {}
    for name, obj in fixtures.items():
        path = os.path.join(OUT, f"{name}.pt")
        torch.save(obj, path)
        expected[name] = describe(obj)
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, sort_keys=True)
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"wrote {len(fixtures)} fixtures, {total} bytes, torch {torch.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main()
