#!/usr/bin/env bash
# tests/bench/proxy.sh: the traffic proxy's cost: requests/s, p99 latency, resident memory
# and CPU per request through `berth proxy` (with and without --no-metrics) vs nginx and
# HAProxy as reverse proxies vs the backend directly (same nginx backend, keep-alive, wrk).
# The proxy is pinned to one core, wrk and the backend to another (taskset). Builds berth
# --release, then runs tests/bench/proxy.py. Prints figures and ratios; not a test.
# BENCH_SECONDS (10), BENCH_CONNECTIONS (64), BENCH_THREADS (2), BENCH_ROUNDS (2),
# BENCH_TARGETS (direct,nginx,haproxy,berth,berth-nometrics), BENCH_PROXY_CPU (0),
# BENCH_LOAD_CPU (1), BERTH_BIN.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
# shellcheck source-path=SCRIPTDIR source=../setup.sh
. "$root/tests/setup.sh"
cargo build --release -p berth
BERTH_BIN=${BERTH_BIN:-$root/target/release/berth} exec python3 "$root/tests/bench/proxy.py"
