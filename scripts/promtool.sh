#!/usr/bin/env bash
# Prints the path of a promtool (Prometheus's checker of the metrics text format), for the
# metrics tests: the one on PATH, else one extracted from Debian's `prometheus` package into
# .cache/tools/ (apt-get download + dpkg-deb -x: nothing is installed, no service starts).
# Exit code 1 (and a reason on stderr) when neither can be had.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if command -v promtool >/dev/null 2>&1; then
  command -v promtool
  exit 0
fi
dir="$repo/.cache/tools/prometheus"
tool="$dir/usr/bin/promtool"
if [[ ! -x "$tool" ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
    echo "promtool.sh: 'apt-get download prometheus' failed (run apt-get update?)" >&2
    exit 1
  fi
  mkdir -p "$dir"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  mkdir -p "$dir/usr/bin"
  cp "$tmp/x/usr/bin/promtool" "$tool"
fi
echo "$tool"
