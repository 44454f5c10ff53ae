#!/usr/bin/env bash
# Installs the system packages the workspace needs on a fresh Debian/Ubuntu machine:
# OpenBLAS (ndarray's matrix products and ndarray-linalg's LAPACK) and pkg-config.
set -euo pipefail
missing=()
for pkg in libopenblas-dev pkg-config; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
