"""cairn: Composer's CheckpointSaver re-implemented in Rust, for Python training loops.

- ``cairn.composer.CheckpointSaver``: a drop-in subclass of ``composer.callbacks.CheckpointSaver``
  (``from cairn.composer import CheckpointSaver``; needs Composer, imported only then).
- ``cairn.Saver``: the same saver for plain PyTorch loops (needs torch, imported only when used).
- ``cairn.PolicyError``: a WebAssembly ``save_interval`` or ``ignore_keys`` policy failed.
- ``cairn.InternalError``: a bug in cairn (a Rust panic, stopped at the boundary).

``import cairn`` needs nothing but this package: torch and Composer are imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    from . import _native
except ImportError as _e:  # the extension is not built (a source checkout): the pure-Python parts still import
    _native = None
    _native_error: ImportError | None = _e
else:
    _native_error = None

if _native is not None:
    __version__: str = _native.__version__
    PolicyError = _native.PolicyError
    InternalError = _native.InternalError
else:
    try:
        from importlib.metadata import version as _version

        __version__ = _version("cairn")
    except Exception:  # not installed either
        __version__ = "0+unknown"

    class PolicyError(RuntimeError):
        """A WebAssembly policy failed (trap, fuel or time exhausted, invalid answer)."""

        policy: str = ""
        kind: str = ""

    class InternalError(RuntimeError):
        """A bug in cairn (a Rust panic, stopped at the boundary)."""


if TYPE_CHECKING:
    from .saver import Saver

__all__ = ["InternalError", "PolicyError", "Saver", "__version__"]


def _require_native() -> Any:
    """The native module, or an ImportError that says how to build it."""
    if _native is None:
        raise ImportError(
            "cairn's native extension (cairn._native) is not built; install the package with "
            "`pip install ./host/python`"
        ) from _native_error
    return _native


def __getattr__(name: str) -> Any:
    # `cairn.Saver` imports torch: only when asked for.
    if name == "Saver":
        from .saver import Saver

        return Saver
    raise AttributeError(f"module 'cairn' has no attribute {name!r}")
