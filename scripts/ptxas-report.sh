#!/usr/bin/env bash
# Assembles the committed PTX with ptxas for sm_80 and sm_90 and prints registers, spills, stack
# and shared memory per kernel as a markdown table. Exit 1 if ptxas rejects a module or any kernel
# spills on sm_90 (spills on sm_80 are reported, and fail only with RESCA_SPILL_FAIL_SM80=1).
#   scripts/ptxas-report.sh [PTXAS]     # default: scripts/fetch-ptxas.sh's cached copy
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ptxas="${1:-$("$root/scripts/fetch-ptxas.sh")}"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

echo "ptxas: $("$ptxas" --version | tail -n 2 | head -n 1)"
status=0
for arch in sm_80 sm_90; do
    ptx="$root/gpu-kernels/ptx/resca_kernels.$arch.ptx"
    if ! "$ptxas" -arch="$arch" -v -O3 "$ptx" -o "$scratch/$arch.cubin" >"$scratch/$arch.log" 2>&1; then
        echo "ptxas rejected $ptx for $arch:" >&2
        cat "$scratch/$arch.log" >&2
        status=1
        continue
    fi
    # One line per kernel: name registers spill-stores spill-loads stack smem.
    awk -v q="'" '
        /Compiling entry function/ { split($0, part, q); name = part[2] }
        /bytes stack frame/ { stack = $1; st = $5; ld = $9 }
        /Used [0-9]+ registers/ {
            regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
            smem = 0
            if (match($0, /[0-9]+ bytes smem/)) { smem = substr($0, RSTART, RLENGTH); sub(/ bytes smem/, "", smem) }
            print name, regs, st, ld, stack, smem
        }' "$scratch/$arch.log" | sort >"$scratch/$arch.txt"
    entries=$(grep -c '^\.visible \.entry' "$ptx")
    got=$(wc -l <"$scratch/$arch.txt")
    if [ "$entries" -ne "$got" ]; then
        echo "ptxas reported $got kernels for $arch, the PTX has $entries entries" >&2
        status=1
    fi
done
[ "$status" -eq 0 ] || exit "$status"

echo
echo "| kernel | sm_80 registers | sm_80 spill st/ld (bytes) | sm_90 registers | sm_90 spill st/ld (bytes) | stack (bytes) | static smem (bytes) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
join "$scratch/sm_80.txt" "$scratch/sm_90.txt" |
    awk '{ stack = ($5 > $10) ? $5 : $10; printf "| `%s` | %s | %s/%s | %s | %s/%s | %s | %s |\n", $1, $2, $3, $4, $7, $8, $9, stack, $6 }'
echo
spills80=$(awk '$3 > 0 || $4 > 0 { print $1 }' "$scratch/sm_80.txt")
spills90=$(awk '$3 > 0 || $4 > 0 { print $1 }' "$scratch/sm_90.txt")
if [ -n "$spills80" ]; then
    echo "sm_80: kernels that spill: $(echo $spills80)"
    [ "${RESCA_SPILL_FAIL_SM80:-0}" != 1 ] || status=1
else
    echo "sm_80: no kernel spills"
fi
if [ -n "$spills90" ]; then
    echo "FAIL: sm_90: kernels that spill: $(echo $spills90)" >&2
    status=1
else
    echo "sm_90: no kernel spills"
fi
exit "$status"
