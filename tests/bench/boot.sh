#!/usr/bin/env bash
# tests/bench/boot.sh: the boot path's figures (issue 3): berth's own time, memory while
# holding, parallel pulls. Builds berth --release, then runs tests/bench/boot.py. Prints
# figures; not a test.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
# shellcheck source-path=SCRIPTDIR source=../setup.sh
. "$root/tests/setup.sh"
cargo build --release -p berth
BERTH_BIN=${BERTH_BIN:-$root/target/release/berth} exec python3 "$root/tests/bench/boot.py"
