#!/bin/sh
# Boots lparvisor-firmware under QEMU (TCG, -M pc, SeaBIOS assigns the BARs) through its
# Multiboot entry with QEMU's own virtio-blk-pci (backed by a fresh raw image) and
# virtio-rng-pci, the reference virtio 1.x implementation, and checks the firmware's drivers:
# the DISK/RNG lines, no FAIL line, debug-exit code 0, and then the image itself: its first
# blocks must hold exactly the final pass's pattern (lparvisor-fw-disk-check, which uses the same
# lpv_disk_word from abi.h) and everything after them must still be zero.
# usage: qemu-virtio.sh QEMU FIRMWARE DISK_CHECK MODE
#   modern        disable-legacy=on devices, CPL0, 6 MiB image (test area clamped to 4 MiB), 3 rounds
#   modern-cpl3   the same at CPL3 (cpl3=1: lparvisor's entry state, TSS I/O bitmap), an image
#                 of 1 MiB + 7 sectors (256 whole blocks), 2 rounds
#   transitional  transitional devices (ids 0x1001/0x1005) whose 64-bit BARs SeaBIOS puts above
#                 4 GiB (a 2 GiB ivshmem BAR crowds them out of the 32-bit window), CPL3, 1 round
set -u
qemu=$1 fw=$2 check=$3 mode=$4
name=VIRTIO1 serial=lpv-$mode
case $mode in
    modern) size=$((6 * 1024 * 1024)) rounds=3 blocks=1024 legacy=",disable-legacy=on" append="" extra="" ;;
    modern-cpl3) size=$((1024 * 1024 + 7 * 512)) rounds=2 blocks=256 legacy=",disable-legacy=on" append="cpl3=1" extra="" ;;
    transitional) size=$((4 * 1024 * 1024)) rounds=1 blocks=1024 legacy="" append="cpl3=1"
        extra="-object memory-backend-ram,id=big,size=2G -device ivshmem-plain,memdev=big" ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
log=$dir/serial.log img=$dir/disk.img
truncate -s "$size" "$img" || exit 2
# shellcheck disable=SC2086
timeout 200 "$qemu" -accel tcg -M pc -m 64 -kernel "$fw" -append "name=$name rounds=$rounds $append" \
    -display none -monitor none -serial "file:$log" -no-reboot \
    -device isa-debug-exit,iobase=0x501,iosize=2 \
    -drive if=none,id=d0,file="$img",format=raw \
    -device "virtio-blk-pci$legacy,drive=d0,serial=$serial" \
    -device "virtio-rng-pci$legacy" $extra </dev/null
rc=$?
cat "$log"
fail() { echo "qemu-virtio ($mode): $*" >&2; exit 1; }
[ "$rc" -eq 1 ] || fail "expected QEMU exit status 1 (debug-exit 0), got $rc"
if grep -q 'FAIL' "$log"; then fail "FAIL lines"; fi
grep -q "^lparvisor-firmware: done rounds=$rounds failures=0\$" "$log" || fail "no clean done line"
grep -q "^DISK $name id \"$serial\"\$" "$log" || fail "no DISK id line with the serial"
grep -q "^RNG $name ok [1-9][0-9]* bytes\$" "$log" || fail "no RNG ok line"
p=1
while [ "$p" -le "$rounds" ]; do
    grep -q "^DISK $name pass $p ok blocks $blocks\$" "$log" || fail "no DISK pass $p line"
    p=$((p + 1))
done
grep -q "^DISK $name final pass $rounds blocks $blocks\$" "$log" || fail "no DISK final line"
"$check" "$img" "$name" "$rounds" "$blocks" || fail "the image does not hold pass $rounds"
# the checker must notice another pass's pattern (it is not vacuous)
if "$check" "$img" "$name" $((rounds + 1)) "$blocks" >/dev/null; then fail "checker accepted pass $((rounds + 1))"; fi
tail_nonzero=$(tail -c +$((blocks * 4096 + 1)) "$img" | tr -d '\000' | wc -c)
[ "$tail_nonzero" -eq 0 ] || fail "$tail_nonzero non-zero bytes after the test blocks"
echo "qemu-virtio: $mode ok"
