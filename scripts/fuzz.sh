#!/usr/bin/env bash
# Runs vsockd's libFuzzer targets (ASan+UBSan, clang) from the corpora kept in fuzz/corpus/,
# and prints executions, coverage and findings per target.
#
# Usage: scripts/fuzz.sh [--time SECONDS | --runs N] [--target NAME]... [--parallel P]
#                        [--update-corpus] [--no-build]
#   --time S         run each target S seconds (default 60)
#   --runs N         run each target N executions instead (a long campaign: --runs 10000000)
#   --target NAME    only this target (repeatable); names: ls fuzz/corpus, or the *_fuzz
#                    executables of build-fuzz/
#   --parallel P     run P targets at once (default 1; each target is one process)
#   --timeout S      an input slower than S seconds is a finding (default 30: a loaded
#                    machine can stall a run for seconds)
#   --rss-limit MB   a target above MB of RSS is a finding (default 4096; libFuzzer purges the
#                    allocator's caches each second above half of it, which a long run of a
#                    parser under ASan reaches: at 2048 the config target spent half its time
#                    faulting pages back in)
#   --update-corpus  add to fuzz/corpus/NAME the inputs of the run that reach new coverage
#                    (-merge=1 into the corpus: inputs already kept stay, so a review sees
#                    only additions)
#   --no-build       use build-fuzz/ as it is
# The repo's corpora are read, never written, unless --update-corpus. New inputs go to
# build-fuzz/fuzz-work/NAME/, crashes to build-fuzz/fuzz-artifacts/NAME/. Exit code 1 if any
# target found a crash, a leak, a timeout or undefined behaviour.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
runs=""
targets=()
parallel=1
timeout=30
rss_limit=4096
update=0
build=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --time) seconds="${2:?--time needs seconds}"; runs=""; shift 2 ;;
    --runs) runs="${2:?--runs needs a count}"; shift 2 ;;
    --target) targets+=("${2:?--target needs a name}"); shift 2 ;;
    --parallel) parallel="${2:?--parallel needs a number}"; shift 2 ;;
    --timeout) timeout="${2:?--timeout needs seconds}"; shift 2 ;;
    --rss-limit) rss_limit="${2:?--rss-limit needs megabytes}"; shift 2 ;;
    --update-corpus) update=1; shift ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^#/p}' "$0"; exit 0 ;;
    *) echo "fuzz.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [[ $build -eq 1 ]]; then
  echo "==> building the fuzz targets (clang, libFuzzer, ASan+UBSan) in build-fuzz/"
  CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DVSOCKD_FUZZ=ON -DVSOCKD_TESTS=OFF -DVSOCKD_BENCH=OFF -DVSOCKD_WERROR=ON >/dev/null
  ninja -C build-fuzz -j"$(nproc)" >/dev/null
fi

mapfile -t all < <(find build-fuzz/src -maxdepth 2 -type f -name '*_fuzz' -perm -u+x | sort)
if [[ ${#all[@]} -eq 0 ]]; then
  echo "fuzz.sh: no fuzz targets in build-fuzz/ (build them first)" >&2
  exit 1
fi
selected=()
for f in "${all[@]}"; do
  name=$(basename "$f")
  if [[ ${#targets[@]} -eq 0 ]] || printf '%s\n' "${targets[@]}" | grep -qx "$name"; then
    selected+=("$f")
  fi
done
if [[ ${#selected[@]} -eq 0 ]]; then
  echo "fuzz.sh: no target named ${targets[*]} (have: $(basename -a "${all[@]}" | tr '\n' ' '))" >&2
  exit 2
fi

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# asan_options NAME: ASAN_OPTIONS for target NAME. yaml-cpp (Debian's, no frame pointers)
# under the config parser makes ASan's fast unwinder return a different stack for nearly every
# allocation, and ASan keeps every stack it has seen: 8 MB more every few minutes, then
# libFuzzer's purges above half of --rss-limit. Four frames keep the stacks few; for a
# finding's full allocation stacks, rerun its input with the default ASAN_OPTIONS above.
asan_options() {
  if [[ $1 == daemon_config_fuzz ]]; then
    echo "$ASAN_OPTIONS:malloc_context_size=4"
  else
    echo "$ASAN_OPTIONS"
  fi
}
work="build-fuzz/fuzz-work"
arts="build-fuzz/fuzz-artifacts"
logs="build-fuzz/fuzz-logs"
mkdir -p "$work" "$arts" "$logs"

# run_one PATH: one target, its log in $logs/NAME.log, its status in $logs/NAME.rc.
run_one() {
  local f=$1 name
  name=$(basename "$f")
  mkdir -p "$work/$name" "$arts/$name" "fuzz/corpus/$name"
  local limit=(-max_total_time="$seconds")
  [[ -n "$runs" ]] && limit=(-runs="$runs")
  local rc=0
  # The work dir first (libFuzzer adds new inputs there), the repo corpus second (read only).
  ASAN_OPTIONS=$(asan_options "$name") "$f" "${limit[@]}" -print_final_stats=1 \
    -timeout="$timeout" -rss_limit_mb="$rss_limit" -artifact_prefix="$arts/$name/" \
    "$work/$name" "fuzz/corpus/$name" >"$logs/$name.log" 2>&1 || rc=$?
  echo "$rc" >"$logs/$name.rc"
}

running=0
for f in "${selected[@]}"; do
  run_one "$f" &
  running=$((running + 1))
  if [[ $running -ge $parallel ]]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait

printf '\n%-28s %12s %9s %7s %8s %7s  %s\n' target executions exec/s cov features corpus result
passed=0
failed=0
for f in "${selected[@]}"; do
  name=$(basename "$f")
  log="$logs/$name.log"
  rc=$(cat "$logs/$name.rc")
  execs=$(awk '/stat::number_of_executed_units/ {print $NF}' "$log" | tail -1)
  speed=$(awk '/stat::average_exec_per_sec/ {print $NF}' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}')
  ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | awk '{print $2}')
  corpus=$(find "$work/$name" "fuzz/corpus/$name" -type f | wc -l)
  if [[ "$rc" == 0 ]]; then
    result=ok
    passed=$((passed + 1))
  else
    result="FOUND (exit $rc): $(grep -m1 -oE 'ERROR: [A-Za-z]+: [a-z-]+|runtime error: .*|ERROR: libFuzzer: [a-z-]+' "$log" || echo "see $log") -> $arts/$name/"
    failed=$((failed + 1))
  fi
  printf '%-28s %12s %9s %7s %8s %7s  %s\n' "$name" "${execs:-?}" "${speed:-?}" "${cov:-?}" \
    "${ft:-?}" "$corpus" "$result"
  if [[ $update -eq 1 && "$rc" == 0 ]]; then
    # Into the corpus itself: libFuzzer copies there only the inputs that add coverage. (A
    # minimizing merge into a fresh folder would replace most of the corpus for a few new
    # features, and a merge that failed half-way would have left a partial corpus behind.)
    kept=$(find "fuzz/corpus/$name" -type f | wc -l)
    if ASAN_OPTIONS=$(asan_options "$name") "$f" -merge=1 -timeout="$timeout" \
      -rss_limit_mb="$rss_limit" "fuzz/corpus/$name" "$work/$name" \
      >"$logs/$name.merge.log" 2>&1; then
      now=$(find "fuzz/corpus/$name" -type f | wc -l)
      echo "   corpus fuzz/corpus/$name: $kept -> $now inputs"
    else
      echo "   corpus fuzz/corpus/$name: merge failed, see $logs/$name.merge.log"
      failed=$((failed + 1))
    fi
  fi
done
echo "fuzz: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
