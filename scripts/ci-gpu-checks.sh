#!/usr/bin/env bash
# CI checks of the GPU side that need no GPU (run by .ci/run after the workspace tests):
#   1. the committed PTX is what the kernel source builds (nightly + rust-src; without them a
#      visible SKIP, and the manifest's source hash must still match the source);
#   2. ptxas (Debian's nvidia-cuda-toolkit, fetched once and cached) accepts every kernel for
#      sm_80 and sm_90; the register/spill table is printed; any spill on sm_90 fails;
#      2b. the GEMMs and the tensor-core attention with ptxas 12 + nvdisasm (PyPI wheels,
#      scripts/sass-check.sh): no spill or local memory on sm_80 and sm_90, main loops of FFMA
#      (no FMUL/FADD) and LDS.128 in the exact GEMMs, of HMMA, LDSM and LDGSTS in the tensor-core
#      kernels;
#   3. the `nvvm` feature (cuda_std #[kernel] entry points) type-checks, clippy-clean;
#   4. the `cust` feature (Rust-CUDA's host crate, links libcuda) builds and links against a stub
#      libcuda generated from cust's own bindings, and the program fails cleanly on that stub.
# A missing nightly, apt, network or gcc gives "SKIP: <check>: <reason>"; a stale PTX, a ptxas
# error, a spill on sm_90 or a compile error gives "FAIL: ..." and a non-zero exit.
# Cache: ${RESCA_CACHE:-~/.cache/resca} (ptxas, the stub library).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cache="${RESCA_CACHE:-$HOME/.cache/resca}"
status=0
started=$(date +%s)

section() { printf '\n== %s\n' "$*"; }
skip() { echo "SKIP: $*"; }
fail() {
    echo "FAIL: $*"
    status=1
}

section "1. PTX: committed copy vs a rebuild from the source"
bash scripts/build-ptx.sh --check
rc=$?
if [ "$rc" -eq 3 ]; then
    skip "PTX rebuild: the nightly toolchain with rust-src is not available here"
    recorded=$(sed -n 's/^  "source_sha256": "\(.*\)",$/\1/p' gpu-kernels/ptx/manifest.json)
    if [ "$recorded" = "$(bash scripts/build-ptx.sh --source-hash)" ]; then
        echo "the manifest's kernel source hash matches the source"
    else
        fail "gpu-kernels/src changed since the PTX was built: run scripts/build-ptx.sh (nightly) and commit gpu-kernels/ptx/"
    fi
elif [ "$rc" -ne 0 ]; then
    fail "the committed PTX is stale or does not build (scripts/build-ptx.sh --check)"
fi

section "2. ptxas: sm_80 and sm_90, registers and spills per kernel"
ptxas=$(bash scripts/fetch-ptxas.sh)
rc=$?
if [ "$rc" -ne 0 ] || [ -z "$ptxas" ]; then
    skip "ptxas validation: ptxas could not be fetched (see the message above)"
else
    bash scripts/ptxas-report.sh "$ptxas" || fail "ptxas rejected a kernel or a kernel spills on sm_90"
fi

section "2b. GEMMs and tensor-core attention: ptxas 12 registers/spills and the SASS instruction mix"
bash scripts/sass-check.sh
rc=$?
if [ "$rc" -eq 3 ]; then
    skip "SASS instruction mix: ptxas 12 / nvdisasm could not be had (see the message above)"
elif [ "$rc" -ne 0 ]; then
    fail "an exact GEMM spills, uses local memory, or its main loop is not FFMA with LDS.128"
fi

section "3. Rust-CUDA entry points (feature nvvm): type-check and clippy"
cargo clippy -q -p resca-gpu-kernels --features nvvm --all-targets -- -D warnings ||
    fail "resca-gpu-kernels --features nvvm does not compile cleanly"
cargo test -q -p resca-gpu-kernels --features nvvm --test ptx >/dev/null ||
    fail "the nvvm entry points differ from the nvptx ones"

section "4. cust backend (feature cust) against a stub libcuda"
stub_log=$(mktemp)
if ! stub=$(bash scripts/stub-libcuda.sh 2>"$stub_log"); then
    if grep -q "gcc failed" "$stub_log"; then
        fail "building the stub libcuda: $(cat "$stub_log")"
    else
        skip "cust link check: $(cat "$stub_log")"
    fi
else
    cat "$stub_log"
    export CUDA_LIBRARY_PATH="$stub"
    cargo clippy -q -p resca-host --features cust --all-targets -- -D warnings ||
        fail "resca-host --features cust does not compile cleanly"
    if cargo build -q -p resca-host --features cust --example cust_info; then
        # On the stub every driver call fails: a clean error, exit 2, no panic.
        out=$(LD_LIBRARY_PATH="$stub/lib64" target/debug/examples/cust_info 2>&1)
        rc=$?
        echo "$out"
        if [ "$rc" -ne 2 ] || echo "$out" | grep -q panicked; then
            fail "cust_info on the stub libcuda: expected a clean error (exit 2), got exit $rc"
        fi
        out=$(LD_LIBRARY_PATH="$stub/lib64" cargo run -q -p resca-host --bin resca -- info 2>&1)
        rc=$?
        echo "resca info on the stub: $out"
        if [ "$rc" -ne 0 ] || echo "$out" | grep -q panicked; then
            fail "resca info on the stub libcuda: expected a message and exit 0, got exit $rc"
        fi
    else
        fail "resca-host --features cust does not link against the stub libcuda"
    fi
    unset CUDA_LIBRARY_PATH
fi

section "done in $(($(date +%s) - started)) s"
if [ "$status" -ne 0 ]; then
    echo "ci-gpu-checks: FAILED"
else
    echo "ci-gpu-checks: ok"
fi
exit "$status"
