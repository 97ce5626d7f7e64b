#!/usr/bin/env bash
# tests/bench/compose.sh: berth against Debian's docker-compose 1.29.2 on the reference
# stack (tests/example: db with a healthcheck, a one-shot migrate, api with a healthcheck).
# Prints figures; it is not a test: it exits 0 whether the targets are met or missed, and
# non-zero only when something really failed (a command, a container, a timeout).
#
#   tests/bench/compose.sh
#
# Environment:
#   BENCH_RUNS=5            cold runs per tool (each followed by one no-op re-run)
#   BERTH_BIN=...           the berth binary (default: target/release/berth when it
#                           exists, else target/debug/berth)
#   BENCH_TOOLS="compose berth"   which tools to measure
#
# Figures, for each tool, from nothing (no container, no network; images already local):
#   until healthy  from the start of `up` until db and api are healthy and migrate exited
#                  0. docker-compose 1.29.2 has no --wait, so its clock runs from
#                  `up -d` until a 50 ms poll of the Engine API sees the stack ready;
#                  `berth up` waits by itself, so its clock stops when it returns, and
#                  the same poll checks it after (a warning when Docker did not yet
#                  report every container ready; that time is the middle column).
#   no-op re-run   a second `up` with nothing changed: the command's own time.
# The tools run one after the other (the stack publishes 127.0.0.1:18080), alternating
# which goes first, and each project is torn down between cold runs.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
file=$root/tests/example/compose.yaml
services=db,migrate,api
port=18080
runs=${BENCH_RUNS:-5}
read -r -a tools <<<"${BENCH_TOOLS:-compose berth}"
stackwait=(python3 "$root/tests/bench/stackwait.py")
target_healthy=0.5
target_noop=0.15

target_dir=${CARGO_TARGET_DIR:-$root/target}
if [[ -z ${BERTH_BIN:-} ]]; then
	if [[ -x $target_dir/release/berth ]]; then
		BERTH_BIN=$target_dir/release/berth
	else
		BERTH_BIN=$target_dir/debug/berth
	fi
fi

die() {
	echo "bench: error: $*" >&2
	exit 1
}

[[ $runs =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive number, not '$runs'"
for tool in "${tools[@]}"; do
	case $tool in
	compose) ;;
	berth)
		[[ -x $BERTH_BIN ]] ||
			die "no berth binary at $BERTH_BIN: build it (cargo build --release -p berth), set BERTH_BIN, or BENCH_TOOLS=compose"
		;;
	*) die "unknown tool '$tool' in BENCH_TOOLS (compose, berth)" ;;
	esac
done

bash "$root/tests/setup.sh"
command -v docker-compose >/dev/null || die "docker-compose is not installed"

if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
	die "127.0.0.1:$port is taken (the demo stack? berth down -p berth-example)"
fi

# What the stack sees must be the same for both tools.
unset RELEASE COMPOSE_PROJECT_NAME COMPOSE_FILE

work=$(mktemp -d)
declare -A project=(
	[compose]=berth-b-compose-$$
	[berth]=berth-b-berth-$$
)

# Sets up_cmd to the tool's `up` command line.
set_up_cmd() { # tool
	case $1 in
	compose) up_cmd=(docker-compose -p "${project[compose]}" -f "$file" up -d) ;;
	berth) up_cmd=("$BERTH_BIN" up -f "$file" -p "${project[berth]}" --wait-timeout 120) ;;
	esac
}

# Removes whatever is left of a project, whoever made it.
purge() { # project
	local ids
	ids=$(docker ps -aq --filter "label=com.docker.compose.project=$1")
	if [[ -n $ids ]]; then
		# shellcheck disable=SC2086 # one id a word
		docker rm -fv $ids >/dev/null
	fi
	ids=$(docker network ls -q --filter "label=com.docker.compose.project=$1")
	if [[ -n $ids ]]; then
		# shellcheck disable=SC2086
		docker network rm $ids >/dev/null
	fi
	ids=$(docker volume ls -q --filter "label=com.docker.compose.project=$1")
	if [[ -n $ids ]]; then
		# shellcheck disable=SC2086
		docker volume rm $ids >/dev/null
	fi
}

down() { # tool
	local p=${project[$1]}
	case $1 in
	compose) docker-compose -p "$p" -f "$file" down -v --remove-orphans ;;
	berth) "$BERTH_BIN" down -p "$p" -v ;;
	esac >>"$work/$1.log" 2>&1 || fail "$1" "down failed"
	if [[ -n $(ids "$p") ]]; then
		warnings+=("$1: down left containers behind")
	fi
	purge "$p"
}

