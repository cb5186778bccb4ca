#!/usr/bin/env bash
# Runs load scenarios against Easy MQTT, Mosquitto and rumqttd, one broker
# after the other, each a fresh process on a free loopback port, and prints
# the ratios ours/rumqttd and ours/mosquitto from the same run.
#
#   scripts/compare.sh [SCENARIO...|all]        (default: all)
#   scripts/compare.sh --list
#
# Scenarios (64-byte payloads):
#   fanout-q1  fanout-q0  fanout-q2   1,000 subscribers of one topic, 10 publishers x 100 messages
#   fanin-q1                          100 publishers x 1,000 messages, 1 wildcard subscriber
#   pairs-q1                          500 publisher->subscriber pairs x 100 messages
#   original                          19,500 subscribers, 300 publishers x 1 message (2 processes)
#   conn                              19,500 idle connections (2 processes): memory per
#                                     connection and connection rate, 3 s after connecting
#   conn-idle                         the same, 45 s after connecting: past our
#                                     hibernate-after (10 s: asleep within 20 s) and
#                                     jemalloc's purge of the freed pages (10 s)
#   latency-q1                        fanout-q1 paced at half of our saturating rate
#                                     (measured first if fanout-q1 is not in the same run)
#
# Output in $OUT: results.csv (one row per scenario and broker), table.md,
# machine.txt, results.txt (every RESULT line), commands.txt (every bench
# command line), the generated broker configs and each run's logs.
#
# Environment:
#   BROKERS   brokers to run, in order     [easy-mqtt mosquitto rumqttd]
#   REPEAT    runs per scenario and broker; the median (by the scenario's
#             metric) is kept                                            [1]
#   INFLIGHT  outbound QoS 1/2 window per client, set in every broker    [100]
#   OUT       directory for results, logs and configs      [target/bench-compare]
#   CHART     SVG chart to write                           [$OUT/compare.svg]
#   LATENCY_RATE  publish rate (msg/s) of latency-q1, instead of half of ours
#
# Needs: mosquitto (Debian package, installed if missing), rumqttd (cargo
# install rumqttd, without --locked, if missing). Loopback only; every run is
# bounded by the bench tool's --timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

ALL_SCENARIOS=(fanout-q1 fanout-q0 fanout-q2 fanin-q1 pairs-q1 original conn conn-idle latency-q1)
BROKERS=${BROKERS:-"easy-mqtt mosquitto rumqttd"}
REPEAT=${REPEAT:-1}
INFLIGHT=${INFLIGHT:-100}
OUT=${OUT:-target/bench-compare}
CHART=${CHART:-$OUT/compare.svg}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BENCH=$TARGET_DIR/release/easy-mqtt-bench
OURS=$TARGET_DIR/release/easy-mqtt

scenario_args() {
  case "$1" in
    fanout-q1) echo "fanout --qos 1 --subscribers 1000 --publishers 10 --messages 100" ;;
    fanout-q0) echo "fanout --qos 0 --subscribers 1000 --publishers 10 --messages 100" ;;
    fanout-q2) echo "fanout --qos 2 --subscribers 1000 --publishers 10 --messages 100" ;;
    fanin-q1) echo "fanin --qos 1 --subscribers 1 --publishers 100 --messages 1000" ;;
    pairs-q1) echo "pairs --qos 1 --pairs 500 --messages 100" ;;
    # 19,800 clients: two generator processes keep each under the limit of
    # 20,000 open files.
    original) echo "fanout --qos 1 --subscribers 19500 --publishers 300 --messages 1 --processes 2 --timeout 300" ;;
    conn) echo "conn --connections 19500 --processes 2 --conn-concurrency 100 --hold 3" ;;
    conn-idle) echo "conn --connections 19500 --processes 2 --conn-concurrency 100 --hold 45" ;;
    latency-q1) echo "fanout --qos 1 --subscribers 1000 --publishers 10 --messages 300 --rate $LATENCY_RATE" ;;
    *) return 1 ;;
  esac
}

# The metric a scenario is compared on, and whether higher is better.
scenario_metric() {
  case "$1" in
    conn | conn-idle) echo "bytes_per_conn" ;;
    latency-q1) echo "p99_us" ;;
    *) echo "rate" ;;
  esac
}

if [ "${1:-}" = "--list" ]; then
  printf '%s\n' "${ALL_SCENARIOS[@]}"
  exit 0
