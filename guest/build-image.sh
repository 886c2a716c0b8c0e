#!/usr/bin/env bash
# Assembles vsockd's test guest image from Debian packages and the project's static programs.
# Called by scripts/build-guest.sh (the user-facing entry, which first builds the programs);
# see guest/README.md for what the image contains and the contract with the VM runner.
#
# Usage: guest/build-image.sh --out DIR --programs FILE [--agent FILE] [--kernel SERIES]
#   --out DIR       writes DIR/rootfs/ and DIR/image/{vmlinux,initrd.cpio.gz,manifest.txt}
#   --programs FILE list of static executables (one path a line) to put in /bin
#   --agent FILE    the guest's /agent (default: guest/rootfs/agent)
#   --kernel SERIES 6.1 (default: Debian 12's kernel) or 6.12 (Debian 12's newer kernel)
#
# Nothing is installed on the build machine: the kernel, busybox-static and linux-source-X.Y
# (the kernel's vsock_test, built here with gcc) are fetched with `apt-get download` and
# unpacked with dpkg-deb. 6.1: the package linux-image-amd64 depends on, from the machine's apt
# sources. 6.12: the newest linux-source-6.12 of Debian 12's archive and the
# linux-image-6.12.*-amd64-unsigned of the same version, from a private view of the archive
# (bookworm, -security, -backports; guest/debian-archive.sh) that leaves apt's own
# configuration alone.
# Downloads and extractions are cached in .cache/guest/ (git-ignored), keyed by package name
# and version, so a rerun costs a few seconds. Python (Debian's /usr/bin/python3.11) and socat
# come from the build machine, with the shared libraries ldd names.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache="$repo/.cache/guest"
# Debian's interpreter, never a python3 found first on PATH (pyenv & co.): the guest needs a
# python whose _socket is built in and whose stdlib layout we know.
PY=/usr/bin/python3.11
SOCAT=/usr/bin/socat

# Modules the guest's /init loads (guest/rootfs/init has the order).
KERNEL_MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
                vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport
                vsock_loopback vsock_diag failover net_failover virtio_net)
# Where they live in the kernel package (tar wildcards; 6.1 ships .ko, 6.12 .ko.xz, which the
# image gets decompressed: busybox's insmod takes plain ELF modules).
KERNEL_MODULE_GLOBS=('./lib/modules/*/kernel/drivers/virtio/*.ko*'
                     './lib/modules/*/kernel/net/vmw_vsock/*.ko*'
                     './lib/modules/*/kernel/net/core/failover.ko*'
                     './lib/modules/*/kernel/drivers/net/net_failover.ko*'
                     './lib/modules/*/kernel/drivers/net/virtio_net.ko*'
                     './lib/modules/*/modules.builtin')
# The Python stdlib subset: what these imports load (plus interpreter startup). Only pure
# Python modules are copied; lib-dynload stays empty (modules with a C accelerator in
# lib-dynload, like json or hashlib, fall back to their pure Python or built-in code).
PY_IMPORTS="socket, os, sys, struct, time, subprocess, select, selectors, threading, errno,
  signal, argparse, json, hashlib, random, traceback, contextlib, functools, collections,
  re, io, binascii, base64, zlib, math, fcntl"

out=""
programs=""
agent="$repo/guest/rootfs/agent"
series=6.1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --programs) programs="${2:?--programs needs a file}"; shift 2 ;;
    --agent) agent="${2:?--agent needs a file}"; shift 2 ;;
    --kernel) series="${2:?--kernel needs a series (6.1 or 6.12)}"; shift 2 ;;
    -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "build-image.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

step() { echo "==> $*"; }
die() { echo "build-image.sh: ERROR: $*" >&2; exit 1; }

