#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, clang-14, in build-fuzz/) and runs each for a while on a
# scratch copy of its seed corpus (fuzz/corpus/<target>/, never written) with its dictionary
# (fuzz/<target>.dict) if it has one. Installs what it needs first (idempotent).
#   scripts/fuzz.sh [options] [target ...]    targets as fuzz_pci or pci; default: all of them
#     --seconds N     run each target N seconds (default 60)
#     --jobs J        run J targets at once (default 1)
#     --build-dir D   build in D (default build-fuzz)
#     --list          list the targets and exit
# Prints per target the executions, the final coverage (cov: / ft:) and whether it crashed. Exits
# non-zero if a target crashed (the input is kept under D/fuzz-artifacts/<target>/ and named in
# the summary) or failed to build or start.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

seconds=60
jobs=1
build_dir=build-fuzz
list=0
targets=()
while (($#)); do
  case "$1" in
    --seconds) [[ $# -ge 2 && $2 =~ ^[0-9]+$ && $2 -gt 0 ]] || usage; seconds=$2; shift 2 ;;
    --jobs) [[ $# -ge 2 && $2 =~ ^[0-9]+$ && $2 -gt 0 ]] || usage; jobs=$2; shift 2 ;;
    --build-dir) [[ $# -ge 2 ]] || usage; build_dir=$2; shift 2 ;;
    --list) list=1; shift ;;
    -h | --help) usage ;;
    -*) usage ;;
    *) targets+=("fuzz_${1#fuzz_}"); shift ;;
  esac
done

all_targets=()
for source in fuzz/fuzz_*.cpp; do
  name=$(basename "$source" .cpp)
  all_targets+=("$name")
done
if ((list)); then
  printf '%s\n' "${all_targets[@]}"
  exit 0
fi
if ((${#targets[@]} == 0)); then
  targets=("${all_targets[@]}")
fi
for t in "${targets[@]}"; do
  [[ -f fuzz/$t.cpp ]] || { echo "fuzz.sh: no target $t (--list shows them)" >&2; exit 2; }
done

# --- dependencies: the project's, then clang-14 with its libFuzzer runtime ---
scripts/install-deps.sh
fuzz_packages=(clang-14 libclang-rt-14-dev)
missing=()
for p in "${fuzz_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} > 0)); then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "fuzz.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q >/dev/null
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- build: only the fuzz targets asked for ---
# Line tables (-g1) are all a crash's stack needs; full debug information only lengthens the build.
CC=clang-14 CXX=clang++-14 cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG" -DLPARVISOR_FUZZ=ON \
  -DLPARVISOR_BUILD_TESTS=OFF >/dev/null
# FUZZ_BUILD_JOBS: parallel compile jobs (default: every core; scripts/test.sh gives it one).
cmake --build "$build_dir" -j"${FUZZ_BUILD_JOBS:-$(nproc)}" --target "${targets[@]}"

# --- run ---
scratch=$(mktemp -d "${TMPDIR:-/tmp}/lparvisor-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
artifacts="$build_dir/fuzz-artifacts"
mkdir -p "$artifacts"

run_one() {
  local t=$1 short=${1#fuzz_}
  local corpus="$scratch/corpus/$t" log="$scratch/$t.log" out="$artifacts/$t"
  mkdir -p "$corpus" "$out"
  if [[ -d fuzz/corpus/$short ]]; then cp -r "fuzz/corpus/$short/." "$corpus/"; fi
  local args=(-max_total_time="$seconds" -print_final_stats=1 -timeout=25
              -artifact_prefix="$out/" "$corpus")
  [[ -f fuzz/$short.dict ]] && args=(-dict="fuzz/$short.dict" "${args[@]}")
  local rc=0
  "$build_dir/fuzz/$t" "${args[@]}" >"$log" 2>&1 || rc=$?
  echo "$rc" >"$scratch/$t.rc"
}

echo "fuzz.sh: ${#targets[@]} target(s), ${seconds} s each, ${jobs} at a time" >&2
running=0
for t in "${targets[@]}"; do
  if ((running >= jobs)); then
    wait -n || true
    running=$((running - 1))
  fi
  run_one "$t" &
  running=$((running + 1))
done
wait

failed=0
printf '%-24s %12s %8s %8s  %s\n' target executions cov ft result
for t in "${targets[@]}"; do
  log="$scratch/$t.log"
  rc=$(cat "$scratch/$t.rc" 2>/dev/null || echo 1)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
  if [[ -n $crash ]]; then
    result="CRASHED: $crash"
    failed=1
  elif [[ $rc != 0 || -z $execs ]]; then
    result="FAILED (exit $rc): $(grep -m1 -E 'ERROR|error|fail' "$log" || tail -1 "$log")"
    failed=1
  else
    result=ok
  fi
  printf '%-24s %12s %8s %8s  %s\n' "$t" "${execs:--}" "${cov:--}" "${ft:--}" "$result"
  if [[ $result != ok ]]; then
    echo "---- $t: the end of its log" >&2
    tail -40 "$log" >&2
  fi
done
exit "$failed"
