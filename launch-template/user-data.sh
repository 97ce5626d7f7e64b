#!/bin/bash
# launch-template/user-data.sh: what an instance of the berth AutoScaling group runs at its
# first boot (cloud-init runs the launch template's user-data once, as root).
#
# This file is the one source of truth for the script. berth.yaml carries a copy of it (every
# line after this file's first), put there by embed.py and checked by tests/lint.sh. In the
# launch template, a few lines that CloudFormation fills in come first and set:
#
#   BERTH_CONFIG          the text of /etc/berth/berth.toml (required)
#   BERTH_STRATEGY        proxy | drain; proxy also starts berth-proxy.socket and .service (default proxy)
#   BERTH_PACKAGE_URI     s3://bucket/key of a berth .rpm, .deb or static binary; used only
#                         when the AMI has no /usr/bin/berth (default: none)
#   BERTH_PACKAGE_SHA256  the package's sha256, checked before it is installed
#   BERTH_REGION          the region, for the AWS CLI's download (default: from IMDS)
#   BERTH_HEALTH_LISTEN   where berth.socket listens: health.listen of the config (default: the
#                         unit's 0.0.0.0:8081)
#   BERTH_ARTIFACTS       s3://bucket/prefix/ the operations document may install berth from
#                         (written to /etc/berth/artifacts; none: no self-upgrade)
#
# Run by hand (as root) with the same variables in the environment, for example:
#   BERTH_CONFIG="$(cat berth.toml)" BERTH_STRATEGY=drain bash user-data.sh
#
# Running it again is safe: it installs only what is missing, rewrites the config only when it
# changed (and then restarts the agent), and leaves running services running. It prints no
# secret: the config holds only locations, and the env files are fetched by berth itself.
set -euo pipefail

log() {
	echo "berth-user-data: $*" >&2
}

die() {
	log "error: $*"
	exit 1
}

# Everything this script says also goes to a file, for a look through SSM Session Manager.
exec > >(tee -a /var/log/berth-user-data.log) 2>&1

config=${BERTH_CONFIG:-}
strategy=${BERTH_STRATEGY:-proxy}
package_uri=${BERTH_PACKAGE_URI:-}
package_sha256=${BERTH_PACKAGE_SHA256:-}
region=${BERTH_REGION:-}
health_listen=${BERTH_HEALTH_LISTEN:-}
# Where berth's own packages may come from (the operations document's self-upgrade).
artifacts=${BERTH_ARTIFACTS:-}

[[ -n $config ]] || die "BERTH_CONFIG (the text of berth.toml) is empty"
case $strategy in
proxy | drain) ;;
*) die "BERTH_STRATEGY must be proxy or drain, not '$strategy'" ;;
esac

# IMDSv2 only (the launch template requires tokens): the region when none was given, the
# account, the VPC's range. At the endpoint the AWS SDKs and berth take from
# AWS_EC2_METADATA_SERVICE_ENDPOINT, when it is set.
imds() { # path
	local token endpoint=${AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254}
	endpoint=${endpoint%/}
	token=$(curl -fsS --connect-timeout 2 --max-time 10 -X PUT \
		-H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "$endpoint/latest/api/token")
	curl -fsS --connect-timeout 2 --max-time 10 -H "X-aws-ec2-metadata-token: $token" \
		"$endpoint/latest/$1"
}

# The package manager's install command for local files, or nothing.
pkg_install() { # files...
	if command -v dnf >/dev/null 2>&1; then
		dnf install -y -q "$@"
	elif command -v yum >/dev/null 2>&1; then
		yum install -y -q "$@"
	elif command -v apt-get >/dev/null 2>&1; then
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
	else
		die "no dnf, yum or apt-get to install $*"
	fi
}

install_docker() {
	if command -v docker >/dev/null 2>&1 || systemctl cat docker.service >/dev/null 2>&1; then
		return 0
	fi
	log "installing docker"
	if command -v apt-get >/dev/null 2>&1; then
		apt-get update -q
		pkg_install docker.io
	else
		pkg_install docker
	fi
}

