# Sourced by guest/build-image.sh and scripts/fetch-qemu.sh: a private view of Debian's archive
# for the packages that are not in the build machine's apt sources (Linux 6.12, QEMU 10.0 and
# its seabios from bookworm-backports), without touching the machine's apt configuration.
#
# The view is its own sources list and package lists under $ARCHIVE_DIR (default
# .cache/apt-private/): bookworm, bookworm-updates, bookworm-security and bookworm-backports
# from deb.debian.org (override with VSOCKD_DEBIAN_MIRROR / VSOCKD_DEBIAN_SECURITY_MIRROR),
# checked with the machine's debian-archive-keyring. Every apt command of this file passes
# -o Dir::Etc::sourcelist / Dir::Etc::sourceparts / Dir::State::Lists / Dir::Cache, so apt
# reads and writes only that folder (no root needed, nothing installed: `apt-get download`
# then `dpkg-deb -x`). The lists are refreshed when missing, older than a day, or when a
# download fails (a superseded version).
#
# Functions (die() and step() come from the sourcing script):
#   archive_apt ARGS...            apt-get with the private configuration
#   archive_cache ARGS...          apt-cache with the private configuration
#   archive_update [--force]       refresh the lists (skipped while fresh unless --force)
#   archive_versions PKG           every version the archive has of PKG, newest first
#   archive_download PKG VER DIR   the .deb of PKG=VER into DIR (cached: DIR/PKG_VER_*.deb);
#                                  sets ARCHIVE_DEB; refreshes the lists once on failure

: "${ARCHIVE_DIR:?set ARCHIVE_DIR before sourcing debian-archive.sh}"
ARCHIVE_MIRROR="${VSOCKD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ARCHIVE_SECURITY="${VSOCKD_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
ARCHIVE_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

archive_opts() {
  ARCHIVE_OPTS=(-q
    -o "Dir::Etc::sourcelist=$ARCHIVE_DIR/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$ARCHIVE_DIR/lists"
    -o "Dir::Cache=$ARCHIVE_DIR/cache"
    -o "Dir::Cache::pkgcache="
    -o "Dir::Cache::srcpkgcache=")
  # As root, apt drops to the _apt user to download and warns that it cannot write our folder.
  if [[ $(id -u) -eq 0 ]]; then ARCHIVE_OPTS+=(-o APT::Sandbox::User=root); fi
}

archive_setup() {
  [[ -r "$ARCHIVE_KEYRING" ]] ||
    die "$ARCHIVE_KEYRING not found: install debian-archive-keyring (scripts/install-deps.sh --guest)"
  mkdir -p "$ARCHIVE_DIR/lists/partial" "$ARCHIVE_DIR/cache/archives/partial"
  local want
  want=$(cat <<EOF
deb [signed-by=$ARCHIVE_KEYRING] $ARCHIVE_MIRROR bookworm main
deb [signed-by=$ARCHIVE_KEYRING] $ARCHIVE_MIRROR bookworm-updates main
deb [signed-by=$ARCHIVE_KEYRING] $ARCHIVE_SECURITY bookworm-security main
deb [signed-by=$ARCHIVE_KEYRING] $ARCHIVE_MIRROR bookworm-backports main
EOF
)
  if [[ "$(cat "$ARCHIVE_DIR/sources.list" 2>/dev/null)" != "$want" ]]; then
    printf '%s\n' "$want" >"$ARCHIVE_DIR/sources.list"
    rm -f "$ARCHIVE_DIR/updated"
  fi
  archive_opts
}

archive_apt() { apt-get "${ARCHIVE_OPTS[@]}" "$@"; }
archive_cache() { apt-cache "${ARCHIVE_OPTS[@]}" "$@"; }

archive_update() {
  archive_setup
  local stamp="$ARCHIVE_DIR/updated"
  if [[ "${1:-}" != --force && -f "$stamp" && -n "$(find "$stamp" -mmin -1440)" ]]; then
    return 0
  fi
  step "refreshing the private apt lists ($ARCHIVE_DIR: bookworm, -updates, -security, -backports)"
  archive_apt update >"$ARCHIVE_DIR/update.log" 2>&1 ||
    { cat "$ARCHIVE_DIR/update.log" >&2; die "apt-get update of the private lists failed"; }
  touch "$stamp"
}

archive_versions() {
  archive_cache madison "$1" 2>/dev/null | awk -F'|' '{ gsub(/ /, "", $2); print $2 }' |
    sort -u -V -r
}

archive_download() {
  local pkg="$1" ver="$2" dir="$3" tmp attempt
  mkdir -p "$dir"
  ARCHIVE_DEB=$(find "$dir" -maxdepth 1 -name "${pkg}_${ver//:/%3a}_*.deb" -size +0 | head -n1)
  if [[ -n "$ARCHIVE_DEB" ]]; then
    step "cached: $pkg $ver"
    return 0
  fi
  for attempt in 1 2; do
    step "downloading $pkg $ver"
    tmp=$(mktemp -d "$dir/download.XXXXXX")
    if (cd "$tmp" && archive_apt download "$pkg=$ver" >"$tmp/log" 2>&1); then
      ARCHIVE_DEB="$dir/$(basename "$(ls "$tmp"/*.deb)")"
      mv "$tmp"/*.deb "$ARCHIVE_DEB"
      rm -rf "$tmp"
      return 0
    fi
    cat "$tmp/log" >&2
    rm -rf "$tmp"
    [[ $attempt -eq 1 ]] && archive_update --force
  done
  die "cannot download $pkg $ver from Debian's archive"
}
