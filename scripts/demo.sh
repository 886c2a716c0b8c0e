#!/usr/bin/env bash
# The main job, end to end, on a fresh Debian 12 machine:
#   1. installs what is missing (apt: build tools, QEMU, python3, socat);
#   2. builds vsockd, the tools and the demo driver (build/);
#   3. builds the tiny test guest from Debian packages (build-guest/; downloads are cached in
#      .cache/guest/, so a rerun takes seconds);
#   4. starts vsockd, boots the guest under QEMU attached to it, and shows traffic both ways:
#      the seed's vsock_client.py in the guest -> vsock_server.py on the host (an unmodified
#      AF_VSOCK program, run through vsockd's LD_PRELOAD shim), the same programs the other
#      way round, a vsockperf figure, and a command run in the guest over ssh (Debian's sshd
#      in the guest, the host's ssh with vsockcat as ProxyCommand); then powers the guest off
#      and stops vsockd.
# Usage: scripts/demo.sh [vsockd_demo options, e.g. --show-console]
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

echo "==> [1/4] installing dependencies (apt, Debian 12)"
scripts/install-deps.sh --guest

echo "==> [2/4] building vsockd, the tools and the demo (cmake + ninja in build/)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVSOCKD_WERROR=ON >/dev/null
ninja -C build vsockd_demo

echo "==> [3/4] building the test guest (scripts/build-guest.sh -> build-guest/image)"
scripts/build-guest.sh

echo "==> [4/4] vsockd + the guest, traffic both ways, ssh into the guest"
build/demo/vsockd_demo --image build-guest/image "$@"
echo "==> demo done in $((SECONDS - start)) s"
