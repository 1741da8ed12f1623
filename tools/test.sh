#!/usr/bin/env bash
# The whole test suite. Installs what the tests need when missing (mosquitto, mosquitto_pub, and
# Debian's chromium for the dashboard's browser test), then runs `cargo test`. Extra arguments go
# to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d ../shared/data ]; then
    echo "error: ../shared/data (the real captures the tests publish) is missing beside the repository" >&2
    exit 1
fi

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
# tests/dashboard.rs drives /usr/bin/chromium over the DevTools protocol (no chromedriver);
# the fonts make its screenshots readable.
[ -x /usr/bin/chromium ] || need+=(chromium fonts-liberation)
# tests/interop.rs makes a venv with `python3 -m venv`, which Debian ships separately.
python3 -c "import ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]} for the integration tests" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# Debian installs the broker binary in /usr/sbin, which is not on every user's PATH.
export PATH="$PATH:/usr/sbin"

# The benchmarks' smoke modes first, so the scripts cannot rot (they assert no figure);
# cargo test runs last so its summary closes the output.
if ! python3 -c "import paho.mqtt.client, pyarrow" >/dev/null 2>&1; then
    echo "installing paho-mqtt and pyarrow (the benchmark's Python baseline, tests/embedded_v5.rs)" >&2
    python3 -m pip install -q paho-mqtt pyarrow
fi
cargo build --features failpoints
python3 tools/e2e_bench.py --smoke --binary "${CARGO_TARGET_DIR:-target}/debug/v2x-collector"
python3 tools/embedded_flood.py --smoke --binary "${CARGO_TARGET_DIR:-target}/debug/v2x-collector"

cargo test --features failpoints "$@"
