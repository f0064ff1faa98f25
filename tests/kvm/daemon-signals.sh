#!/bin/sh
# The daemon's signals, end to end under real KVM:
#  1. SIGTERM with nothing running: lparvisor stops its LPARs, removes its socket, exits 0.
#  2. SIGTERM while a storage operation cannot finish (an MVSTOR held for good at its populate
#     step by LPARVISOR_FAULTS=mvstor.populate:hold): the first signal refuses new requests and
#     waits for the operation; a second SIGTERM exits at once (status 143), saying so.
#   daemon-signals.sh LPARVISOR SVP FIRMWARE DAEMON-LIB
set -eu
lparvisor=$1 svp=$2 firmware=$3
work=$(mktemp -d /tmp/lparvisor-signals-XXXXXX)
socket=$work/control.sock
. "$4"  # daemon-lib.sh: fail, start_daemon, wait_exit
cat >"$work/config.json" <<JSON
{"main_storage_mib": 96, "lpars": [{"name": "A", "origin_mib": 0, "size_mib": 16}]}
JSON

echo "== 1. SIGTERM with nothing running"
start_daemon -- --config "$work/config.json"
kill -TERM "$daemon"
wait_exit 60
[ "$status" = 0 ] || fail "exit status after SIGTERM: $status (expected 0)"
[ ! -e "$socket" ] || fail "the socket is still there"
grep -q "shutting down (a second signal exits at once)" "$work/lparvisor.log" || fail "no shutdown line"
echo "ok: exited 0, socket removed"

echo "== 2. SIGTERM while an operation cannot finish, then a second SIGTERM"
start_daemon LPARVISOR_FAULTS=mvstor.populate:hold -- --config "$work/config.json"
grep -q "fault injection armed" "$work/lparvisor.log" || fail "the daemon did not say fault injection is armed"
"$svp" --socket "$socket" mvstor A 32 >"$work/mvstor.out" 2>&1 &
for _ in $(seq 1 600); do
  "$svp" --socket "$socket" --json lpars 2>/dev/null | grep -q '"relocating"' && break
  sleep 0.1
done
"$svp" --socket "$socket" --json lpars | grep -q '"relocating"' || fail "the MVSTOR never started"
kill -TERM "$daemon"
grep_wait() { for _ in $(seq 1 300); do grep -q "$1" "$work/lparvisor.log" && return 0; sleep 0.1; done; return 1; }
grep_wait "shutdown requested" || fail "the first SIGTERM was not seen"
kill -0 "$daemon" 2>/dev/null || fail "the first SIGTERM did not wait for the running operation"
kill -TERM "$daemon"
wait_exit 30
[ "$status" = 143 ] || fail "exit status after the second SIGTERM: $status (expected 143 at once)"
grep -q "second signal 15: exiting now" "$work/lparvisor.log" || fail "no line for the second signal"
echo "ok: the second SIGTERM exited at once (143)"
echo "PASS: daemon signals"
