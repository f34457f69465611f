#!/usr/bin/env bash
# Check the policy templates the way a tenant meets them: `cairn policy new NAME --lang LANG`
# into a fresh folder outside this repository, build it with the one command its
# README documents, run its unit tests, then `cairn policy check` and the `cairn simulate`
# comparison of its simulate.sh.
#
#   CAIRN_BIN=target/release/cairn bash policies/templates/check.sh [rust] [python] [js]
#
# Needs: for rust the wasm32-wasip2 target (`rustup target add wasm32-wasip2`); for python
# python3 with venv (componentize-py is installed into a virtualenv in the work folder);
# for js Node >= 20 and npm. KEEP=1 keeps the work folder; CAIRN_TEMPLATES_WORK=DIR uses DIR.
# Cold (empty npm, pip and cargo caches apart from the crates.io index) it takes a few minutes,
# most of it in componentize-js and in compiling the fresh Rust crate.
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
: "${CAIRN_BIN:?set CAIRN_BIN to the cairn binary, e.g. CAIRN_BIN=target/release/cairn}"
CAIRN_BIN=$(cd "$(dirname "$CAIRN_BIN")" && pwd)/$(basename "$CAIRN_BIN")
export CAIRN_BIN

langs=("$@")
[ ${#langs[@]} -gt 0 ] || langs=(rust python js)

work=${CAIRN_TEMPLATES_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/cairn-templates.XXXXXX")}
mkdir -p "$work"
if [ "${KEEP:-0}" != 1 ] && [ -z "${CAIRN_TEMPLATES_WORK:-}" ]; then
    trap 'rm -rf "$work"' EXIT
fi
# Compiled components are cached by cairn; keep this run's cache with its work.
export CAIRN_CACHE_DIR=${CAIRN_CACHE_DIR:-$work/cairn-cache}

name=my-policy  # a project name with a dash: {{name_snake}} must differ from {{name}}

# Create project $name in $work/$1 with `cairn policy new`, and print the folder.
instantiate() {
    local lang=$1 dest="$work/$1/$name"
    rm -rf "$dest"
    "$CAIRN_BIN" policy new "$name" --lang "$lang" --dir "$dest" >&2
    if grep -rn '{{' "$dest" --exclude-dir=wit; then
        echo "check.sh: a placeholder was left in the $lang template (above)" >&2
        return 1
    fi
    echo "$dest"
}

step() {
    local label=$1
    shift
    local start=$SECONDS
    echo "--- $label: $*"
    "$@"
    echo "--- $label: $((SECONDS - start)) s"
}

check_rust() {
    local dir
    dir=$(instantiate rust)
    cd "$dir"
    step "rust build" cargo build --release --target wasm32-wasip2
    step "rust test" cargo test
    step "rust check" ./simulate.sh
}

check_python() {
    local dir
    dir=$(instantiate python)
    cd "$dir"
    # A virtualenv of its own, so the check needs nothing installed globally.
    step "python setup" bash -c "python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt"
    export PATH="$dir/.venv/bin:$PATH"
    step "python build" componentize-py -d wit -w cairn:policy/save-interval componentize app -o "$name.wasm"
    step "python test" python3 -m unittest -v
    step "python check" ./simulate.sh
}

check_js() {
    local dir
    dir=$(instantiate js)
    cd "$dir"
    step "js setup" npm ci --no-audit --no-fund
    step "js build" npm run build
    step "js test" npm test
    step "js check" ./simulate.sh
}

start=$SECONDS
for lang in "${langs[@]}"; do
    case $lang in
        rust | python | js) (check_"$lang") ;;
        *)
            echo "check.sh: unknown template '$lang' (rust, python or js)" >&2
            exit 2
            ;;
    esac
done
echo "templates ${langs[*]}: built, tested and checked in $((SECONDS - start)) s (work folder $work)"
