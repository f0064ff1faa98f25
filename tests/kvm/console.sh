#!/bin/sh
# An operator at a Linux LPAR's console, end to end under real KVM with the Debian guest of
# scripts/build-linux-guest.sh (its debug shell, LPV_SHELL=1):
#  1. `svp console --attach` types `echo hello-N` into the guest's shell and reads hello-N back
#     from the guest; a second attach is refused the input, is told who holds it, still reads the
#     same output, and what it types never reaches the guest;
#  2. `reboot -f` typed into the shell: the LPAR restarts at the same origin (on_reboot restart:
#     lpar.guest_event, lpar.restart with cause "guest reboot") and its workload runs again; the
#     attached console says so and shows the new boot;
#  3. Ctrl-] detaches; `svp reset` re-IPLs the LPAR (lpar.restart, cause "operator reset").
#   console.sh LPARVISOR SVP FIRMWARE DAEMON-LIB   ($LPARVISOR_LINUX_GUEST_ENV: the guest image)
set -eu
lparvisor=$1 svp=$2 firmware=$3
work=$(mktemp -d /tmp/lparvisor-console-XXXXXX)
socket=$work/control.sock
. "$4"  # daemon-lib.sh: fail, start_daemon, stop_daemon

if [ -z "${LPARVISOR_LINUX_GUEST_ENV:-}" ] || [ ! -f "$LPARVISOR_LINUX_GUEST_ENV" ]; then
  echo "*** SKIPPED: no Linux guest image (scripts/build-linux-guest.sh builds it) ***"
  exit 77
fi
if [ -d /sys/module/kvm_pvm ]; then
  echo "*** SKIPPED: this /dev/kvm is PVM, which cannot boot Linux to its shell (docs/kvm-notes.md);"
  echo "*** the nested twin (nested_test_console) runs this test under nested KVM instead ***"
  exit 77
fi
# shellcheck disable=SC1090
. "$LPARVISOR_LINUX_GUEST_ENV"
kernel=${LPARVISOR_LINUX_BZIMAGE:-$LINUX_BZIMAGE}
initrd=${LPARVISOR_LINUX_INITRD:-$LINUX_INITRD}
cat >"$work/config.json" <<JSON
{"main_storage_mib": 448, "lpars": [
  {"name": "LINUX", "origin_mib": 64, "size_mib": 256, "kernel": "$kernel", "initrd": "$initrd",
   "cmdline": "$LINUX_CMDLINE LPV_MIB=16 LPV_DISK=none LPV_SHELL=1"}]}
JSON

start_daemon -- --config "$work/config.json"
"$svp" --socket "$socket" watch --json >"$work/events" 2>/dev/null &
watcher=$!

console() { "$svp" --socket "$socket" console LINUX --bytes 1048576; }
# What a failure shows besides the daemon's log: the guest's console and the events.
failed() {
  echo "--- LINUX's console (its last 3000 bytes):" >&2
  "$svp" --socket "$socket" console LINUX --bytes 3000 >&2 2>/dev/null || true
  echo "--- events:" >&2
  tail -20 "$work/events" >&2 || true
  fail "$@"
}
# Waits until COMMAND's output has a line matching the extended regular expression: at most
# 10 minutes, by the clock (a nested boot is slow; the bound only catches a hang).
wait_for() {  # WHAT REGEX COMMAND...
  what=$1 regex=$2
  shift 2
  deadline=$(($(date +%s) + 600))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    "$@" 2>/dev/null | tr -d '\r' | grep -Eq "$regex" && return 0
    kill -0 "$daemon" 2>/dev/null || failed "lparvisor exited while waiting for $what"
    sleep 0.2
  done
  failed "no $what within 10 minutes"
}

wait_for "shell prompt" "LPARVISOR-GUEST: shell" console
echo "ok: the guest's workload ran and its shell is up"

echo "== 1. attach, type, read back; a second attach reads only"
mkfifo "$work/keys1" "$work/keys2"
"$svp" --socket "$socket" console LINUX --attach <"$work/keys1" >"$work/out1" 2>"$work/err1" &
first=$!
exec 3>"$work/keys1"
wait_for "first attach" "attached to LINUX's console" cat "$work/err1"
"$svp" --socket "$socket" console LINUX --attach <"$work/keys2" >"$work/out2" 2>"$work/err2" &
second=$!
exec 4>"$work/keys2"
wait_for "second attach refused the input" "input is held by client [0-9]+ .*read-only" cat "$work/err2"
n=${RANDOM:-$$}
printf 'echo hello-%s\n' "$n" >&3
wait_for "hello-$n from the guest (first attach)" "^hello-$n\$" cat "$work/out1"
wait_for "hello-$n from the guest (second attach)" "^hello-$n\$" cat "$work/out2"
echo "ok: typed 'echo hello-$n' through the first attach; both read hello-$n back from the guest"
printf 'echo intruder-%s\n' "$n" >&4
wait_for "the second attach told its keys are dropped" "what is typed is dropped" cat "$work/err2"
printf 'echo marker-%s\n' "$n" >&3
wait_for "marker-$n" "^marker-$n\$" cat "$work/out1"
if tr -d '\r' <"$work/out1" | grep -q "intruder-$n"; then
  fail "what the read-only attach typed reached the guest"
fi
echo "ok: the second attach's keys never reached the guest"

echo "== 2. reboot -f in the guest: on_reboot restart"
printf 'reboot -f\n' >&3
# (Event lines are JSON with their keys in order: cause, event, lpar, monotonic_us, origin_mib.)
wait_for "lpar.restart after the guest's reboot" \
  '"cause":"guest reboot","event":"lpar.restart",.*"origin_mib":64' cat "$work/events"
grep -q '"action":"restart","event":"lpar.guest_event","guest_event":"reboot"' "$work/events" ||
  fail "no lpar.guest_event for the reboot: $(cat "$work/events")"
wait_for "the workload of the new IPL" "LPARVISOR-GUEST: workload exit 0" console
"$svp" --socket "$socket" --json lpars | tr -d ' \n' |
  grep -q '"name":"LINUX","origin_mib":64,.*"state":"running"' ||
  fail "after the restart: $("$svp" --socket "$socket" lpars)"
wait_for "the attached console saying the LPAR re-IPLed" "LINUX was re-IPLed" cat "$work/err1"
wait_for "the new boot on the attached console" "LPARVISOR-GUEST: init started" cat "$work/out1"
echo "ok: the guest rebooted, came back at 64 MiB, ran its workload again; the attach followed"

echo "== 3. detach, then svp reset"
printf '\035' >&3
for _ in $(seq 1 300); do kill -0 "$first" 2>/dev/null || break; sleep 0.1; done
kill -0 "$first" 2>/dev/null && fail "Ctrl-] did not detach the first svp"
wait "$first" || fail "the first svp exited with $?"
grep -q "detached from LINUX's console" "$work/err1" || fail "no detach message: $(cat "$work/err1")"
"$svp" --socket "$socket" reset LINUX >/dev/null || fail "svp reset"
wait_for "lpar.restart after svp reset" '"cause":"operator reset","event":"lpar.restart"' \
  cat "$work/events"
echo "ok: Ctrl-] detached; svp reset re-IPLed the LPAR (lpar.restart, operator reset)"

kill "$second" "$watcher" 2>/dev/null || true
exec 3>&- 4>&-
stop_daemon
echo "ok: console attach, guest reboot and reset"
