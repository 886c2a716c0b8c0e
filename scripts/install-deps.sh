#!/usr/bin/env bash
# Installs what vsockd needs to build, test and benchmark, from Debian 12's archive.
# Usage: scripts/install-deps.sh [--test] [--guest]
#   --test   adds QEMU, clang and what the test guest needs, for the tests/fuzzers, and tshark
#            (the capture tests decode vsockd's pcap files with it)
#   --guest  adds what scripts/build-guest.sh and the demo need: QEMU to boot the guest,
#            Debian's python3.11 (copied into the guest; python3 also runs the seed's host
#            program in the demo), socat; gcc and xz-utils build the kernel's vsock_test
#            from linux-source-X.Y. The guest's kernel, busybox, the kernel source,
#            qemu-guest-agent and openssh-server are downloaded with `apt-get download`, never
#            installed; the libraries those two need and openssh-client (ssh-keygen for the
#            guest's host key, ssh/scp for the VM tests and the demo) are.
# help2man makes the man pages from the programs' --help at build time. --test also adds what
# tests/package checks the .deb packages and service units with: dpkg-dev (dpkg-shlibdeps,
# for CPack's dependencies), lintian, and systemd (systemd-analyze verify,
# systemd-socket-activate; it is not started).
set -euo pipefail

pkgs=(cmake ninja-build g++ pkg-config libfmt-dev libcli11-dev libgtest-dev libgmock-dev socat
      nlohmann-json3-dev libyaml-cpp-dev help2man)
guest_pkgs=(qemu-system-x86 python3 python3.11 socat binutils gzip gcc libc6-dev xz-utils
            zstd debian-archive-keyring
            # The guest's qemu-ga and sshd (fetched .debs) take these shared libraries from the
            # build machine; ssh-keygen makes the guest's host key, ssh/scp reach the guest.
            openssh-client libwrap0 libglib2.0-0 libnuma1 liburing2 libudev1 libgssapi-krb5-2)
for arg in "$@"; do
  case "$arg" in
    --test) pkgs+=(clang-14 libclang-rt-14-dev clang-format-14 clang-tidy-14 python3 tshark
                   dpkg-dev lintian systemd "${guest_pkgs[@]}") ;;
    --guest) pkgs+=("${guest_pkgs[@]}") ;;
    *) echo "install-deps.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

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
