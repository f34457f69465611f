#!/usr/bin/env bash
# Check the built component with cairn itself:
#   1. `cairn policy check`: does it implement cairn's `save-interval` world?
#   2. `cairn simulate`: does it save exactly where cairn's built-in interval "<n>ba" does, over
#      runs of several shapes? (`job.toml` gives the policy `n = 3`.)
# Check 2 tests the every-n rule this project starts with: when you change the rule, change
# `expected` below to the built-in interval your policy should match, or replace the check.
#
#   CAIRN_BIN=/path/to/cairn ./simulate.sh      # default: `cairn` on the PATH
set -euo pipefail
cd "$(dirname "$0")"
cairn=${CAIRN_BIN:-cairn}
wasm={{name}}.wasm   # the build's output
expected=3ba

if [ ! -f "$wasm" ]; then
    echo "simulate.sh: $wasm does not exist; build it first (see README.md)" >&2
    exit 1
fi
"$cairn" policy check "$wasm"

# Run shapes: max_duration and batches per epoch. Composer saves once more at the end of
# training, so durations that are not a multiple of n are the interesting ones.
shapes=("2ep 8" "2ep 4" "10ba 4" "7ba 3" "3ep 5" "1ep 1")
failed=0
for shape in "${shapes[@]}"; do
    set -- $shape
    flags=(--config job.toml --max-duration "$1" --batches-per-epoch "$2" --json)
    ours=$("$cairn" simulate "${flags[@]}")
    builtin=$("$cairn" simulate "${flags[@]}" --save-interval "$expected")
    if [ "$ours" == "$builtin" ]; then
        echo "ok: max_duration $1, $2 batches per epoch: $(grep -c . <<<"$ours") saves, as $expected"
    else
        echo "MISMATCH: max_duration $1, $2 batches per epoch" >&2
        diff <(echo "$builtin") <(echo "$ours") >&2 || true
        failed=1
    fi
done
exit $failed
