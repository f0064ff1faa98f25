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

if [[ -c /dev/kvm ]] && exec 3<>/dev/kvm 2>/dev/null; then
  exec 3>&-
  echo "*** SKIPPED: this host has /dev/kvm, so the direct (non-nested) test runs instead ***"
  exit 77
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
echo "nested-kvm: no /dev/kvm here; running $(basename "$command_file") inside QEMU TCG with nested SVM"
exec "$here/run.sh" --timeout "$timeout_s" --file "$command_file" --file "$firmware" "${extra[@]}" -- \
  env LPARVISOR_FIRMWARE=/work/"$(basename "$firmware")" ./"$(basename "$command_file")" "${guest_args[@]}"
