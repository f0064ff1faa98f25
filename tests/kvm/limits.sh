#!/bin/sh
# Resource limits end to end under real KVM (docs/threat-model.md, "Resource limits"):
#  1. a guest that writes its console without end (the test-only fault point
#     firmware.console_flood) leaves NAME.log and NAME.log.1 at --console-max-bytes, and the
#     daemon's own memory (RssAnon) flat, while it keeps answering;
#  2. two LPARs on one writable disk image: the second is refused at activation, naming both.
#   limits.sh LPARVISOR SVP FIRMWARE DAEMON-LIB
set -eu
lparvisor=$1 svp=$2 firmware=$3
work=$(mktemp -d /tmp/lparvisor-limits-XXXXXX)
socket=$work/control.sock
. "$4"  # daemon-lib.sh: fail, start_daemon, stop_daemon
cap=16384
rss_anon_kib() { sed -n 's/^RssAnon:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$daemon/status"; }
last_flood_line() { sed -n 's/^flood \([0-9]*\) .*/\1/p' "$work/F.log" | tail -1; }

echo "== 1. a guest floods its console; --console-max-bytes $cap"
cat >"$work/flood.json" <<JSON
{"main_storage_mib": 64, "lpars": [{"name": "F", "origin_mib": 0, "size_mib": 16}]}
JSON
start_daemon LPARVISOR_FAULTS=firmware.console_flood -- --config "$work/flood.json" \
  --console-dir "$work" --console-max-bytes "$cap"
# Lines average about 616 bytes (fifteen of 110, one of 8 KiB). By line 1800 (1.1 MB) the
# console's 1 MiB history ring is full and F.log has rotated many times: the steady state.
wait_line() {  # N: until the flood reaches line N
  for _ in $(seq 1 6000); do
    now=$(last_flood_line)
    [ -n "$now" ] && [ "$now" -ge "$1" ] && return 0
    sleep 0.1
  done
  fail "the flood did not reach line $1 (at ${now:-?})"
}
wait_line 1800
start_line=$(last_flood_line)
rss_before=$(rss_anon_kib)
# Then about 740 KB more (forty-odd rotations at the cap): the daemon must not grow with it.
target=$((start_line + 1200))
wait_line "$target"
rss_after=$(rss_anon_kib)
for file in F.log F.log.1; do
  size=$(stat -c %s "$work/$file")
  [ "$size" -le "$cap" ] || fail "$file is $size bytes, over the cap of $cap"
done
[ ! -e "$work/F.log.2" ] || fail "more than one old generation kept"
growth=$((rss_after - rss_before))
[ "$growth" -le 256 ] || fail "the daemon's RssAnon grew by $growth KiB ($rss_before -> $rss_after) while the guest wrote lines $start_line-$now"
"$svp" --socket "$socket" lpars >/dev/null || fail "svp lpars did not answer during the flood"
echo "ok: the guest wrote lines $start_line-$now (about $(((now - start_line) * 616 / 1024)) KiB); F.log $(stat -c %s "$work/F.log") and F.log.1 $(stat -c %s "$work/F.log.1") bytes (cap $cap); RssAnon $rss_before -> $rss_after KiB"
stop_daemon

echo "== 2. two LPARs on one writable disk image"
dd if=/dev/zero of="$work/shared.img" bs=1M count=0 seek=8 2>/dev/null
cat >"$work/disks.json" <<JSON
{"main_storage_mib": 64, "lpars": [
  {"name": "A", "origin_mib": 0, "size_mib": 16, "disks": ["$work/shared.img"]},
  {"name": "B", "origin_mib": 16, "size_mib": 16, "disks": ["$work/shared.img"]}]}
JSON
status=0
"$lparvisor" --socket "$socket" --config "$work/disks.json" --firmware "$firmware" \
  >"$work/lparvisor.log" 2>&1 || status=$?
[ "$status" != 0 ] || fail "the daemon started with two LPARs on one writable image"
grep -q "B: disk $work/shared.img is already in use by LPAR A" "$work/lparvisor.log" ||
  fail "the refusal does not name both LPARs and the image"
echo "ok: refused: $(grep 'already in use' "$work/lparvisor.log" | sed 's/^.* error //')"
echo "PASS: limits"
