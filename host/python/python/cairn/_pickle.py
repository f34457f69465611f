"""The checkpoint's pickle, without its tensor bytes: what ``torch.save`` writes as ``data.pkl``.

``torch.save`` pickles the object with a ``persistent_id`` hook that replaces every tensor storage by
a reference ``('storage', torch.<T>Storage, key, location, numel)`` and then writes each storage as a
record ``data/<key>``. :func:`dumps` runs that very procedure (mirroring
``torch.serialization._save`` of torch 2.4-2.7, line for line where it matters) but stops before the
storages: it returns the pickle bytes and the list of storages, each with the pointer and length of
its bytes. cairn's native writer then writes ``data.pkl`` and streams every storage straight from
that memory, with the GIL released. So:

- every object in Composer's state (timedeltas, numpy arrays and RNG tuples, enums, OrderedDicts with
  ``_metadata``, metric and scheduler states, ``TorchVersion``...) is pickled by CPython's own
  pickler with the same reducers, memo and protocol (2) as ``torch.save``: ``torch.load`` gives back
  equal objects by construction, and ``data.pkl`` is byte-identical to ``torch.save``'s;
- tensor bytes are never copied or pickled by Python; storages shared by several tensors (views,
  tied weights) get one key and are written once, exactly as ``torch.save`` does.

Tensors on an accelerator are first copied into pinned host buffers (:class:`HostStaging`), as
``torch.save`` does when ``torch.utils.serialization.config.save.use_pinned_memory_for_d2h`` is on.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.serialization import location_tag, normalize_storage_type

#: ``torch.save``'s default protocol. Composer never changes it.
PROTOCOL = 2


@dataclass
class StorageRef:
    """One storage the pickle references as ``data/<key>``."""

    #: The record key (``"0"``, ``"1"``, ... in first-seen order, as torch numbers them).
    key: str
    #: The ``torch.UntypedStorage``; keeps the memory alive while cairn reads it.
    storage: Any
    #: Where its bytes are (``untyped_storage().data_ptr()``: the storage's base, not a view's).
    data_ptr: int
    #: How many bytes the record holds (the whole storage, as torch writes it).
    nbytes: int
    #: ``"cpu"``, ``"cuda:0"``, ... as written in the pickle.
    location: str

    def as_tuple(self) -> tuple[str, Any, int, int]:
        """The form ``cairn._native.Saver.save`` takes: ``(key, owner, data_ptr, nbytes)``."""
        return (self.key, self.storage, self.data_ptr, self.nbytes)


@dataclass
class Skeleton:
    """``data.pkl`` and the storages it references, in key order."""

    pickle: bytes
    storages: list[StorageRef]

    @property
    def storage_bytes(self) -> int:
        return sum(s.nbytes for s in self.storages)


def dumps(obj: Any, *, protocol: int = PROTOCOL) -> Skeleton:
    """Pickle ``obj`` as ``torch.save`` would, collecting the storages instead of writing them."""
    serialized: dict[str, Any] = {}
    id_map: dict[int, str] = {}
    storage_dtypes: dict[int, torch.dtype] = {}
    locations: dict[str, str] = {}

    def persistent_id(obj: Any) -> Optional[tuple]:
        # torch/serialization.py `_save.persistent_id` (torch 2.7.0, lines 1157-1200).
        if isinstance(obj, torch.storage.TypedStorage) or torch.is_storage(obj):
            if isinstance(obj, torch.storage.TypedStorage):
                storage = obj._untyped_storage
                storage_dtype = obj.dtype
                storage_type = getattr(torch, obj._pickle_storage_type())
                storage_numel = obj._size()
            else:
                storage = obj
                storage_dtype = torch.uint8
                storage_type = normalize_storage_type(type(obj))
                storage_numel = storage.nbytes()
            if str(storage.device) != "meta" and storage.data_ptr() != 0:
                seen = storage_dtypes.setdefault(storage.data_ptr(), storage_dtype)
                if seen != storage_dtype:
                    raise RuntimeError(
                        "Cannot save multiple tensors or storages that view the same data as different types"
                    )
            key = id_map.setdefault(storage._cdata, str(len(id_map)))
            if getattr(obj, "_fake_device", None) is not None:
                location = str(obj._fake_device)
            else:
                location = location_tag(storage)
            serialized[key] = storage
            locations[key] = location
            return ("storage", storage_type, key, location, storage_numel)
        return None

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Optional[tuple]:
            return persistent_id(obj)

    buf = io.BytesIO()
    _Pickler(buf, protocol=protocol).dump(obj)
    storages = []
    for key, storage in serialized.items():
        if str(storage.device) == "meta":
            raise ValueError("a meta tensor has no bytes to save")
        storages.append(StorageRef(key, storage, storage.data_ptr(), storage.nbytes(), locations[key]))
    return Skeleton(buf.getvalue(), storages)


class HostStaging:
    """Pinned host buffers that accelerator storages are copied into before cairn writes them.

    Buffers are kept between saves (keyed by size) so a run pays for pinning once; the copies of
    one save are issued ``non_blocking`` and synchronised once.
    """

    def __init__(self, pin: bool = True):
        self._pin = pin
        self._free: dict[int, list[torch.Tensor]] = {}
        self._lent: list[torch.Tensor] = []

    def stage(self, skeleton: Skeleton) -> Skeleton:
        """Replace every non-CPU storage of ``skeleton`` by a host copy (the pickle keeps its location)."""
        devices = set()
        for ref in skeleton.storages:
            if ref.storage.device.type == "cpu" or ref.nbytes == 0:
                continue
            host = self._take(ref.nbytes)
            host.untyped_storage().copy_(ref.storage, non_blocking=True)
            devices.add(ref.storage.device)
            ref.storage, ref.data_ptr = host, host.data_ptr()
        for device in devices:
            if hasattr(torch, "accelerator"):  # torch >= 2.6
                torch.accelerator.current_stream(device.index).synchronize()
            else:
                torch.cuda.synchronize(device)
        return skeleton

    def release(self) -> None:
        """Return the buffers lent for the last save (call once cairn has written them)."""
        for t in self._lent:
            self._free.setdefault(t.numel(), []).append(t)
        self._lent.clear()

    def _take(self, nbytes: int) -> torch.Tensor:
        pool = self._free.get(nbytes)
        t = pool.pop() if pool else torch.empty(nbytes, dtype=torch.uint8, pin_memory=self._pin)
        self._lent.append(t)
        return t
