#!/usr/bin/env bash
# Builds lparvisor and runs its tests with ctest. Installs what it needs first (idempotent).
#   scripts/test.sh                 every lane below, in this order (this is what CI runs); the
#                                   fuzz smoke run beside the normal lane's tests, the two
#                                   sanitizer lanes' stress runs side by side at the end
#   scripts/test.sh --format        clang-format check of every C, C++ file (no build)
#   scripts/test.sh --tidy          clang-tidy (.clang-tidy) on hypervisor/ and svp-console/
#                                   (configures and builds build/ first if it has no build)
#   scripts/test.sh --no-tsan       the normal lane only: RelWithDebInfo in build/, all tests
#   scripts/test.sh --tsan          the TSan lane only: ThreadSanitizer build in build-tsan/, the
#                                   unit and control-socket tests, then the stress driver (seed 2,
#                                   20 operations; nested where there is no /dev/kvm)
#   scripts/test.sh --asan          the ASan + UBSan lane only: build-asan/, the unit and
#                                   control-socket tests, then the stress driver (seed 3, 6 ops)
#   scripts/test.sh --fuzz          the fuzz smoke run: every libFuzzer target for 10 s
#                                   (scripts/fuzz.sh; any crash fails)
#   scripts/test.sh --sanitize      ASan + UBSan build in build-sanitize/, all tests
# Tests that need /dev/kvm print "SKIPPED ... needs KVM" and ctest lists them as skipped where
# the host has no KVM; they are never counted as passed. In the sanitizer lanes any report, from
# a test or from a program a test starts (svp), fails the lane.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

mode=all
case "${1:-}" in
  "") ;;
  --no-tsan) mode=normal ;;
  --tsan) mode=tsan ;;
  --asan) mode=asan ;;
  --fuzz) mode=fuzz ;;
  --format) mode=format ;;
  --tidy) mode=tidy ;;
  --sanitize) mode=sanitize ;;
  *) usage ;;
