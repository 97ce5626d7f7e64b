#!/usr/bin/env bash
# tests/demo.sh: berth's main job, locally, on the reference stack (tests/example).
#
#   tests/demo.sh                  build berth (debug) and bring the stack up
#   BERTH_PROFILE=release tests/demo.sh
#   RELEASE=2 tests/demo.sh        roll the API forward to version 2
#
# Sets the machine up (tests/setup.sh), builds berth, runs `berth up`, which returns once
# db and api are healthy and migrate has run, asks the API which version answers, and
# lists the project. Run it again: nothing changed, so berth changes nothing.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
project="berth-example"
file=tests/example/compose.yaml
url=http://127.0.0.1:18080/version

# Sourced, so that its PATH (rustup's ~/.cargo/bin) carries over.
# shellcheck source-path=SCRIPTDIR source=setup.sh
. "$root/tests/setup.sh"

target_dir=${CARGO_TARGET_DIR:-$root/target}
case ${BERTH_PROFILE:-debug} in
debug | dev)
	cargo build -p berth
	berth=$target_dir/debug/berth
	;;
release)
	cargo build --release -p berth
	berth=$target_dir/release/berth
	;;
*)
	echo "demo: BERTH_PROFILE must be debug or release, not '$BERTH_PROFILE'" >&2
	exit 1
	;;
esac

# The project is named here: docker-compose 1.29.2 rejects a top-level `name:` in the file.
echo "+ berth up -f $file -p $project" >&2
"$berth" up -f "$file" -p "$project"

echo "+ curl $url" >&2
echo "api answers version $(curl -fsS "$url")"

echo "+ berth ps -p $project" >&2
"$berth" ps -p "$project"

echo
echo "The stack is up. Tear it down with:"
echo "  ${berth#"$root"/} down -p $project"
