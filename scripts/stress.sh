#!/usr/bin/env bash
# Runs the seeded random stress test (tests/kvm/test_stress.cpp) by hand, with any seed and length:
#   scripts/stress.sh [--seed S] [--ops N] [--build-dir DIR] [--timeout S]
#     --seed S        the series to run (default 1, the one CI runs); a failure names its seed
#                     and the operation it failed at, and the same seed replays it
#     --ops N         how many random operations (default 100, CI's length)
#     --build-dir D   build tree to use, configured and built first if needed (default build)
#     --timeout S     nested runs only: the harness's wall-clock limit (default 300 + 8 s an op)
# Where /dev/kvm works (and is not PVM) the test runs directly; elsewhere inside QEMU with nested KVM
# (scripts/nested-kvm/), which is slower (about 6 minutes for 100 operations). It needs the Linux
# guest image (scripts/build-linux-guest.sh, run here when the image is missing).
# Example: scripts/stress.sh --seed 7 --ops 1000
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  if [[ "${1:-2}" == 0 ]]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  else
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  fi
  exit "${1:-2}"
}

seed=1 ops=100 build_dir=build timeout_s=""
while (($# > 0)); do
  case "$1" in
    --seed) seed=${2:?--seed needs a value}; shift 2 ;;
    --ops) ops=${2:?--ops needs a value}; shift 2 ;;
    --build-dir) build_dir=${2:?--build-dir needs a value}; shift 2 ;;
    --timeout) timeout_s=${2:?--timeout needs a value}; shift 2 ;;
    -h | --help) usage 0 ;;
    *) echo "stress.sh: unknown argument $1" >&2; usage ;;
  esac
done
for value in "$seed" "$ops"; do
  [[ "$value" =~ ^[0-9]+$ ]] || { echo "stress.sh: '$value' is not a number" >&2; usage; }
done
((ops > 0)) || { echo "stress.sh: --ops must be at least 1" >&2; usage; }
[[ -z "$timeout_s" || "$timeout_s" =~ ^[0-9]+$ ]] || { echo "stress.sh: bad --timeout" >&2; usage; }

# Build what the test needs (cmake only rebuilds what changed).
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$build_dir" -j"$(nproc)" --target test_stress lparvisor-firmware

# The Linux guest image, where ctest would look for it.
cache=${LPARVISOR_CACHE:-$HOME/.cache/lparvisor}
export LPARVISOR_LINUX_GUEST_ENV=${LPARVISOR_LINUX_GUEST_ENV:-$cache/linux-guest/linux-guest.env}
if [[ ! -f "$LPARVISOR_LINUX_GUEST_ENV" ]]; then
  echo "stress.sh: no Linux guest image yet; building it (scripts/build-linux-guest.sh)" >&2
  scripts/build-linux-guest.sh
fi
export LPARVISOR_STRESS_SEED=$seed LPARVISOR_STRESS_OPS=$ops

binary=$build_dir/tests/test_stress
firmware=$build_dir/guest-firmware/lparvisor-firmware
kvm_works() { [[ -c /dev/kvm ]] && { exec 3<>/dev/kvm; } 2>/dev/null && exec 3>&-; }
echo "stress.sh: seed $seed, $ops operations" >&2
# A PVM /dev/kvm cannot boot the series' Linux LPAR to its workload (docs/kvm-notes.md, Linux
# under PVM): nested there.
if kvm_works && [[ ! -d /sys/module/kvm_pvm ]]; then
  exec "$binary"
fi
timeout_s=${timeout_s:-$((300 + 8 * ops))}
echo "stress.sh: no /dev/kvm that boots Linux here: running inside the nested-KVM harness" \
     "(limit ${timeout_s} s)" >&2
LPARVISOR_NESTED_ON_PVM=1 exec scripts/nested-kvm/ctest-run.sh "$timeout_s" "$firmware" -- "$binary"
