#!/usr/bin/env bash
# Fetches QEMU 10.0 from Debian's bookworm-backports for the VM tests, without installing it
# or touching the machine's apt sources or its own QEMU.
#
# Usage: scripts/fetch-qemu.sh [--print-path]
#   --print-path  print only the wrapper's path on stdout (for VSOCKD_QEMU=$(...))
#
# The packages (qemu-system-x86, qemu-system-common, qemu-system-data, and the firmware QEMU
# 10 needs from backports: seabios; ipxe-qemu) are downloaded with `apt-get download` through
# the private view of Debian's archive of guest/debian-archive.sh (.cache/apt-private/) and
# unpacked with `dpkg-deb -x` into .cache/qemu/<version>/. The shared libraries come from the
# machine (Debian 12's, the ones its QEMU 7.2 package pulls in; a missing one is named).
# The wrapper .cache/qemu/<version>/qemu-system-x86_64 runs that binary with its own firmware
# (-L) and module folder (QEMU_MODULE_DIR), so nothing of the installed QEMU 7.2 is mixed in.
# The VM tests take it through VSOCKD_QEMU:
#   VSOCKD_QEMU=$(scripts/fetch-qemu.sh --print-path) ctest --test-dir build -L vm
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
print_path=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --print-path) print_path=1; shift ;;
    -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "fetch-qemu.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

step() { if [[ $print_path -eq 0 ]]; then echo "==> $*"; else echo "==> $*" >&2; fi; }
die() { echo "fetch-qemu.sh: ERROR: $*" >&2; exit 1; }
for tool in apt-get apt-cache dpkg-deb ldd; do
  command -v "$tool" >/dev/null || die "'$tool' not found on PATH"
done

ARCHIVE_DIR="$repo/.cache/apt-private"
# shellcheck source=guest/debian-archive.sh
source "$repo/guest/debian-archive.sh"
archive_update

# The newest QEMU 10.0 of the view (bookworm-backports), and the seabios it needs.
version=$(archive_versions qemu-system-x86 | grep -E '^1:10\.0\.' | head -n1 || true)
[[ -n "$version" ]] || die "no qemu-system-x86 10.0 in bookworm-backports"
dest="$repo/.cache/qemu/${version//:/%3a}"
wrapper="$dest/qemu-system-x86_64"
if [[ ! -f "$dest/.complete" ]]; then
  debs="$repo/.cache/qemu/debs"
  mkdir -p "$debs"
  seabios=$(archive_versions seabios | head -n1)
  ipxe=$(archive_versions ipxe-qemu | head -n1)
  rm -rf "$dest"
  mkdir -p "$dest/root"
  for pv in "qemu-system-x86 $version" "qemu-system-common $version" \
            "qemu-system-data $version" "seabios $seabios" "ipxe-qemu $ipxe"; do
    read -r pkg ver <<<"$pv"
    archive_download "$pkg" "$ver" "$debs" >&2
    dpkg-deb -x "$ARCHIVE_DEB" "$dest/root"
  done
  bin="$dest/root/usr/bin/qemu-system-x86_64"
  [[ -x "$bin" ]] || die "no usr/bin/qemu-system-x86_64 in qemu-system-x86 $version"
  if ldd "$bin" | grep -q 'not found'; then
    die "QEMU $version needs libraries this machine lacks: $(ldd "$bin" | grep 'not found' |
         awk '{print $1}' | paste -sd ' ') (install the machine's qemu-system-x86 first:" \
        "scripts/install-deps.sh --guest)"
  fi
  # Firmware: QEMU's own files, then seabios's and iPXE's folders (Debian's build searches
  # /usr/share/seabios and /usr/lib/ipxe/qemu; here they are under root/).
  cat >"$wrapper" <<'EOF'
#!/bin/sh
# Runs the QEMU unpacked beside this script with its own firmware and modules
# (written by scripts/fetch-qemu.sh).
here=$(cd "$(dirname "$0")" && pwd)
QEMU_MODULE_DIR="$here/root/usr/lib/x86_64-linux-gnu/qemu"
export QEMU_MODULE_DIR
exec "$here/root/usr/bin/qemu-system-x86_64" -L "$here/root/usr/share/qemu" \
  -L "$here/root/usr/share/seabios" -L "$here/root/usr/lib/ipxe/qemu" "$@"
EOF
  chmod 0755 "$wrapper"
  "$wrapper" --version >/dev/null || die "the unpacked QEMU does not run: $wrapper --version"
  touch "$dest/.complete"
fi
step "QEMU $("$wrapper" --version | head -n1 | sed 's/^QEMU emulator version //'): $wrapper"
if [[ $print_path -eq 1 ]]; then echo "$wrapper"; fi
