#!/usr/bin/env bash
# Builds Shoal's container image with podman (Containerfile): compiles the three binaries
# (release profile unless SHOAL_IMAGE_PROFILE says otherwise), stages them with exactly
# the shared libraries `ldd` says they load, CA certificates and an unprivileged user, and
# tags the result shoal:VERSION and shoal:latest. Prints the image's file list.
#
#   scripts/image.sh            build the image
#   podman run --rm --network host shoal:latest shoal-orchestrator --help
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${SHOAL_IMAGE_PROFILE:-release}
if ! command -v podman >/dev/null 2>&1; then
    echo "==> installing podman and runc (Debian)"
    apt-get update -qq && apt-get install -y -qq podman runc >/dev/null
fi
binaries=(shoal shoal-orchestrator shoal-executor)
echo "==> building ${binaries[*]} ($profile profile)"
cargo build -q --profile "$profile" --workspace "${binaries[@]/#/--bin=}"
out=target/$profile
[[ "$profile" == dev ]] && out=target/debug

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
root=$context/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$context/state" "$root/tmp"
chmod 1777 "$root/tmp"
for binary in "${binaries[@]}"; do
    cp "$out/$binary" "$root/usr/local/bin/"
    strip --strip-debug "$root/usr/local/bin/$binary"
done
# The libraries the binaries load, at the paths the loader looks for them.
for library in $(ldd "${binaries[@]/#/$out/}" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u); do
    mkdir -p "$root$(dirname "$library")"
    cp -L "$library" "$root$library"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
echo 'shoal:x:10001:10001:shoal:/var/lib/shoal:/nonexistent' > "$root/etc/passwd"
echo 'shoal:x:10001:' > "$root/etc/group"

version=$(cargo metadata --no-deps --format-version 1 |
    python3 -c 'import json, sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "shoal"))')
echo "==> podman build shoal:$version"
podman build -q -f Containerfile -t "shoal:$version" -t shoal:latest "$context" >/dev/null
echo "==> shoal:$version holds:"
(cd "$root" && find . -type f -printf '    %p (%s bytes)\n' | sort)
