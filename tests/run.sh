#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent), then runs every suite.
#   bash tests/run.sh
# Rust unit and end-to-end tests:   cargo test --workspace
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test --workspace"
cargo test --workspace
