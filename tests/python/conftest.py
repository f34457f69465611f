"""Shared setup for tests/python.

The ``cairn`` package is imported from the installed wheel if there is one, else from the source tree
(host/python/python), whose ``cairn._native`` is then missing: tests that need the real extension
skip (``needs_native``), and ``fake_native`` swaps in tests/python/cairn_fake_native.py, which
implements the same interface in Python, so the pure-Python layer is tested today.
"""

import importlib
import os
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SRC = os.path.join(ROOT, "host", "python", "python")
HERE = os.path.dirname(__file__)

try:
    import cairn  # noqa: F401  (installed)
except ImportError:
    sys.path.insert(0, SRC)
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def native_available() -> bool:
    try:
        import cairn

        return cairn._native is not None
    except ImportError:
        return False


needs_native = pytest.mark.skipif(
    not native_available(),
    reason="cairn._native is not built yet (pip install ./host/python); enabled once it exists",
)


@pytest.fixture
def fake_native(monkeypatch):
    """cairn with the pure-Python stand-in for its native module."""
    import cairn

    fake = importlib.import_module("cairn_fake_native")
    fake.CALLS.clear()
    monkeypatch.setattr(cairn, "_native", fake)
    monkeypatch.setattr(cairn, "PolicyError", fake.PolicyError)
    return fake
