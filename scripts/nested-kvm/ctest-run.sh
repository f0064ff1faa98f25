#!/usr/bin/env bash
# ctest's way into the nested-KVM harness: runs a KVM test inside QEMU TCG with nested SVM when
# this host has no usable /dev/kvm, so that the KVM tests really run in CI on such hosts.
#   ctest-run.sh TIMEOUT_S FIRMWARE -- COMMAND_FILE [ARGS...]
# COMMAND_FILE and FIRMWARE are copied into the guest; $LPARVISOR_FIRMWARE points at the copy.
# Exits 77 (ctest: Skipped), saying why loudly, where the harness is not needed (the host has
# /dev/kvm: the direct test runs) or cannot run (no QEMU).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
timeout_s=$1 firmware=$2
shift 2
[[ "${1:-}" == "--" ]] && shift
command_file=$1
shift

# A PVM /dev/kvm (kvm_pvm: guest kernel code emulated, docs/kvm-notes.md, PVM) runs the firmware
# tests but cannot boot Linux to userspace; tests that need that set LPARVISOR_NESTED_ON_PVM=1 and
# run nested there too (their direct twins skip under PVM).
# The braces keep 2>/dev/null to the probe: on a bare `exec 3<>/dev/kvm 2>/dev/null` it would
# stay in force and hide run.sh's messages (and QEMU's errors) for the rest of the run.
if [[ -c /dev/kvm ]] && { exec 3<>/dev/kvm; } 2>/dev/null; then
  exec 3>&-
  if [[ "${LPARVISOR_NESTED_ON_PVM:-0}" == 1 && -d /sys/module/kvm_pvm ]]; then
    echo "nested-kvm: this /dev/kvm is PVM, which cannot boot Linux to userspace: nested instead"
  else
    echo "*** SKIPPED: this host has /dev/kvm, so the direct (non-nested) test runs instead ***"
    exit 77
  fi
fi
if ! command -v "${QEMU:-qemu-system-x86_64}" >/dev/null; then
  echo "*** SKIPPED: no /dev/kvm and no qemu-system-x86_64 for the nested-KVM harness (scripts/install-deps.sh --qemu) ***"
  exit 77
fi

extra=()
for arg in "$@"; do [[ -e "$arg" ]] && extra+=(--file "$arg"); done
guest_args=()
for arg in "$@"; do
  if [[ -e "$arg" ]]; then guest_args+=("/work/$(basename "$arg")"); else guest_args+=("$arg"); fi
done
# A Linux guest image (scripts/build-linux-guest.sh) goes in too when the test names one.
guest_env=()
if [[ -n "${LPARVISOR_LINUX_GUEST_ENV:-}" && -f "$LPARVISOR_LINUX_GUEST_ENV" ]]; then
  # shellcheck disable=SC1090
  . "$LPARVISOR_LINUX_GUEST_ENV"
  extra+=(--file "$LPARVISOR_LINUX_GUEST_ENV" --file "$LINUX_BZIMAGE" --file "$LINUX_INITRD")
  guest_env+=(LPARVISOR_LINUX_GUEST_ENV=/work/"$(basename "$LPARVISOR_LINUX_GUEST_ENV")"
              LPARVISOR_LINUX_BZIMAGE=/work/"$(basename "$LINUX_BZIMAGE")"
              LPARVISOR_LINUX_INITRD=/work/"$(basename "$LINUX_INITRD")")
fi
# The stress test's seed and length (tests/kvm/test_stress.cpp), and a TSan build's options
# (scripts/test.sh --tsan), go in when set.
for var in LPARVISOR_STRESS_SEED LPARVISOR_STRESS_OPS TSAN_OPTIONS; do
  if [[ -n "${!var:-}" ]]; then guest_env+=("$var=${!var}"); fi
done
# A ThreadSanitizer build needs room for its shadow memory: NESTED_KVM_MEM (MiB) sizes the guest.
mem=()
if [[ -n "${NESTED_KVM_MEM:-}" ]]; then mem=(--mem "$NESTED_KVM_MEM"); fi
# A test that a browser on the host drives (the daemon's HTTP listener in the guest) sets
# NESTED_KVM_HOSTFWD=HOSTPORT:GUESTPORT: host 127.0.0.1:HOSTPORT reaches the guest's GUESTPORT.
fwd=()
if [[ -n "${NESTED_KVM_HOSTFWD:-}" ]]; then fwd=(--hostfwd "$NESTED_KVM_HOSTFWD"); fi
echo "nested-kvm: running $(basename "$command_file") inside QEMU TCG with nested SVM"
exec "$here/run.sh" --timeout "$timeout_s" "${mem[@]}" "${fwd[@]}" --file "$command_file" --file "$firmware" "${extra[@]}" -- \
  env LPARVISOR_FIRMWARE=/work/"$(basename "$firmware")" "${guest_env[@]}" \
  ./"$(basename "$command_file")" "${guest_args[@]}"
