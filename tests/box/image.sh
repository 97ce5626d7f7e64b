#!/usr/bin/env bash
# tests/box/image.sh: builds the image of "an instance in a box": a Debian rootfs made with
# debootstrap that boots systemd as PID 1 in a container, with what the launch template's
# user-data expects of an AMI (curl, the AWS CLI, apt-get, cloud-init), and a stand-in
# docker.service (the host's Docker socket is mounted into the box). Prints the image's tag last.
#
#   bash tests/box/image.sh
#
# Two layers, each built only when its recipe changed:
# 1. the base rootfs: debootstrap (minbase + box_packages) and the AWS CLI (PyPI wheels
#    downloaded on the host, installed into a venv in the rootfs: Debian's awscli 2.9 ignores
#    AWS_ENDPOINT_URL). The tarball is cached as $BERTH_BOX_CACHE/base-<hash>.tar, the hash
#    covering the suite, the mirror, the package list, the AWS CLI's pin and build_base()'s own
#    text, and imported with `docker import` as berth-test/box-base:<hash>;
# 2. berth-test/box:1, built FROM it with tests/box/rootfs/ copied in and the units that
#    cannot work in a container masked; labelled with the hash of all of that, and rebuilt
#    only when it differs.
#
# Environment: BERTH_BOX_SUITE (default: this machine's Debian suite, else bookworm),
# BERTH_BOX_MIRROR (default http://deb.debian.org/debian), BERTH_BOX_CACHE (default
# /var/cache/berth-box). Needs root (debootstrap, chroot) and a running Docker daemon.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${BERTH_BOX_CACHE:-/var/cache/berth-box}
mirror=${BERTH_BOX_MIRROR:-http://deb.debian.org/debian}
suite=${BERTH_BOX_SUITE:-}
if [[ -z $suite ]]; then
	suite=$(. /etc/os-release 2>/dev/null && [[ ${ID:-} == debian ]] && echo "${VERSION_CODENAME:-}" || true)
	suite=${suite:-bookworm}
fi
image=berth-test/box:1
label=berth-test.box-hash

# What an AMI of the users' kind has, as far as the user-data and berth need it. debootstrap
# resolves dependencies but not virtual packages: python3-cffi-backend provides what
# python3-cryptography (cloud-init's oauthlib) needs.
box_packages=(
	systemd systemd-sysv dbus      # PID 1, and what systemctl talks to
	ca-certificates curl           # the user-data's IMDS calls
	python3 python3-venv           # the AWS CLI's venv
	cloud-init python3-cffi-backend # runs the user-data from a NoCloud seed
	procps                         # ps, for a look inside
)
# The AWS CLI from PyPI (v1; the user-data calls `aws s3 cp`), honouring AWS_ENDPOINT_URL.
awscli=awscli==1.45.11

# Units that cannot work in a container, or that would only add noise there: no
# consoles, no udev, no kernel tunables or modules, no time keeping, no periodic apt runs.
masked_units=(
	getty.target console-getty.service getty@tty1.service serial-getty@console.service
	systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket
	systemd-udev-trigger.service systemd-udev-settle.service systemd-hwdb-update.service
	systemd-modules-load.service kmod-static-nodes.service systemd-sysctl.service
	systemd-remount-fs.service systemd-firstboot.service systemd-machine-id-commit.service
	sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount
	dev-hugepages.mount dev-mqueue.mount proc-sys-fs-binfmt_misc.automount
	systemd-journald-audit.socket systemd-pstore.service systemd-timesyncd.service
	apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer
)

say() { echo "box-image: $*" >&2; }
die() {
	say "error: $*"
	exit 1
}

# The base rootfs into $1 (an empty directory), the AWS CLI's wheels downloaded into $2. Its
# text is hashed: changing this function rebuilds the base.
build_base() { # rootfs wheels
	local rootfs=$1 wheels=$2 include python
	include=$(
		IFS=,
		echo "${box_packages[*]}"
	)
	debootstrap --variant=minbase --include="$include" "$suite" "$rootfs" "$mirror"
	# The wheels for the rootfs's Python, downloaded by the host's pip (which reaches PyPI;
	# the rootfs may not trust this machine's certificate authorities).
	python=$(chroot "$rootfs" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
	python3 -m pip download -q --only-binary=:all: --implementation cp --python-version "$python" \
		--platform "manylinux2014_$(uname -m)" -d "$wheels" "$awscli"
	mkdir -p "$rootfs/tmp/wheels"
	cp "$wheels"/*.whl "$rootfs/tmp/wheels/"
	env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 chroot "$rootfs" sh -ec "
		python3 -m venv /opt/aws-cli
		/opt/aws-cli/bin/pip install -q --no-index --find-links /tmp/wheels '$awscli'
		ln -sf /opt/aws-cli/bin/aws /usr/local/bin/aws
		/usr/local/bin/aws --version"
	rm -rf "$rootfs/tmp/wheels"
	# No package lists and no downloaded .debs: an apt-get install of a local .deb (the
	# user-data's) then installs that package alone, and the image stays small.
	rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
	# systemd sets a machine id at each boot (an empty file is not a first boot).
	: >"$rootfs/etc/machine-id"
}

# Removes the build directory. debootstrap mounts /proc and /sys in the target (a failed run may
# leave them): unmount whatever is under it first, and never cross into another file system.
remove_work() {
	awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r -n 1 umount -l
	rm -rf --one-file-system "$work"
}

[[ $EUID -eq 0 ]] || die "run as root: debootstrap and chroot need it"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap (tests/setup.sh installs it)"
timeout 20 docker info >/dev/null 2>&1 || die "docker does not answer (tests/setup.sh starts dockerd)"

started=$SECONDS
base_hash=$(
	{
		printf '%s\n' "$suite" "$mirror" "$awscli" "${box_packages[@]}"
		declare -f build_base
	} | sha256sum | cut -c1-16
)
base=berth-test/box-base:$base_hash
tarball=$cache/base-$base_hash.tar

if ! docker image inspect "$base" >/dev/null 2>&1; then
	if [[ ! -f $tarball ]]; then
		say "building the base rootfs ($suite, debootstrap from $mirror; a few minutes) into $tarball"
		mkdir -p "$cache"
		work=$(mktemp -d "$cache/build.XXXXXX")
		trap remove_work EXIT
		mkdir "$work/rootfs" "$work/wheels"
		if ! build_base "$work/rootfs" "$work/wheels" >"$work/build.log" 2>&1; then
			tail -n 30 "$work/build.log" >&2
			tail -n 30 "$work/rootfs/debootstrap/debootstrap.log" >&2 2>/dev/null || true
			die "could not build the base rootfs (log above)"
		fi
		tar -C "$work/rootfs" --numeric-owner -cf "$tarball.part" .
		mv -f "$tarball.part" "$tarball"
		remove_work
		trap - EXIT
		# Only the current base is kept.
		find "$cache" -maxdepth 1 -name 'base-*.tar' ! -name "base-$base_hash.tar" -delete
		say "base rootfs built and cached in $((SECONDS - started)) s ($(du -h "$tarball" | cut -f1))"
	fi
	docker import "$tarball" "$base" >/dev/null
	say "imported $tarball as $base"
fi

# The box layer: the rootfs overlay, the masks, the stand-in docker.service enabled.
dockerfile="FROM $base
COPY . /
RUN systemctl mask ${masked_units[*]} >/dev/null 2>&1 \\
 && systemctl enable docker.service >/dev/null 2>&1 \\
 && chmod 0644 /etc/systemd/system/docker.service /etc/cloud/cloud.cfg.d/*.cfg
ENV container=docker
STOPSIGNAL SIGRTMIN+3
CMD [\"/sbin/init\"]
"
box_hash=$(
	{
		echo "$dockerfile"
		(cd "$here/rootfs" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
	} | sha256sum | cut -c1-16
)
have=$(docker image inspect -f "{{index .Config.Labels \"$label\"}}" "$image" 2>/dev/null || true)
if [[ $have != "$box_hash" ]]; then
	ctx=$(mktemp -d)
	trap 'rm -rf "$ctx"' EXIT
	cp -R "$here/rootfs/." "$ctx/"
	printf '%s' "$dockerfile" >"$ctx/Dockerfile"
	printf 'Dockerfile\n.dockerignore\n' >"$ctx/.dockerignore"
	if ! out=$(DOCKER_BUILDKIT=0 docker build -q --label "$label=$box_hash" -t "$image" "$ctx" 2>&1); then
		echo "$out" >&2
		die "could not build $image"
	fi
	rm -rf "$ctx"
	trap - EXIT
	# Drop the box images that earlier recipes left behind (the current base stays).
	docker image prune -f --filter "label=$label" >/dev/null 2>&1 || true
	docker images --format '{{.Repository}}:{{.Tag}}' berth-test/box-base |
		grep -vx "$base" | xargs -r docker rmi >/dev/null 2>&1 || true
	say "built $image ($box_hash) in $((SECONDS - started)) s"
fi
echo "$image"
