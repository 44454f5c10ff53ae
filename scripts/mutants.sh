#!/usr/bin/env bash
# Mutation testing: mutants of the GPU kernels judged by the simulator's tests, and mutants of
# the reference's caching engine judged by the tests that run it. cargo-mutants (configured in
# .cargo/mutants.toml) lists the mutants; two ways judge them:
#
#   scripts/mutants.sh kernels schemata    # every mutant, one build (resca-mutation, below)
#   scripts/mutants.sh cache schemata      # the same for the caching engine
#   scripts/mutants.sh kernels rest        # cargo-mutants on the mutants that have no schema
#   scripts/mutants.sh kernels 0/32        # cargo-mutants alone, shard 0 of 32, one build per mutant
#   scripts/mutants.sh kernels list        # list the mutants without running them
#   scripts/mutants.sh kernels 0/70 --re gemm_tc.rs   # further arguments go to cargo-mutants
#
# `schemata` (tools/mutation, docs/verification.md "Mutation testing"): every mutant is written
# into one copy of the tree behind a run-time switch (`RESCA_MUTANT=<number>`), the judge is built
# once, each judge test runs once to record which mutants it reaches, and each mutant is then
# judged by only those tests, quickest first, until one fails. It resumes where a stopped run
# left off (target/mutants/<target>-schemata/outcomes.jsonl) as long as the sources are
# unchanged, and ends with report.md: the counts per file and the survivors. Mutants whose
# schema cannot compile (a const context, a value the return type does not have) are listed
# there as not rewritten; `rest` judges them with cargo-mutants.
#
# cargo-mutants alone builds each mutant: a kernel mutant costs about a minute (three if it
# survives), so its shards suit a sample or a cross-check. It mutates one persistent copy,
# target/mutants/tree, whose target/ is seeded from target/debug; results land in
# target/mutants/<target>-<k>of<n>/mutants.out.
#
# Needs `cargo install cargo-mutants` (27.x) and, for the shards, `cargo install cargo-nextest`.
# Two runs never share a copy at once (a lock says so).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: scripts/mutants.sh kernels|cache schemata|rest|list|K/N [cargo-mutants arguments]" >&2
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
        files_glob=()
        for f in "${files[@]}"; do
            select+=(--file "gpu-kernels/src/$f.rs")
            files_glob+=("gpu-kernels/src/$f.rs")
        done
        judge=(--test-package resca-host -C --test=mutants_judge)
        # The packages that check the schemata (the mutated one first), its crate root, and
        # the judge's test binaries.
        checked=(--package resca-gpu-kernels --package resca-host)
        crate_root=gpu-kernels/src/lib.rs
        judge_builds=("-p resca-host --test mutants_judge")
        # cargo-mutants 27 runs its unmutated baseline with the mutated package's tests
        # (resca-gpu-kernels, which has none of the judge's), so the baseline is skipped: run
        # `cargo test -p resca-host --test mutants_judge` on the unmutated tree first. The judge
        # takes about 2 minutes on two cores when every test passes.
        judge+=(--baseline skip --timeout 480)
        ;;
    cache)
        select=(--file 'reference/src/cache/*.rs')
        files_glob=('reference/src/cache/*.rs')
        judge=(--test-package resca-reference,resca-tests,resca-proofs)
        # The tests that run the caching engine: its own unit tests, the properties and
        # clustering tests, the end-to-end runs against the vectors and golden outputs, and
        # the proofs' recurrences.
        for t in caching_properties clustering replay_files golden_caching vectors_cached vectors_clusca \
            pdds_linear residual_recurrences tetc_pdds_invariants; do
            judge+=(-C "--test=$t")
        done
        judge+=(-C --lib)
        # As for the kernels, the baseline would build only the mutated package's tests.
        judge+=(--baseline skip --timeout 600)
        checked=(--package resca-reference --package resca-tests --package resca-proofs --package resca-host)
        crate_root=reference/src/lib.rs
        judge_builds=("-p resca-reference --lib --test caching_properties --test clustering --test replay_files"
            "-p resca-tests --test golden_caching --test vectors_cached --test vectors_clusca"
            "-p resca-proofs --test pdds_linear --test residual_recurrences --test tetc_pdds_invariants")
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

root=$PWD
mkdir -p target/mutants
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}

# Makes $1 a copy of the working tree: every tracked or new file whose content differs (also one
# a stopped run left mutated) is copied, with a new modification time so that cargo rebuilds
# it; the copy's target/ is seeded once from target/debug (the dependencies' builds).
refresh_copy() {
    local copy=$1
    mkdir -p "$copy"
    git ls-files --cached --others --exclude-standard -z | while IFS= read -r -d '' file; do
        if [[ -f $file ]] && ! cmp -s "$file" "$copy/$file"; then
            mkdir -p "$copy/$(dirname "$file")"
            cp "$file" "$copy/$file"
        fi
    done
    if [[ ! -d $copy/target/debug && -d target/debug ]]; then
        echo "seeding $copy/target from target/debug" >&2
        mkdir -p "$copy/target"
        cp -a target/debug "$copy/target/"
    fi
}

