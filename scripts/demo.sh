#!/usr/bin/env bash
# The main job, end to end: builds vsockd and vguest, starts vsockd, attaches a virtual
# guest (vguest) to it, and shows traffic both ways through the hybrid Unix-socket host side:
#   guest -> host: the guest connects to host port 9999, served by a host program on
#                  <uds-path>_9999 that answers in upper case;
#   host -> guest: a host program connects to <uds-path> with "CONNECT 5000", a guest
#                  service on guest port 5000 answers.
# (A real Linux guest under QEMU replaces vguest once the real-guest harness lands.)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> [1/4] installing build dependencies (apt, Debian 12)"
scripts/install-deps.sh

echo "==> [2/4] building (cmake + ninja, build/)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build vsockd vguest

work=$(mktemp -d /tmp/vsockd-demo-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "==> [3/4] starting vsockd (guest CID 3, vhost-user socket $work/vhost.sock, uds-path $work/vsock)"
build/src/daemon/vsockd --socket "$work/vhost.sock" --guest-cid 3 --uds-path "$work/vsock" \
  2> "$work/vsockd.log" &
pids+=($!)
for _ in $(seq 100); do [[ -S "$work/vhost.sock" ]] && break; sleep 0.05; done

echo "==> [4/4] traffic"
# Host service for guest port 9999 connections: upper-cases what it gets.
socat UNIX-LISTEN:"$work/vsock_9999",fork SYSTEM:'tr a-z A-Z' &
pids+=($!)
for _ in $(seq 100); do [[ -S "$work/vsock_9999" ]] && break; sleep 0.05; done
echo "--- guest -> host: guest sends 'hello from the guest' to host port 9999"
reply=$(echo "hello from the guest" | build/src/vguest/vguest --socket "$work/vhost.sock" connect 9999)
echo "    guest received: $reply"

echo "--- host -> guest: host connects to guest port 5000 with 'CONNECT 5000'"
(echo "hello from the guest service" | build/src/vguest/vguest --socket "$work/vhost.sock" \
   listen 5000 > "$work/guest-got.txt") &
gpid=$!
sleep 0.5
reply=$( (printf 'CONNECT 5000\nhello from the host\n'; sleep 0.5) | socat - UNIX-CONNECT:"$work/vsock")
wait $gpid
echo "    host received:  $(echo "$reply" | tr '\n' '|')"
echo "    guest received: $(cat "$work/guest-got.txt")"
echo
echo "vsockd log:"
sed 's/^/    /' "$work/vsockd.log"
echo "==> done"
