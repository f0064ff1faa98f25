#!/bin/sh
# Boots lparvisor-firmware under QEMU (TCG) through its Multiboot entry and checks the witness:
# banner, "verify ok round=1..3 cpu=0", no FAIL line, and debug-exit code 0 (QEMU exit status 1).
# usage: qemu-smoke.sh QEMU FIRMWARE pc|microvm [extra kernel command line]
set -u
qemu=$1 fw=$2 machine=$3
shift 3
extra="$*"
case $machine in
    pc) append="name=QEMU1 rounds=3 $extra" ;;
    # microvm also exercises the CPL3 entry (cpl3=1), a working set and the rate limit
    microvm) append="name=QEMU1 rounds=3 cpl3=1 working_set_mib=4 pages_per_sec=4096 $extra" ;;
    *) echo "unknown machine $machine" >&2; exit 2 ;;
esac
log=$(mktemp)
trap 'rm -f "$log"' EXIT
timeout 100 "$qemu" -accel tcg -M "$machine" -m 64 -kernel "$fw" -append "$append" \
    -display none -monitor none -serial "file:$log" -no-reboot \
    -device isa-debug-exit,iobase=0x501,iosize=2 </dev/null
rc=$?
cat "$log"
[ "$rc" -eq 1 ] || { echo "qemu-smoke: expected QEMU exit status 1 (debug-exit 0), got $rc" >&2; exit 1; }
grep -q '^lparvisor-firmware: QEMU1 storage=' "$log" || { echo "qemu-smoke: no banner" >&2; exit 1; }
for r in 1 2 3; do
    grep -q "^verify ok round=$r cpu=0\$" "$log" || { echo "qemu-smoke: no verify ok round=$r" >&2; exit 1; }
done
if grep -q '^FAIL' "$log"; then echo "qemu-smoke: FAIL lines" >&2; exit 1; fi
echo "qemu-smoke: $machine ok"
