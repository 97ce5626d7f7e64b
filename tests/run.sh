#!/usr/bin/env bash
# tests/run.sh: berth's test command, the same on a laptop and in CI.
#
#   tests/run.sh [extra cargo test arguments, e.g. -- --test-threads=1]
#
# Runs tests/setup.sh (installs and starts what is missing, builds the test images), then
# rustfmt, clippy, tests/lint.sh (cfn-lint, checkov, actionlint, shellcheck), the whole
# workspace's tests against the real Docker daemon, then on its own the one that restarts that
# daemon (tests/daemon.rs), packaging/test.sh (the static binary,
# the .deb installed and removed again, the .rpm's contents), and tests/box/test.sh (that .deb
# and the launch template's user-data in an instance in a box: systemd as PID 1). At the
# end, pass or fail, it removes whatever the integration tests left behind: containers,
# networks and volumes of the compose projects named berth-t-* (each test's own project).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# The integration tests' project-name prefix (tests pick berth-t-<name>-<unique>).
prefix=${BERTH_TEST_PREFIX:-berth-t-}
label=com.docker.compose.project

step() {
	echo "==> $*" >&2
}

# Prints the ids (names for volumes) of the objects of one kind (container, network,
# volume) whose compose project starts with the prefix.
leftovers() { # kind
	local -a list
	case $1 in
	container) list=(docker ps -a --format "{{.ID}} {{.Label \"$label\"}}") ;;
	network) list=(docker network ls --format "{{.ID}} {{.Label \"$label\"}}") ;;
	volume) list=(docker volume ls --format "{{.Name}} {{.Label \"$label\"}}") ;;
	esac
	"${list[@]}" --filter "label=$label" 2>/dev/null | awk -v p="$prefix" 'index($2, p) == 1 { print $1 }'
}

remove_leftovers() {
	local kind found
	local -a ids
	for kind in container network volume; do
		found=$(leftovers "$kind" || true)
		read -r -d '' -a ids <<<"$found" || true
		if ((${#ids[@]} == 0)); then
			continue
		fi
		if [[ $kind == container ]]; then
			docker rm -fv "${ids[@]}" >/dev/null 2>&1 || true
		else
			docker "$kind" rm "${ids[@]}" >/dev/null 2>&1 || true
		fi
		echo "run: removed ${#ids[@]} leftover ${kind}(s) of ${prefix}* projects" >&2
	done
}

finish() {
	local rc=$?
	if command -v docker >/dev/null 2>&1; then
		remove_leftovers
	fi
	exit "$rc"
}
trap finish EXIT

step "setup"
# Sourced, so that its PATH (rustup's ~/.cargo/bin) carries over.
# shellcheck source-path=SCRIPTDIR source=setup.sh
. "$root/tests/setup.sh"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo deny: licenses, sources and bans (deny.toml); advisories when RustSec can be fetched"
if ! command -v cargo-deny >/dev/null 2>&1; then
	cargo install --locked --quiet cargo-deny
fi
cargo deny --all-features --locked check licenses sources bans
# The RustSec database is a git repository on GitHub, which a machine that reaches only the
# package registries cannot fetch: then this says so instead of passing silently.
if timeout 120 cargo deny fetch db >/dev/null 2>&1; then
	cargo deny --locked check advisories
else
	echo "run: the RustSec advisory database cannot be fetched from here; advisories not checked (cargo deny check advisories where GitHub is reachable)" >&2
fi

step "lint: CloudFormation, checkov, the workflow, every shell script"
bash "$root/tests/lint.sh"

step "cargo test"
# The proxy's framing properties (proxy/src/framing_fuzz.rs) get 50,000 cases each here (about 45 s);
# a longer run: PROXY_FUZZ_CASES=1000000 cargo test -p berth-proxy --lib framing_fuzz.
PROXY_FUZZ_CASES=${PROXY_FUZZ_CASES:-50000} cargo test --workspace "$@"

step "the Docker daemon restarted under a holding agent (alone: it restarts dockerd)"
# --workspace: the same features as the run above, so nothing is built again.
cargo test --workspace --test daemon -- --ignored

# A release key of this run's own: the packages trust it and are signed with it, and the box
# signs its next builds (and a wrong one) with it. Kept in target/, made once.
keys=$root/target/test-release-key
if [[ ! -s $keys/release.pub || ! -s $keys/release.key ]]; then
	mkdir -p "$keys"
	python3 "$root/packaging/sign.py" keygen "$keys/release.pub" "$keys/release.key"
fi
export BERTH_RELEASE_PUBKEY=$keys/release.pub BERTH_SIGNING_KEY=$keys/release.key

step "packaging: static build, .deb installed and checked, .rpm listed and checked"
bash "$root/packaging/test.sh"

step "an instance in a box: the .deb and the user-data under systemd (tests/box)"
bash "$root/tests/box/test.sh"
