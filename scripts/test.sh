#!/usr/bin/env bash
# Runs the whole test suite: unit, property, state-machine, simulator and
# integration tests against real third-party clients. Installs the clients
# it needs when they are missing (Debian/Ubuntu, as root or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

need_packages=()
command -v mosquitto_pub >/dev/null 2>&1 || need_packages+=(mosquitto-clients)
command -v mosquitto_sub >/dev/null 2>&1 || need_packages+=(mosquitto-clients)
# The Kvrocks backend's tests (storage-kvrocks/tests) run real redis-server
# processes, standalone and as a 3-node cluster, as the Kvrocks stand-in.
command -v redis-server >/dev/null 2>&1 || need_packages+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_packages+=(redis-tools)
# TLS and WebSocket tests (server/tests/tls_ws.rs): test certificates made by
# openssl, MQTT.js run by Node, and a real browser.
command -v openssl >/dev/null 2>&1 || need_packages+=(openssl)
command -v node >/dev/null 2>&1 || need_packages+=(nodejs)
command -v npm >/dev/null 2>&1 || need_packages+=(npm)
[ -x /usr/bin/chromium ] || need_packages+=(chromium)
# The HTTP API's OpenAPI check (server/tests/api_schemathesis.rs) runs
# schemathesis from PyPI, installed below into a virtual environment.
command -v python3 >/dev/null 2>&1 || need_packages+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_packages+=(python3-venv)

if [ ${#need_packages[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${need_packages[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_packages[@]}" >/dev/null
fi

# The npm packages of tests/js (mqtt, playwright-core), as locked; Playwright
# drives Debian's /usr/bin/chromium and downloads no browser.
if [ ! -f tests/js/node_modules/.package-lock.json ] ||
   [ tests/js/package-lock.json -nt tests/js/node_modules/.package-lock.json ]; then
  echo "installing the npm packages of tests/js"
  (cd tests/js && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi

# schemathesis, pinned, in target/api-venv.
schemathesis_version=4.32.5
api_venv=target/api-venv
if ! "$api_venv/bin/schemathesis" --version 2>/dev/null | grep -qF "$schemathesis_version"; then
  echo "installing schemathesis $schemathesis_version into $api_venv"
  rm -rf "$api_venv"
  python3 -m venv "$api_venv"
  "$api_venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
fi
export EASY_MQTT_SCHEMATHESIS="$PWD/$api_venv/bin/schemathesis"
# paho-mqtt, pinned, in the same venv: the Alibaba Cloud mode's tests
# (server/tests/aliyun.rs) connect with it as Alibaba Cloud's samples do.
paho_version=2.1.0
if ! "$api_venv/bin/python" -c "import paho.mqtt, sys; sys.exit(paho.mqtt.__version__ != '$paho_version')" 2>/dev/null; then
  echo "installing paho-mqtt $paho_version into $api_venv"
  "$api_venv/bin/pip" install --quiet --disable-pip-version-check "paho-mqtt==$paho_version"
fi
export EASY_MQTT_PAHO_PYTHON="$PWD/$api_venv/bin/python"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# With no arguments, every crate; otherwise what is given (e.g. -p easy-mqtt-core).
[ $# -gt 0 ] || set -- --workspace
cargo test --locked "$@" 2>&1 | tee "$log"
# cargo prints one "test result" line per test binary; close with the total.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
