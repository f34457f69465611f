"""A pure-Python stand-in for ``cairn._native`` (host/python/python/cairn/_native.pyi), for tests only.

It implements the contract well enough to exercise the Python layer today, before the Rust module
exists: it writes ``data.pkl`` verbatim and reads every storage from its ``(data_ptr, nbytes)`` with
ctypes, exactly the bytes the native writer will stream. It does no filtering, no uploads and no
fsync; the real module replaces it (``CAIRN_NATIVE=real`` or simply once ``cairn._native`` imports).
"""

from __future__ import annotations

import ctypes
import datetime
import os
import tomllib
import zipfile
from typing import Any, Optional

from composer.core import Timestamp
from composer.utils import ensure_folder_has_no_conflicting_files, format_name_with_dist, format_name_with_dist_and_time

__version__ = "0.0.0+fake"

DEFAULTS = {
    "folder": "{run_name}/checkpoints",
    "filename": "ep{epoch}-ba{batch}-rank{rank}.pt",
    "remote_file_name": "{run_name}/checkpoints/ep{epoch}-ba{batch}-rank{rank}.pt",
    "latest_filename": "latest-rank{rank}.pt",
    "latest_remote_file_name": "{run_name}/checkpoints/latest-rank{rank}.pt",
    "save_interval": "1ep",
    "overwrite": False,
    "num_checkpoints_to_keep": -1,
    "weights_only": False,
    "ignore_keys": None,
    "num_concurrent_uploads": 1,
    "upload_timeout_in_seconds": 3600,
}

#: Calls made, for tests to inspect: (method, args...).
CALLS: list[tuple] = []


class PolicyError(RuntimeError):
    policy = ""
    kind = ""


class Config:
    def __init__(self, path: Optional[str] = None, *, checkpoint: dict[str, Any] = {}, base_dir: Optional[str] = None):
        doc: dict[str, Any] = {}
        if path is not None:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        section = dict(doc.get("checkpoint", {}))
        for k in list(section) + list(checkpoint):
            if k not in DEFAULTS:
                raise ValueError(f"unknown key checkpoint.{k}")
        for k, v in section.items():
            if v is False and k.endswith(("file_name", "filename")):
                section[k] = None
        self._checkpoint = {**DEFAULTS, **section, **checkpoint}
        self._run_name = doc.get("run_name")
        self._remote_url = doc.get("remote", {}).get("url")

    def checkpoint(self) -> dict[str, Any]:
        return dict(self._checkpoint)

    @property
    def run_name(self) -> Optional[str]:
        return self._run_name

    @property
    def remote_url(self) -> Optional[str]:
        return self._remote_url


def _ts(t: tuple) -> Timestamp:
    td = [datetime.timedelta(seconds=s) for s in t[10:]]
    return Timestamp(*t[:10], *td)


class SaveResult:
    def __init__(self, path: str, nbytes: int):
        self.path, self.bytes, self.seconds, self.deleted = path, nbytes, 0.0, []


_RECORD_ALIGN = 64


def _write_zip(path: str, archive: str, pickle: bytes, storages) -> int:
    """The torch zip layout (records in torch's order); storage bytes read from their pointers."""
    tmp = path + ".cairn-fake-tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", pickle)
        z.writestr(f"{archive}/.format_version", b"1")
        z.writestr(f"{archive}/.storage_alignment", b"64")
        z.writestr(f"{archive}/byteorder", b"little")
        for key, owner, ptr, nbytes in storages:
            data = ctypes.string_at(ptr, nbytes) if nbytes else b""
            z.writestr(f"{archive}/data/{key}", data)
        z.writestr(f"{archive}/version", b"3\n")
    os.replace(tmp, path)
    return os.path.getsize(path)


class Saver:
    def __init__(self, config: Config, *, run_name: str, folder=None, local_folder=None, filename=None,
                 latest_filename=..., remote_file_name=..., latest_remote_file_name=..., remote_url=None):
        c = config.checkpoint()
        self.run_name = run_name
        self._folder_t = local_folder or folder or c["folder"]
        self._filename = filename or c["filename"]
        self._latest = c["latest_filename"] if latest_filename is ... else latest_filename
        self._keep = c["num_checkpoints_to_keep"]
        self._overwrite = c["overwrite"]
        self._ignore_keys = c["ignore_keys"]
        self._saved: list[str] = []
        CALLS.append(("Saver", run_name, self._folder_t, self._filename, self._latest, remote_url))

    @property
    def folder(self) -> str:
        return format_name_with_dist(self._folder_t, self.run_name)

    @property
    def uploads(self) -> bool:
        return False

    def render(self, which: str, timestamp: tuple) -> Optional[str]:
        t = {"filename": self._filename, "latest_filename": self._latest}[which]
        if t is None:
            return None
        return os.path.join(self.folder, format_name_with_dist_and_time(t, self.run_name, _ts(timestamp)).lstrip("/"))

    def fit_start(self, timestamp: tuple, *, scan: bool = True) -> None:
        CALLS.append(("fit_start", timestamp[2], scan))
        os.makedirs(self.folder, exist_ok=True)
        if scan:
            ensure_folder_has_no_conflicting_files(self.folder, self._filename, _ts(timestamp))

    def should_save(self, state, event) -> bool:
        raise NotImplementedError("the fake native module has no interval scheduler")

    def save(self, path, timestamp, event, pickle, storages, *, archive_name="archive", filter=True, rotate=True):
        CALLS.append(("save", path, timestamp[2], event, len(pickle), [(k, n) for k, _, _, n in storages], rotate))
        if filter and self._ignore_keys:
            raise NotImplementedError("the fake native module does not filter (ignore_keys)")
        if os.path.exists(path) and not self._overwrite:
            raise FileExistsError(f"{path} already exists; cairn never replaces a checkpoint unless overwrite = true")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        n = _write_zip(path, archive_name, pickle, storages)
        if self._keep != 0 and self._latest is not None:
            link = self.render("latest_filename", timestamp)
            tmp = link + ".tmp-link"
            os.symlink(os.path.relpath(path, os.path.dirname(link)), tmp)
            os.replace(tmp, link)
        self._saved.append(path)
        result = SaveResult(path, n)
        if rotate:
            result.deleted = self.rotate()
        return result

    def rotate(self) -> list[str]:
        deleted = []
        if self._keep >= 0:
            while len(self._saved) > self._keep:
                p = self._saved.pop(0)
                os.remove(p)
                deleted.append(p)
        return deleted

    def poll(self) -> list:
        return []

    def saved_checkpoints(self) -> list[str]:
        return list(self._saved)

    def finish(self):
        CALLS.append(("finish",))
        return None

    def close(self) -> None:
        CALLS.append(("close",))

    def download_remote_latest(self):
        return None


class ObjectStore:
    def __init__(self, url: str):
        raise NotImplementedError("the fake native module has no object store")
