#!/bin/sh
# The daemon's sandbox end to end under real KVM (docs/threat-model.md):
#  1. every thread of a running daemon has `Seccomp: 2` and `NoNewPrivs: 1`, every mapping of main
#     storage is marked `dd` (not dumped), and an LPAR activated later runs confined too;
#  2. with --user the effective uid is not 0, and the LPARs still run, move (MVSTOR) and a new
#     one can be defined and activated;
#  3. a device worker that makes a forbidden system call (the test-only fault point
#     device.forbidden_syscall) ends the daemon at once with status 159, and the log names the
#     thread, its class and the call;
#  4. --no-sandbox leaves the threads unfiltered (Seccomp: 0) and the log says so.
#   sandbox.sh LPARVISOR SVP FIRMWARE DAEMON-LIB
set -eu
lparvisor=$1 svp=$2 firmware=$3
work=$(mktemp -d /tmp/lparvisor-sandbox-XXXXXX)
chmod 755 "$work"
# The socket's directory belongs to the --user of case 2, so that it can remove the socket.
mkdir "$work/run"
chown 65534:65534 "$work/run"
socket=$work/run/control.sock
. "$4"  # daemon-lib.sh: fail, start_daemon, launch_daemon, wait_exit, stop_daemon
dd if=/dev/zero of="$work/disk.img" bs=1M count=0 seek=8 2>/dev/null
cat >"$work/config.json" <<JSON
{"main_storage_mib": 160, "lpars": [
  {"name": "A", "origin_mib": 0, "size_mib": 32, "disks": ["$work/disk.img"]},
  {"name": "B", "origin_mib": 32, "size_mib": 16}]}
JSON

moves_and_runs() {  # LPAR TARGET-MIB: MVSTOR, then two more verified rounds at the new origin
  before=$(round "$1")
  "$svp" --socket "$socket" mvstor "$1" "$2" >/dev/null || fail "MVSTOR $1 $2"
  wait_console "$1" "verify ok round=$((before + 2))"
  ! "$svp" --socket "$socket" console "$1" --bytes 1048576 | grep -q FAIL || fail "LPAR $1 printed FAIL"
}

# Every thread of the daemon: "Seccomp: 2" and "NoNewPrivs: 1"; prints the thread count.
check_threads_confined() {
  threads=0
  for task in /proc/"$daemon"/task/*; do
    name=$(cat "$task/comm" 2>/dev/null) || continue  # a thread that just ended
    seccomp=$(sed -n 's/^Seccomp:[[:space:]]*//p' "$task/status" 2>/dev/null) || continue
    nnp=$(sed -n 's/^NoNewPrivs:[[:space:]]*//p' "$task/status" 2>/dev/null) || continue
    [ -n "$seccomp" ] || continue
    [ "$seccomp" = 2 ] || fail "thread $name ($task): Seccomp: $seccomp, expected 2"
    [ "$nnp" = 1 ] || fail "thread $name ($task): NoNewPrivs: $nnp, expected 1"
    threads=$((threads + 1))
  done
  [ "$threads" -ge 5 ] || fail "only $threads threads seen (main, launcher, control, vCPUs expected)"
  echo "ok: $threads threads, every one Seccomp: 2 and NoNewPrivs: 1 ($(cat /proc/"$daemon"/task/*/comm | sort | uniq -c | tr -s ' \n' ' '))"
}

