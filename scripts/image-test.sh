#!/usr/bin/env bash
# The container image, end to end: builds it (scripts/image.sh), checks it runs as a
# non-root user, starts an orchestrator container and an executor container (host network,
# read-only root filesystems, state on volumes), and runs a job through them with the CLI
# from the image. Part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/image.sh
image=shoal:latest

user=$(podman image inspect --format '{{.Config.User}}' "$image")
[[ "$user" == "10001:10001" ]] || { echo "the image runs as '$user', not 10001:10001"; exit 1; }

work=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
metrics=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
orchestrator=shoal-test-orchestrator-$$
executor=shoal-test-executor-$$
cleanup() {
    podman rm -f -t 5 "$orchestrator" "$executor" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/orchestrator" "$work/executor"
chown 10001:10001 "$work/orchestrator" "$work/executor"

# crun and podman's default ulimits are refused on these machines (shared/PEERS.md).
run=(podman --runtime runc run --network host --read-only
     --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
"${run[@]}" -d --name "$orchestrator" -v "$work/orchestrator:/var/lib/shoal" "$image" \
    shoal-orchestrator --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics" >/dev/null
"${run[@]}" -d --name "$executor" -v "$work/executor:/var/lib/shoal" "$image" \
    shoal-executor --orchestrator "http://127.0.0.1:$port" --executor-id in-a-container --slots 2 >/dev/null

cli=("${run[@]}" --rm -v "$PWD/examples:/examples:ro" "$image" shoal --orchestrator "http://127.0.0.1:$port")
for _ in $(seq 1 300); do
    if "${cli[@]}" node list 2>/dev/null | grep -q in-a-container; then break; fi
    sleep 0.2
done
"${cli[@]}" node list

output=$("${cli[@]}" wasm run /examples/hello/hello.wasm -e HELLO=container image 2>/dev/null)
echo "$output"
grep -q "HELLO=container" <<<"$output" || { echo "the job's output is missing"; podman logs "$orchestrator"; podman logs "$executor"; exit 1; }
grep -q "arg\[1\]=image" <<<"$output" || { echo "the job's arguments are missing"; exit 1; }
# What the chart's `helm test` pod does: the image's CLI, configured by environment, runs the
# chart's test program.
helm_test=$("${run[@]}" --rm -v "$PWD/charts/shoal/files:/test:ro" \
    -e SHOAL_ORCHESTRATOR="http://127.0.0.1:$port" "$image" shoal wasm run /test/hello.wasm 2>/dev/null)
[[ "$helm_test" == "hello from helm test" ]] || { echo "the helm test program printed: $helm_test"; exit 1; }
curl -fsS "http://127.0.0.1:$metrics/metrics" | grep -q 'shoal_jobs_finished_total{state="completed"} 2' \
    || { echo "the orchestrator's metrics do not show the job"; exit 1; }

# SIGTERM stops both gracefully (exit 0), the executor after draining.
podman stop -t 30 "$executor" "$orchestrator" >/dev/null
for container in "$executor" "$orchestrator"; do
    code=$(podman inspect --format '{{.State.ExitCode}}' "$container")
    [[ "$code" == 0 ]] || { echo "$container exited $code"; podman logs "$container" | tail -20; exit 1; }
done
echo "image test: passed"