esac
(($# <= 1)) || usage

jobs=$(nproc)
# Each libFuzzer target's smoke run. CI's 50 minutes on 2 cores are nearly all spent (the lane
# times below): 10 s a target is what fits beside the nested-KVM tests.
fuzz_seconds=10

# Each lane's wall time, printed when it ends, so that CI's budget (50 minutes on 2 cores) can be
# read off any run's log.
lane_started=$SECONDS
lane_done() {
  echo "test.sh: $1 took $((SECONDS - lane_started)) s (total $SECONDS s)" >&2
  lane_started=$SECONDS
}

# A full build in $1 with the extra cmake arguments that follow, then every test.
run_full_lane() {
  build_full_lane "$@"
  ctest --test-dir "$1" --output-on-failure -j"$jobs" --timeout 1800
}
build_full_lane() {
  local build_dir=$1
  shift
  scripts/install-deps.sh --qemu
  # The Linux guest (Debian cloud kernel + busybox initramfs) for test_linux_guest; cached.
  scripts/build-linux-guest.sh
  # -O2 as shipped, with line tables only (-g1): a failing test's backtrace needs no more, and
  # full debug information for Asio, Beast and Catch2 is about a fifth of the build's time.
  cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG" "$@" >/dev/null
  cmake --build "$build_dir" -j"$jobs"
}

# CI's order. The fuzz smoke run needs no QEMU and one core: it runs beside the normal lane's
# tests, whose nested-KVM tests run one at a time on one core (its output is shown at the end).
run_all_lanes() {
  run_format_check
  lane_done "the format check"
  build_full_lane build
  lane_done "the normal lane's build"
  run_tidy_check
  lane_done "the clang-tidy lane"
  local fuzz_log=$PWD/build/fuzz-lane.log fuzz_status=0
  FUZZ_BUILD_JOBS=1 scripts/fuzz.sh --seconds "$fuzz_seconds" --jobs 1 >"$fuzz_log" 2>&1 &
  local fuzz_pid=$!
  local status=0
  ctest --test-dir build --output-on-failure -j"$jobs" --timeout 1800 || status=$?
  wait "$fuzz_pid" || fuzz_status=$?
  echo "test.sh: the fuzz smoke run (scripts/fuzz.sh --seconds $fuzz_seconds), beside the normal" \
       "lane:" >&2
  sed -n '/^fuzz.sh: [0-9]* target/,$p' "$fuzz_log" >&2
  if ((fuzz_status != 0)); then
    tail -n 60 "$fuzz_log" >&2
    echo "test.sh: the fuzz smoke run FAILED (exit $fuzz_status)" >&2
    status=1
  fi
  lane_done "the normal lane's tests and the fuzz smoke run"
  ((status == 0)) || return 1
  run_sanitizer_lanes
}

# The sanitizer lanes, ThreadSanitizer (build-tsan/) and ASan + UBSan (build-asan/): each builds
# the tests labelled unit (tests/unit and the JSON-RPC core) and socket (the control socket server
# and svp, tests/control), the stress driver and the firmware; runs those tests; then runs the
# stress driver. Line tables (-g1) are all a report needs. TSan at -O1, as it advises (it is too
# slow at -O0). ASan + UBSan at -O0: UBSan's checks make GCC's optimizer the larger part of the
# build (Beast's one file took 157 s at -O1, 67 s at -O0), and nothing they find depends on -O1.
tsan_labels='^(unit|socket)$'

# sanitizer_build NAME DIR OPTIMIZATION CMAKE-ARGS...
sanitizer_build() {
  local name=$1 build_dir=$2 optimization=$3
  shift 3
  scripts/install-deps.sh --qemu
  cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=$optimization -g1 -DNDEBUG" "$@" >/dev/null
  local tests=()
  mapfile -t tests < <(ctest --test-dir "$build_dir" -N -L "$tsan_labels" |
                       sed -n 's/^ *Test *#[0-9]*: *//p')
  if ((${#tests[@]} == 0)); then
    echo "test.sh: no test matches the labels $tsan_labels" >&2
    exit 1
  fi
  # lparvisor_host_tests (tests/CMakeLists.txt) is every test of those labels and what they need,
  # svp included; not the KVM tests, the daemon or the benchmark. A test of those labels that it
  # missed would not be built, and ctest would fail it.
  echo "test.sh: $name lane: building ${#tests[@]} tests and the stress driver in $build_dir/" >&2
  cmake --build "$build_dir" -j"$jobs" --target lparvisor_host_tests test_stress lparvisor-firmware
  lane_done "the $name lane's build"
}

# Reports go to files (one per process), so that a report from a child process whose exit status
# a test does not look at still fails the lane. TSan's halt_on_error also makes the process that
# raced exit with 66 at once, which fails its test.
tsan_tests() {
  local build_dir=build-tsan logs=$PWD/build-tsan/tsan-logs status=0
  rm -rf "$logs"
  mkdir -p "$logs"
  local options=halt_on_error=1:second_deadlock_stack=1:log_path=$logs/tsan
  if [[ -f tests/tsan.supp ]]; then
    options+=:suppressions=$PWD/tests/tsan.supp
  fi
  TSAN_OPTIONS=$options ctest --test-dir "$build_dir" -L "$tsan_labels" --output-on-failure \
    -j"$jobs" --timeout 1800 || status=$?
  local reports=("$logs"/tsan*)
  if [[ -e "${reports[0]}" ]]; then
    echo "test.sh: ThreadSanitizer reported in ${#reports[@]} process(es):" >&2
    cat "${reports[@]}" >&2
    status=1
  fi
  lane_done "the TSan lane's unit and socket tests"
  return "$status"
}
asan_tests() {
  local build_dir=build-asan logs=$PWD/build-asan/asan-logs status=0
  rm -rf "$logs"
  mkdir -p "$logs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:log_path=$logs/asan \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan \
    ctest --test-dir "$build_dir" -L "$tsan_labels" --output-on-failure -j"$jobs" --timeout 1800 ||
    status=$?
  local reports=("$logs"/*)
  if [[ -e "${reports[0]}" ]]; then
    echo "test.sh: AddressSanitizer/UBSan reported in ${#reports[@]} process(es):" >&2
    cat "${reports[@]}" >&2
    status=1
  fi
  lane_done "the ASan + UBSan lane's unit and socket tests"
  return "$status"
}

# The stress driver (tests/kvm/test_stress.cpp) under each sanitizer: its vCPU, device, mover and
# client threads doing every storage operation at once. Other series than the normal lane's (seed
# 1, 50 operations), shorter because the sanitizers and the harness are slow. Reports go to the
# console (a nested guest has no path back to our log folder) and fail the run (TSan: exit 66);
# the nested guest gets 3 GiB for the sanitizers' shadow memory. A skip (no KVM and no QEMU) is a
# failure.
tsan_stress() {
  local status=0
  NESTED_KVM_MEM=3072 TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    scripts/stress.sh --build-dir build-tsan --seed 2 --ops 20 --timeout 1500 || status=$?
  if ((status != 0)); then
    echo "test.sh: the TSan stress run failed (exit $status; 66: a ThreadSanitizer report, 77:" \
         "it could not run)" >&2
  fi
  return "$status"
}
asan_stress() {
  local status=0
  NESTED_KVM_MEM=3072 ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    scripts/stress.sh --build-dir build-asan --seed 3 --ops 6 --timeout 1200 || status=$?
  if ((status != 0)); then
    echo "test.sh: the ASan + UBSan stress run failed (exit $status; 77: it could not run)" >&2
  fi
  return "$status"
}

tsan_build() { sanitizer_build TSan build-tsan -O1 -DLPARVISOR_TSAN=ON; }
asan_build() { sanitizer_build "ASan + UBSan" build-asan -O0 -DLPARVISOR_SANITIZE=ON; }

# lane_verdict NAME STATUS: the lane's last line.
lane_verdict() {
  if (($2 != 0)); then
    echo "test.sh: $1 lane FAILED" >&2
    return 1
  fi
  echo "test.sh: $1 lane passed: unit and socket tests and the stress driver, no report" >&2
}

run_tsan_lane() {
  local status=0
  tsan_build
  tsan_tests || status=1
  tsan_stress || status=1
  lane_done "the TSan lane's stress run"
  lane_verdict TSan "$status"
}
run_asan_lane() {
  local status=0
  asan_build
  asan_tests || status=1
  asan_stress || status=1
  lane_done "the ASan + UBSan lane's stress run"
  lane_verdict "ASan + UBSan" "$status"
}

# CI's order for the two sanitizer lanes: both builds and both test runs (two cores each), then
# both stress series at once. Each series runs one QEMU on one core: side by side they take the
# time of one. Their output is shown one after the other when both have ended.
run_sanitizer_lanes() {
  local tsan_status=0 asan_status=0
  tsan_build
  tsan_tests || tsan_status=1
  asan_build
  asan_tests || asan_status=1
  local tsan_log=$PWD/build-tsan/stress.log asan_log=$PWD/build-asan/stress.log
  tsan_stress >"$tsan_log" 2>&1 &
  local tsan_pid=$!
  asan_stress >"$asan_log" 2>&1 &
  local asan_pid=$!
  wait "$tsan_pid" || tsan_status=1
  wait "$asan_pid" || asan_status=1
  echo "test.sh: the TSan stress run (seed 2, 20 operations):" >&2
  tail -n 80 "$tsan_log" >&2
  echo "test.sh: the ASan + UBSan stress run (seed 3, 6 operations):" >&2
  tail -n 80 "$asan_log" >&2
  lane_done "the two sanitizer lanes' stress runs, side by side"
  local status=0
  lane_verdict TSan "$tsan_status" || status=1
  lane_verdict "ASan + UBSan" "$asan_status" || status=1
  return "$status"
}

# clang-tidy with the root's .clang-tidy (bugprone, performance, cognitive complexity) on the
# daemon's and svp's own code: every .cpp file in hypervisor/ and svp-console/, and their headers.
# Not tests/, fuzz/ or bench/: Catch2's and libFuzzer's macros are their style. Any finding
# fails the lane. It reads build/'s compile_commands.json, and the build's generated files.
run_tidy_check() {
  scripts/install-deps.sh
  if [[ ! -f build/compile_commands.json ]]; then
    cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build build -j"$jobs"
  fi
  local files=() log=$PWD/build/tidy.log
  mapfile -t files < <(git ls-files 'hypervisor/*.cpp' 'svp-console/*.cpp')
  if ! run-clang-tidy -p build -j"$jobs" -quiet "${files[@]/#/$PWD/}" >"$log" 2>&1; then
    grep -E "(warning|error): " "$log" | sort -u >&2 || tail -n 40 "$log" >&2
    echo "test.sh: clang-tidy: findings above (all of them in $log)" >&2
    return 1
  fi
  echo "test.sh: clang-tidy: ${#files[@]} files, no finding" >&2
}

# Every C and C++ file as .clang-format (the root's; guest-firmware/ and scripts/nested-kvm/ have
# their own) wants it.
run_format_check() {
  scripts/install-deps.sh
  local files=()
  mapfile -t files < <(git ls-files '*.cpp' '*.hpp' '*.c' '*.h' 2>/dev/null ||
                       find . -path ./build\* -prune -o \( -name '*.[ch]pp' -o -name '*.[ch]' \) -print)
  if ! clang-format --dry-run -Werror "${files[@]}"; then
    echo "test.sh: clang-format: the files above are not formatted (clang-format -i FILE)" >&2
    return 1
  fi
  echo "test.sh: clang-format: ${#files[@]} files formatted" >&2
}

# (Lanes run one after the other as plain commands, never in an && list, so that set -e holds
# inside them.)
case $mode in
  all) run_all_lanes ;;
  format) run_format_check ;;
  tidy) run_tidy_check ;;
  normal) run_full_lane build ;;
  tsan) run_tsan_lane ;;
  asan) run_asan_lane ;;
  fuzz) scripts/fuzz.sh --seconds "$fuzz_seconds" --jobs "$jobs" ;;
  sanitize) run_full_lane build-sanitize -DLPARVISOR_SANITIZE=ON ;;
esac
