#!/usr/bin/env bash
# The original Easy MQTT's load scenario, scaled to this machine, on our two
# storage backends one after the other:
#
#   SUBSCRIBERS persistent subscribers (clean session 0, QoS 1) of one topic,
#   300 publishers sending one QoS 1 message each
#   (19,500 x 300 = 5.85M deliveries by default)
#
#   1. memory   the broker alone (in-memory storage)
#   2. kvrocks  the broker on a redis-server (Kvrocks' protocol) on a free
#               loopback port: every persistent session, subscription,
#               queued message and in-flight window is stored there
#
#   scripts/bench-original.sh
#
# Prints, per backend: deliveries per second (release of the publishers to
# the last delivery), time to connect and subscribe every client, the
# broker's RSS when all were connected and its maximum, its CPU, loss and
# duplicates; the redis-server's RSS for the kvrocks round.
#
# Environment:
#   SUBSCRIBERS  persistent subscribers; 19,500 keeps the generator's two
#                processes and the broker under the limit of 20,000 open
#                files per process                                   [19500]
#   PUBLISHERS   publishers, one message each                          [300]
#   BACKENDS     rounds, in order                         [memory kvrocks]
#   TIMEOUT      limit of each round's publish/deliver phase, seconds  [300]
#   INFLIGHT     outbound QoS 1 window per client (max-inflight)      [100]
#   OUT          configs, logs and RESULT lines   [<target dir>/bench-original]
#
# Needs redis-server (Debian package redis-server) for the kvrocks round.
# Loopback only; each round is bounded (bench --timeout, and `timeout`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

SUBSCRIBERS=${SUBSCRIBERS:-19500}
PUBLISHERS=${PUBLISHERS:-300}
BACKENDS=${BACKENDS:-"memory kvrocks"}
TIMEOUT=${TIMEOUT:-300}
INFLIGHT=${INFLIGHT:-100}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET/bench-original}
BENCH=$TARGET/release/easy-mqtt-bench
OURS=${OURS:-$TARGET/release/easy-mqtt}

ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt 20000 ]; then
  echo "warning: open files limited to $(ulimit -n); $SUBSCRIBERS subscribers need about 20,000" >&2
fi
for backend in $BACKENDS; do
  case "$backend" in
    memory) ;;
    kvrocks)
      command -v redis-server >/dev/null 2>&1 || {
        echo "error: redis-server is needed for the kvrocks round (apt-get install redis-server)" >&2
        exit 1
      }
      ;;
    *) echo "unknown backend: $backend (memory, kvrocks)" >&2; exit 2 ;;
  esac
done

echo "building the bench tool and the broker (release)" >&2
cargo build --release -q -p easy-mqtt-bench -p easy-mqtt-server
mkdir -p "$OUT"
: >"$OUT/results.txt"

