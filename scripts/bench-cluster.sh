#!/usr/bin/env bash
# Fan-out across two cluster nodes: two `easy-mqtt` nodes on one fresh
# redis-server (Kvrocks' protocol), the subscribers on node 1 and the
# publishers on node 2, so that every publication crosses the cluster's bus
# (node 2 -> node 1's inbox stream in redis -> node 1's subscribers). For
# comparison, the same scenario with every client on node 1 of the same
# cluster, and on a single in-memory node.
#
#   scripts/bench-cluster.sh
#
# Placements (PLACEMENTS):
#   cross   subscribers on node 1, publishers on node 2 (--sub-port/--pub-port)
#   local   every client on node 1 of the two-node cluster
#   memory  one node, in-memory storage, no cluster
# Scenarios (QOS): fan-out at QoS 1 and 0; SUBSCRIBERS subscribers of one
# topic, PUBLISHERS publishers x MESSAGES messages of SIZE bytes.
#
# Every run starts on fresh processes (redis-server with --save ''
# --appendonly no, and the nodes, on free loopback ports) and stops them
# after. Before the timed phase the bench tool proves the subscriptions
# effective on node 2 with a probe publication (see easy-mqtt-bench --help,
# --probe-timeout): the cluster's route-propagation bound is waited for, not
# guessed.
#
# Output in $OUT: results.txt (every RESULT line), commands.txt, table.md,
# machine.txt, configs and logs. The table: deliveries/s, loss, duplicates,
# latency p50/p99, CPU seconds of node 1, node 2 and redis-server during the
# timed phase, and the nodes' largest RSS.
#
# Environment:
#   SUBSCRIBERS  [1000]   PUBLISHERS [10]   MESSAGES [100]   SIZE [64]
#   RATE         total publish rate, messages/s; 0 = as fast as the
#                window allows (saturation); a low rate measures latency [0]
#   QOS          QoS levels to run, in order                        [1 0]
#   PLACEMENTS   placements to run, in order           [cross local memory]
#   REPEAT       runs per scenario; the median by rate is kept          [1]
#   INFLIGHT     outbound QoS 1/2 window per client (max-inflight)    [100]
#   TIMEOUT      limit of each timed phase, seconds                    [60]
#   OUT          results, configs, logs        [<target dir>/bench-cluster]
#   OURS         the broker binary         [<target dir>/release/easy-mqtt]
#
# Needs redis-server (Debian package redis-server). Loopback only; each run
# is bounded (bench --timeout and `timeout`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

SUBSCRIBERS=${SUBSCRIBERS:-1000}
PUBLISHERS=${PUBLISHERS:-10}
MESSAGES=${MESSAGES:-100}
SIZE=${SIZE:-64}
RATE=${RATE:-0}
QOS=${QOS:-"1 0"}
PLACEMENTS=${PLACEMENTS:-"cross local memory"}
REPEAT=${REPEAT:-1}
INFLIGHT=${INFLIGHT:-100}
TIMEOUT=${TIMEOUT:-60}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET/bench-cluster}
BENCH=$TARGET/release/easy-mqtt-bench
OURS=${OURS:-$TARGET/release/easy-mqtt}

for placement in $PLACEMENTS; do
  case "$placement" in
    cross | local | memory) ;;
    *) echo "unknown placement: $placement (cross, local, memory)" >&2; exit 2 ;;
  esac
done
for qos in $QOS; do
  case "$qos" in 0 | 1 | 2) ;; *) echo "QOS: $qos is not 0, 1 or 2" >&2; exit 2 ;; esac
done
if [[ " $PLACEMENTS " == *" cross "* || " $PLACEMENTS " == *" local "* ]]; then
  command -v redis-server >/dev/null 2>&1 || {
    echo "error: redis-server is needed (apt-get install redis-server)" >&2
    exit 1
  }
fi
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "building the bench tool and the broker (release)" >&2
cargo build --release -q -p easy-mqtt-bench -p easy-mqtt-server
mkdir -p "$OUT"
: >"$OUT/results.txt"
: >"$OUT/commands.txt"

# --- processes ---------------------------------------------------------------
PIDS=()
cleanup() { # the nodes first (they leave the cluster through redis), then redis
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[$i]}"; done
  PIDS=()
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM



REDIS_PORT=""
REDIS_PID=""
start_redis() { # start_redis LOGDIR
  local dir=$1
  REDIS_PORT=$("$BENCH" free-port)
  mkdir -p "$dir"
  # In memory, no snapshots, no AOF: the nodes' round trips are measured,
  # not the disk.
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --protected-mode no --dir "$dir" --logfile "$dir/redis.log" &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  if ! wait_port "$REDIS_PORT" "$REDIS_PID"; then
    echo "error: redis-server did not start on port $REDIS_PORT; see $dir/redis.log" >&2
    exit 1
  fi
}

NODE_PID=""
start_node() { # start_node NAME PORT [REDIS_PORT]: sets NODE_PID
  local name=$1 port=$2 redis=${3:-} conf="$OUT/$1.yml"
  cat >"$conf" <<EOF
mqtt:
  server:
    host: 127.0.0.1
    tcp-port: $port
    websocket-port: 0
    api-port: 0
    log-level: warn
    node-id: $name
    max-connections: 100000
    max-inflight: $INFLIGHT
    max-queued-messages: 10000000
EOF
  if [ -n "$redis" ]; then
    # The cluster section's defaults (heartbeat 1 s, node timeout 5 s), as
    # a deployment would run.
    cat >>"$conf" <<EOF
  kvrocks:
    cluster:
      nodes: 127.0.0.1:$redis
EOF
  fi
  "$OURS" -c "$conf" >>"$OUT/$name.log" 2>&1 &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  if ! wait_port "$port" "$NODE_PID"; then
    echo "error: node $name did not start on port $port; its log:" >&2
    tail -20 "$OUT/$name.log" >&2
    exit 1
  fi
}

