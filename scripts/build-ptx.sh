#!/usr/bin/env bash
# Builds the kernel crate to PTX with rustc's own nvptx64 target (nightly + rust-src, see
# docs/gpu.md) for sm_80 and sm_90, and writes gpu-kernels/ptx/resca_kernels.<arch>.ptx
# plus gpu-kernels/ptx/manifest.json (entry points and their parameters, toolchain, source hash).
#
#   scripts/build-ptx.sh                 # both architectures, rewrite the committed files
#   scripts/build-ptx.sh sm_90           # one architecture (the manifest is rewritten too)
#   scripts/build-ptx.sh --check         # rebuild into a scratch folder, compare with the
#                                        # committed files; exit 1 if they are stale
#   scripts/build-ptx.sh --source-hash   # print the hash of the kernel source the manifest records
#
# Exit status 3: the nightly toolchain or its rust-src component is missing (in --check mode
# nothing is installed; otherwise rust-src is added with rustup when the nightly exists).
# Environment: RESCA_NIGHTLY (toolchain name, default `nightly`), PTX_TARGET_DIR (default
# target-ptx/), ARCH (one architecture, the old interface).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
nightly="${RESCA_NIGHTLY:-nightly}"
target_root="${PTX_TARGET_DIR:-$root/target-ptx}"
committed="$root/gpu-kernels/ptx"
base_flags="-Zunstable-options -Cpanic=immediate-abort -Ccodegen-units=1 -Cdebuginfo=0"

source_hash() {
    (cd "$root/gpu-kernels" && { echo Cargo.toml; find src -type f -name '*.rs'; } | LC_ALL=C sort |
        xargs sha256sum | sha256sum | cut -d' ' -f1)
}

check=0
archs=()
for arg in "$@"; do
    case "$arg" in
    --check) check=1 ;;
    --source-hash)
        source_hash
        exit 0
        ;;
    sm_*) archs+=("$arg") ;;
    *)
        echo "usage: $0 [--check | --source-hash] [sm_80] [sm_90]" >&2
        exit 2
        ;;
    esac
done
if [ ${#archs[@]} -eq 0 ]; then
    if [ -n "${ARCH:-}" ]; then archs=("$ARCH"); else archs=(sm_80 sm_90); fi
fi

missing() {
    echo "build-ptx: $*" >&2
    exit 3
}
command -v rustup >/dev/null 2>&1 || missing "no rustup, so no $nightly toolchain"
rustc "+$nightly" -V >/dev/null 2>&1 || missing "no $nightly toolchain (rustup toolchain install $nightly)"
if ! rustup component list --toolchain "$nightly" --installed 2>/dev/null | grep -q '^rust-src'; then
    [ "$check" -eq 0 ] || missing "the $nightly toolchain has no rust-src component"
    echo "build-ptx: installing rust-src for the $nightly toolchain" >&2
    rustup component add rust-src --toolchain "$nightly" || missing "could not install rust-src"
fi
rustc_version=$(rustc "+$nightly" -V)
llvm_version=$(rustc "+$nightly" -vV | sed -n 's/^LLVM version: //p')

if [ "$check" -eq 1 ]; then
    out_dir=$(mktemp -d)
    trap 'rm -rf "$out_dir"' EXIT
    # The manifest reads every module: start from the committed ones.
    cp "$committed"/*.ptx "$out_dir"/
else
    out_dir="$committed"
    mkdir -p "$out_dir"
fi

for arch in "${archs[@]}"; do
    target_dir="$target_root/$arch"
    deps="$target_dir/nvptx64-nvidia-cuda/release/deps"
    # Cargo does not track the .s as an output: remove it with the crate's outputs so that the
    # crate is rebuilt (core stays cached) and no stale .s is mistaken for this build's.
    rm -f "$deps"/resca_gpu_kernels-*.s "$deps"/libresca_gpu_kernels-*.rlib "$deps"/libresca_gpu_kernels-*.rmeta
    echo "build-ptx: $arch ($rustc_version)" >&2
    RUSTFLAGS="$base_flags -Ctarget-cpu=$arch" \
        cargo "+$nightly" rustc -q -p resca-gpu-kernels --lib --crate-type=rlib --release \
        --target nvptx64-nvidia-cuda -Zbuild-std=core --target-dir "$target_dir" -- --emit=asm
    asm=$(ls "$deps"/resca_gpu_kernels-*.s)
    # The one allowed `.extern` is the dynamic shared memory (`.extern .shared`).
    if grep '\.extern' "$asm" | grep -qv '^\.extern \.shared'; then
        echo "build-ptx: unresolved externals in the $arch PTX (a panic path or an out-of-crate call):" >&2
        grep '\.extern' "$asm" | grep -v '^\.extern \.shared' >&2
        exit 1
    fi
    cp "$asm" "$out_dir/resca_kernels.$arch.ptx"
done

cargo run -q -p resca-gpu-kernels --example ptx_manifest -- --ptx-dir "$out_dir" \
    --out "$out_dir/manifest.json" --rustc "$rustc_version" --llvm "$llvm_version" \
    --rustflags "$base_flags -Ctarget-cpu=<arch>" --source-sha256 "$(source_hash)"

if [ "$check" -eq 0 ]; then
    for arch in "${archs[@]}"; do
        f="$out_dir/resca_kernels.$arch.ptx"
        echo "build-ptx: wrote $f ($(wc -c <"$f") bytes, $(grep -c '^\.visible \.entry' "$f") entries)"
    done
    echo "build-ptx: wrote $out_dir/manifest.json"
    exit 0
fi

# --check: the committed files must be what this source builds.
recorded=$(sed -n 's/^  "rustc": "\(.*\)",$/\1/p' "$committed/manifest.json")
stale=0
for arch in "${archs[@]}"; do
    name="resca_kernels.$arch.ptx"
    if cmp -s "$out_dir/$name" "$committed/$name"; then
        echo "build-ptx: $name is up to date" >&2
    elif [ "$recorded" = "$rustc_version" ]; then
        echo "build-ptx: STALE: gpu-kernels/ptx/$name differs from what the source builds:" >&2
        diff -u "$committed/$name" "$out_dir/$name" | head -40 >&2 || true
        stale=1
    else
        echo "build-ptx: $name differs, but the committed copy was built by $recorded and this" \
            "is $rustc_version: code generation may differ; comparing entry points only" >&2
    fi
done
# Entry points and parameters (and the source hash) must match whatever compiler built them.
entries_of() { sed -n '/^  "entries": \[/,$p' "$1"; }
if ! diff -u <(entries_of "$committed/manifest.json") <(entries_of "$out_dir/manifest.json") >&2; then
    echo "build-ptx: STALE: the entry points or parameters in gpu-kernels/ptx/manifest.json changed" >&2
    stale=1
fi
if [ "$(sed -n 's/^  "source_sha256": "\(.*\)",$/\1/p' "$committed/manifest.json")" != "$(source_hash)" ]; then
    echo "build-ptx: STALE: gpu-kernels/ptx/manifest.json records another kernel source hash" >&2
    stale=1
fi
if [ "$stale" -ne 0 ]; then
    echo "build-ptx: rebuild with scripts/build-ptx.sh and commit gpu-kernels/ptx/" >&2
    exit 1
fi
echo "build-ptx: committed PTX and manifest are up to date"