fi
scenarios=("$@")
if [ ${#scenarios[@]} -eq 0 ] || [ "${scenarios[0]}" = all ]; then
  scenarios=("${ALL_SCENARIOS[@]}")
fi
LATENCY_RATE=${LATENCY_RATE:-0}
for s in "${scenarios[@]}"; do
  scenario_args "$s" >/dev/null || { echo "unknown scenario: $s (see --list)" >&2; exit 2; }
done

# --- tools -------------------------------------------------------------------
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt 20000 ]; then
  echo "warning: open files limited to $(ulimit -n); the 19,500-client scenarios need 20,000" >&2
fi

for broker in $BROKERS; do
  case "$broker" in
    mosquitto)
      if ! command -v mosquitto >/dev/null 2>&1; then
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "installing mosquitto (Debian package)" >&2
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mosquitto >/dev/null
      fi
      # The package's service would hold port 1883; we start our own.
      ;;
    rumqttd)
      if ! command -v rumqttd >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/rumqttd" ]; then
        echo "installing rumqttd (cargo install rumqttd)" >&2
        cargo install rumqttd
      fi
      ;;
    easy-mqtt) ;;
    *) echo "unknown broker: $broker" >&2; exit 2 ;;
  esac
done
RUMQTTD=$(command -v rumqttd || echo "$HOME/.cargo/bin/rumqttd")

# What is measured: the commit, and whether the work tree differs from it.
GIT_STATE="$(git rev-parse --short HEAD 2>/dev/null || echo '?'), work tree $(git status --porcelain 2>/dev/null | grep -c . || true) files changed"
echo "building the bench tool and the broker (release)" >&2
cargo build --release -q -p easy-mqtt-bench -p easy-mqtt-server

mkdir -p "$OUT"
RESULTS="$OUT/results.txt"
CSV="$OUT/results.csv"
: >"$RESULTS"
: >"$OUT/commands.txt"

# --- brokers -----------------------------------------------------------------
BROKER_PID=""
cleanup() {
  if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
  fi
  BROKER_PID=""
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM


# start_broker NAME PORT LOG: starts it, sets BROKER_PID.
start_broker() {
  local name=$1 port=$2 log=$3 conf
  case "$name" in
    easy-mqtt)
      conf="$OUT/easy-mqtt.yml"
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
      "$OURS" -c "$conf" >"$log" 2>&1 &
      ;;
    mosquitto)
      conf="$OUT/mosquitto.conf"
      cat >"$conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages $INFLIGHT
max_queued_messages 0
max_connections -1
log_dest stderr
log_type error
log_type warning
EOF
      chmod a+r "$conf"
      mosquitto -c "$conf" >"$log" 2>&1 &
      ;;
    rumqttd)
      conf="$OUT/rumqttd.toml"
      cat >"$conf" <<EOF
id = 0

[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$port"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = $INFLIGHT
    dynamic_filters = true
EOF
      "$RUMQTTD" -q -c "$conf" >"$log" 2>&1 &
      ;;
  esac
  BROKER_PID=$!
  if ! wait_port "$port" "$BROKER_PID"; then
    echo "error: $name did not start on port $port; its log ($log):" >&2
    tail -20 "$log" >&2
    exit 1
  fi
  # Let it settle (the probe connection closes) before the baseline sample.
  sleep 1
}

# --- runs --------------------------------------------------------------------

# run_one SCENARIO BROKER ROUND: sets LAST_RESULT to the RESULT line (or a
# "failed" one) with the exit status appended. Runs in this shell, so that
# the EXIT trap always knows the broker's pid.
LAST_RESULT=""
run_one() {
  local scenario=$1 broker=$2 round=$3 port log args result status
  port=$("$BENCH" free-port)
  log="$OUT/$scenario.$broker.$round"
  start_broker "$broker" "$port" "$log.broker.log"
  args=$(scenario_args "$scenario")
  echo "[$scenario] $broker (round $round): easy-mqtt-bench $args -p $port --broker-pid $BROKER_PID" |
    tee -a "$OUT/commands.txt" >&2
  status=0
  # shellcheck disable=SC2086
  result=$("$BENCH" $args --quiet -p "$port" --broker-pid "$BROKER_PID" 2>"$log.bench.log") || status=$?
  result=$(grep '^RESULT ' <<<"$result" | tail -1 || true)
  cleanup
  if [ -z "$result" ]; then
    echo "[$scenario] $broker: no RESULT (exit $status); see $log.bench.log" >&2
    tail -5 "$log.bench.log" >&2 || true
    result="RESULT scenario=$scenario failed=1"
  elif [ "$status" -ne 0 ]; then
    echo "[$scenario] $broker: exit $status: $(tail -3 "$log.bench.log" | tr '\n' ' ')" >&2
  fi
  echo "$scenario $broker exit=$status $result" | tee -a "$RESULTS" >&2
  LAST_RESULT="$result exit=$status"
}

# Picks the median row by KEY among lines on stdin.
median_line() {
  local key=$1 lines
  lines=$(cat)
  local n
  n=$(grep -c . <<<"$lines" || true)
  [ "$n" -gt 0 ] || return 0
  while IFS= read -r line; do
    local v
    v=$(value_of "$key" "$line")
    echo "${v:-0} $line"
  done <<<"$lines" | sort -g -k1,1 | sed -n "$(((n + 1) / 2))p" | cut -d' ' -f2-
}

