#!/usr/bin/env bash
# Benchmark: vsockd + vguest against raw AF_UNIX, measured in the same run (this machine is
# shared and noisy: compare the ratios). Prints a table; writes bench-results.json.
# The real-guest rows boot the test guest (scripts/build-guest.sh; cached after the first
# build); --no-vm skips them.
# Usage: scripts/bench.sh [vsockd_bench options, e.g. --rounds 5 --bytes 1073741824]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release -DVSOCKD_TESTS=OFF >/dev/null
ninja -C build-release vsockd vsockd_bench
if [[ " $* " != *" --no-vm "* ]]; then scripts/build-guest.sh; fi
exec build-release/bench/vsockd_bench --json bench-results.json "$@"
