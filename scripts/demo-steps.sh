#!/bin/sh
# The Fig. 3A demo itself (POSIX sh: it also runs inside the nested-KVM harness's busybox).
#   demo-steps.sh LPARVISOR SVP FIRMWARE
# Starts lparvisor with the patent's Fig. 3A, shows the table, waits until both firmware guests
# have verified their storage, runs `svp mvstor LPAR2 192`, shows the table again (Fig. 4A) and
# both guests' latest verification lines, then stops the daemon with SIGTERM.
set -eu
lparvisor=$1 svp=$2 firmware=$3
work=$(mktemp -d /tmp/lparvisor-demo.XXXXXX)
socket=$work/control.sock
export LPARVISOR_SOCKET=$socket

say() { printf '\n=== %s\n' "$*"; }
latest_round() {  # highest "verify ok round=N" in an LPAR's console, 0 if none yet
  "$svp" console "$1" --bytes 65536 | sed -n 's/.*verify ok round=\([0-9]*\).*/\1/p' | sort -n | tail -1 | grep . || echo 0
}
expect_row() {  # TABLE LPAR ORIGIN SIZE GAP: the Fig. 3A/4A row must read exactly so
  echo "$1" | awk -v n="$2" -v o="$3" -v s="$4" -v g="$5" \
    '$1 == n { found = 1; if ($2 != o || $3 != s || $4 != g) bad = 1 } END { exit !(found && !bad) }' ||
    { echo "demo: expected $2 origin $3 size $4 gap $5 MiB" >&2; exit 1; }
}
wait_rounds() {  # LPAR ROUNDS-MORE TIMEOUT-S
  start=$(latest_round "$1"); want=$((start + $2)); waited=0
  while [ "$(latest_round "$1")" -lt "$want" ]; do
    sleep 1; waited=$((waited + 1))
    if [ "$waited" -ge "$3" ]; then echo "demo: $1 did not reach round $want in $3 s" >&2; return 1; fi
  done
}

say "lparvisor with no configuration: the patent's Fig. 3A (log in $work/lparvisor.log)"
"$lparvisor" --socket "$socket" --console-dir "$work" --firmware "$firmware" >"$work/lparvisor.log" 2>&1 &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null || true' EXIT
i=0
until "$svp" ping >/dev/null 2>&1; do
  sleep 0.2; i=$((i + 1))
  if ! kill -0 $daemon 2>/dev/null || [ $i -ge 300 ]; then cat "$work/lparvisor.log"; exit 1; fi
done

say "svp lpars   (Fig. 3A)"
table=$("$svp" lpars); echo "$table"
expect_row "$table" LPAR1 0 128 0
expect_row "$table" LPAR2 128 256 125
say "waiting for both guests to verify their storage twice"
wait_rounds LPAR1 2 600
wait_rounds LPAR2 2 600
for l in LPAR1 LPAR2; do "$svp" console $l | grep 'verify ok' | tail -1 | sed "s/^/$l: /"; done

say "a refused request says why, exits 1 and changes nothing: svp mvstor LPAR2 100"
set +e; "$svp" mvstor LPAR2 100 2>"$work/refused"; rc=$?; set -e
cat "$work/refused"
if [ $rc -ne 1 ] || ! grep -q "overlaps LPAR1" "$work/refused"; then
  echo "demo: expected exit 1 naming LPAR1, got exit $rc" >&2; exit 1
fi
table=$("$svp" lpars)
expect_row "$table" LPAR2 128 256 125

say "svp mvstor LPAR2 192   (stop-and-copy, the patent's steps 201-211)"
"$svp" mvstor LPAR2 192
say "svp lpars   (Fig. 4A)"
table=$("$svp" lpars); echo "$table"
expect_row "$table" LPAR1 0 128 64
expect_row "$table" LPAR2 192 256 61

say "both guests verify again after the move (latest lines)"
wait_rounds LPAR2 2 600
wait_rounds LPAR1 1 600
for l in LPAR1 LPAR2; do "$svp" console $l | grep 'verify ok' | tail -1 | sed "s/^/$l: /"; done
if grep -h FAIL "$work"/LPAR*.log; then echo "demo: a guest reported FAIL" >&2; exit 1; fi
echo "no FAIL line in either guest's console"

say "stopping lparvisor (SIGTERM)"
kill -TERM $daemon
wait $daemon
trap - EXIT
tail -n 4 "$work/lparvisor.log"
[ ! -e "$socket" ] && echo "socket removed; demo done"
