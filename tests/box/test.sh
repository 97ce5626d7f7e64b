#!/usr/bin/env bash
# tests/box/test.sh: an instance in a box. The real .deb and the launch template's user-data,
# run by cloud-init in a Debian container that boots systemd as PID 1, against moto, an
# authenticating registry and the IMDS/lifecycle emulator; then what an instance must do under
# systemd is asserted (tests/box/README.md).
#
#   bash tests/box/test.sh [path/to/berth_*.deb]
#
# Default package: the one packaging/package.sh built last
# ($CARGO_TARGET_DIR/x86_64-unknown-linux-musl/packages/, default target/). It builds nothing:
# tests/run.sh runs it after packaging/test.sh. Needs root and Docker; tests/setup.sh (sourced
# here) installs and starts the rest, tests/box/image.sh builds the box's image (cached).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
started=$SECONDS

say() { echo "box: $*" >&2; }
die() {
	say "error: $*"
	exit 2
}

[[ $EUID -eq 0 ]] || die "run as root: the box's image is built with debootstrap"

deb=${1:-}
if [[ -z $deb ]]; then
	target_dir=${CARGO_TARGET_DIR:-$root/target}
	shopt -s nullglob
	debs=("$target_dir"/x86_64-unknown-linux-musl/packages/*.deb)
	shopt -u nullglob
	((${#debs[@]} == 1)) ||
		die "expected one .deb in $target_dir/x86_64-unknown-linux-musl/packages (found ${#debs[@]}): run packaging/package.sh, or name one"
	deb=${debs[0]}
fi
[[ -f $deb ]] || die "no such package: $deb"
say "package $deb ($(dpkg-deb -f "$deb" Version), built $(date -r "$deb" '+%F %T'))"

# shellcheck source-path=SCRIPTDIR source=../setup.sh
. "$root/tests/setup.sh"

image_started=$SECONDS
image=$(bash "$root/tests/box/image.sh" | tail -n 1)
image_secs=$((SECONDS - image_started))

# box_test.py cleans up after itself; this catches what a killed run leaves: the box (labelled
# with this run's id) and the containers, networks and volumes of its compose project. Then
# the timings; the exit code is box_test.py's.
run_id=$$
project=berth-box-$run_id
cleanup() {
	local rc=$?
	local -a ids
	mapfile -t ids < <(
		docker ps -aq --filter "label=dev.berth.box=$run_id" 2>/dev/null || true
		docker ps -aq --filter "label=com.docker.compose.project=$project" 2>/dev/null || true
	)
	if ((${#ids[@]} > 0)); then
		docker rm -fv "${ids[@]}" >/dev/null 2>&1 || true
	fi
	docker network ls -q --filter "label=com.docker.compose.project=$project" 2>/dev/null |
		xargs -r docker network rm >/dev/null 2>&1 || true
	docker volume ls -q --filter "label=com.docker.compose.project=$project" 2>/dev/null |
		xargs -r docker volume rm >/dev/null 2>&1 || true
	if [[ -n ${test_started:-} ]]; then
		say "timings: image ${image_secs} s, test $((SECONDS - test_started)) s, total $((SECONDS - started)) s"
	fi
	exit "$rc"
}
trap cleanup EXIT

test_started=$SECONDS
python3 "$root/tests/box/box_test.py" --deb "$deb" --image "$image" --run-id "$run_id"
