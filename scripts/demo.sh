#!/usr/bin/env bash
# The Fig. 3A demo, from a fresh machine: installs what it needs, builds, starts lparvisor with
# the patent's Fig. 3A (LPAR1 at 0 with 128 MiB, LPAR2 at 128 with 256 MiB, both running the
# test firmware), shows the storage table, runs `svp mvstor LPAR2 192`, shows the table again
# (Fig. 4A) and both guests' latest verification lines, and stops the daemon cleanly.
#
# Where this host has no /dev/kvm (e.g. it is itself a PVM guest), the same demo runs inside
# QEMU (TCG) with nested KVM: real KVM, emulated CPU, slower. The steps are scripts/demo-steps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh --qemu
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target lparvisor svp lparvisor-firmware >/dev/null
echo "demo: built build/hypervisor/lparvisor, build/svp-console/svp, build/guest-firmware/lparvisor-firmware"

binaries=(build/hypervisor/lparvisor build/svp-console/svp build/guest-firmware/lparvisor-firmware)
if [[ -c /dev/kvm ]] && exec 3<>/dev/kvm 2>/dev/null; then
  exec 3>&-
  exec scripts/demo-steps.sh "${binaries[@]}"
fi

cat <<MSG

demo: *** this host has no usable /dev/kvm ***
demo: running the demo inside QEMU (TCG, emulated AMD CPU with SVM) with the Debian kernel's
demo: kvm-amd: real KVM one level down (scripts/nested-kvm/README.md). It takes a minute.

MSG
exec scripts/nested-kvm/run.sh --timeout 1500 --file scripts/demo-steps.sh \
  --file build/hypervisor/lparvisor --file build/svp-console/svp \
  --file build/guest-firmware/lparvisor-firmware -- \
  ./demo-steps.sh /work/lparvisor /work/svp /work/lparvisor-firmware
