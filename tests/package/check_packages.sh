#!/usr/bin/env bash
# package_test: builds the Debian packages with CPack from a built tree and checks them
# without installing them on this machine:
#  - each package's files (dpkg-deb -c): what belongs in it is there, nothing of another's;
#  - control fields (dpkg-deb -f): dependencies from dpkg-shlibdeps, libvsock-dev on the same
#    libvsock0, the conffile, the maintainer scripts, libvsock0's shlibs and ldconfig trigger;
#  - the packaged programs (dpkg-deb -x into a temporary directory) run, their man pages
#    name every option of their --help, and the sample config starts the packaged vsockd;
#  - lintian: no error and no warning (explained overrides ship in the packages);
#  - apt resolves the packages' dependencies (apt-get install --simulate changes nothing).
# Usage: check_packages.sh BUILD_DIR WORK_DIR VERSION
set -euo pipefail
build=$1
work=$2
version=$3
rm -rf "$work"
mkdir -p "$work"

failures=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

for tool in cpack dpkg-deb dpkg-shlibdeps lintian; do
  command -v "$tool" >/dev/null || {
    echo "$tool not found: scripts/install-deps.sh --test installs it" >&2
    exit 1
  }
done

if ! cpack --config "$build/CPackConfig.cmake" -B "$work" >"$work/cpack.log" 2>&1; then
  cat "$work/cpack.log" >&2
  exit 1
fi
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
declare -A deb=(
  [vsockd]=$work/vsockd_${version}_${arch}.deb
  [libvsock0]=$work/libvsock0_${version}_${arch}.deb
  [libvsock-dev]=$work/libvsock-dev_${version}_${arch}.deb
)
for p in "${!deb[@]}"; do
  [[ -f ${deb[$p]} ]] || fail "CPack made no ${deb[$p]##*/}"
done
((failures == 0)) || exit 1

# --- contents ---------------------------------------------------------------------------------
declare -A files
for p in "${!deb[@]}"; do
  files[$p]=$(dpkg-deb -c "${deb[$p]}" | awk '{print $6}' | sed 's|^\./|/|')
  echo "== $p: $(echo "${files[$p]}" | grep -cv '/$') files"
done
has() {  # PACKAGE PATH
  grep -qxF -- "$2" <<<"${files[$1]}" || fail "$1 lacks $2"
}
lacks() {  # PACKAGE REGEX
  if grep -Eq -- "$2" <<<"${files[$1]}"; then fail "$1 holds $(grep -E -- "$2" <<<"${files[$1]}" | head -1)"; fi
}
for f in /usr/sbin/vsockd /usr/bin/vsockcat /usr/bin/vsockctl /usr/bin/vsockperf /usr/bin/vguest \
  /usr/lib/vsockd/libvsock_preload.so /usr/share/man/man8/vsockd.8.gz \
  /usr/share/man/man1/vsockcat.1.gz /usr/share/man/man1/vsockctl.1.gz \
  /usr/share/man/man1/vsockperf.1.gz \
  /usr/share/man/man1/vguest.1.gz /lib/systemd/system/vsockd.service \
  /lib/systemd/system/vsockd@.service /lib/systemd/system/vsockd.socket \
  /lib/systemd/system/vsockd@.socket /usr/lib/sysusers.d/vsockd.conf /etc/vsockd/config.yaml \
  /usr/share/doc/vsockd/copyright /usr/share/doc/vsockd/changelog.gz; do
  has vsockd "$f"
done
lacks vsockd 'libvsock\.so|/include/|\.a$|\.pc$'
has libvsock0 "/usr/lib/$multiarch/libvsock.so.0"
has libvsock0 "/usr/lib/$multiarch/libvsock.so.0.1.0"
lacks libvsock0 '/include/|libvsock\.so$|\.a$|/bin/|/sbin/'
for f in /usr/include/vsock/vsock.h /usr/include/vsock/stream.h "/usr/lib/$multiarch/libvsock.so" \
  "/usr/lib/$multiarch/libvsock.a" "/usr/lib/$multiarch/cmake/vsock/vsockConfig.cmake" \
  "/usr/lib/$multiarch/pkgconfig/vsock.pc"; do
  has libvsock-dev "$f"
done
lacks libvsock-dev 'libvsock\.so\.0|/bin/|/sbin/'

# --- control fields -----------------------------------------------------------------------------
field() { dpkg-deb -f "${deb[$1]}" "$2"; }
depends=$(field vsockd Depends)
echo "vsockd Depends: $depends"
for d in adduser libc6 libstdc++6 libfmt libyaml-cpp; do
  [[ $depends == *"$d"* ]] || fail "vsockd does not depend on $d: $depends"
done
[[ $depends != *libvsock0* ]] || fail "vsockd needs no libvsock0 (its tools link libvsock.a)"
[[ $(field libvsock-dev Depends) == "libvsock0 (= $version)" ]] ||
  fail "libvsock-dev Depends: $(field libvsock-dev Depends)"
