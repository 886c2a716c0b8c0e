#!/usr/bin/env bash
# Runs every test of the project, the way CI does:
#   1. a RelWithDebInfo build, the test guest image (scripts/build-guest.sh), and all the
#      tests (unit, integration, QEMU handshake, real-guest VM tests: label "vm") on Debian
#      12's QEMU 7.2 with a Linux 6.1 guest;
#   1b. the QEMU handshake and every VM test again on the other generation: QEMU 10.0 from
#      bookworm-backports (scripts/fetch-qemu.sh) with a Linux 6.12 guest
#      (scripts/build-guest.sh --kernel 6.12), the kernel's 6.12 vsock_test included;
#   2. an ASan+UBSan build and all its tests (the VM tests again, against an ASan vsockd);
#   3. a ThreadSanitizer build of the daemon's threaded parts and their tests;
#   4. the libFuzzer targets (clang), each for a short run from its corpus (scripts/fuzz.sh);
#   5. clang-format and clang-tidy over the tree (scripts/lint.sh).
# Usage: scripts/test.sh [--quick]   (--quick: only step 1)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[[ "${1:-}" == "--quick" ]] && quick=1
jobs=$(nproc)
fuzz_seconds=${VSOCKD_FUZZ_SECONDS:-20}

# Each step says how long the run has taken so far (CI has 90 minutes for all of it).
step() { echo; echo "==> [$SECONDS s] $*"; }
trap 'echo "==> [$SECONDS s] done (exit $?)"' EXIT

step "installing dependencies"
scripts/install-deps.sh --test

# The QEMU handshake test and the real-guest tests must run, not skip, when we run the
# whole suite.
export VSOCKD_REQUIRE_QEMU=1
export VSOCKD_REQUIRE_VM=1
# The metrics test checks vsockd's output with Prometheus's promtool (scripts/promtool.sh).
export VSOCKD_REQUIRE_PROMTOOL=1
# The capture tests decode vsockd's pcap files with Wireshark's tshark.
export VSOCKD_REQUIRE_TSHARK=1

step "build (RelWithDebInfo) in build/"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVSOCKD_WERROR=ON >/dev/null
ninja -C build -j"$jobs"
step "test guest image (scripts/build-guest.sh -> build-guest/image)"
scripts/build-guest.sh
step "tests (RelWithDebInfo)"
ctest --test-dir build --output-on-failure -j"$jobs"

if [[ $quick -eq 1 ]]; then exit 0; fi

step "test guest image with Linux 6.12 (scripts/build-guest.sh --kernel 6.12) and QEMU 10.0"
scripts/build-guest.sh --kernel 6.12 --tools build-guest/tools
qemu10=$(scripts/fetch-qemu.sh --print-path)
step "QEMU handshake and VM tests on QEMU 10.0 with Linux 6.12 guests"
VSOCKD_QEMU="$qemu10" VSOCKD_GUEST_IMAGE="$PWD/build-guest-6.12/image" \
  ctest --test-dir build --output-on-failure -j"$jobs" -R '^(vhost_user_qemu_test|vm_.*)$'

step "build (ASan+UBSan) in build-asan/"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DVSOCKD_SANITIZE=ON -DVSOCKD_WERROR=ON \
  -DVSOCKD_BENCH=OFF >/dev/null
ninja -C build-asan -j"$jobs"
step "tests (ASan+UBSan)"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j"$jobs"

step "ThreadSanitizer build in build-tsan/: the daemon's worker threads and sibling routing"
cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVSOCKD_TSAN=ON -DVSOCKD_WERROR=ON \
  -DVSOCKD_BENCH=OFF >/dev/null
ninja -C build-tsan -j"$jobs" vsockd vguest base_test host_test daemon_test integration_test \
  multi_vm_test reload_test observe_test vsockctl
step "tests (ThreadSanitizer): event loop, sibling router, daemon, integration, several VMs, reload, control"
# halt_on_error: a race in vsockd (a subprocess of the integration tests) kills it, and the
# test that drove it fails.
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  ctest --test-dir build-tsan --output-on-failure -j"$jobs" \
  -R '^(base_test|host_test|daemon_test|integration_test|multi_vm_test|reload_test|observe_test)$'

step "fuzz targets (clang, libFuzzer) in build-fuzz/, ${fuzz_seconds}s each from fuzz/corpus/"
scripts/fuzz.sh --time "$fuzz_seconds"

step "lint (clang-format, clang-tidy)"
scripts/lint.sh
