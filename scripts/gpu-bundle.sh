#!/usr/bin/env bash
# Packs the GPU tests and the GPU benchmark, built here, for a GPU machine that has a driver but
# no Rust toolchain: target/gpu-bundle.tar.xz holds the stripped `cuda_gpu` test binary (built
# with the `cust` feature against the stub libcuda, so Rust-CUDA's backend is tested too), the
# `sim_forward` and `sim_methods` test binaries (their tests run on every device present), the
# `gpu` bench, the `resca` binary the CLI test runs, the example hosts of libresca (the C host,
# linked statically, and libresca.so for the Python host; examples/run.sh builds them), and the
# build machine's OpenBLAS with its libraries. On the GPU machine, in a checkout of the same
# commit: scripts/gpu-run-bundle.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
executable() { # the path of the executable cargo built for one target, from its JSON messages
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("executable") and m["target"]["name"] == sys.argv[1]: print(m["executable"])' "$1"
}
stub=$(bash scripts/stub-libcuda.sh)
tests=$(CUDA_LIBRARY_PATH="$stub" cargo test -q -p resca-host --features cust --test cuda_gpu --no-run \
    --message-format=json | executable cuda_gpu)
sim_forward=$(cargo test -q -p resca-host --test sim_forward --no-run --message-format=json | executable sim_forward)
sim_methods=$(cargo test -q -p resca-host --test sim_methods --no-run --message-format=json | executable sim_methods)
bench=$(cargo bench -q -p resca-host --bench gpu --no-run --message-format=json | executable gpu)
cargo build -q -p resca-host --bin resca
bash examples/run.sh --build-only
work=$(mktemp -d)
mkdir -p "$work/lib"
cp "$tests" "$work/cuda_gpu"
cp "$sim_forward" "$work/sim_forward"
cp "$sim_methods" "$work/sim_methods"
cp "$bench" "$work/gpu_bench"
cp target/debug/resca "$work/resca"
cp target/examples/c_host "$work/c_host"
cp target/debug/libresca.so "$work/libresca.so"
strip "$work/cuda_gpu" "$work/sim_forward" "$work/sim_methods" "$work/gpu_bench" "$work/resca" "$work/c_host" \
    "$work/libresca.so"
for lib in $(ldd "$work/resca" | awk '/openblas|gfortran|quadmath/ {print $3}'); do
    cp -L "$lib" "$work/lib/"
done
# The binaries find the vectors, the bench script and `resca` by this checkout's path.
pwd >"$work/checkout"
git rev-parse HEAD >"$work/commit"
tar cJf target/gpu-bundle.tar.xz -C "$work" .
rm -rf "$work"
echo "target/gpu-bundle.tar.xz ($(du -h target/gpu-bundle.tar.xz | cut -f1)), commit $(git rev-parse --short HEAD)"
