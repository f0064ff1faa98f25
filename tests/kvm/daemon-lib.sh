# Shared by the daemon's shell tests (tests/kvm/*.sh), sourced after they set $lparvisor, $svp,
# $firmware, $work and $socket. The daemon's output goes to $work/lparvisor.log; $daemon is its
# pid while it runs. POSIX sh, like the tests.

daemon=
cleanup() { [ -n "$daemon" ] && kill -KILL "$daemon" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  echo "--- lparvisor log (its last 100 lines):" >&2
  tail -100 "$work/lparvisor.log" >&2 2>/dev/null
  exit 1
}

launch_daemon() {  # [ENV=VALUE...] -- [OPTIONS...]: starts lparvisor in the background
  envs=""
  while [ "$1" != "--" ]; do envs="$envs $1"; shift; done
  shift
  # shellcheck disable=SC2086
  env $envs "$lparvisor" --socket "$socket" --firmware "$firmware" "$@" >"$work/lparvisor.log" 2>&1 &
  daemon=$!
}

wait_answer() {  # until the daemon answers a ping (60 s), or fails if it exits first
  for _ in $(seq 1 600); do
    "$svp" --socket "$socket" ping >/dev/null 2>&1 && return 0
    kill -0 "$daemon" 2>/dev/null || fail "lparvisor exited while starting"
    sleep 0.1
  done
  fail "lparvisor did not answer on $socket within 60 s"
}

start_daemon() {  # [ENV=VALUE...] -- [OPTIONS...]: starts lparvisor and waits until it answers
  launch_daemon "$@"
  wait_answer
}

wait_exit() {  # SECONDS: waits for the daemon to exit; sets $status (or "timeout")
  # Polled with `kill -0` from this shell (not a subshell, which could not reap the child).
  status=timeout
  for _ in $(seq 1 $(($1 * 10))); do
    if ! kill -0 "$daemon" 2>/dev/null || ! grep -q . "/proc/$daemon/status" 2>/dev/null ||
       grep -q '^State:.*zombie' "/proc/$daemon/status" 2>/dev/null; then
      status=0; wait "$daemon" || status=$?
      daemon=; return 0
    fi
    sleep 0.1
  done
}

stop_daemon() {  # SIGTERM, and an orderly exit (status 0) within 120 s
  kill -TERM "$daemon"
  wait_exit 120
  [ "$status" = 0 ] || fail "exit status after SIGTERM: $status (expected 0)"
}

wait_console() {  # LPAR TEXT: waits until the LPAR's console shows TEXT
  for _ in $(seq 1 1200); do
    "$svp" --socket "$socket" console "$1" --bytes 1048576 2>/dev/null | grep -q "$2" && return 0
    sleep 0.1
  done
  fail "LPAR $1 never printed '$2'"
}

round() {  # LPAR: the last round of storage verification the firmware finished
  "$svp" --socket "$socket" console "$1" --bytes 1048576 |
    sed -n 's/.*verify ok round=\([0-9]*\).*/\1/p' | sort -n | tail -1 | grep . || echo 0
}

no_fail_lines() {  # LPAR: fails if the firmware printed a FAIL line since its IPL
  ! "$svp" --socket "$socket" console "$1" --bytes 1048576 | grep FAIL ||
    fail "LPAR $1 printed FAIL (above)"
}
