#!/usr/bin/env bash
# tests/bench/proxy.sh: the traffic proxy's cost: requests/s and p99 latency through
# `berth proxy` vs nginx as a reverse proxy vs the backend directly (same nginx backend,
# keep-alive, wrk). Builds berth --release, then runs tests/bench/proxy.py. Prints figures
# and ratios; not a test. BENCH_SECONDS (10), BENCH_CONNECTIONS (64), BENCH_THREADS (2),
# BENCH_ROUNDS (2), BENCH_TARGETS (direct,nginx,berth), BERTH_BIN.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
# shellcheck source-path=SCRIPTDIR source=../setup.sh
. "$root/tests/setup.sh"
cargo build --release -p berth
BERTH_BIN=${BERTH_BIN:-$root/target/release/berth} exec python3 "$root/tests/bench/proxy.py"
