#!/usr/bin/env bash
# The GEMMs' machine code: assembles the committed PTX with ptxas 12 for sm_80 and sm_90,
# disassembles the cubins with nvdisasm and checks, for every gemm128_*, gemm64_* and
# gemm_splitk_partial kernel (scripts/sass_mix.py): the main loop holds FFMA and no separate
# FMUL/FADD, it reads shared memory with LDS.128, and the kernel uses no local memory; for every
# tensor-core GEMM (gemm_tf32_*, gemm_tf32x3_*, gemm_bf16_*) and tensor-core attention
# (flash_attention_tf32, _tf32x3, _bf16): the main loop holds HMMA, LDSM and LDGSTS, and no local
# memory; ptxas reports no spill and no stack for any of them. Prints the
# ptxas registers/spills of those kernels.
#
#   scripts/sass-check.sh            # tools from $PTXAS / $NVDISASM, else the cached venv below
#
# ptxas 12 and nvdisasm are PyPI wheels (nvidia-cuda-nvcc-cu12, nvidia-cuda-nvdisasm), installed
# once into ${RESCA_CACHE:-~/.cache/resca}/cuda-tools (a Python venv). Exit 3 with the reason
# when they cannot be had (no python3, no network); exit 1 when a check fails.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${RESCA_CACHE:-$HOME/.cache/resca}"
venv="$cache/cuda-tools"

missing() {
    echo "sass-check: $*" >&2
    exit 3
}
find_tool() { find "$venv" -type f -name "$1" -perm -u+x 2>/dev/null | sort | tail -n 1; }

ptxas="${PTXAS:-}"
nvdisasm="${NVDISASM:-}"
if [ -z "$ptxas" ] || [ -z "$nvdisasm" ]; then
    if [ -z "$(find_tool ptxas)" ] || [ -z "$(find_tool nvdisasm)" ]; then
        command -v python3 >/dev/null 2>&1 || missing "no python3 to install ptxas 12 and nvdisasm from PyPI"
        echo "sass-check: installing ptxas 12 and nvdisasm (PyPI) into $venv" >&2
        python3 -m venv "$venv" >&2 || missing "python3 -m venv failed"
        "$venv/bin/pip" install -q nvidia-cuda-nvcc-cu12 nvidia-cuda-nvdisasm >&2 ||
            missing "pip could not install nvidia-cuda-nvcc-cu12 nvidia-cuda-nvdisasm (no network?)"
    fi
    ptxas="${ptxas:-$(find_tool ptxas)}"
    nvdisasm="${nvdisasm:-$(find_tool nvdisasm)}"
fi
[ -x "$ptxas" ] || missing "no ptxas at '$ptxas'"
[ -x "$nvdisasm" ] || missing "no nvdisasm at '$nvdisasm'"
echo "ptxas: $("$ptxas" --version | tail -n 2 | head -n 1)"
echo "nvdisasm: $("$nvdisasm" --version | tail -n 2 | head -n 1)"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
status=0
for arch in sm_80 sm_90; do
    ptx="$root/gpu-kernels/ptx/resca_kernels.$arch.ptx"
    kernels=$(sed -n 's/^\.visible \.entry \(gemm128_[a-z_]*\|gemm64_[a-z_]*\|gemm_splitk_partial\)(.*/\1/p' "$ptx")
    tensor_core_kernels=$(sed -n 's/^\.visible \.entry \(gemm_tf32[a-z0-9_]*\|gemm_bf16_[a-z_]*\|flash_attention_[a-z0-9]*\)(.*/\1/p' "$ptx")
    [ -n "$kernels" ] || {
        echo "FAIL: $arch: no exact GEMM kernels in $ptx"
        status=1
        continue
    }
    "$ptxas" -arch="$arch" -v -O3 "$ptx" -o "$scratch/$arch.cubin" >"$scratch/$arch.log" 2>&1 || {
        echo "FAIL: ptxas rejected $ptx for $arch:"
        cat "$scratch/$arch.log"
        status=1
        continue
    }
    echo "== $arch"
    # Registers, spills and stack of the exact GEMMs.
    awk -v q="'" -v list=" $(echo $kernels $tensor_core_kernels) " '
        /Compiling entry function/ { split($0, part, q); name = part[2] }
        /bytes stack frame/ { stack = $1; st = $5; ld = $9 }
        /Used [0-9]+ registers/ && index(list, " " name " ") {
            regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
            bad = (st + ld + stack > 0) ? "FAIL: " : ""
            printf "%s%s: %s registers, spill stores/loads %s/%s bytes, stack %s bytes\n", bad, name, regs, st, ld, stack
        }' "$scratch/$arch.log" | sort | tee "$scratch/$arch.regs"
    [ -n "$tensor_core_kernels" ] || {
        echo "FAIL: $arch: no tensor-core GEMM kernels in $ptx"
        status=1
    }
    if grep -q '^FAIL' "$scratch/$arch.regs"; then status=1; fi
    "$nvdisasm" -c "$scratch/$arch.cubin" >"$scratch/$arch.sass" 2>/dev/null
    # shellcheck disable=SC2086
    python3 "$root/scripts/sass_mix.py" "$scratch/$arch.sass" $kernels || status=1
    # shellcheck disable=SC2086
    python3 "$root/scripts/sass_mix.py" --tensor-cores "$scratch/$arch.sass" $tensor_core_kernels || status=1
done
exit "$status"