# --- runs --------------------------------------------------------------------
# run_one PLACEMENT QOS ROUND: sets LAST_RESULT (with the exit status and
# the load average appended).
LAST_RESULT=""
run_one() {
  local placement=$1 qos=$2 round=$3 p1 p2 n1 n2 pids targets args result status log
  log="$OUT/$placement-q$qos.$round"
  p1=$("$BENCH" free-port)
  if [ "$placement" = memory ]; then
    start_node bench-mem "$p1"
    n1=$NODE_PID
    pids=$n1
    targets="-p $p1"
  else
    start_redis "$OUT/redis"
    start_node bench-n1 "$p1" "$REDIS_PORT"
    n1=$NODE_PID
    p2=$("$BENCH" free-port)
    start_node bench-n2 "$p2" "$REDIS_PORT"
    n2=$NODE_PID
    # Both nodes see each other alive before the run (one heartbeat).
    sleep 1.5
    pids="$n1,$n2,$REDIS_PID"
    if [ "$placement" = cross ]; then
      targets="--sub-port $p1 --pub-port $p2"
    else
      targets="-p $p1"
    fi
  fi
  sleep 0.5 # the probe connections close before the baseline sample
  args="fanout --qos $qos --subscribers $SUBSCRIBERS --publishers $PUBLISHERS --messages $MESSAGES --size $SIZE --rate $RATE --timeout $TIMEOUT"
  echo "[$placement q$qos #$round] easy-mqtt-bench $args $targets --broker-pid $pids" |
    tee -a "$OUT/commands.txt" >&2
  status=0
  # shellcheck disable=SC2086
  result=$(timeout $((TIMEOUT + 120)) "$BENCH" $args $targets --broker-pid "$pids" --quiet \
    2>"$log.bench.log") || status=$?
  result=$(grep '^RESULT ' <<<"$result" | tail -1 || true)
  local load
  load=$(cut -d' ' -f1 /proc/loadavg)
  cleanup
  [ -n "$result" ] || result="RESULT scenario=fanout failed=1"
  if [ "$status" -ne 0 ]; then
    echo "[$placement q$qos] exit $status: $(tail -3 "$log.bench.log" | tr '\n' ' ')" >&2
  fi
  LAST_RESULT="$result exit=$status load1=$load"
  echo "$placement q$qos $LAST_RESULT" | tee -a "$OUT/results.txt" >&2
}

median_line() { # median_line KEY: the median line by KEY among stdin's lines
  local key=$1 lines n
  lines=$(cat)
  n=$(grep -c . <<<"$lines" || true)
  [ "$n" -gt 0 ] || return 0
  while IFS= read -r line; do
    echo "$(value_of "$key" "$line" | sed 's/^$/0/') $line"
  done <<<"$lines" | sort -g -k1,1 | sed -n "$(((n + 1) / 2))p" | cut -d' ' -f2-
}

{
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr)"
  echo "easy-mqtt: $("$OURS" --version) at $(git rev-parse --short HEAD 2>/dev/null || echo '?') ($(git status --porcelain 2>/dev/null | grep -c . || true) files changed in the work tree)"
  echo "redis-server: $(redis-server --version 2>/dev/null | cut -d' ' -f3 || echo -)"
  echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt" >&2

TABLE="$OUT/table.md"
{
  echo "| placement | QoS | deliveries/s | lost | dup | p50 ms | p99 ms | probe s | CPU s node 1 / node 2 / redis | RSS max MiB node 1 / node 2 | load 1 min | exit |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|"
} >"$TABLE"
ms() { awk -v u="${1:-}" 'BEGIN { if (u == "") print "-"; else printf "%.1f", u / 1000 }'; }
mib() { awk -v k="$1" 'BEGIN { n = split(k, a, ","); s = ""; for (i = 1; i <= n; i++) s = s (i > 1 ? " / " : "") sprintf("%.0f", a[i] / 1024); print s }'; }
for qos in $QOS; do
  for placement in $PLACEMENTS; do
    runs=""
    for round in $(seq "$REPEAT"); do
      run_one "$placement" "$qos" "$round"
      runs+="$LAST_RESULT"$'\n'
    done
    line=$(printf '%s' "$runs" | median_line rate)
    if [ "$placement" = memory ]; then
      cpu=$(value_of broker_cpu_s "$line")
      rss=$(mib "$(value_of broker_rss_max_kb "$line")")
    else
      cpu=$(value_of node_cpu_s "$line" | sed 's#,# / #g')
      # node_rss_max_kb lists node 1, node 2, redis: the nodes only.
      rss=$(mib "$(value_of node_rss_max_kb "$line" | cut -d, -f1-2)")
    fi
    echo "| $placement | $qos | $(value_of rate "$line") | $(value_of lost "$line") | $(value_of dup "$line") | $(ms "$(value_of p50_us "$line")") | $(ms "$(value_of p99_us "$line")") | $(value_of probe_secs "$line") | ${cpu:--} | ${rss:--} | $(value_of load1 "$line") | $(value_of exit "$line") |" >>"$TABLE"
  done
done

echo >&2
cat "$OUT/machine.txt"
echo
cat "$TABLE"
echo
echo "RESULT lines: $OUT/results.txt; commands: $OUT/commands.txt"
