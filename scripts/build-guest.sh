#!/usr/bin/env bash
# Builds the tiny Linux test guest that the VM tests (tests/vm) boot with QEMU against vsockd.
# Usage: scripts/build-guest.sh [--kernel SERIES] [--out DIR] [--tools DIR] [--agent FILE]
#   --kernel S    the guest kernel's series: 6.1 (default, Debian 12's kernel) or 6.12 (Debian
#                 12's newer kernel, fetched through a private view of Debian's archive)
#   --out DIR     output folder (default: build-guest/ for 6.1, build-guest-6.12/ for 6.12;
#                 relative paths are taken from the repository root)
#   --tools DIR   where the static guest programs are built (default DIR/tools of --out; the
#                 programs do not depend on the kernel, so two images can share one)
#   --agent FILE  use FILE as the guest's /agent instead of guest/rootfs/agent
#
# Steps: installs what is missing (scripts/install-deps.sh --guest), builds the static guest
# programs (CMake target vsockd_guest_programs, -DVSOCKD_STATIC=ON) in DIR/tools, then
# guest/build-image.sh downloads the Debian kernel and busybox (cached in .cache/guest/) and
# writes DIR/image/{vmlinux,initrd.cpio.gz,manifest.txt}. See guest/README.md.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=""
tools=""
series=6.1
image_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --kernel) series="${2:?--kernel needs a series (6.1 or 6.12)}"; shift 2 ;;
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --tools) tools="${2:?--tools needs a directory}"; shift 2 ;;
    --agent) image_args+=(--agent "$(realpath "${2:?--agent needs a file}")"); shift 2 ;;
    -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "build-guest.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$series" in
  6.1) out="${out:-build-guest}" ;;
  6.12) out="${out:-build-guest-6.12}" ;;
  *) echo "build-guest.sh: --kernel $series: the series is 6.1 or 6.12" >&2; exit 2 ;;
esac
cd "$repo"
mkdir -p "$out"
out=$(cd "$out" && pwd)
tools="${tools:-$out/tools}"
mkdir -p "$tools"
tools=$(cd "$tools" && pwd)
start=$SECONDS

echo "==> checking build dependencies (scripts/install-deps.sh --guest)"
"$repo/scripts/install-deps.sh" --guest

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
  --kernel "$series" "${image_args[@]}"
echo "==> done in $((SECONDS - start)) s: $out/image"
