#!/usr/bin/env bash
# Benchmark: vsockd + vguest against raw AF_UNIX, measured in the same run (this machine is
# shared and noisy: compare the ratios). Prints a table; writes bench-results.json.
# The real-guest rows boot the test guest (scripts/build-guest.sh; cached after the first
# build); --no-vm skips them.
# Then the same figures with every process on one CPU (--placement one-cpu; no real-guest
# rows): CPU cost per byte against raw AF_UNIX, steady even when cross-CPU wakeups are slow
# or erratic; writes bench-results-one-cpu.json.
# Then the scale benchmark (bench/scale_bench.cc): one vsockd serving 64 VMs with 1,000 idle
# connections each (memory, fds, connection set-up rates) and 1/2/4 busy VMs at once;
# writes bench-scale-results.json. Its options go in VSOCKD_SCALE_ARGS (e.g. "--quick").
# Usage: scripts/bench.sh [vsockd_bench options, e.g. --rounds 5 --bytes 1073741824]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release -DVSOCKD_TESTS=OFF -DVSOCKD_WERROR=ON >/dev/null
ninja -C build-release vsockd vsockd_bench vsockd_scale_bench
if [[ " $* " != *" --no-vm "* ]]; then scripts/build-guest.sh; fi
build-release/bench/vsockd_bench --json bench-results.json "$@"
if [[ " $* " != *" --placement"* ]]; then
  one_cpu_args=(--json bench-results-one-cpu.json --placement one-cpu)
  if [[ " $* " != *" --no-vm "* ]]; then one_cpu_args+=(--no-vm); fi
  build-release/bench/vsockd_bench "${one_cpu_args[@]}" "$@"
fi
read -ra scale_args <<<"${VSOCKD_SCALE_ARGS:-}"
exec build-release/bench/vsockd_scale_bench --json bench-scale-results.json "${scale_args[@]}"
