#!/usr/bin/env bash
# Mutation testing (cargo-mutants, configured in .cargo/mutants.toml): mutants of the GPU kernels
# judged by the simulator's tests, and mutants of the reference's caching engine judged by the
# tests that run it. A full run takes days on two cores, so it runs in shards, one mutant at a
# time:
#
#   scripts/mutants.sh kernels 0/32        # shard 0 of 32 of the kernel mutants
#   scripts/mutants.sh cache 5/16          # shard 5 of 16 of the caching-engine mutants
#   scripts/mutants.sh kernels list        # list the mutants without running them
#   scripts/mutants.sh kernels 0/70 --re gemm_tc.rs   # narrower: further arguments go to
#                                                     # cargo-mutants
#
# What makes a mutant cheap (docs/verification.md, "Mutation testing", has the measured times):
# - the tree is mutated in place in one persistent copy, target/mutants/tree (refreshed from the
#   working tree at each start; its own target/ is kept), so a shard builds only what a mutant
#   changes, and the first shard starts from a copy of target/debug when there is one;
# - the kernels' judge is one test binary, `mutants_judge` (every simulator test file as a
#   module), so a mutant costs one test link instead of nine;
# - the tests run under cargo-nextest's `mutants` profile (.config/nextest.toml): the first
#   failing test stops the run, and the quick tests run before the whole-model runs.
#
# Results land in target/mutants/<target>-<k>of<n>/mutants.out (caught.txt, missed.txt,
# timeout.txt, unviable.txt, outcomes.json). Needs `cargo install cargo-mutants` (27.x) and
# `cargo install cargo-nextest`. Two shards never run at once (they share the copy).
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
        files=(pdds tetc attention attention_tc gemm gemm_tiled gemm_tc taylor norm)
        select=()
        for f in "${files[@]}"; do select+=(--file "gpu-kernels/src/$f.rs"); done
        judge=(--test-package resca-host -C --test=mutants_judge)
        # cargo-mutants 27 runs its unmutated baseline with the mutated package's tests
        # (resca-gpu-kernels, which has none of the judge's), so the baseline is skipped: run
        # `cargo test -p resca-host --test mutants_judge` on the unmutated tree first. The judge
        # takes about 2 minutes on two cores when every test passes.
        judge+=(--baseline skip --timeout 480)
        ;;
    cache)
        select=(--file 'reference/src/cache/*.rs')
        judge=(--test-package resca-reference,resca-tests,resca-proofs)
        # The tests that run the caching engine: its own unit tests, the properties and
        # clustering tests, the end-to-end runs against the vectors and golden outputs, and
        # the proofs' recurrences.
        for t in caching_properties clustering replay_files golden_caching vectors_cached vectors_clusca \
            pdds_linear residual_recurrences tetc_pdds_invariants; do
            judge+=(-C "--test=$t")
        done
        judge+=(-C --lib)
        ;;
    *) usage ;;
esac

for tool in mutants nextest; do
    if ! cargo "$tool" --version >/dev/null 2>&1; then
        echo "error: cargo-$tool is not installed (cargo install cargo-$tool)" >&2
        exit 1
    fi
done

if [[ $shard == list ]]; then
    exec cargo mutants --list "${select[@]}" "$@"
fi
[[ $shard =~ ^[0-9]+/[0-9]+$ ]] || usage

root=$PWD
tree=$root/target/mutants/tree
out=$root/target/mutants/$target-${shard/\//of}
mkdir -p "$tree" "$out"
exec 9>"$root/target/mutants/lock"
if ! flock -n 9; then
    echo "error: another scripts/mutants.sh run holds target/mutants/lock" >&2
    exit 1
fi

# Refresh the copy: every tracked or new file whose content differs (also one a stopped run
# left mutated) is copied, with a new modification time so that cargo rebuilds it.
git ls-files --cached --others --exclude-standard -z | while IFS= read -r -d '' file; do
    if [[ -f $file ]] && ! cmp -s "$file" "$tree/$file"; then
        mkdir -p "$tree/$(dirname "$file")"
        cp "$file" "$tree/$file"
    fi
done
if [[ ! -d $tree/target/debug && -d target/debug ]]; then
    echo "seeding target/mutants/tree/target from target/debug (the dependencies' builds)" >&2
    mkdir -p "$tree/target"
    cp -a target/debug "$tree/target/"
fi

export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}
export NEXTEST_PROFILE=mutants
cargo mutants --dir "$tree" --in-place "${select[@]}" "${judge[@]}" --test-tool nextest \
    --shard "$shard" --output "$out" "$@"
