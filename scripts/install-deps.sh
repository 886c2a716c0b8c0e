#!/usr/bin/env bash
# Installs what vsockd needs to build, test and benchmark, from Debian 12's archive.
# Usage: scripts/install-deps.sh [--test]   (--test adds QEMU and clang for the tests/fuzzers)
set -euo pipefail

pkgs=(cmake ninja-build g++ pkg-config libfmt-dev libcli11-dev libgtest-dev libgmock-dev socat
      nlohmann-json3-dev)
if [[ "${1:-}" == "--test" ]]; then
  pkgs+=(qemu-system-x86 clang-14 libclang-rt-14-dev clang-format-14 clang-tidy-14 python3)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "==> build dependencies already installed"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "==> installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
