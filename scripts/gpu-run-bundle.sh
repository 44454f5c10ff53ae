#!/usr/bin/env bash
# Runs what scripts/gpu-bundle.sh packed, on a GPU machine, from the root of a checkout of the
# same commit: `resca info`, the GPU tests (cudarc and cust backends; the sm_90 module where the
# GPU runs it, then the sm_80 one; the GPU halves of `sim_forward` and `sim_methods`), the GPU
# path of the example hosts of libresca (C; Python where PyTorch with CUDA is installed),
# compute-sanitizer's memcheck and racecheck over every kernel's replayed launches (where
# compute-sanitizer is installed), and the GPU benchmark with PyTorch beside it. Logs go to $OUT
# (default ./gpu-logs).
# Usage: scripts/gpu-run-bundle.sh [BUNDLE] (default target/gpu-bundle.tar.xz)
set -uo pipefail
bundle=$(realpath "${1:-target/gpu-bundle.tar.xz}")
out=${OUT:-gpu-logs}
mkdir -p "$out"
unpacked=$(mktemp -d)
tar xJf "$bundle" -C "$unpacked" || exit 1
[ "$(cat "$unpacked/commit")" = "$(git rev-parse HEAD 2>/dev/null || cat "$unpacked/commit")" ] ||
    echo "warning: the bundle was built from commit $(cat "$unpacked/commit"), this checkout differs"
# The binaries look for the vectors, the bench script and `resca` under the build checkout's path.
built_at=$(cat "$unpacked/checkout")
# A link is made there (or an old link replaced); anything else at that path is left alone.
if [ "$(realpath "$built_at" 2>/dev/null)" != "$(pwd -P)" ]; then
    if [ -e "$built_at" ] && [ ! -L "$built_at" ]; then
        echo "$built_at exists and is not this checkout: run from there, or move it" >&2
        exit 1
    fi
    mkdir -p "$(dirname "$built_at")" && ln -sfn "$(pwd -P)" "$built_at" || exit 1
fi
mkdir -p target/debug && cp "$unpacked/resca" target/debug/resca
export LD_LIBRARY_PATH="$unpacked/lib:${LD_LIBRARY_PATH:-}"
# cust links `libcuda.so`; a driver install may only have libcuda.so.1.
if ! ldconfig -p | grep -q 'libcuda\.so '; then
    driver=$(ldconfig -p | awk '/libcuda\.so\.1 / {print $NF; exit}')
    [ -n "$driver" ] && ln -sf "$driver" "$unpacked/lib/libcuda.so"
fi
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$out/gpu.txt"
"$unpacked/resca" info 2>&1 | tee -a "$out/gpu.txt"
status=0
"$unpacked/cuda_gpu" --test-threads=1 --nocapture 2>&1 | tee "$out/tests.txt" || status=1
# The sm_80 module too, JIT-compiled for this GPU (on an sm_80 GPU this repeats the run above).
RESCA_PTX_ARCH=sm_80 "$unpacked/cuda_gpu" --test-threads=1 --nocapture >"$out/tests-sm80.txt" 2>&1 || status=1
echo "sm_80 module: $(grep -oE 'PTX sm_[0-9]+|test result: .*' "$out/tests-sm80.txt" | tr '\n' ' ')"
# The tests that run one body on every device present: their GPU halves (`<test>::cuda`).
: >"$out/every-device.txt"
for test in sim_forward sim_methods; do
    "$unpacked/$test" ::cuda --test-threads=1 --nocapture >>"$out/every-device.txt" 2>&1 || status=1
done
echo "every-device tests on the GPU: $(grep -oE 'test result: .*' "$out/every-device.txt" | tr '\n' ' ')"
# The example hosts of libresca: their kernel launches on this GPU against the simulator.
"$unpacked/c_host" tests/vectors/tiny >"$out/examples.txt" 2>&1 || status=1
RESCA_PTX_ARCH=sm_80 "$unpacked/c_host" tests/vectors/tiny >>"$out/examples.txt" 2>&1 || status=1
if python3 -c 'import torch' 2>/dev/null || python3 -c 'import numpy' 2>/dev/null; then
    python3 examples/python_host/resca_host.py --library "$unpacked/libresca.so" >>"$out/examples.txt" 2>&1 || status=1
else
    echo "SKIP: examples/python_host: python3 has neither torch nor numpy" >>"$out/examples.txt"
fi
grep -E 'GPU|SKIP|FAILED|passed|failed' "$out/examples.txt" | sed 's/^/examples: /'
if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck; do
        timeout 300 compute-sanitizer --tool "$tool" --error-exitcode 9 "$unpacked/cuda_gpu" \
            every_kernel --test-threads=1 >"$out/$tool.txt" 2>&1 || status=1
        echo "compute-sanitizer $tool: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/$tool.txt" | tail -n 1)"
    done
else
    echo "SKIP: compute-sanitizer: not installed"
fi
if [ "${GPU_BENCH_ARGS:-}" = none ]; then
    echo "gpu bench: not run (GPU_BENCH_ARGS=none)"
else
    # shellcheck disable=SC2086 # the arguments are words
    "$unpacked/gpu_bench" ${GPU_BENCH_ARGS:-DiT-XL/2 50} 2>&1 | tee "$out/bench.txt" || status=1
fi
rm -rf "$unpacked"
exit $status
