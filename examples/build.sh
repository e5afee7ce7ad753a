#!/usr/bin/env bash
# Rebuilds the committed example and fixture .wasm files from their C sources.
# Needs Debian's clang, lld and wasi-libc: apt-get install clang lld wasi-libc libclang-rt-dev-wasm32
set -euo pipefail
cd "$(dirname "$0")/.."
build() { clang --target=wasm32-wasi -O2 -Wl,--strip-all "${@:3}" -o "$2" "$1"; echo "built $2"; }
# The directory walkers get a 1 MiB stack: the default is 64 KiB, and wasm has no guard
# page below it, so a walk a few levels deep would overrun it into the heap, no trap.
deep=(-Wl,-z,stack-size=1048576)
build examples/hello/hello.c examples/hello/hello.wasm
build examples/exitcode/exitcode.c examples/exitcode/exitcode.wasm
build examples/wordcount/wordcount.c examples/wordcount/wordcount.wasm "${deep[@]}"
build tests/fixtures/ticker.c tests/fixtures/ticker.wasm
build tests/fixtures/copytree.c tests/fixtures/copytree.wasm "${deep[@]}"
build tests/fixtures/marker.c tests/fixtures/marker.wasm
build tests/fixtures/vandal.c tests/fixtures/vandal.wasm
