#!/usr/bin/env bash
# Builds the tiny Linux test guest that the VM tests (tests/vm) boot with QEMU against vsockd.
# Usage: scripts/build-guest.sh [--out DIR] [--agent FILE]
#   --out DIR     output folder (default: build-guest/ in the repository; relative paths are
#                 taken from the repository root)
#   --agent FILE  use FILE as the guest's /agent instead of guest/rootfs/agent
#
# Steps: installs what is missing (scripts/install-deps.sh --guest), builds the static guest
# programs (CMake target vsockd_guest_programs, -DVSOCKD_STATIC=ON) in DIR/tools, then
# guest/build-image.sh downloads the Debian kernel and busybox (cached in .cache/guest/) and
# writes DIR/image/{vmlinux,initrd.cpio.gz,manifest.txt}. See guest/README.md.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out="build-guest"
image_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --agent) image_args+=(--agent "$(realpath "${2:?--agent needs a file}")"); shift 2 ;;
    -h|--help) sed -n '2,11p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "build-guest.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
cd "$repo"
mkdir -p "$out"
out=$(cd "$out" && pwd)
start=$SECONDS

echo "==> checking build dependencies (scripts/install-deps.sh --guest)"
"$repo/scripts/install-deps.sh" --guest

tools="$out/tools"
if [[ ! -f "$tools/build.ninja" ]]; then
  echo "==> configuring the static guest programs in $tools"
  cmake -S "$repo" -B "$tools" -G Ninja -DVSOCKD_STATIC=ON -DVSOCKD_TESTS=OFF -DVSOCKD_WERROR=ON \
    -DVSOCKD_BENCH=OFF >"$out/tools-configure.log" 2>&1 ||
    { cat "$out/tools-configure.log" >&2; echo "build-guest.sh: ERROR: cmake configure failed" >&2
      exit 1; }
fi
echo "==> building the static guest programs (ninja vsockd_guest_programs; a first build takes" \
     "a minute or two)"
# glibc's link-time notices about getaddrinfo & co. in static programs are expected: hidden.
if ! ninja -C "$tools" -j "${VSOCKD_JOBS:-2}" vsockd_guest_programs 2>&1 |
    { grep -v -e 'in statically linked applications requires at runtime' \
              -e "ld: .*: in function \`" || true; }; then
  echo "build-guest.sh: ERROR: building the guest programs failed" >&2
  exit 1
fi
[[ -f "$tools/guest-programs.txt" ]] ||
  { echo "build-guest.sh: ERROR: $tools/guest-programs.txt missing (CMake too old?)" >&2; exit 1; }

"$repo/guest/build-image.sh" --out "$out" --programs "$tools/guest-programs.txt" \
  "${image_args[@]}"
echo "==> done in $((SECONDS - start)) s: $out/image"
