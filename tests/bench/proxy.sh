#!/usr/bin/env bash
# tests/bench/proxy.sh: the traffic proxy's cost: requests/s, p99 latency, resident memory
# and CPU per request through `berth proxy` (with and without --no-metrics) vs nginx and
# HAProxy as reverse proxies vs the backend directly (same nginx backend, keep-alive, wrk).
# The proxy is pinned to one core, wrk and the backend to another (taskset). Builds the binary
# that ships (packaging/build.sh: static, musl; its malloc and memcpy cost the proxy more than
# glibc's), then runs tests/bench/proxy.py. Prints figures and ratios; not a test.
# BENCH_SECONDS (10), BENCH_CONNECTIONS (64), BENCH_THREADS (2), BENCH_ROUNDS (2),
# BENCH_TARGETS (direct,nginx,haproxy,berth,berth-nometrics), BENCH_PROXY_CPU (0),
# BENCH_LOAD_CPU (1), BERTH_BIN. Then tests/bench/proxy_idle.py: 1,000 idle keep-alive
# connections after a 1 MiB answer each, RSS and descriptors vs nginx (BENCH_IDLE_*); and
# tests/bench/proxy_scaling.py: 1 and 2 workers of each, unpinned, the scaling factors; and
# tests/bench/proxy_instructions.py: instructions per request under callgrind, vs nginx.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
# shellcheck source-path=SCRIPTDIR source=../setup.sh
. "$root/tests/setup.sh"
if [ -z "${BERTH_BIN:-}" ]; then
    BERTH_BIN=$(bash "$root/packaging/build.sh" | tail -n 1)
fi
export BERTH_BIN
status=0
python3 "$root/tests/bench/proxy.py" || status=$?
# What 1,000 idle ALB connections cost after one 1 MiB answer each (RSS, descriptors).
python3 "$root/tests/bench/proxy_idle.py" || status=$((status > 0 ? status : $?))
# Past one core: berth and nginx with 1 and 2 workers, unpinned; each one's scaling factor.
python3 "$root/tests/bench/proxy_scaling.py" || status=$((status > 0 ? status : $?))
# User-space instructions per request under callgrind: the figure this machine's noise leaves
# alone (needs valgrind).
python3 "$root/tests/bench/proxy_instructions.py" || status=$((status > 0 ? status : $?))
exit "$status"
