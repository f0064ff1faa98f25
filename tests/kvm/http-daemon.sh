#!/bin/sh
# The daemon's half of the HTTP listener's test (tests/kvm/http_frame.py runs the browser's half
# on the host; this half runs there too, or inside the nested-KVM harness, whose port forward
# brings the host's browser to it). Real KVM, firmware LPARs that verify their storage:
#  1. starts lparvisor with --http LISTEN (Fig. 3A: LPAR1 at 0, 128 MiB, which may grow to 192;
#     LPAR2 at 128 MiB, 256 MiB) and prints the token the daemon wrote (HTTP-TOKEN=...), then
#     HTTP-READY;
#  2. once a page holds the event stream open (/metrics: lparvisor_http_event_streams), moves
#     LPAR2 to 192 MiB with `svp mvstor` and expands LPAR1 by 64 MiB with `svp expand` (the
#     patent's Fig. 3A -> 4A), then prints SVP-DONE;
#  3. waits until the page's own MVSTOR has moved LPAR2 to 252 MiB, then checks that both LPARs
#     verified their storage twice more and printed no FAIL line, prints GUEST-CHECKS-OK, and
#     once the page has closed its event stream, stops the daemon with SIGTERM (an orderly exit;
#     the token file goes).
#   http-daemon.sh LPARVISOR SVP FIRMWARE DAEMON-LIB LISTEN     (LISTEN: ADDR:PORT for --http)
set -eu
lparvisor=$1 svp=$2 firmware=$3 listen=$5
work=$(mktemp -d /tmp/lparvisor-http-XXXXXX)
socket=$work/control.sock
. "$4"  # daemon-lib.sh: fail, start_daemon, stop_daemon, wait_console, round, no_fail_lines
port=${listen##*:}

cat >"$work/config.json" <<'JSON'
{"main_storage_mib": 509, "lpars": [
  {"name": "LPAR1", "origin_mib": 0, "size_mib": 128, "max_size_mib": 192},
  {"name": "LPAR2", "origin_mib": 128, "size_mib": 256, "vcpus": 2}]}
JSON

http_get() {  # PATH: the response to GET PATH from the daemon's listener (headers included)
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
      "http://127.0.0.1:$port$1" 2>/dev/null
  else  # the nested harness's guest: busybox
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$1" | nc 127.0.0.1 "$port" 2>/dev/null
  fi
}

lpar2_at() {  # MIB: whether LPAR2's origin is MIB (lpar.list as JSON, keys sorted, squeezed)
  "$svp" --socket "$socket" lpars --json | tr -d ' \n' | grep -q "\"name\":\"LPAR2\",\"origin_mib\":$1,"
}

start_daemon -- --config "$work/config.json" --http "$listen" --http-token-file "$work/http.token"
[ "$(stat -c %a "$work/http.token")" = 600 ] || fail "http.token is not mode 0600"
wait_console LPAR1 "verify ok round=1"
wait_console LPAR2 "verify ok round=1"
echo "HTTP-TOKEN=$(cat "$work/http.token")"
echo "HTTP-READY"

# The browser's page holds the event stream (one generous deadline: the host starts Chromium).
for _ in $(seq 1 6000); do
  http_get /metrics | grep -q '^lparvisor_http_event_streams [1-9]' && break
  kill -0 "$daemon" 2>/dev/null || fail "lparvisor exited while waiting for the page"
  sleep 0.1
done
http_get /metrics | grep -q '^lparvisor_http_event_streams [1-9]' ||
  fail "no page opened the event stream within 600 s"

lpar2_before=$(round LPAR2)
lpar1_before=$(round LPAR1)
# (svp's progress lines go to a file: it draws them even when stderr is no terminal)
"$svp" --socket "$socket" mvstor LPAR2 192 >/dev/null 2>"$work/svp.err" ||
  { cat "$work/svp.err"; fail "svp mvstor LPAR2 192"; }
"$svp" --socket "$socket" expand LPAR1 64 >/dev/null 2>"$work/svp.err" ||
  { cat "$work/svp.err"; fail "svp expand LPAR1 64"; }
echo "SVP-DONE"

for _ in $(seq 1 9000); do
  lpar2_at 252 && break
  kill -0 "$daemon" 2>/dev/null || fail "lparvisor exited while waiting for the page's MVSTOR"
  sleep 0.1
done
lpar2_at 252 || fail "the page's MVSTOR never moved LPAR2 to 252 MiB (900 s)"
wait_console LPAR2 "verify ok round=$((lpar2_before + 2))"
wait_console LPAR1 "verify ok round=$((lpar1_before + 2))"
no_fail_lines LPAR1
no_fail_lines LPAR2
echo "GUEST-CHECKS-OK"
# The browser's half scrapes /metrics once more, then closes the page: then the daemon may go.
for _ in $(seq 1 6000); do
  http_get /metrics | grep -q '^lparvisor_http_event_streams 0' && break
  sleep 0.1
done
http_get /metrics | grep -q '^lparvisor_http_event_streams 0' ||
  fail "the page still holds its event stream after 600 s"
stop_daemon
[ ! -e "$work/http.token" ] || fail "the token file is still there after an orderly exit"
echo "PASS"
