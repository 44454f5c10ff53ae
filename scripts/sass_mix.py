#!/usr/bin/env python3
"""Instruction mix of the GEMMs' main loops in an `nvdisasm -c` listing.

    sass_mix.py LISTING KERNEL...                   # the exact GEMMs
    sass_mix.py --tensor-cores LISTING KERNEL...    # the tensor-core GEMMs

For each kernel: its innermost-enclosing loop with the most FFMA (a backward branch to a label,
the loop being the instructions from the label to the branch), and in that loop the counts of
FFMA, FMUL, FADD, LDS.128 and other LDS. Asserts, per kernel: the loop exists and holds FFMA,
no FMUL and no FADD (every multiply-add fused), at least one LDS.128 (vector shared loads), and
in the whole kernel no local memory (LDL/STL). With --tensor-cores: the loop with the most HMMA
holds HMMA (the mma.sync), LDSM (ldmatrix) and LDGSTS (cp.async), and the kernel no local
memory. Prints one line per kernel; exit 1 on a failure.
"""
import re
import sys

SECTION = re.compile(r"^\s*\.text\.(\S+):")
LABEL = re.compile(r"^(\.L_x_\d+):")
INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Z0-9_]+)*)(.*)")
TARGET = re.compile(r"`\((\.L_x_\d+)\)")


def parse(path):
    """kernel -> (labels {name: address}, instructions [(address, opcode, suffix, rest)])."""
    kernels, current = {}, None
    pending = []
    for line in open(path, encoding="utf-8", errors="replace"):
        m = SECTION.match(line)
        if m:
            current = kernels.setdefault(m.group(1), ({}, []))
            pending = []
            continue
        if current is None:
            continue
        m = LABEL.match(line.strip())
        if m:
            pending.append(m.group(1))
            continue
        m = INSTR.search(line)
        if m:
            address = int(m.group(1), 16)
            for label in pending:
                current[0][label] = address
            pending = []
            current[1].append((address, m.group(2), m.group(3), m.group(4)))
    return kernels


def loops(labels, instrs):
    """(start, end) address ranges of backward branches."""
    found = []
    for address, op, _, rest in instrs:
        if op == "BRA":
            m = TARGET.search(rest)
            if m and m.group(1) in labels and labels[m.group(1)] <= address:
                found.append((labels[m.group(1)], address))
    return found


def mix(instrs, lo, hi):
    counts = {"FFMA": 0, "FMUL": 0, "FADD": 0, "LDS.128": 0, "LDS": 0}
    for address, op, suffix, _ in instrs:
        if lo <= address <= hi:
            if op == "LDS" and ".128" in suffix:
                counts["LDS.128"] += 1
            elif op in counts:
                counts[op] += 1
    return counts


def tensor_core_mix(instrs, lo, hi):
    counts = {"HMMA": 0, "LDSM": 0, "LDGSTS": 0}
    for address, op, _, _ in instrs:
        if lo <= address <= hi and op in counts:
            counts[op] += 1
    return counts


def exact_report(instrs, lo, hi):
    """The exact GEMMs' main-loop counts and what is wrong with them."""
    c = mix(instrs, lo, hi)
    summary = (f"FFMA {c['FFMA']}, FMUL {c['FMUL']}, FADD {c['FADD']}, LDS.128 {c['LDS.128']}, "
               f"LDS {c['LDS']}")
    problems = []
    if c["FFMA"] == 0:
        problems.append("no FFMA")
    if c["FMUL"] or c["FADD"]:
        problems.append("separate FMUL/FADD")
    if c["LDS.128"] == 0:
        problems.append("no LDS.128")
    return summary, problems


def tensor_core_report(instrs, lo, hi):
    """The tensor-core GEMMs' main-loop counts and what is wrong with them."""
    c = tensor_core_mix(instrs, lo, hi)
    summary = f"HMMA {c['HMMA']}, LDSM {c['LDSM']}, LDGSTS {c['LDGSTS']}"
    return summary, [f"no {op}" for op, count in c.items() if count == 0]


def check(kernels, listing, names, loop_counts, key, report):
    """Finds each kernel's main loop (the loop with the most `key` instructions by `loop_counts`),
    prints its `report` and the kernel's local memory operations; 1 if any kernel fails."""
    status = 0
    for name in names:
        if name not in kernels:
            print(f"FAIL: {name}: not in {listing}")
            status = 1
            continue
        labels, instrs = kernels[name]
        best = max(loops(labels, instrs), key=lambda r: loop_counts(instrs, *r)[key], default=None)
        local = sum(1 for _, op, _, _ in instrs if op in ("LDL", "STL"))
        if best is None:
            print(f"FAIL: {name}: no loop")
            status = 1
            continue
        summary, problems = report(instrs, *best)
        line = f"{name}: main loop {best[0]:#06x}-{best[1]:#06x}: {summary}; local memory ops {local}"
        if local:
            problems.append("local memory")
        if problems:
            print(f"FAIL: {line} ({', '.join(problems)})")
            status = 1
        else:
            print(f"ok: {line}")
    return status


def main():
    args = sys.argv[1:]
    tensor_cores = args[:1] == ["--tensor-cores"]
    if tensor_cores:
        args = args[1:]
    if len(args) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    kernels = parse(args[0])
    if tensor_cores:
        return check(kernels, args[0], args[1:], tensor_core_mix, "HMMA", tensor_core_report)
    return check(kernels, args[0], args[1:], mix, "FFMA", exact_report)


if __name__ == "__main__":
    sys.exit(main())
