#!/usr/bin/env bash
# Builds a stub libcuda.so, one function per driver call that Rust-CUDA's cust_raw declares,
# each returning CUDA_ERROR_UNKNOWN (999), so that the `cust` feature (which links libcuda at
# build time) builds on a machine without CUDA. Prints the folder to pass as CUDA_LIBRARY_PATH
# (the library is in its lib64/). Exit 3 (with the reason on stderr) where it cannot be built.
# Cache: ${RESCA_CACHE:-~/.cache/resca}/stub-cuda.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
stub="${RESCA_CACHE:-$HOME/.cache/resca}/stub-cuda"
command -v gcc >/dev/null 2>&1 || { echo "no gcc to build the stub libcuda" >&2; exit 3; }
if ! cargo fetch -q 2>/dev/null && [ ! -d "${CARGO_HOME:-$HOME/.cargo}/registry/src" ]; then
    echo "the cust sources could not be fetched" >&2
    exit 3
fi
bindings=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*/cust_raw-0.11.*/src/cuda.rs' 2>/dev/null | sort | tail -n 1)
[ -n "$bindings" ] || { echo "cust_raw's bindings not found in the cargo registry" >&2; exit 3; }
if [ ! -f "$stub/lib64/libcuda.so" ] || [ "$bindings" -nt "$stub/lib64/libcuda.so" ]; then
    mkdir -p "$stub/lib64"
    grep -oE 'pub fn cu[A-Za-z0-9_]+\(' "$bindings" | sed -E 's/pub fn (.*)\(/int \1(void) { return 999; }/' |
        sort -u >"$stub/stub.c"
    gcc -shared -fPIC -o "$stub/lib64/libcuda.so" "$stub/stub.c" || { echo "gcc failed on the stub" >&2; exit 1; }
    echo "built $stub/lib64/libcuda.so ($(wc -l <"$stub/stub.c") functions)" >&2
fi
echo "$stub"
