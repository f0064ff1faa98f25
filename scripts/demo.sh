#!/usr/bin/env bash
# The Fig. 3A demo, from a fresh machine: installs what it needs, builds lparvisor and the Linux
# guest image (Debian cloud kernel + busybox initramfs, from Debian packages), starts lparvisor
# with the patent's Fig. 3A (LPAR1 at 0 with 128 MiB running the test firmware, LPAR2 at 128
# with 256 MiB booting Linux), shows the storage table, runs `svp mvstor LPAR2 192` while the
# kernel runs, shows the table again (Fig. 4A), expands LPAR1 by 64 MiB into the freed gap
# (Fig. 4B), shows the kernel's console and how far it got, and stops the daemon cleanly.
#   scripts/demo.sh --firmware-only   both LPARs run the test firmware (no kernel download)
#
# Where this host has no /dev/kvm (e.g. it is itself a PVM guest), the same demo runs inside
# QEMU (TCG) with nested KVM: real KVM, emulated CPU, slower. The steps are scripts/demo-steps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

firmware_only=0
[[ "${1:-}" == "--firmware-only" ]] && firmware_only=1
scripts/install-deps.sh --qemu
guest_env=""
if [[ $firmware_only == 0 ]]; then
  scripts/build-linux-guest.sh
  guest_env="${LPARVISOR_CACHE:-$HOME/.cache/lparvisor}/linux-guest/linux-guest.env"
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target lparvisor svp lparvisor-firmware >/dev/null
echo "demo: built build/hypervisor/lparvisor, build/svp-console/svp, build/guest-firmware/lparvisor-firmware"

binaries=(build/hypervisor/lparvisor build/svp-console/svp build/guest-firmware/lparvisor-firmware)
if [[ -c /dev/kvm ]] && exec 3<>/dev/kvm 2>/dev/null; then
  exec 3>&-
  LPARVISOR_LINUX_GUEST_ENV=$guest_env exec scripts/demo-steps.sh "${binaries[@]}"
fi

cat <<MSG

demo: *** this host has no usable /dev/kvm ***
demo: running the demo inside QEMU (TCG, emulated AMD CPU with SVM) with the Debian kernel's
demo: kvm-amd: real KVM one level down (scripts/nested-kvm/README.md). It takes a minute.

MSG
guest_files=() guest_vars=()
if [[ -n "$guest_env" ]]; then
  # shellcheck disable=SC1090
  . "$guest_env"
  guest_files=(--file "$guest_env" --file "$LINUX_BZIMAGE" --file "$LINUX_INITRD")
  guest_vars=(LPARVISOR_LINUX_GUEST_ENV=/work/$(basename "$guest_env")
              LPARVISOR_LINUX_BZIMAGE=/work/$(basename "$LINUX_BZIMAGE")
              LPARVISOR_LINUX_INITRD=/work/$(basename "$LINUX_INITRD"))
fi
exec scripts/nested-kvm/run.sh --timeout 1500 --file scripts/demo-steps.sh \
  --file build/hypervisor/lparvisor --file build/svp-console/svp \
  --file build/guest-firmware/lparvisor-firmware "${guest_files[@]}" -- \
  env "${guest_vars[@]}" ./demo-steps.sh /work/lparvisor /work/svp /work/lparvisor-firmware
