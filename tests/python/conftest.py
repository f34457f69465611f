"""Shared setup for tests/python.

The ``cairn`` package is imported from the installed wheel (tests/run.sh runs ``pip install
./host/python`` into the suite's venv first and checks that ``cairn._native`` imports). Without it
(a source checkout where the extension was never built), ``cairn`` is imported from the source tree,
and the tests that need the extension skip (``needs_native``).
"""

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


