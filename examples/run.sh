#!/usr/bin/env bash
# Builds libresca (capi/) and the two example hosts against it, and runs them: the C host
# (examples/c_host, gcc against the static library libresca.a) and the Python host
# (examples/python_host, ctypes on the shared library libresca.so; PyTorch tensors where torch is
# installed, else numpy arrays: numpy is installed from PyPI when neither is there). Each checks
# the CPU reference and the simulated kernels against tests/vectors/tiny and, on a machine with a
# GPU, the GPU launches against the simulator; without one each prints `SKIP: GPU path: <why>`.
# Usage: examples/run.sh [--build-only]   (--build-only: build target/examples/c_host and
# target/debug/libresca.{a,so}, run nothing; scripts/gpu-bundle.sh packs them)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build -q -p resca-capi
mkdir -p target/examples
# The system libraries libresca.a needs (`cargo rustc -p resca-capi --crate-type staticlib --
# --print native-static-libs`): OpenBLAS and the C runtime's.
gcc -std=c11 -O2 -Wall -Wextra -Werror -Icapi/include examples/c_host/*.c target/debug/libresca.a \
    -lopenblas -ldl -lgcc_s -lutil -lrt -lpthread -lm -lc -o target/examples/c_host
# The header is C++ as well (everything `extern "C"`).
g++ -std=c++17 -Wall -Wextra -Werror -fsyntax-only -Icapi/include -x c++ capi/include/resca.h
[ "${1:-}" = "--build-only" ] && exit 0
echo "== examples/c_host (static libresca.a)"
target/examples/c_host tests/vectors/tiny
if ! python3 -c 'import torch' 2>/dev/null && ! python3 -c 'import numpy' 2>/dev/null; then
    python3 -m pip install --quiet numpy
fi
echo "== examples/python_host (shared libresca.so through ctypes)"
python3 examples/python_host/resca_host.py --library target/debug/libresca.so