[[ $(field libvsock0 Depends) == *libc6* ]] || fail "libvsock0 Depends: $(field libvsock0 Depends)"
for p in "${!deb[@]}"; do
  [[ $(field "$p" Maintainer) =~ ^.+\ \<.+@.+\>$ ]] || fail "$p Maintainer: $(field "$p" Maintainer)"
  [[ -n $(field "$p" Description) ]] || fail "$p has no Description"
done
[[ $(field vsockd Section) == net && $(field libvsock0 Section) == libs &&
  $(field libvsock-dev Section) == libdevel ]] || fail "sections"

control=$work/control
for p in "${!deb[@]}"; do
  mkdir -p "$control/$p"
  dpkg-deb -e "${deb[$p]}" "$control/$p"
done
[[ $(cat "$control/vsockd/conffiles") == /etc/vsockd/config.yaml ]] ||
  fail "vsockd conffiles: $(cat "$control/vsockd/conffiles")"
grep -q 'adduser --system' "$control/vsockd/postinst" || fail "vsockd postinst adds no user"
grep -q 'activate-noawait ldconfig' "$control/libvsock0/triggers" || fail "libvsock0: no ldconfig trigger"
grep -qx "libvsock 0 libvsock0 (>= $version)" "$control/libvsock0/shlibs" ||
  fail "libvsock0 shlibs: $(cat "$control/libvsock0/shlibs" 2>/dev/null)"
if cat "$control/libvsock0/postinst" "$control/libvsock0/postrm" | grep -v '^#' | grep -q ldconfig; then
  fail "libvsock0 calls ldconfig in its scripts (the trigger does it)"
fi

# --- the packaged programs ------------------------------------------------------------------------
x=$work/extracted
mkdir -p "$x"
for p in "${!deb[@]}"; do dpkg-deb -x "${deb[$p]}" "$x"; done
[[ $("$x/usr/sbin/vsockd" --version) == "vsockd $version" ]] || fail "vsockd --version"
# Every long option of --help is in the man page (they are made from it at build time).
for prog in sbin/vsockd:8 bin/vsockcat:1 bin/vsockctl:1 bin/vsockperf:1 bin/vguest:1; do
  bin=${prog%:*}
  section=${prog#*:}
  name=${bin#*/}
  page=$x/usr/share/man/man$section/$name.$section.gz
  MANWIDTH=80 man --warnings -l "$page" >/dev/null 2>"$work/man-$name.err" || true
  [[ ! -s $work/man-$name.err ]] || fail "man $name: $(cat "$work/man-$name.err")"
  text=$(zcat "$page" | sed 's/\\-/-/g')
  options=$("$x/usr/$bin" --help | grep -oE -- '--[a-z][a-z0-9-]+' | sort -u)
  for o in $options; do
    grep -qF -- "$o" <<<"$text" || fail "$name.$section lacks $o of $name --help"
  done
done

# The sample config is valid: the packaged vsockd starts with it (paths moved to $work).
run=$work/run
mkdir -p "$run"
sed "s|/run/vsockd|$run|g" "$x/etc/vsockd/config.yaml" >"$work/config.yaml"
mkfifo "$work/ready"
"$x/usr/sbin/vsockd" --config "$work/config.yaml" --ready-fd 3 3>"$work/ready" \
  2>"$work/vsockd.log" &
pid=$!
read -r line <"$work/ready" || true
if [[ $line != READY ]]; then
  fail "the packaged vsockd does not start with the sample config: $(cat "$work/vsockd.log")"
fi
kill "$pid" 2>/dev/null || true
wait "$pid" || fail "vsockd exit status $? after SIGTERM: $(cat "$work/vsockd.log")"

# --- lintian ----------------------------------------------------------------------------------------
# Every tag is shown, with the overrides and their reasons; errors and warnings fail. (Root is
# fine for lintian here: it only reads the packages.)
lintian -I --show-overrides "${deb[@]}" >"$work/lintian.log" 2>&1 || true
grep -v 'running with root privileges' "$work/lintian.log" || true
if grep -Eq '^[EW]: ' "$work/lintian.log"; then fail "lintian reports errors or warnings"; fi
if ! grep -Eq '^O: ' "$work/lintian.log"; then fail "lintian did not run: $(head -3 "$work/lintian.log")"; fi

# --- dependencies resolve (simulation: nothing is installed) ------------------------------------------
if command -v apt-get >/dev/null; then
  if ! apt-get install --simulate -q "${deb[@]}" >"$work/apt.log" 2>&1 ||
    ! grep -q '^Inst vsockd ' "$work/apt.log"; then
    fail "apt-get install --simulate:"
    cat "$work/apt.log" >&2
  fi
fi

if ((failures > 0)); then
  echo "$failures failure(s)" >&2
  exit 1
fi
echo "packages: checked (${deb[*]##*/})"
