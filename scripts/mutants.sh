#!/usr/bin/env bash
# Mutation testing (cargo-mutants, configured in .cargo/mutants.toml): mutants of the GPU kernels
# judged by the simulator's kernel-vs-reference tests, and mutants of the reference's caching
# engine judged by the tests of the crates that use it. A full run takes hours on two cores, so
# it runs in shards, one mutant at a time, each shard in its own scratch directory under /tmp
# (deleted when it ends):
#
#   scripts/mutants.sh kernels 0/32        # shard 0 of 32 of the kernel mutants
#   scripts/mutants.sh cache 5/16          # shard 5 of 16 of the caching-engine mutants
#   scripts/mutants.sh kernels list        # list the mutants without running them
#   scripts/mutants.sh kernels 0/12 --re gpu-kernels/src/norm.rs  # narrower: further arguments
#                                                                   # go to cargo-mutants
#
# Results land in target/mutants/<target>-<k>of<n>/mutants.out (caught.txt, missed.txt,
# timeout.txt, unviable.txt, outcomes.json). A shard of ~30 kernel mutants takes about an hour
# on two cores. Needs `cargo install cargo-mutants` (27.x).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: scripts/mutants.sh kernels|cache K/N|list [cargo-mutants arguments]" >&2
    exit 2
}
[[ $# -ge 2 ]] || usage
target=$1
shard=$2
shift 2

case $target in
    kernels)
        files=(pdds tetc attention gemm gemm_tiled gemm_tc taylor norm)
        select=()
        for f in "${files[@]}"; do select+=(--file "gpu-kernels/src/$f.rs"); done
        # The kernels run on the simulator in resca-host's tests: every kernel against the
        # reference ops, the simulator's checks, and the pipeline on the simulator.
        judge=(--test-package resca-host)
        test_args=(--test sim_kernels --test sim_cache_kernels --test sim_checks --test sim_methods --test sim_forward
                   --test sim_gemm --test sim_attention --test sim_tensor_cores --test sim_precision)
        # cargo-mutants 27 runs its unmutated baseline with the mutated package's tests
        # (resca-gpu-kernels, which has none of these targets), so the baseline is skipped:
        # run `cargo test -p resca-host` on the unmutated tree first. 15 minutes per mutant at
        # most (an incremental build of resca-host's tests and their run take about 5).
        judge+=(--baseline skip --timeout 900)
        ;;
    cache)
        select=(--file 'reference/src/cache/*.rs')
        judge=(--test-package resca-reference,resca-tests,resca-proofs)
        test_args=()
        ;;
    *) usage ;;
esac

if ! cargo mutants --version >/dev/null 2>&1; then
    echo "error: cargo-mutants is not installed (cargo install cargo-mutants)" >&2
    exit 1
fi

if [[ $shard == list ]]; then
    exec cargo mutants --list "${select[@]}" "$@"
fi
[[ $shard =~ ^[0-9]+/[0-9]+$ ]] || usage

scratch=$(mktemp -d /tmp/resca-mutants.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
out="target/mutants/$target-${shard/\//of}"
mkdir -p "$out"
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}
# cargo-mutants copies the tree into TMPDIR and builds there.
TMPDIR=$scratch cargo mutants "${select[@]}" "${judge[@]}" \
    --shard "$shard" --jobs 1 --output "$out" "$@" \
    -- "${test_args[@]}"
