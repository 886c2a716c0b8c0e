#!/usr/bin/env bash
# Smoke test of the benchmark drivers (CTest `bench_smoke`): each runs end to end with tiny
# sizes and writes its JSON, so the documented benchmark command cannot rot unnoticed. It
# asserts that they work, never how fast anything is (performance is the benchmark's job).
# Usage: bench/bench_smoke.sh BUILD_DIR
set -euo pipefail
build=$1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
check_json() {  # FILE KEY: the file exists and names KEY
  grep -q "\"$2\"" "$1" || { echo "bench_smoke: $1 lacks \"$2\""; cat "$1"; exit 1; }
}
tiny=(--no-vm --rounds 1 --bytes 4194304 --rtt-count 200 --conn-seconds 0.2)
for placement in scheduler one-cpu split; do
  if [[ $placement == split && $(nproc) -lt 2 ]]; then continue; fi
  echo "== vsockd_bench --placement $placement"
  "$build/bench/vsockd_bench" "${tiny[@]}" --placement "$placement" --json "$out/$placement.json"
  check_json "$out/$placement.json" ratio
  check_json "$out/$placement.json" cpu_ms_per_gib
  check_json "$out/$placement.json" "seqpacket host->guest 4 KiB messages"
  grep -q "\"placement\": \"$placement\"" "$out/$placement.json"
done
echo "== vsockd_scale_bench --quick (smaller)"
"$build/bench/vsockd_scale_bench" --quick --vms 4 --conns-per-vm 50 --h2g-sample 20 \
  --bytes-per-vm 8388608 --json "$out/scale.json"
check_json "$out/scale.json" vms
check_json "$out/scale.json" victim_under_attack_gbps
echo "bench_smoke: ok"
