# shellcheck shell=bash
# Shell functions shared by the benchmark scripts (compare.sh,
# bench-original.sh, bench-cluster.sh); sourced, not run.

stop_pid() { # stop_pid PID: SIGTERM, up to 10 s, then SIGKILL
  local pid=$1
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

wait_port() { # wait_port PORT PID: until 127.0.0.1:PORT accepts (10 s), unless PID exits
  local port=$1 pid=$2
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

value_of() { # value_of KEY LINE: the value of KEY=value in a RESULT line
  sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"
}
