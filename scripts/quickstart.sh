#!/usr/bin/env bash
# Runs a real job end to end on embedded defaults: builds Shoal, starts a devstack (an
# orchestrator and two executors in one process, embedded store, no external services),
# runs the hello example and the word-count example spec with the CLI, and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> building shoal"
cargo build --workspace --bins
shoal=target/debug/shoal
log=$(mktemp)
"$shoal" devstack --listen 127.0.0.1:0 >"$log" 2>&1 &
devstack=$!
trap 'kill $devstack 2>/dev/null; wait $devstack 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 600); do
    grep -q "ready: orchestrator at" "$log" && break
    kill -0 $devstack 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.1
done
cat "$log"
export SHOAL_ORCHESTRATOR=$(sed -n 's/.*ready: orchestrator at \([^ ]*\).*/\1/p' "$log")

echo
echo "==> shoal wasm run examples/hello/hello.wasm -e HELLO=world Shoal user"
"$shoal" wasm run examples/hello/hello.wasm -e HELLO=world Shoal user 2>/dev/null

echo
echo "==> shoal job run examples/spec.yaml --download ./quickstart-results"
rm -rf quickstart-results
"$shoal" job run examples/spec.yaml --download ./quickstart-results
echo "--- quickstart-results/outputs/summary.txt"
cat quickstart-results/outputs/summary.txt

echo
echo "==> shoal job list"
"$shoal" job list
