#!/usr/bin/env bash
# Runs COMMAND only where /dev/kvm can be opened; otherwise says SKIPPED loudly and exits 77.
set -euo pipefail
# The braces keep 2>/dev/null to the open: `exec 3<>F 2>/dev/null` alone would also silence
# stderr for the rest of the script, and for the test it execs.
if [[ -c /dev/kvm ]] && { exec 3<>/dev/kvm; } 2>/dev/null; then
  exec 3>&-
  exec "$@"
fi
echo "*** SKIPPED: $(basename "$1") needs KVM and this host has no usable /dev/kvm ***"
echo "*** (the nested_* tests run it inside QEMU with nested KVM) ***"
exit 77