# Downloads the package from S3, checks its sha256, installs it.
install_berth_from_s3() {
	local dir file
	[[ $package_uri == s3://?*/?* ]] ||
		die "/usr/bin/berth is not on this AMI and BERTH_PACKAGE_URI ('$package_uri') is not s3://bucket/key"
	[[ $package_sha256 =~ ^[0-9a-f]{64}$ ]] ||
		die "BERTH_PACKAGE_SHA256 must be the package's sha256 (64 lowercase hex digits)"
	command -v aws >/dev/null 2>&1 || die "the AWS CLI is needed to download $package_uri"
	if [[ -z $region ]]; then
		region=$(imds meta-data/placement/region)
	fi
	# Only from a bucket this instance's account owns: one of that name owned by anyone else
	# (deleted and registered again) answers 403.
	account=$(imds dynamic/instance-identity/document |
		sed -n 's/.*"accountId" *: *"\([0-9]\{12\}\)".*/\1/p')
	[[ -n $account ]] || die "no account id in the instance identity document"
	bucket=${package_uri#s3://}
	key=${bucket#*/}
	bucket=${bucket%%/*}
	dir=$(mktemp -d)
	# The file keeps the object's name: dnf and apt-get tell packages by their extension.
	file=$dir/${package_uri##*/}
	log "downloading $package_uri"
	aws --region "$region" s3api get-object --bucket "$bucket" --key "$key" \
		--expected-bucket-owner "$account" "$file" >/dev/null
	if ! echo "$package_sha256  $file" | sha256sum --check --status; then
		rm -rf "$dir"
		die "$package_uri does not have the sha256 $package_sha256; not installed"
	fi
	case $file in
	*.rpm | *.deb) pkg_install "$file" ;;
	*)
		# A bare binary: the systemd units must already be on the AMI.
		systemctl cat berth.service >/dev/null 2>&1 ||
			die "$package_uri is a bare binary, and berth.service is not installed; use the .rpm or .deb"
		install -m 0755 "$file" /usr/bin/berth
		;;
	esac
	rm -rf "$dir"
	log "installed $(/usr/bin/berth --version)"
}

# Writes berth.toml when it differs from what is there; prints "changed" when it did.
write_config() {
	local target=/etc/berth/berth.toml tmp
	install -d -m 0755 /etc/berth
	if [[ -f $target ]] && [[ $(cat "$target") == "$config" ]]; then
		return 0
	fi
	tmp=$(mktemp /etc/berth/.berth.toml.XXXXXX)
	printf '%s\n' "$config" >"$tmp"
	chmod 0644 "$tmp"
	mv -f "$tmp" "$target"
	echo changed
}

install_docker
if [[ -x /usr/bin/berth ]]; then
	log "using $(/usr/bin/berth --version) from the AMI"
else
	install_berth_from_s3
fi
changed=$(write_config)
# The self-upgrade installs only packages from here (and only signed ones).
if [[ -n $artifacts ]]; then
	printf '%s\n' "$artifacts" >/etc/berth/artifacts
	chmod 0644 /etc/berth/artifacts
fi

systemctl daemon-reload
systemctl enable docker.service
# --no-block: berth.service is Type=notify and is ready only once the release runs, which
# can take minutes; cloud-init need not wait, the lifecycle hook tells the group.
if [[ $strategy == proxy ]]; then
	# The proxy first: it owns the traffic port before the agent routes to anything.
	systemctl enable --now --no-block berth-proxy.socket berth-proxy.service
elif systemctl cat berth-proxy.service >/dev/null 2>&1; then
	systemctl disable --now --no-block berth-proxy.socket berth-proxy.service
fi
# berth.socket holds the health port, so that the checker never finds it closed while the agent
# restarts (a restart leaves the app running; the next agent resumes it). Enabled, not started
# here: berth.service starts it (Wants=), and a check arriving before would start the agent early.
# It must listen where health.listen says (BERTH_HEALTH_LISTEN); the unit's default is 0.0.0.0:8081.
if [[ -n $health_listen ]]; then
	mkdir -p /etc/systemd/system/berth.socket.d
	printf '[Socket]\nListenStream=\nListenStream=%s\n' "$health_listen" \
		>/etc/systemd/system/berth.socket.d/50-health-listen.conf
	systemctl daemon-reload
fi
# Only this host and the VPC (the load balancer's health checks come from its addresses there)
# reach the health port: not the app's containers through Docker's bridge, nor anyone else.
mac=$(imds meta-data/mac 2>/dev/null || true)
vpc=""
if [[ -n $mac ]]; then
	vpc=$(imds "meta-data/network/interfaces/macs/$mac/vpc-ipv4-cidr-blocks" 2>/dev/null | tr '\n' ' ' || true)
fi
if [[ $vpc =~ ^[0-9./\ ]+$ ]]; then
	mkdir -p /etc/systemd/system/berth.socket.d
	printf '[Socket]\nIPAddressDeny=any\nIPAddressAllow=localhost %s\n' "$vpc" \
		>/etc/systemd/system/berth.socket.d/60-ip-allow.conf
	systemctl daemon-reload
else
	log "no VPC range in the instance metadata: the health port takes connections from anywhere"
fi
systemctl enable berth.socket
if [[ $changed == changed ]]; then
	log "wrote /etc/berth/berth.toml; (re)starting berth.service"
	systemctl enable berth.service
	systemctl restart --no-block berth.service
else
	systemctl enable --now --no-block berth.service
fi
log "done (strategy $strategy)"
