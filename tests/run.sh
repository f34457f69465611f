#!/usr/bin/env bash
# The test command. Installs what the tests need (idempotent; a few minutes the first time), then
# runs every suite:
#   1. the wasm32-wasip2 target, so the test suite can build the example policies from source;
#   2. s3s-fs, a real S3-compatible server the remote tests start on loopback;
#   3. the compressor tools Composer shells out to (for the Composer interop tests), and a
#      virtualenv (.venv) with PyTorch, Composer and componentize-py;
#   4. cargo test --workspace   (unit and end-to-end tests of the host, through the library and CLI);
#   5. pip install ./host/python into that virtualenv (cairn's Python package, built by maturin);
#   6. pytest tests/python      (files cairn writes, read by the real PyTorch and Composer; cairn's
#      Python package inside Composer's Trainer and plain PyTorch loops);
#   7. policies/templates/check.sh (`cairn policy new` for Rust, Python and JS, each built and checked).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# Free space at each stage, so a CI machine that runs out of disk says where.
disk() { echo "== $1: $(df -h --output=avail "$root" | tail -1 | tr -d ' ') free"; }

disk "start"
echo "== installing test dependencies"
rustup target add wasm32-wasip2
if ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]; then
  cargo install s3s-fs --version 0.14.1 --features binary --locked
fi
if ! command -v zstd >/dev/null 2>&1 || ! command -v lz4 >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq zstd lz4 xz-utils bzip2 >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --no-cache-dir -r tests/python/requirements.txt componentize-py==0.25.1
export PATH="$root/.venv/bin:${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
# The JavaScript example and template build with Node's npm (componentize-js, pinned in their
# package-lock.json files).
command -v npm >/dev/null 2>&1 || { echo "tests/run.sh: npm (Node 20) is needed for the JavaScript policies" >&2; exit 1; }

disk "dependencies installed"
echo "== cargo test --workspace"
cargo test --workspace

disk "cargo tests done"
echo "== pip install ./host/python"
# The dev profile reuses what cargo test just compiled (about 15 s, not the minutes of a release
# build of wasmtime); the package's behaviour does not depend on the profile. Users get release.
start=$SECONDS
MATURIN_PEP517_ARGS="--profile dev" .venv/bin/pip install --quiet --no-cache-dir --force-reinstall --no-deps ./host/python
.venv/bin/python -c "import cairn._native, cairn; print('cairn', cairn.__version__, 'installed in', $SECONDS - $start, 's')"

echo "== pytest tests/python"
cargo build --bin cairn
CAIRN_BIN="$root/target/debug/cairn" .venv/bin/python -m pytest tests/python -q

echo "== policy templates (cairn policy new, each built, tested and checked)"
CAIRN_BIN="$root/target/debug/cairn" bash policies/templates/check.sh