[[ -n "$out" ]] || die "--out DIR is required"
[[ -n "$programs" ]] || die "--programs FILE is required"
[[ -r "$programs" ]] || die "program list $programs not found (build the guest programs first)"
[[ -r "$agent" ]] || die "guest agent $agent not found (guest/rootfs/agent, or pass --agent FILE)"
[[ "$series" == 6.1 || "$series" == 6.12 ]] || die "--kernel $series: the series is 6.1 or 6.12"
[[ -x "$PY" ]] || die "$PY not found: install Debian's python3.11 (scripts/install-deps.sh --guest)"
[[ -x "$SOCAT" ]] || die "$SOCAT not found: install socat (scripts/install-deps.sh --guest)"
for tool in apt-get apt-cache dpkg-deb tar gzip xz zstd ldd readelf strip; do
  command -v "$tool" >/dev/null || die "'$tool' not found on PATH"
done
mkdir -p "$out" "$cache/debs"
out=$(cd "$out" && pwd)

# --- Debian packages ---------------------------------------------------------------------
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
APT_OPTS=(-q)
# As root, apt drops to the _apt user to download and warns that it cannot write our folder.
if [[ $(id -u) -eq 0 ]]; then APT_OPTS+=(-o APT::Sandbox::User=root); fi
apt_updated=0
apt_update() {
  if [[ $apt_updated -eq 1 ]]; then return 1; fi
  step "refreshing apt's package lists (apt-get update)"
  $SUDO apt-get update -q || die "apt-get update failed"
  apt_updated=1
}

candidate() {  # PKG -> prints apt's candidate version (empty when unknown)
  apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { if ($2 != "(none)") print $2 }'
}

# fetch_deb PKG [ARCH]: sets DEB (cached .deb path) and DEB_VERSION; returns 1 if the
# download fails (stale lists: the version was superseded). ARCH (default amd64) only names
# the cached file ("all" for architecture-independent packages such as linux-source-X.Y).
fetch_deb() {
  local pkg="$1" arch="${2:-amd64}" tmp
  DEB_VERSION=$(candidate "$pkg")
  [[ -n "$DEB_VERSION" ]] || return 1
  DEB="$cache/debs/${pkg}_${DEB_VERSION//:/%3a}_${arch}.deb"
  if [[ -s "$DEB" ]]; then
    step "cached: $pkg $DEB_VERSION"
    return 0
  fi
  step "downloading $pkg $DEB_VERSION"
  tmp=$(mktemp -d "$cache/debs/download.XXXXXX")
  if ! (cd "$tmp" && apt-get download "${APT_OPTS[@]}" "$pkg=$DEB_VERSION"); then
    rm -rf "$tmp"
    return 1
  fi
  mv "$tmp"/*.deb "$DEB"
  rm -rf "$tmp"
}

kernel_package() {  # prints the package linux-image-amd64 currently depends on
  apt-cache depends linux-image-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}

# fetch PKG-OR-FUNCTION [ARCH]: package name, or "kernel" for linux-image-amd64's current
# kernel.
fetch() {
  local what="$1" arch="${2:-amd64}" pkg attempt
  for attempt in 1 2; do
    if [[ "$what" == kernel ]]; then pkg=$(kernel_package); else pkg="$what"; fi
    if [[ -n "$pkg" ]] && fetch_deb "$pkg" "$arch"; then
      PKG="$pkg"
      return 0
    fi
    # Missing or stale package lists (fresh machine, superseded version): update once, retry.
    if [[ $attempt -eq 1 ]] && apt_update; then continue; fi
    break
  done
  die "cannot download ${pkg:-$what} (is a Debian 12 'main' apt source configured?)"
}

# Where apt keeps no binary package cache (Docker-style images), every apt-cache call
# re-reads all the package lists (seconds under load). So the resolution is remembered,
# keyed by the state of the lists and sources: `apt-get update` invalidates it.
lists_key() {
  { ls -l --time-style=+%s /var/lib/apt/lists/ /etc/apt/sources.list.d/ 2>/dev/null
    cat /etc/apt/sources.list 2>/dev/null || true; } | sha256sum | cut -c1-16
}
# linux-source-X.Y of the kernel's X.Y series carries the kernel's own vsock test suite
# (tools/testing/vsock); ~139 MB, downloaded once and cached like the kernel.
source_package() {  # KERNEL-VERSION (6.1.192-2) -> linux-source-6.1
  echo "linux-source-$(sed -E 's/^([0-9]+\.[0-9]+).*/\1/' <<<"$1")"
}
KPKG="" KVER="" BBVER="" LSVER=""
if [[ "$series" == 6.1 ]]; then
  resolved="$cache/debs/resolved-$(lists_key).txt"
  if [[ -f "$resolved" ]]; then
    read -r KPKG KVER BBVER LSVER <"$resolved" || true
    KDEB="$cache/debs/${KPKG}_${KVER//:/%3a}_amd64.deb"
    BBDEB="$cache/debs/busybox-static_${BBVER//:/%3a}_amd64.deb"
    LSPKG=$(source_package "$KVER")
    LSDEB="$cache/debs/${LSPKG}_${LSVER//:/%3a}_all.deb"
  fi
  if [[ -n "$KPKG" && -n "$BBVER" && -n "$LSVER" && -s "$KDEB" && -s "$BBDEB" && -s "$LSDEB" ]]
  then
    step "cached: $KPKG $KVER, busybox-static $BBVER, $LSPKG $LSVER (apt's lists unchanged)"
  else
    step "resolving the kernel package (apt-cache depends linux-image-amd64)"
    fetch kernel
    KPKG="$PKG" KVER="$DEB_VERSION" KDEB="$DEB"
    fetch busybox-static
    BBVER="$DEB_VERSION" BBDEB="$DEB"
    LSPKG=$(source_package "$KVER")
    fetch "$LSPKG" all
    LSVER="$DEB_VERSION" LSDEB="$DEB"
    rm -f "$cache"/debs/resolved-*.txt
    echo "$KPKG $KVER $BBVER $LSVER" >"$cache/debs/resolved-$(lists_key).txt"
  fi
