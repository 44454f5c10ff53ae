#!/usr/bin/env bash
# One GPU run in under 8 minutes, from the bundle of scripts/gpu-bundle.sh (the binaries built
# on a machine with Rust, the committed PTX inside them), in a checkout of the same commit:
#   1. `resca info` (the GPU and the PTX module it loads);
#   2. the GPU tests (`cuda_gpu`) in every precision mode the `resca` binary offers
#      (`--precision` in `resca sample --help`; `exact` only where it has none), the mode passed
#      to the tests as RESCA_PRECISION; then the sm_80 module, JIT-compiled for this GPU (exact);
#   3. the tensor-core numerics probe: the `cuda_gpu` tests named `tensor_core` (mma.sync against
#      the simulator's model, mismatching bits counted), where the binary has them;
#   4. the GPU bench: the GEMM table over the DiT shapes (M = 64, 512, 1024), the forward and
#      50-step guided sampling beside `bench/pytorch_gpu.py --precision fp32|tf32|bf16`;
#   5. compute-sanitizer memcheck, racecheck and synccheck over every kernel's replayed launches.
# Each part runs under a time limit cut to what is left of GPU_BENCH_BUDGET_S (default 450 s); a
# part with no time left prints "NOT RUN: <part>: time budget". Logs in $OUT (default gpu-logs).
#
#   scripts/gpu-bench.sh [BUNDLE]             # default target/gpu-bundle.tar.xz
#   scripts/gpu-bench.sh --dry-run [BUNDLE]   # lists the parts and their commands, runs nothing
#
# Exit status: 0 all parts passed; 1 a part failed; 2 no GPU (no nvidia-smi, or it lists no GPU)
# or no bundle.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then
    dry_run=1
    shift
fi
bundle="${1:-target/gpu-bundle.tar.xz}"
out=${OUT:-gpu-logs}
budget=${GPU_BENCH_BUDGET_S:-450}
bench_args=${GPU_BENCH_ARGS:-DiT-XL/2 50}
started=$(date +%s)
status=0
bin=BUNDLE # where the bundle's binaries are unpacked (a temporary folder on a real run)

# part NAME LIMIT_S COMMAND...: runs COMMAND under min(LIMIT_S, time left), its output in
# $out/NAME.txt, or (dry run) prints it.
part() {
    local name=$1 limit=$2
    shift 2
    if [ "$dry_run" -eq 1 ]; then
        printf '%-22s <= %3ss  %s\n' "$name" "$limit" "$*"
        return 0
    fi
    local left=$((budget - ($(date +%s) - started)))
    if [ "$left" -lt 10 ]; then
        echo "NOT RUN: $name: time budget (${budget}s) spent"
        status=1
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0=$(date +%s) rc=0
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1 || rc=$?
    local summary
    summary=$(grep -hE 'test result:|ERROR SUMMARY|RACECHECK SUMMARY|SYNCCHECK SUMMARY|FAILED|SKIP' \
        "$out/$name.txt" | sort | uniq -c | sed 's/^ *//' | tr '\n' ';')
    if [ "$rc" -eq 124 ]; then
        echo "FAIL: $name: over its ${limit}s limit"
        status=1
    elif [ "$rc" -ne 0 ]; then
        echo "FAIL: $name: exit $rc ($summary)"
        status=1
    else
        echo "ok: $name ($(($(date +%s) - t0)) s) $summary"
    fi
}

if [ "$dry_run" -eq 0 ]; then
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! gpus=$(nvidia-smi -L 2>&1) || [ -z "$gpus" ]; then
        echo "gpu-bench: no GPU here (nvidia-smi is missing or lists no GPU): this script runs on a GPU machine; --dry-run lists what it runs" >&2
        exit 2
    fi
    if [ ! -f "$bundle" ]; then
        echo "gpu-bench: no bundle at $bundle: build it with scripts/gpu-bundle.sh on a machine with Rust and bring it along" >&2
        exit 2
    fi
    mkdir -p "$out"
    bin=$(mktemp -d)
    trap 'rm -rf "$bin"' EXIT
    tar xJf "$bundle" -C "$bin" || exit 2
    # As scripts/gpu-run-bundle.sh: the binaries find the vectors and the bench script by the
    # build checkout's path, linked to this one where they differ; OpenBLAS comes in the bundle.
    built_at=$(cat "$bin/checkout")
    if [ "$(realpath "$built_at" 2>/dev/null)" != "$(pwd -P)" ]; then
        if [ -e "$built_at" ] && [ ! -L "$built_at" ]; then
            echo "gpu-bench: $built_at exists and is not this checkout: run from there" >&2
            exit 2
        fi
        mkdir -p "$(dirname "$built_at")" && ln -sfn "$(pwd -P)" "$built_at" || exit 2
    fi
    mkdir -p target/debug && cp "$bin/resca" target/debug/resca
    export LD_LIBRARY_PATH="$bin/lib:${LD_LIBRARY_PATH:-}"
    if ! ldconfig -p | grep -q 'libcuda\.so '; then
        driver=$(ldconfig -p | awk '/libcuda\.so\.1 / {print $NF; exit}')
        [ -n "$driver" ] && ln -sf "$driver" "$bin/lib/libcuda.so"
    fi
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(cat "$bin/commit")"
        nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv
    } | tee "$out/gpu.txt"
    modes=$("$bin/resca" sample --help 2>/dev/null | grep -oE 'exact\|tf32x3\|tf32\|bf16' | head -n 1 | tr '|' ' ')
    probe=$("$bin/cuda_gpu" --list 2>/dev/null | grep -c 'tensor_core')
else
    echo "gpu-bench --dry-run: the parts of a GPU run and their time limits (budget ${budget}s)"
    echo "precision modes: those of \`resca sample --help\` (exact tf32x3 tf32 bf16), else exact"
    modes="exact"
    probe=1
fi
modes=${modes:-exact}

part info 30 "$bin/resca" info
for mode in $modes; do
    [ "$dry_run" -eq 1 ] && [ "$mode" != exact ] && continue
    part "tests-$mode" 90 env RESCA_PRECISION="$mode" "$bin/cuda_gpu" --test-threads=1 --nocapture
done
[ "$dry_run" -eq 1 ] && part "tests-<mode>" 90 env RESCA_PRECISION="<mode>" "$bin/cuda_gpu" --test-threads=1 --nocapture
part tests-sm80 90 env RESCA_PTX_ARCH=sm_80 "$bin/cuda_gpu" --test-threads=1
if [ "$probe" -gt 0 ]; then
    part tensor-core-probe 60 "$bin/cuda_gpu" tensor_core --test-threads=1 --nocapture
else
    echo "SKIP: tensor-core probe: the cuda_gpu binary has no tensor_core test"
fi
# shellcheck disable=SC2086 # the arguments are words
part bench 240 "$bin/gpu_bench" $bench_args
if [ "$dry_run" -eq 1 ] || command -v compute-sanitizer >/dev/null 2>&1; then
    for tool in memcheck racecheck synccheck; do
        part "sanitizer-$tool" 60 compute-sanitizer --tool "$tool" --error-exitcode 9 "$bin/cuda_gpu" \
            every_kernel --test-threads=1
    done
else
    echo "SKIP: compute-sanitizer: not installed"
fi
[ "$dry_run" -eq 0 ] && echo "gpu-bench: $(($(date +%s) - started)) s, logs in $out"
exit $status
