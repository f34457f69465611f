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




# ---- policy components, built from source in policies/ (as the Rust tests build them) ----------

POLICIES_TARGET = os.path.join(ROOT, "target", "policies")


@pytest.fixture(scope="session")
def policies():
    """Path of a policy component by crate name (``policies("every_n")``), built once per session with
    ``cargo build --release --target wasm32-wasip2`` in policies/ into target/policies, the folder
    cairn's Rust tests build them into (so a suite run builds them once)."""
    import subprocess

    out = subprocess.run(
        ["cargo", "build", "--release", "--target", "wasm32-wasip2"],
        cwd=os.path.join(ROOT, "policies"),
        env={**os.environ, "CARGO_TARGET_DIR": POLICIES_TARGET},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, f"building policies/ failed:\n{out.stderr[-3000:]}"

    def path(name: str) -> str:
        p = os.path.join(POLICIES_TARGET, "wasm32-wasip2", "release", f"{name}.wasm")
        assert os.path.isfile(p), p
        return p

    return path


# ---- a real S3 server (s3s-fs), as host/testkit's S3Server starts it ---------------------------

S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET = "cairn-test-access", "cairn-test-secret-key", "ckpts"


def _s3s_fs() -> str:
    import shutil

    found = os.environ.get("S3S_FS") or shutil.which("s3s-fs")
    home = os.path.join(os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo")), "bin", "s3s-fs")
    found = found or (home if os.path.isfile(home) else None)
    assert found, "s3s-fs not found: tests/run.sh installs it (cargo install s3s-fs --features binary)"
    return found


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """An s3s-fs server on loopback with one bucket; the AWS_* variables point cairn (and anything
    else in this process) at it. Yields ``s3://ckpts``."""
    import re
    import subprocess

    root = tmp_path / "s3-root"
    (root / S3_BUCKET).mkdir(parents=True)
    proc = subprocess.Popen(
        [_s3s_fs(), "--host", "127.0.0.1", "--port", "0", "--access-key", S3_ACCESS_KEY,
         "--secret-key", S3_SECRET_KEY, str(root)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
        env={**os.environ, "RUST_LOG": "s3s_fs=info", "NO_COLOR": "1"},
    )
    try:
        endpoint = None
        for line in proc.stdout:
            m = re.search(r"server is running at (http://\S+)", line)
            if m:
                endpoint = m.group(1)
                break
        assert endpoint, "s3s-fs did not report its address"
        import threading

        # Keep reading its log, or the server blocks once the pipe is full.
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
        for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
                     "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY, "AWS_REGION": "us-east-1",
                     "AWS_ALLOW_HTTP": "true"}.items():
            monkeypatch.setenv(k, v)
        yield f"s3://{S3_BUCKET}", root / S3_BUCKET
    finally:
        proc.kill()
        proc.wait()