else
  # Linux 6.12 from the private view of Debian's archive: the newest linux-source-6.12 and the
  # kernel built from the same source version (so vsock_test is the running kernel's suite).
  ARCHIVE_DIR="$repo/.cache/apt-private"
  # shellcheck source=guest/debian-archive.sh
  source "$repo/guest/debian-archive.sh"
  archive_update
  presolved="$cache/debs/private-resolved-6.12-$(stat -c %Y "$ARCHIVE_DIR/updated").txt"
  if [[ -f "$presolved" ]]; then
    read -r KPKG KVER BBVER LSVER <"$presolved" || true
  fi
  if [[ -z "$KPKG" || -z "$LSVER" || -z "$BBVER" ]]; then
    step "resolving linux-source-6.12 and its kernel in the private archive view"
    LSVER=$(archive_versions linux-source-6.12 | head -n1)
    [[ -n "$LSVER" ]] || die "no linux-source-6.12 in Debian's archive (bookworm-security/-backports)"
    upstream=${LSVER%%-*}
    KVER="$LSVER"
    KPKG=""
    while read -r name; do
      if archive_versions "$name" | grep -qxF "$LSVER"; then KPKG="$name"; break; fi
    done < <(archive_cache search --names-only \
               "^linux-image-${upstream//./\\.}\\+[a-z0-9]+-amd64-unsigned\$" 2>/dev/null |
             awk '{ print $1 }' | sort)
    [[ -n "$KPKG" ]] || die "no linux-image-${upstream}+*-amd64-unsigned at version $LSVER"
    BBVER=$(archive_versions busybox-static | head -n1)
    [[ -n "$BBVER" ]] || die "no busybox-static in the private archive view"
    rm -f "$cache"/debs/private-resolved-6.12-*.txt
    echo "$KPKG $KVER $BBVER $LSVER" >"$presolved"
  fi
  LSPKG=linux-source-6.12
  archive_download "$KPKG" "$KVER" "$cache/debs"
  KDEB="$ARCHIVE_DEB"
  archive_download busybox-static "$BBVER" "$cache/debs"
  BBDEB="$ARCHIVE_DEB"
  archive_download "$LSPKG" "$LSVER" "$cache/debs"
  LSDEB="$ARCHIVE_DEB"
