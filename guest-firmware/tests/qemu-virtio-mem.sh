#!/bin/sh
# Boots lparvisor-firmware under QEMU (TCG, -M pc) through its Multiboot entry with QEMU's
# virtio-mem-pci, the reference virtio-mem implementation (QEMU puts the region above 4 GiB;
# multiboot.c maps it), and drives an EXPAND and a shrink through QMP (qom-set requested-size):
#   64 MiB at start -> the firmware plugs 64 MiB and fills it with the pattern; the host reads
#   the plugged memory back (pmemsave) and checks it against lpv_pattern_word (abi.h);
#   -> 32 MiB: the firmware verifies, then unplugs the top 32 MiB;
#   -> 96 MiB: it plugs 64 MiB more (from 32 MiB on) and fills them.
# Checks the MEM lines, the device's plugged size after each step (qom-get size), no FAIL line,
# debug-exit code 0.
# usage: qemu-virtio-mem.sh QEMU FIRMWARE MODE     (MODE: cpl0 | cpl3)
set -u
qemu=$1 fw=$2 mode=$3
name=VMEM rounds=40
case $mode in
    cpl0) append="" ;;
    cpl3) append="cpl3=1" ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
python=$(command -v python3 || true)
[ -n "$python" ] || { echo "qemu-virtio-mem: no python3 for the QMP client" >&2; exit 2; }
dir=$(mktemp -d)
qpid=
trap '[ -n "$qpid" ] && kill "$qpid" 2>/dev/null; rm -rf "$dir"' EXIT
log=$dir/serial.log sock=$dir/qmp.sock
: >"$log"
# A rewrite paced to 4096 pages/s of an 8 MiB working set: about 0.5 s a round under TCG, so
# that the QMP steps below land in the middle of the run.
timeout 200 "$qemu" -accel tcg -M pc -m 128M,maxmem=1G -kernel "$fw" \
    -append "name=$name rounds=$rounds working_set_mib=8 pages_per_sec=4096 $append" \
    -display none -monitor none -serial "file:$log" -no-reboot \
    -qmp "unix:$sock,server=on,wait=off" \
    -device isa-debug-exit,iobase=0x501,iosize=2 \
    -object memory-backend-ram,id=vmem0,size=256M \
    -device virtio-mem-pci,id=vm0,memdev=vmem0,requested-size=64M,block-size=2M </dev/null &
qpid=$!

"$python" - "$sock" "$log" "$name" "$dir" <<'EOF'
import json, os, re, socket, struct, sys, time
sock_path, log_path, name, tmp = sys.argv[1:5]
MUL, M64 = 0x9E3779B97F4A7C15, (1 << 64) - 1

def fail(msg):
    print("qemu-virtio-mem: " + msg, file=sys.stderr)
    sys.exit(1)

def wait_line(pattern, timeout=60):
    rx = re.compile(pattern, re.M)
    end = time.time() + timeout
    while time.time() < end:
        with open(log_path) as f:
            m = rx.search(f.read())
        if m:
            return m
        time.sleep(0.05)
    fail("no line matching %r" % pattern)

end = time.time() + 30
while True:
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock_path)
        break
    except OSError:
        if time.time() > end:
            fail("cannot connect to QMP")
        time.sleep(0.05)
f = s.makefile("rw")
json.loads(f.readline())  # greeting

def qmp(cmd, **args):
    f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
    f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r:
            return r["return"]
        if "error" in r:
            fail("QMP %s: %s" % (cmd, r["error"]))

qmp("qmp_capabilities")
seed = int(wait_line(r"^lparvisor-firmware: %s .* seed=0x([0-9a-f]{16})$" % name).group(1), 16)
m = wait_line(r"^MEM %s region 0x([0-9a-f]+) size 256 MiB block 2048 KiB plugged 0 MiB requested 64 MiB$" % name)
region = int(m.group(1), 16)
if region < (4 << 30):
    fail("region 0x%x below 4 GiB" % region)

def plugged():
    return qmp("qom-get", path="/machine/peripheral/vm0", property="size")

def check_pattern(lo, size):
    path = os.path.join(tmp, "mem.bin")
    qmp("pmemsave", val=lo, size=size, filename=path)
    data = open(path, "rb").read()
    if len(data) != size:
        fail("pmemsave returned %d bytes" % len(data))
    # every word of the first and last 64 KiB, one word per 4 KiB in between
    offs = list(range(0, 65536, 8)) + list(range(size - 65536, size, 8)) + list(range(65536, size - 65536, 4096))
    for off in offs:
        got = struct.unpack_from("<Q", data, off)[0]
        exp = (((lo + off) * MUL) & M64) ^ seed
        if got != exp:
            fail("pattern at 0x%x: expected 0x%016x got 0x%016x" % (lo + off, exp, got))
    os.unlink(path)

wait_line(r"^MEM %s plugged 64 MiB \(requested 64 MiB\)$" % name)
if plugged() != 64 << 20:
    fail("device plugged size %d after plugging 64 MiB" % plugged())
check_pattern(region, 64 << 20)
wait_line(r"^MEM %s verify ok 64 MiB round [0-9]+$" % name)

qmp("qom-set", path="/machine/peripheral/vm0", property="requested-size", value=32 << 20)
wait_line(r"^MEM %s unplugged to 32 MiB$" % name)
if plugged() != 32 << 20:
    fail("device plugged size %d after unplugging to 32 MiB" % plugged())
wait_line(r"^MEM %s verify ok 32 MiB round [0-9]+$" % name)

qmp("qom-set", path="/machine/peripheral/vm0", property="requested-size", value=96 << 20)
wait_line(r"^MEM %s plugged 96 MiB \(requested 96 MiB\)$" % name)
if plugged() != 96 << 20:
    fail("device plugged size %d after plugging 96 MiB" % plugged())
check_pattern(region, 96 << 20)
wait_line(r"^MEM %s verify ok 96 MiB round [0-9]+$" % name)
with open(log_path) as lf:
    if "done rounds=" in lf.read():
        fail("the round limit came before the last step: the test proves less than it should")
EOF
py=$?
wait "$qpid"
rc=$?
qpid=
cat "$log"
fail() { echo "qemu-virtio-mem ($mode): $*" >&2; exit 1; }
[ "$py" -eq 0 ] || fail "the QMP steps failed"
[ "$rc" -eq 1 ] || fail "expected QEMU exit status 1 (debug-exit 0), got $rc"
if grep -q 'FAIL' "$log"; then fail "FAIL lines"; fi
grep -q "^lparvisor-firmware: done rounds=$rounds failures=0\$" "$log" || fail "no clean done line"
grep -q "^virtio 00:[0-9a-f][0-9a-f]\.[0-7]: id 0x1058 type 24 (mem) " "$log" || fail "no virtio-mem probe line"
# the order of the MEM state changes, and no verify line for more than was plugged
grep -E "^MEM $name (plugged|unplugged)" "$log" >"$dir/changes"
printf '%s\n' "MEM $name plugged 64 MiB (requested 64 MiB)" "MEM $name unplugged to 32 MiB" \
    "MEM $name plugged 96 MiB (requested 96 MiB)" | cmp -s - "$dir/changes" || fail "unexpected MEM state changes: $(cat "$dir/changes")"
verify_lines=$(grep -c "^MEM $name verify ok " "$log")
[ "$verify_lines" -ge 3 ] || fail "only $verify_lines MEM verify lines"
echo "qemu-virtio-mem: $mode ok"