cleanup() {
	local tool
	for tool in "${tools[@]}"; do
		purge "${project[$tool]}" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT

fail() { # tool message
	echo "bench: $1: $2" >&2
	echo "---- last lines of $1's output" >&2
	tail -n 30 "$work/$1.log" >&2 || true
	exit 1
}

ids() { # project
	docker ps -aq --no-trunc --filter "label=com.docker.compose.project=$1" | sort | tr '\n' ' '
}

field() { # name line
	sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$2"
}

warnings=()
# Space-separated seconds, per tool: until healthy (the figure), until Docker itself reports
# every container ready (the check), and the no-op re-run.
declare -A healthy_times docker_times noop_times

measure() { # tool
	local tool=$1 p=${project[$1]} line before after cmd_s ready_s
	local -a up_cmd
	set_up_cmd "$tool"
	purge "$p"
	# Cold start. For docker-compose the clock stops when the poll first sees the stack
	# ready; for berth when `berth up` returns, and the poll checks that it was right.
	line=$("${stackwait[@]}" --project "$p" --services "$services" --log "$work/$tool.log" \
		-- "${up_cmd[@]}") || fail "$tool" "cold up failed"
	cmd_s=$(field cmd "$line")
	ready_s=$(field ready "$line")
	docker_times[$tool]+="$ready_s "
	case $tool in
	compose) healthy_times[$tool]+="$ready_s " ;;
	berth)
		healthy_times[$tool]+="$cmd_s "
		if [[ $(field first_poll_ready "$line") != 1 ]]; then
			warnings+=("berth up returned at ${cmd_s}s, before Docker reported the stack ready (${ready_s}s)")
		fi
		;;
	esac
	before=$(ids "$p")
	# No-op re-run: only the command is timed; the poll after it checks the stack is still up.
	line=$("${stackwait[@]}" --project "$p" --services "$services" --log "$work/$tool.log" \
		-- "${up_cmd[@]}") || fail "$tool" "no-op up failed"
	noop_times[$tool]+="$(field cmd "$line") "
	after=$(ids "$p")
	if [[ $before != "$after" ]]; then
		warnings+=("$tool: the no-op re-run replaced containers")
	fi
	down "$tool"
}

stats() { # seconds... -> "median min"
	python3 -c '
import statistics, sys
xs = [float(x) for x in sys.argv[1:]]
print(f"{statistics.median(xs):.3f} {min(xs):.3f}")' "$@"
}

echo "bench: ${#tools[@]} tool(s), $runs cold run(s) each, on tests/example ($services)" >&2
for ((run = 1; run <= runs; run++)); do
	if ((run % 2)); then
		order=("${tools[@]}")
	else
		order=()
		for ((i = ${#tools[@]} - 1; i >= 0; i--)); do
			order+=("${tools[i]}")
		done
	fi
	for tool in "${order[@]}"; do
		measure "$tool"
	done
	echo "bench: run $run/$runs done" >&2
done

compose_version=$(docker-compose version --short 2>/dev/null || echo '?')
echo
echo "tests/example from nothing (images local), $runs run(s) each; seconds, median (min)"
printf '%-22s %-16s %-22s %s\n' "" "until healthy" "docker reports ready" "no-op re-run"
declare -A med
for tool in "${tools[@]}"; do
	# shellcheck disable=SC2086 # the lists are space-separated numbers
	read -r hm hmin <<<"$(stats ${healthy_times[$tool]})"
	# shellcheck disable=SC2086
	read -r dm dmin <<<"$(stats ${docker_times[$tool]})"
	# shellcheck disable=SC2086
	read -r nm nmin <<<"$(stats ${noop_times[$tool]})"
	med[$tool.healthy]=$hm
	med[$tool.noop]=$nm
	case $tool in
	compose) label="docker-compose $compose_version" ;;
	berth) label="berth" ;;
	esac
	printf '%-22s %-16s %-22s %s\n' "$label" "$hm ($hmin)" "$dm ($dmin)" "$nm ($nmin)"
done

if [[ -n ${med[berth.healthy]:-} && -n ${med[compose.healthy]:-} ]]; then
	echo
	python3 - "${med[berth.healthy]}" "${med[compose.healthy]}" "$target_healthy" \
		"${med[berth.noop]}" "${med[compose.noop]}" "$target_noop" <<'PY'
import sys
a = sys.argv[1:]
for name, (b, c, t) in (("until healthy", a[0:3]), ("no-op re-run", a[3:6])):
    ratio = float(b) / float(c)
    verdict = "PASS" if ratio <= float(t) else "MISS"
    print(f"{name:<16} berth/compose = {ratio:.2f}x   target <= {float(t):.2f}x   {verdict}")
PY
fi

for w in "${warnings[@]}"; do
	echo "bench: warning: $w" >&2
done