fi

# --- kernel: vmlinux + modules (cached per package version) ------------------------------
kdir="$cache/kernel/${KPKG}_${KVER//:/%3a}"
if [[ ! -f "$kdir/.complete" ]]; then
  step "extracting the kernel and its virtio/vsock modules from $KPKG"
  rm -rf "$kdir"
  mkdir -p "$kdir/deb"
  dpkg-deb --fsys-tarfile "$KDEB" |
    tar -x -C "$kdir/deb" --wildcards './boot/vmlinuz-*' "${KERNEL_MODULE_GLOBS[@]}" ||
    die "extracting $KDEB failed (did the package layout change?)"
  vmlinuz=$(find "$kdir/deb/boot" -name 'vmlinuz-*' | head -n1)
  [[ -n "$vmlinuz" ]] || die "no /boot/vmlinuz-* in $KPKG"
  step "decompressing the bzImage into an ELF vmlinux (PVH boot)"
  "$PY" "$repo/guest/extract-vmlinux.py" "$vmlinuz" "$kdir/vmlinux" ||
    die "extract-vmlinux.py failed on $vmlinuz"
  touch "$kdir/.complete"
else
  step "cached: vmlinux and modules of $KPKG $KVER"
fi
krelease=$(basename "$(find "$kdir/deb/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)")
[[ -n "$krelease" ]] || die "no lib/modules/<release> in $KPKG"

bbdir="$cache/busybox/${BBVER//:/%3a}"
if [[ ! -f "$bbdir/.complete" ]]; then
  step "extracting busybox from busybox-static $BBVER"
  rm -rf "$bbdir"
  mkdir -p "$bbdir"
  dpkg-deb --fsys-tarfile "$BBDEB" | tar -x -C "$bbdir" ./bin/busybox ||
    die "no ./bin/busybox in $BBDEB"
  touch "$bbdir/.complete"
fi
BB="$bbdir/bin/busybox"

