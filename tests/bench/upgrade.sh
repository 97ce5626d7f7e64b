#!/usr/bin/env bash
# tests/bench/upgrade.sh: upgrades under load (issue 4). Failed requests while berth-test/web
# goes from release 1 to 2 under the same continuous load: `docker-compose up -d` with the new
# tag, berth's proxy strategy, and berth's drain strategy on two instances behind HAProxy; and
# the time from `berth upgrade` to the proxy's switch, images already pulled. Builds berth
# --release, then runs tests/bench/upgrade.py. Prints figures and ratios; not a test.
# BENCH_ROUNDS (3), BENCH_CLIENTS (4), BENCH_METHODS (compose,proxy,drain), BERTH_BIN.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
# shellcheck source-path=SCRIPTDIR source=../setup.sh
. "$root/tests/setup.sh"
cargo build --release -p berth
BERTH_BIN=${BERTH_BIN:-$root/target/release/berth} exec python3 "$root/tests/bench/upgrade.py"