echo "scenario,broker,rate,p50_us,p99_us,lost,dup,bytes_per_conn,conn_rate,broker_cpu_s,broker_rss_max_kb,exit" >"$CSV"

declare -A CHOSEN
for scenario in "${scenarios[@]}"; do
  if [ "$scenario" = latency-q1 ] && [ "$LATENCY_RATE" = 0 ]; then
    ours_rate=""
    if [ -n "${CHOSEN[fanout-q1 / easy-mqtt]:-}" ]; then
      ours_rate=$(value_of rate "${CHOSEN[fanout-q1 / easy-mqtt]}")
    else
      echo "[latency-q1] measuring our saturating fanout-q1 rate first" >&2
      run_one fanout-q1 easy-mqtt sat
      ours_rate=$(value_of rate "$LAST_RESULT")
    fi
    # Deliveries/s over 1,000 subscribers = publications/s; half of it.
    LATENCY_RATE=$(awk -v r="${ours_rate:-0}" 'BEGIN { printf "%d", r / 1000 / 2 }')
    if [ "$LATENCY_RATE" -lt 1 ]; then
      echo "[latency-q1] no saturating rate measured; skipped" >&2
      continue
    fi
    echo "[latency-q1] publish rate $LATENCY_RATE msg/s (half of our saturating fanout-q1 rate)" >&2
  fi
  declare -A RUNS=()
  for round in $(seq "$REPEAT"); do
    for broker in $BROKERS; do
      run_one "$scenario" "$broker" "$round"
      RUNS[$broker]+="$LAST_RESULT"$'\n'
    done
  done
  metric=$(scenario_metric "$scenario")
  for broker in $BROKERS; do
    chosen=$(printf '%s' "${RUNS[$broker]}" | median_line "$metric")
    CHOSEN["$scenario / $broker"]=$chosen
    row="$scenario,$broker"
    for key in rate p50_us p99_us lost dup bytes_per_conn conn_rate broker_cpu_s broker_rss_max_kb exit; do
      row+=",$(value_of "$key" "$chosen")"
    done
    echo "$row" >>"$CSV"
  done
  unset RUNS
done

# --- table -------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
num() { awk -v a="$1" 'BEGIN { if (a == "") print "-"; else if (a >= 100) printf "%.0f", a; else printf "%.1f", a }'; }

TABLE="$OUT/table.md"
{
  echo "| scenario | metric | easy-mqtt | mosquitto | rumqttd | ours/rumqttd | ours/mosquitto | lost (ours/mosq/rumq) | dup (ours/mosq/rumq) |"
  echo "|---|---|---:|---:|---:|---:|---:|---|---|"
  for scenario in "${scenarios[@]}"; do
    metrics=$(scenario_metric "$scenario")
    [ "$scenario" = conn ] && metrics="bytes_per_conn conn_rate"
    [ "$scenario" = latency-q1 ] && metrics="p99_us p50_us rate"
    for metric in $metrics; do
      declare -A V=() L=() D=()
      for broker in easy-mqtt mosquitto rumqttd; do
        line=${CHOSEN["$scenario / $broker"]:-}
        V[$broker]=$(value_of "$metric" "$line")
        L[$broker]=$(value_of lost "$line")
        D[$broker]=$(value_of dup "$line")
        if [ -n "$line" ] && [ -z "$(value_of secs "$line")" ]; then V[$broker]=""; L[$broker]="failed"; fi
      done
      echo "| $scenario | $metric | $(num "${V[easy-mqtt]}") | $(num "${V[mosquitto]}") | $(num "${V[rumqttd]}") | $(ratio "${V[easy-mqtt]}" "${V[rumqttd]}") | $(ratio "${V[easy-mqtt]}" "${V[mosquitto]}") | ${L[easy-mqtt]:--}/${L[mosquitto]:--}/${L[rumqttd]:--} | ${D[easy-mqtt]:--}/${D[mosquitto]:--}/${D[rumqttd]:--} |"
      unset V L D
    done
  done
} >"$TABLE"

{
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr)"
  echo "easy-mqtt: $("$OURS" --version) ($GIT_STATE, at the start of the run)"
  echo "mosquitto: $(mosquitto -h 2>/dev/null | head -1)"
  echo "rumqttd: $("$RUMQTTD" --version 2>/dev/null)"
  echo "inflight window per client: $INFLIGHT; repeat: $REPEAT (median kept)"
} >"$OUT/machine.txt"

cat "$OUT/machine.txt"
echo
cat "$TABLE"
if "$BENCH" chart "$CSV" "$CHART"; then
  echo
  echo "chart: $CHART   results: $CSV, $RESULTS"
fi
