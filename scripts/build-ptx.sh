#!/usr/bin/env bash
# Compiles the kernel crate to PTX with rustc's own nvptx64 target (nightly + rust-src, see
# shared/TOOLCHAIN.md) and writes gpu-kernels/ptx/resca_kernels.sm_80.ptx. Lists the entries.
#   scripts/build-ptx.sh            # sm_80
#   ARCH=sm_90 scripts/build-ptx.sh # another target (the file name follows)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
arch="${ARCH:-sm_80}"
target_dir="${PTX_TARGET_DIR:-$root/target-ptx}"
out="$root/gpu-kernels/ptx/resca_kernels.$arch.ptx"

if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
    echo "build-ptx: installing rust-src for the nightly toolchain" >&2
    rustup component add rust-src --toolchain nightly
fi

cd "$root"
# A stale .s of an earlier build must not be mistaken for this one.
rm -f "$target_dir"/nvptx64-nvidia-cuda/release/deps/resca_gpu_kernels-*.s
RUSTFLAGS="-Zunstable-options -Cpanic=immediate-abort -Ctarget-cpu=$arch -Ccodegen-units=1 -Cdebuginfo=0" \
    cargo +nightly rustc -p resca-gpu-kernels --lib --crate-type=rlib --release \
    --target nvptx64-nvidia-cuda -Zbuild-std=core --target-dir "$target_dir" -- --emit=asm

asm=$(ls "$target_dir"/nvptx64-nvidia-cuda/release/deps/resca_gpu_kernels-*.s)
if grep -q '\.extern' "$asm"; then
    echo "build-ptx: unresolved externals in the PTX (a panic path or an out-of-crate call):" >&2
    grep '\.extern' "$asm" >&2
    exit 1
fi
mkdir -p "$(dirname "$out")"
cp "$asm" "$out"
echo "build-ptx: wrote $out ($(wc -c <"$out") bytes), entries:"
grep -o '^\.visible \.entry [a-z_0-9]*' "$out" | sed 's/.*entry /  /'