# --- processes ---------------------------------------------------------------
BROKER_PID=""
REDIS_PID=""
cleanup() {
  stop_pid "$BROKER_PID"
  BROKER_PID=""
  stop_pid "$REDIS_PID"
  REDIS_PID=""
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM


rss_kb() { # rss_kb PID: VmRSS in KiB
  sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$1/status" 2>/dev/null || echo 0
}


start_redis() {
  local port
  port=$("$BENCH" free-port)
  mkdir -p "$OUT/redis"
  rm -f "$OUT/redis/"*.rdb
  # In memory, no snapshots, no AOF: the broker's writes are what is
  # measured, not the disk.
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --protected-mode no --dir "$OUT/redis" --logfile "$OUT/redis/redis.log" &
  REDIS_PID=$!
  if ! wait_port "$port" "$REDIS_PID"; then
    echo "error: redis-server did not start on port $port; see $OUT/redis/redis.log" >&2
    exit 1
  fi
  REDIS_PORT=$port
}

start_broker() { # start_broker BACKEND PORT
  local backend=$1 port=$2 conf="$OUT/easy-mqtt.$1.yml"
  cat >"$conf" <<EOF
mqtt:
  server:
    host: 127.0.0.1
    tcp-port: $port
    websocket-port: 0
    api-port: 0
    log-level: warn
    max-connections: 100000
    max-inflight: $INFLIGHT
    max-queued-messages: 10000000
EOF
  if [ "$backend" = kvrocks ]; then
    cat >>"$conf" <<EOF
  kvrocks:
    cluster:
      nodes: 127.0.0.1:$REDIS_PORT
EOF
  fi
  "$OURS" -c "$conf" >"$OUT/broker.$backend.log" 2>&1 &
  BROKER_PID=$!
  if ! wait_port "$port" "$BROKER_PID"; then
    echo "error: the broker did not start on port $port; its log:" >&2
    tail -20 "$OUT/broker.$backend.log" >&2
    exit 1
  fi
  sleep 1 # the probe connection closes before the baseline sample
}

# --- rounds ------------------------------------------------------------------
echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, $(uname -sr); load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/machine.txt"
echo "easy-mqtt at $(git rev-parse --short HEAD 2>/dev/null || echo '?') ($(git status --porcelain 2>/dev/null | grep -c . || true) files changed in the work tree)" | tee -a "$OUT/machine.txt"
declare -A SUMMARY
for backend in $BACKENDS; do
  REDIS_PORT=""
  [ "$backend" = kvrocks ] && start_redis
  port=$("$BENCH" free-port)
  start_broker "$backend" "$port"
  args="fanout --qos 1 --clean-session false --subscribers $SUBSCRIBERS --publishers $PUBLISHERS --messages 1 --processes 2 --timeout $TIMEOUT --setup-timeout 240"
  echo "[$backend] easy-mqtt-bench $args -p $port --broker-pid $BROKER_PID" | tee -a "$OUT/commands.txt" >&2
  status=0
  start=$(date +%s)
  # shellcheck disable=SC2086
  result=$(timeout $((TIMEOUT + 300)) "$BENCH" $args --quiet -p "$port" --broker-pid "$BROKER_PID" \
    2>"$OUT/bench.$backend.log") || status=$?
  result=$(grep '^RESULT ' <<<"$result" | tail -1 || true)
  if [ -n "$REDIS_PID" ]; then
    # The journal of the last acknowledgements is written lazily: wait
    # until Redis received no more than the idle cluster's own traffic
    # (the inbox poll, 20 XRANGEs/s, and the heartbeat's ~10 commands/s:
    # at most ~20 per half second, so 200 is a clear line; a journal
    # drains at 100,000s per second) for 2 s, then read the broker's CPU
    # and the held ids left (queued or in flight) over all sessions.
    # Bounded: gives up after TIMEOUT seconds.
    t0=$(date +%s.%N); last=-1; still=0; polls=0
    while [ $still -lt 4 ] && [ $polls -lt $((TIMEOUT * 2)) ]; do
      polls=$((polls + 1))
      now=$(redis-cli -p "$REDIS_PORT" info stats | sed -n 's/^total_commands_processed:\([0-9]*\).*/\1/p')
      if [ "${now:-0}" -le $((last + 200)) ]; then still=$((still + 1)); else still=0; fi
      last=${now:-0}
      sleep 0.5
    done
    drain=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a - 2 }')
    cpu=$(awk '{ printf "%.1f", ($14 + $15) / 100 }' "/proc/$BROKER_PID/stat" 2>/dev/null || echo '?')
    held=$(redis-cli -p "$REDIS_PORT" --scan --pattern '*}:h' | sed 's/^/SCARD /' |
      redis-cli -p "$REDIS_PORT" | awk '{ s += $1 } END { print s + 0 }')
    echo "[$backend] journal drained $drain s after the bench; broker cpu then ${cpu} s; redis commands $last; held ids left $held" |
      tee -a "$OUT/results.txt" >&2
    redis-cli -p "$REDIS_PORT" info commandstats >"$OUT/redis/commandstats.txt" 2>/dev/null || true
  fi
  redis_rss=""
  if [ -n "$REDIS_PID" ]; then
    redis_rss=$(rss_kb "$REDIS_PID")
    redis-cli -p "$REDIS_PORT" info memory 2>/dev/null | grep -E '^used_memory_human' >>"$OUT/redis/memory.txt" || true
  fi
  cleanup
  echo "[$backend] exit=$status in $(($(date +%s) - start)) s: ${result:-no RESULT, see $OUT/bench.$backend.log}" |
    tee -a "$OUT/results.txt" >&2
  [ "$status" -eq 0 ] || tail -5 "$OUT/bench.$backend.log" >&2 || true
  SUMMARY[$backend]="$result redis_rss_kb=${redis_rss:-0} exit=$status"
done

# --- summary -----------------------------------------------------------------
mib() { awk -v k="${1:-0}" 'BEGIN { printf "%.0f", k / 1024 }'; }
echo
printf '%-8s %12s %10s %10s %7s %5s %9s %13s %13s %13s %11s %5s\n' \
  backend deliveries/s received secs lost dup connect_s rss_ready_MiB rss_max_MiB redis_rss_MiB broker_cpu exit
for backend in $BACKENDS; do
  line=${SUMMARY[$backend]}
  printf '%-8s %12s %10s %10s %7s %5s %9s %13s %13s %13s %11s %5s\n' "$backend" \
    "$(value_of rate "$line")" "$(value_of received "$line")" "$(value_of secs "$line")" \
    "$(value_of lost "$line")" "$(value_of dup "$line")" "$(value_of connect_secs "$line")" \
    "$(mib "$(value_of broker_rss_ready_kb "$line")")" "$(mib "$(value_of broker_rss_max_kb "$line")")" \
    "$(mib "$(value_of redis_rss_kb "$line")")" "$(value_of broker_cpu_s "$line")" "$(value_of exit "$line")"
done
echo "RESULT lines: $OUT/results.txt; commands: $OUT/commands.txt"