# --- the kernel's vsock test suite: vsock_test, static (cached per source version) -------
# Only tools/testing/vsock and tools/include (its <linux/kernel.h>) leave the source tarball,
# streamed (nothing of the ~140 MB tarball is written). The program list comes from the
# suite's own Makefile (the "vsock_test:" rule), so another kernel series builds too. It
# runs only inside the guest (never on the build machine: it opens AF_VSOCK sockets).
vtdir="$cache/vsock-test/${LSPKG}_${LSVER//:/%3a}"
if [[ ! -f "$vtdir/.complete" ]]; then
  command -v gcc >/dev/null || die "'gcc' not found on PATH (needed to build vsock_test)"
  step "extracting tools/testing/vsock from $LSPKG $LSVER"
  rm -rf "$vtdir"
  mkdir -p "$vtdir/src"
  dpkg-deb --fsys-tarfile "$LSDEB" | tar -xO --wildcards './usr/src/linux-source-*.tar.xz' |
    tar -xJ -C "$vtdir/src" --strip-components=1 --wildcards \
      '*/tools/testing/vsock/*' '*/tools/include/*' ||
    die "extracting tools/testing/vsock from $LSDEB failed (did the package layout change?)"
  vtsrc="$vtdir/src/tools/testing/vsock"
  mapfile -t vtfiles < <(awk -F: '/^vsock_test:/ { n = split($2, o, " ");
                                   for (i = 1; i <= n; i++) { sub(/\.o$/, ".c", o[i]); print o[i] } }' \
                           "$vtsrc/Makefile")
  [[ ${#vtfiles[@]} -gt 0 ]] || die "no vsock_test rule in $vtsrc/Makefile"
  step "building vsock_test (${vtfiles[*]})"
  # The Makefile's include paths (tools/include, then the uapi headers: the build machine's
  # linux-libc-dev instead of a headers_install tree). glibc's notice about getaddrinfo in
  # static programs is expected.
  if ! (cd "$vtsrc" && gcc -static -O2 -Wall -I. -I../../include -D_GNU_SOURCE \
          -o "$vtdir/vsock_test" "${vtfiles[@]}" 2>&1) |
       { grep -v -e 'in statically linked applications requires at runtime' \
                 -e "ld: .*: in function \`" || true; } ||
     [[ ! -x "$vtdir/vsock_test" ]]; then
    die "building vsock_test from $vtsrc failed"
  fi
  touch "$vtdir/.complete"
else
  step "cached: vsock_test from $LSPKG $LSVER"
fi

# --- guest services: qemu-guest-agent and openssh-server (cached per version) --------------
# Debian 12's qemu-ga and sshd (+ sftp-server: Debian 12's scp speaks sftp), unchanged, so the
# VM tests check that the services people run over vsock work through vsockd. Fetched from the
# machine's apt sources for either kernel (they do not depend on it); their shared libraries
# are the build machine's (copy_with_libs), which scripts/install-deps.sh --guest provides.
SERVICE_PKGS=(qemu-guest-agent openssh-server openssh-sftp-server)
svresolved="$cache/debs/services-resolved-$(lists_key).txt"
SVVERS=()
if [[ -f "$svresolved" ]]; then read -r -a SVVERS <"$svresolved" || true; fi
SVDEBS=()
for i in "${!SERVICE_PKGS[@]}"; do
  pkg=${SERVICE_PKGS[$i]} ver=${SVVERS[$i]:-}
  deb="$cache/debs/${pkg}_${ver//:/%3a}_amd64.deb"
  if [[ -n "$ver" && -s "$deb" ]]; then
    SVDEBS+=("$deb")
  else
    fetch "$pkg"
    SVVERS[i]="$DEB_VERSION"
    SVDEBS+=("$DEB")
  fi
done
rm -f "$cache"/debs/services-resolved-*.txt
echo "${SVVERS[*]}" >"$svresolved"
svdir="$cache/services/$(echo "${SERVICE_PKGS[*]} ${SVVERS[*]}" | sha256sum | cut -c1-16)"
if [[ ! -f "$svdir/.complete" ]]; then
  step "extracting ${SERVICE_PKGS[*]}"
  rm -rf "$svdir"
  mkdir -p "$svdir"
  for deb in "${SVDEBS[@]}"; do dpkg-deb -x "$deb" "$svdir" || die "extracting $deb failed"; done
  touch "$svdir/.complete"
fi
# sshd's host key: made once by the build machine's ssh-keygen and cached, so rebuilding the
# image gives the same initrd. A test image only: clients skip host key checking.
sshkey="$cache/ssh/ssh_host_ed25519_key"
if [[ ! -s "$sshkey" ]]; then
  command -v ssh-keygen >/dev/null ||
    die "'ssh-keygen' not found (openssh-client: scripts/install-deps.sh --guest)"
  mkdir -p "$cache/ssh"
  rm -f "$sshkey" "$sshkey.pub"
  ssh-keygen -q -t ed25519 -N '' -C vsockd-test-guest -f "$sshkey" || die "ssh-keygen failed"
fi

# --- rootfs --------------------------------------------------------------------------------
root="$out/rootfs"
step "assembling the root filesystem in $root"
rm -rf "$root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,root,seed,usr/bin,usr/sbin,lib64}
mkdir -p "$root/lib/modules/$krelease" "$root/lib/x86_64-linux-gnu"

cp "$BB" "$root/bin/busybox"
# One process for the ~270 applet links (a shell loop forks once per link).
"$BB" --list | "$PY" -c '
import os, sys
for a in sys.stdin.read().split():
    if a != "busybox":
        os.symlink("busybox", os.path.join(sys.argv[1], a))
' "$root/bin"
ln -s ../../bin/busybox "$root/usr/bin/env"
install -m 0755 "$repo/guest/rootfs/init" "$root/init"
install -m 0644 "$agent" "$root/agent"
# sshd: root logs in with a key only; "sshd" is its privilege separation user (/run/sshd is
# made by /init, /run being a tmpfs).
printf 'root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/bin/false\n' \
  >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
chmod 0700 "$root/root"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"

# Modules, flat in /lib/modules/<release>/ (/init insmods them by path). A module missing from
# the package must be built into the kernel (modules.builtin), else the image cannot work.
for m in "${KERNEL_MODULES[@]}"; do
  ko=$(find "$kdir/deb/lib/modules/$krelease" -name "$m.ko" -o -name "$m.ko.xz" | head -n1)
  if [[ "$ko" == *.xz ]]; then
    xz -dc "$ko" >"$root/lib/modules/$krelease/$m.ko"
  elif [[ -n "$ko" ]]; then
    cp "$ko" "$root/lib/modules/$krelease/"
  elif ! grep -q "/$m\.ko\$" "$kdir/deb/lib/modules/$krelease/modules.builtin"; then
    die "kernel module $m is neither in $KPKG nor built in"
  fi
done
cp "$kdir/deb/lib/modules/$krelease/modules.builtin" "$root/lib/modules/$krelease/"

# copy_with_libs BINARY DEST: the binary plus every shared library ldd names, at the same
# paths inside the rootfs.
copy_with_libs() {
  local bin="$1" dest="$2" line lib
  cp -L "$bin" "$root$dest"
  while read -r line; do
    case "$line" in
      *"not found"*) die "$bin: missing shared library: $line" ;;
      *"=> /"*) lib=$(awk '{print $3}' <<<"$line") ;;
      /*) lib=$(awk '{print $1}' <<<"$line") ;;
      *) continue ;;
    esac
    mkdir -p "$root$(dirname "$lib")"
    [[ -e "$root$lib" ]] || cp -L "$lib" "$root$lib"
  done < <(ldd "$bin")
}

step "adding socat and python3 ($PY) with their shared libraries"
copy_with_libs "$SOCAT" /usr/bin/socat
copy_with_libs "$PY" /usr/bin/python3.11
ln -s python3.11 "$root/usr/bin/python3"

step "adding qemu-ga, sshd and sftp-server (${SVVERS[*]}) with their shared libraries"
mkdir -p "$root/usr/lib/openssh" "$root/etc/ssh"
copy_with_libs "$svdir/usr/sbin/qemu-ga" /usr/sbin/qemu-ga
copy_with_libs "$svdir/usr/sbin/sshd" /usr/sbin/sshd
copy_with_libs "$svdir/usr/lib/openssh/sftp-server" /usr/lib/openssh/sftp-server
install -m 0600 "$sshkey" "$root/etc/ssh/ssh_host_ed25519_key"
install -m 0644 "$sshkey.pub" "$root/etc/ssh/ssh_host_ed25519_key.pub"
install -m 0644 "$repo/guest/rootfs/sshd_config" "$root/etc/ssh/sshd_config"
pyver=$("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
pylib=/usr/lib/python3.11

# The stdlib subset, cached per interpreter build and import list: the files the imports load,
# found by importing them in a clean environment as in the guest (no environment variables,
# C locale); site-packages and sitecustomize stay out.
pykey=$( { stat -c '%s %Y' "$PY"; echo "$PY_IMPORTS"; } | sha256sum | cut -c1-16)
pydir="$cache/python/$pyver-$pykey"
if [[ ! -f "$pydir/.complete" ]]; then
  step "collecting and precompiling the Python stdlib subset"
  rm -rf "$pydir"
  mkdir -p "$pydir"
  mapfile -t pyfiles < <(env -i "$PY" -c "
import sys
import $(tr -d '\n' <<<"$PY_IMPORTS")
for m in list(sys.modules.values()):
    f = getattr(m, '__file__', None) or ''
    if f.startswith('$pylib/') and f.endswith('.py') and '-packages/' not in f \\
            and not f.endswith('/sitecustomize.py'):
        print(f)
" | LC_ALL=C sort -u)
  [[ ${#pyfiles[@]} -gt 10 ]] || die "could not list the Python stdlib files to copy"
  tar -C / -chf - "${pyfiles[@]#/}" | tar -C "$pydir" -xf -
  # getpath's landmarks: lib/python3.11/os.py and the lib-dynload directory (kept empty).
  [[ -f "$pydir$pylib/os.py" ]] || die "os.py missing from the Python subset"
  mkdir -p "$pydir$pylib/lib-dynload"
  env -i "$PY" -m compileall -q --invalidation-mode unchecked-hash -d "$pylib" "$pydir$pylib" \
    >/dev/null || die "compileall failed"
  touch "$pydir/.complete"
fi
cp -a "$pydir/usr" "$root/"
pycount=$(find "$root$pylib" -name '*.py' | wc -l)

cp "$repo"/tests/seed/*.py "$root/seed/"

# The project's static programs, stripped.
step "adding the static guest programs from $programs"
binlist=()
while read -r prog; do
  [[ -z "$prog" ]] && continue
  [[ -x "$prog" ]] || die "guest program $prog is missing (was it built?)"
  if readelf -lW "$prog" | grep -q 'program interpreter'; then
    die "guest program $prog is not static (build with -DVSOCKD_STATIC=ON)"
  fi
  name=$(basename "$prog")
  [[ -e "$root/bin/$name" ]] && die "guest program $name clashes with /bin/$name"
  strip --strip-all -o "$root/bin/$name" "$prog"
  binlist+=("$name")
done <"$programs"
[[ ${#binlist[@]} -gt 0 ]] || die "no guest programs listed in $programs"
[[ -e "$root/bin/vsock_test" ]] && die "guest program vsock_test clashes with the kernel's"
strip --strip-all -o "$root/bin/vsock_test" "$vtdir/vsock_test"

# --- image -------------------------------------------------------------------------------
img="$out/image"
mkdir -p "$img"
if ! cmp -s "$kdir/vmlinux" "$img/vmlinux"; then
  cp "$kdir/vmlinux" "$img/vmlinux.tmp"
  mv "$img/vmlinux.tmp" "$img/vmlinux"
fi

step "packing $img/initrd.cpio.gz"
# Reproducible: fixed mtimes, sorted names, owner root, no device or inode numbers.
epoch="${SOURCE_DATE_EPOCH:-0}"
find "$root" -exec touch -h -d "@$epoch" {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
   "$BB" cpio -o -H newc -R 0:0 --ignore-devno --renumber-inodes 2> >(grep -v ' blocks$' >&2)) |
  gzip -n -6 >"$img/initrd.cpio.gz.tmp"
mv "$img/initrd.cpio.gz.tmp" "$img/initrd.cpio.gz"

{
  echo "kernel: $KPKG $KVER (release $krelease)"
  echo "busybox: busybox-static $BBVER"
  echo "python: $pyver ($PY, $pycount stdlib files)"
  echo "socat: $("$SOCAT" -V 2>/dev/null | awk '/socat version/ { print $3; exit }')"
  echo "services: ${SERVICE_PKGS[*]} (${SVVERS[*]})"
  echo "modules: ${KERNEL_MODULES[*]}"
  echo "programs: ${binlist[*]}"
  echo "vsock_test: $LSPKG $LSVER (tools/testing/vsock, static)"
  echo "bin: $(find "$root/bin" -mindepth 1 -printf "%f\n" | LC_ALL=C sort | paste -sd " ")"
  echo "vmlinux: $(stat -c %s "$img/vmlinux") bytes"
  echo "initrd.cpio.gz: $(stat -c %s "$img/initrd.cpio.gz") bytes"
} >"$img/manifest.txt"
step "image ready: $img (vmlinux $(du -h "$img/vmlinux" | cut -f1)," \
     "initrd $(du -h "$img/initrd.cpio.gz" | cut -f1))"