# Every mapping of main storage (the memfd, or the hugetlb file) carries VmFlags "dd".
check_storage_not_dumped() {
  mappings=$(awk '/lparvisor-main-storage/ { want = 1; next }
                  want && /^VmFlags:/ { total++; if ($0 ~ / dd/) dd++; want = 0 }
                  END { printf "%d %d\n", total, dd }' "/proc/$daemon/smaps")
  total=${mappings% *} dd=${mappings#* }
  [ "$total" -ge 3 ] || fail "only $total mappings of main storage found in smaps (arena + 2 LPARs expected)"
  [ "$total" = "$dd" ] || fail "$dd of $total mappings of main storage are marked dd"
  echo "ok: all $total mappings of main storage are marked dd (MADV_DONTDUMP)"
}

echo "== 1. a running daemon: every thread confined, main storage not dumped"
start_daemon -- --config "$work/config.json"
grep -q "sandbox on" "$work/lparvisor.log" || fail "the log does not say the sandbox is on"
wait_console A "DISK .* pass 1 ok"
wait_console B "verify ok round=1"
check_threads_confined
check_storage_not_dumped
"$svp" --socket "$socket" define C --size 16 --origin 64 >/dev/null || fail "define C"
"$svp" --socket "$socket" activate C >/dev/null || fail "activate C"
wait_console C "verify ok round=1"
check_threads_confined
moves_and_runs B 96
stop_daemon
echo "ok: an LPAR activated later runs confined; MVSTOR works; SIGTERM stops it with status 0"

echo "== 2. --user 65534:65534"
start_daemon -- --config "$work/config.json" --user 65534:65534
grep -q "running as uid 65534 gid 65534" "$work/lparvisor.log" || fail "no line saying root was dropped"
for task in /proc/"$daemon"/task/*; do
  uids=$(sed -n 's/^Uid:[[:space:]]*//p' "$task/status" 2>/dev/null) || continue
  [ -z "$uids" ] && continue
  # KVM's NX huge-page recovery worker (Linux 6.x, a kernel "user worker" listed among the
  # process's threads) keeps the credentials of the ioctl that created the VM, before the drop.
  # It runs only kernel code: no user code of lparvisor can run on it.
  case $(cat "$task/comm" 2>/dev/null) in kvm-nx-lpage-re*) continue ;; esac
  for uid in $uids; do
    [ "$uid" = 65534 ] || fail "thread $(cat "$task/comm"): Uid: $uids (expected 65534 everywhere)"
  done
done
echo "ok: every thread runs as uid 65534 (real, effective, saved, fs)"
wait_console B "verify ok round=1"
moves_and_runs B 96
"$svp" --socket "$socket" define C --size 16 --origin 64 >/dev/null || fail "define C as uid 65534"
"$svp" --socket "$socket" activate C >/dev/null || fail "activate C as uid 65534"
wait_console C "verify ok round=1"
check_threads_confined
stop_daemon
[ ! -e "$socket" ] || fail "the socket was not removed at shutdown as uid 65534"
echo "ok: as uid 65534 the LPARs run, MVSTOR moves one, a new LPAR activates, the socket is removed"

echo "== 3. a device worker makes a forbidden system call"
# It dies as soon as the firmware drives its disk, perhaps before the socket answers.
launch_daemon LPARVISOR_FAULTS=device.forbidden_syscall -- --config "$work/config.json"
wait_exit 120
[ "$status" = 159 ] || fail "exit status $status (expected 159: 128 + SIGSYS)"
# Whichever device worker its queue wakes first (A's disk, or an LPAR's rng) makes the call.
grep -Eq "sandbox: thread 'virtio-(blk|rng)[0-9]' \(device worker thread\) made the forbidden system call socket" \
  "$work/lparvisor.log" || fail "the log does not name the thread, its class and the call"
echo "ok: status 159; $(grep 'made the forbidden system call' "$work/lparvisor.log")"

echo "== 4. --no-sandbox"
start_daemon -- --config "$work/config.json" --no-sandbox
grep -q "sandbox OFF (--no-sandbox)" "$work/lparvisor.log" || fail "the log does not say the sandbox is off"
seccomp=$(sed -n 's/^Seccomp:[[:space:]]*//p' "/proc/$daemon/status")
[ "$seccomp" = 0 ] || fail "Seccomp: $seccomp with --no-sandbox (expected 0)"
stop_daemon
echo "ok: no filter, and the log says so"
echo "PASS: sandbox"