# Holds the lock of the copy $1 for the rest of the script.
lock_copy() {
    exec 9>"$1.lock"
    if ! flock -n 9; then
        echo "error: another scripts/mutants.sh run holds $1.lock" >&2
        exit 1
    fi
}

if [[ $shard == schemata ]]; then
    copy=$root/target/mutants/$target-schemata-tree
    out=$root/target/mutants/$target-schemata
    mkdir -p "$out"
    lock_copy "$copy"
    cargo build -q -p resca-mutation
    tool=$root/target/debug/resca-mutation
    cargo mutants --list --json "${select[@]}" "$@" >"$out/list.json.new"
    # Outcomes stand while the mutated files and the list are those they were judged on. When
    # only the judge changed (tests added), caught mutants stay caught and the rest are judged
    # again; delete outcomes.jsonl for a run from scratch.
    mutated=$( (cat "$out/list.json.new"; git ls-files -z -- "${files_glob[@]}" | xargs -0 cat) | sha256sum | cut -c1-16)
    judged_by=$(git ls-files --cached --others --exclude-standard -z -- Cargo.toml Cargo.lock gpu-kernels \
        reference host tests proofs | xargs -0 cat | sha256sum | cut -c1-16)
    if [[ -f $out/mutated && $(cat "$out/mutated") != "$mutated" ]]; then
        echo "the mutated sources changed since the last run: judging every mutant again" >&2
        rm -f "$out/outcomes.jsonl" "$out/coverage.json"
    elif [[ -f $out/judged-by && $(cat "$out/judged-by") != "$judged_by" ]]; then
        echo "the tests changed since the last run: judging the surviving mutants again" >&2
        rm -f "$out/coverage.json"
        if [[ -f $out/outcomes.jsonl ]]; then
            grep -E '"outcome":"(caught|timeout)"' "$out/outcomes.jsonl" >"$out/outcomes.kept" || true
            mv "$out/outcomes.kept" "$out/outcomes.jsonl"
        fi
    fi
    echo "$mutated" >"$out/mutated"
    echo "$judged_by" >"$out/judged-by"
    mv "$out/list.json.new" "$out/list.json"
    refresh_copy "$copy"
    "$tool" instrument --list "$out/list.json" --source "$root" --tree "$copy" \
        --crate-root "$crate_root" "${checked[@]}" --out "$out/schemata.json"
    binaries=()
    for build in "${judge_builds[@]}"; do
        # shellcheck disable=SC2086 # each build is a list of cargo arguments
        # Each test binary with its package's directory, where cargo runs it.
        while IFS= read -r exe; do binaries+=(--binary "$exe"); done < <(
            cd "$copy" && cargo test --no-run --message-format=json $build |
                python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"] + "=" + m["manifest_path"].rsplit("/", 1)[0])')
    done
    if [[ ! -f $out/coverage.json ]]; then
        "$tool" trace --schemata "$out/schemata.json" "${binaries[@]}" --out "$out/coverage.json"
    fi
    "$tool" run --schemata "$out/schemata.json" --coverage "$out/coverage.json" --out "$out/outcomes.jsonl"
    "$tool" report --schemata "$out/schemata.json" --outcomes "$out/outcomes.jsonl" | tee "$out/report.md"
    exit 0
fi

if [[ $shard == rest ]]; then
    # The mutants the last `schemata` run could not rewrite, by their exact names, but for
    # those whose schema did not compile: their replacement does not compile where it stands
    # (a value the return type does not have, an operator the operands do not have), so
    # cargo-mutants would find them unviable too.
    schemata_list=$root/target/mutants/$target-schemata/schemata.json
    [[ -f $schemata_list ]] || { echo "error: run scripts/mutants.sh $target schemata first" >&2; exit 1; }
    mapfile -t names < <(python3 -c 'import json,re,sys
for e in json.load(open(sys.argv[1])):
    why = e["not_rewritten"]
    if why and not why.startswith("its schema does not compile"):
        print("^" + re.escape(e["name"]) + "$")' "$schemata_list")
    filters=()
    for name in "${names[@]}"; do filters+=(--re "$name"); done
    set -- 0/1 "${filters[@]}" "$@"
    shard=$1
    shift
fi
[[ $shard =~ ^[0-9]+/[0-9]+$ ]] || usage

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "error: cargo-nextest is not installed (cargo install cargo-nextest)" >&2
    exit 1
fi
tree=$root/target/mutants/tree
out=$root/target/mutants/$target-${shard/\//of}
mkdir -p "$out"
lock_copy "$tree"
refresh_copy "$tree"
export NEXTEST_PROFILE=mutants
cargo mutants --dir "$tree" --in-place "${select[@]}" "${judge[@]}" --test-tool nextest \
    --shard "$shard" --output "$out" "$@"
