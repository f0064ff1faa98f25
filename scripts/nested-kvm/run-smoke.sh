#!/usr/bin/env bash
# run-smoke.sh — build kvm-smoke.c (static) and run it through run.sh, i.e.
# inside a QEMU-TCG guest with nested SVM.  Validates the nested-KVM harness.
#
# Usage: scripts/nested-kvm/run-smoke.sh [--bench N] [run.sh options...]
#   --bench N   also time N nested-guest loop iterations and N/1000 PIO exits
# Exit status: 0 when the guest printed "KVM-SMOKE OK".
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache="${LPARVISOR_CACHE:-$HOME/.cache/lparvisor}"
args=()
if [ "${1:-}" = --bench ]; then args=(--bench "$2"); shift 2; fi
mkdir -p "$cache/nested-kvm"
bin="$cache/nested-kvm/kvm-smoke"
echo "run-smoke: cc -static -O2 kvm-smoke.c -o $bin" >&2
${CC:-cc} -static -O2 -Wall -Wextra -o "$bin" "$here/kvm-smoke.c"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
set +e
"$here/run.sh" "$@" --file "$bin" -- ./kvm-smoke "${args[@]}" | tee "$out"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" = 0 ] && grep -q '^KVM-SMOKE OK' "$out"; then
    echo "run-smoke: PASS" >&2
    exit 0
fi
echo "run-smoke: FAIL (rc=$rc)" >&2
exit $(( rc ? rc : 1 ))
