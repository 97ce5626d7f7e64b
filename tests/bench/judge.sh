#!/usr/bin/env bash
# tests/bench/judge.sh: berth's release judge after the switch ([upgrade.analysis]), both ways,
# for each judge method in one run: false alarms over BENCH_UPGRADES good upgrades under load
# and CPU noise, then whether (and how fast) a release with 5 % of 500s and one 60 ms slower
# are rolled back. Builds berth --release unless BERTH_BIN names a binary, then runs
# tests/bench/judge.py (its docstring says what is measured and how). Prints figures; not a test.
# BENCH_METHODS (sequential,fixed), BENCH_UPGRADES (20), BENCH_CLIENTS (4), BENCH_NOISE (2),
# BENCH_VERIFY_SECS (2), BENCH_BAKE_SECS (3), BENCH_MIN_REQUESTS (100), BENCH_WARMUP_SECS (5),
# BENCH_MAX_SECS (60), BENCH_ERROR_EVERY (20), BENCH_DELAY_MS (60), BENCH_GAP_SECS (1),
# BENCH_QUIET_SECS (600), BENCH_KEEP_LOGS, BERTH_BIN.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
# shellcheck source-path=SCRIPTDIR source=../setup.sh
. "$root/tests/setup.sh"
if [[ -z ${BERTH_BIN:-} ]]; then
	cargo build --release -p berth
fi
BERTH_BIN=${BERTH_BIN:-$root/target/release/berth} exec python3 "$root/tests/bench/judge.py"
