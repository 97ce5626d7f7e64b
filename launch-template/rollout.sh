#!/usr/bin/env bash
# launch-template/rollout.sh: release RELEASE to the berth group of STACK, one canary first;
# or upgrade berth itself on every instance of the group, one at a time.
#
#   rollout.sh STACK RELEASE
#   rollout.sh --berth STACK s3://BUCKET/PREFIX/berth/KEY.deb|.rpm
#
# --berth (operators' credentials: the deploy role cannot send the operations document): sends
# the operations document's self-upgrade (download from the artifact location, the signature
# KEY.minisig checked against the keys berth trusts, berth and not older, install: the agent
# and the proxy restart onto the new binary and the app keeps running) to one instance at a
# time, stopping at the first failure (MaxConcurrency 1, MaxErrors 0), then checks every
# target. Nothing to roll back: an instance whose install failed still runs its old berth.
#
# 1. writes RELEASE to the release parameter (instances that boot from now on run it);
# 2. sends `berth upgrade --release RELEASE` (the stack's SSM document) to one InService
#    instance, waits for the command to succeed and for the load balancer to call that target
#    healthy;
# 3. sends it to the whole group (the tag aws:autoscaling:groupName), one instance at a time,
#    stopping at the first failure (MaxConcurrency 1, MaxErrors 0), and checks every target;
# 4. on any failure after step 1: writes the previous release back and sends
#    `berth upgrade --release PREVIOUS` to the whole group, then exits 1.
#
# With BERTH_ROLLOUT_SMOKE (a shell command, e.g. a curl through the load balancer with the
# header X-Berth-Preview: $BERTH_PREVIEW_TOKEN), step 2 is preceded by a preview: every
# instance starts RELEASE beside the serving one (`berth upgrade --preview`; ordinary requests
# stay on the serving release, only requests carrying its token reach it, on whichever instance
# the load balancer picks: the instances derive one token, under the stack's preview key), the command runs, and only if it succeeds does the canary take RELEASE
# (`berth promote`), then the rest (their upgrade switches to the release they preview). A
# preview left behind by a failure ends by itself after the agent's upgrade.preview_secs.
#
# Releases (berth release create, into the stack's ReleaseStore) are used as berth rollout uses
# them: before step 1, the release's manifest is looked for (without one it floats: its files
# are read as they are on each instance, said loudly), and the way back, the release serving
# now, is checked whole: each object its manifest pins still at its version (S3, SSM) and each
# image still in ECR by digest. A missing piece stops the rollout before anything moves,
# unless BERTH_ROLLOUT_ALLOW_NO_ROLLBACK=1 (then the instances are told so too). What the
# rollout did is recorded beside the release (<store>/reports/RELEASE/), as berth's does.
#
# berth rolls an instance back by itself when the new release fails its health there, so a
# failed command leaves that instance on the previous release; step 4 brings back the ones
# that had upgraded successfully. Needs the AWS CLI with credentials and a region (the deploy
# role of berth.yaml allows exactly these calls), and jq to read manifests. Prints what it
# does; never a secret.
set -euo pipefail

# How long one instance's upgrade may take, and how long a target may take to turn healthy.
command_limit=${BERTH_ROLLOUT_COMMAND_SECS:-1800}
health_limit=${BERTH_ROLLOUT_HEALTH_SECS:-180}
poll=${BERTH_ROLLOUT_POLL_SECS:-5}

say() {
	echo "rollout: $*" >&2
}

usage() {
	echo "usage: rollout.sh STACK RELEASE | rollout.sh --berth STACK s3://BUCKET/KEY.deb|.rpm" >&2
	exit 2
}

self_upgrade=no
if [[ ${1:-} == --berth ]]; then
	(($# == 3)) || usage
	self_upgrade=yes
	stack=$2
	package=$3
	if [[ ! $package =~ ^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[A-Za-z0-9._/+-]{1,900}[.](deb|rpm)$ ]]; then
		say "'$package' is not s3://bucket/key.deb or .rpm"
		exit 2
	fi
else
	(($# == 2)) || usage
	stack=$1
	release=$2
	if [[ ! $release =~ ^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$ ]]; then
		say "'$release' is not a release id (letters, digits, . _ + -)"
		exit 2
	fi
fi

output() { # key
	aws cloudformation describe-stacks --stack-name "$stack" \
		--query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text
}

group=$(output AutoScalingGroupName)
document=$(output UpgradeDocumentName)
parameter=$(output ReleaseParameterName)
target_group=$(output TargetGroupArn)
store=$(output ReleaseStore)
for v in group document parameter target_group store; do
	if [[ -z ${!v} || ${!v} == None ]]; then
		say "stack $stack has no output for $v"
		exit 1
	fi
done
store_bucket=${store#s3://}
store_bucket=${store_bucket%%/*}
store_prefix=${store#s3://"$store_bucket"/}
allow_no_rollback=${BERTH_ROLLOUT_ALLOW_NO_ROLLBACK:-0}
# The store's bucket must be this account's (the stack's): every S3 call says so.
account=$(aws sts get-caller-identity --query Account --output text)

# Prints release ID's manifest, or nothing when the store has none; any other failure to
# look is an error (a missing manifest and a refused call must not read the same).
manifest_of() { # id
	local key="${store_prefix}releases/$1.json" err tmp
	if err=$(aws s3api head-object --bucket "$store_bucket" --key "$key" \
		--expected-bucket-owner "$account" 2>&1 >/dev/null); then
		tmp=$(mktemp)
		aws s3api get-object --bucket "$store_bucket" --key "$key" \
			--expected-bucket-owner "$account" "$tmp" >/dev/null && cat "$tmp"
		rm -f "$tmp"
	elif ! grep -qE '404|Not Found' <<<"$err"; then
		say "cannot look for s3://$store_bucket/$key: $err"
		return 1
	fi
}

# Prints one line per piece of the release whose manifest is on stdin that is gone (nothing:
# it can still be deployed whole).
missing_of() {
	local manifest location version image digest host registry repository
	manifest=$(cat)
	while IFS=$'\t' read -r location version; do
		case $location in
		s3://*)
			local bucket=${location#s3://} key
			key=${bucket#*/}
			bucket=${bucket%%/*}
			aws s3api head-object --bucket "$bucket" --key "$key" --version-id "$version" \
				--expected-bucket-owner "$account" >/dev/null 2>&1 || echo "$location version $version"
			;;
		ssm:*)
			aws ssm get-parameter --name "${location#ssm:}:$version" >/dev/null 2>&1 ||
				echo "$location version $version"
			;;
		esac
	done < <(jq -r '([.compose] + .env_files + .sources)[] | [.location, (.version // "")] | @tsv' <<<"$manifest")
	while IFS=$'\t' read -r image digest; do
		host=${image%%/*}
		# ECR: <account>.dkr.ecr.<region>.amazonaws.com/<repository>[:tag]
		if [[ $host =~ ^([0-9]{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com$ ]]; then
			registry=${BASH_REMATCH[1]}
			repository=${image#*/}
			repository=${repository%%[:@]*}
			aws ecr describe-images --region "${BASH_REMATCH[2]}" --registry-id "$registry" \
				--repository-name "$repository" \
				--image-ids "imageDigest=$digest" >/dev/null 2>&1 || echo "image $image ($digest)"
		else
			say "not checked (not in ECR): image $image"
		fi
	done < <(jq -r '.images[] | [.image, .digest] | @tsv' <<<"$manifest")
}

# Adds what the rollout did beside the release, as berth rollout does.
report() { # release, event, previous
	local at body
	at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
	body=$(mktemp)
	printf '{"release":"%s","by":"rollout","event":"%s","at":"%s","previous":"%s"}\n' \
		"$1" "$2" "$at" "$3" >"$body"
	aws s3api put-object --bucket "$store_bucket" --expected-bucket-owner "$account" \
		--key "${store_prefix}reports/$1/$(date +%s%N)-rollout-${2// /-}.json" \
		--body "$body" >/dev/null ||
		say "could not record the outcome beside release $1"
	rm -f "$body"
}

# Sends the document's upgrade to the given targets; prints the command id.
send() { # release, then send-command's target arguments
	send_action upgrade "$@"
}

# Sends the document's ACTION (upgrade, preview, promote) to the given targets; prints the
# command id.
send_action() { # action, release, then send-command's target arguments
	local action=$1 to=$2 extra=""
	shift 2
	if [[ $allow_no_rollback == 1 ]]; then
		extra=",allowNoRollback=true"
	fi
	# Every instance's preview ends at one time, so that they derive one token.
	if [[ $action == preview ]]; then
		extra="$extra,previewUntil=$(($(date +%s) + 3600))"
	fi
	aws ssm send-command --document-name "$document" \
		--parameters "action=$action,release=$to$extra" \
		--comment "berth $action --release $to" \
		--timeout-seconds 600 "$@" \
		--query Command.CommandId --output text
}

# Waits until a command is done; succeeds only when it succeeded on every target.
wait_command() { # command id
	local id=$1 status start=$SECONDS
	while :; do
		status=$(aws ssm list-commands --command-id "$id" --query 'Commands[0].Status' --output text)
		case $status in
		Success) return 0 ;;
		Pending | InProgress | Cancelling) ;;
		*)
			say "command $id: $status"
			aws ssm list-command-invocations --command-id "$id" --details \
				--query 'CommandInvocations[].[InstanceId,Status,CommandPlugins[0].Output]' \
				--output text >&2 || true
			return 1
			;;
		esac
		if ((SECONDS - start > command_limit)); then
			say "command $id still $status after ${command_limit}s"
			return 1
		fi
		sleep "$poll"
	done
}

# Waits until the load balancer calls each given instance healthy (all of them: none given).
wait_healthy() { # instance ids...
	local start=$SECONDS states targets=()
	local id
	for id in "$@"; do
		targets+=("Id=$id")
	done
	while :; do
		if ((${#targets[@]})); then
			states=$(aws elbv2 describe-target-health --target-group-arn "$target_group" \
				--targets "${targets[@]}" \
				--query 'TargetHealthDescriptions[].TargetHealth.State' --output text)
		else
			states=$(aws elbv2 describe-target-health --target-group-arn "$target_group" \
				--query 'TargetHealthDescriptions[].TargetHealth.State' --output text)
		fi
		# Every word "healthy" (draining ones are on their way out after a scale-in).
		if [[ -n $states ]] && ! tr '\t' '\n' <<<"$states" | grep -qvE '^(healthy|draining)$'; then
			return 0
		fi
		if ((SECONDS - start > health_limit)); then
			say "targets not healthy after ${health_limit}s: $states"
			return 1
		fi
		sleep "$poll"
	done
}

if [[ $self_upgrade == yes ]]; then
	say "group $group: berth from $package, one instance at a time"
	operations=$(output OperationsDocumentName)
	id=$(aws ssm send-command --document-name "$operations" \
		--parameters "action=self-upgrade,package=$package" \
		--comment "berth self-upgrade" --timeout-seconds 600 \
		--targets "Key=tag:aws:autoscaling:groupName,Values=$group" \
		--max-concurrency 1 --max-errors 0 \
		--query Command.CommandId --output text)
	wait_command "$id"
	wait_healthy
	say "every instance of $group runs berth from $package"
	exit 0
fi

previous=$(aws ssm get-parameter --name "$parameter" --query Parameter.Value --output text)
say "group $group: release $previous -> $release"

# Releases and their way back, before anything moves.
command -v jq >/dev/null 2>&1 || {
	say "jq is needed to read release manifests"
	exit 1
}
new=$(manifest_of "$release")
if [[ -z $new ]]; then
	say "WARNING: release $release has no manifest in $store: its files float (berth release create makes one)"
fi
back=""
if [[ $previous != "$release" ]]; then
	back=$(manifest_of "$previous")
fi
if [[ $previous == "$release" ]]; then
	:
elif [[ -z $back ]]; then
	say "the way back, release $previous, has no manifest: it floats, and is not checked"
else
	gone=$(missing_of <<<"$back")
	if [[ -n $gone ]]; then
		if [[ $allow_no_rollback != 1 ]]; then
			say "no way back: release $previous cannot be restored whole; gone:"
			echo "$gone" >&2
			say "nothing was changed (BERTH_ROLLOUT_ALLOW_NO_ROLLBACK=1 goes on without one)"
			exit 3
		fi
		say "WARNING: NO WAY BACK to $previous (going on: BERTH_ROLLOUT_ALLOW_NO_ROLLBACK=1); gone:"
		echo "$gone" >&2
	fi
fi

# Any failure from here on (set -e ends the script, wherever it happens) rolls back.
finish() {
	local rc=$? id
	if ((rc == 0)); then
		return
	fi
	set +e
	say "FAILED; rolling back to $previous"
	aws ssm put-parameter --name "$parameter" --value "$previous" --type String --overwrite >/dev/null
	# Every instance, one at a time; MaxErrors 100%: one that cannot go back must not keep
	# the others from going back.
	if id=$(send "$previous" --targets "Key=tag:aws:autoscaling:groupName,Values=$group" \
		--max-concurrency 1 --max-errors 100%) && wait_command "$id" && wait_healthy; then
		say "rolled back to $previous"
		report "$release" "rolled back" "$previous"
	else
		say "the rollback to $previous did not finish cleanly; see the command output above"
		report "$release" "rollback incomplete" "$previous"
	fi
	exit 1
}

trap finish EXIT
aws ssm put-parameter --name "$parameter" --value "$release" --type String --overwrite >/dev/null

canary=$(aws autoscaling describe-auto-scaling-groups --auto-scaling-group-names "$group" \
	--query "AutoScalingGroups[0].Instances[?LifecycleState=='InService'] | [0].InstanceId" \
	--output text)
if [[ -z $canary || $canary == None ]]; then
	say "group $group has no InService instance"
	exit 1
fi

if [[ -n ${BERTH_ROLLOUT_SMOKE:-} ]]; then
	say "every instance of $group: $release in preview (ordinary requests stay on $previous)"
	id=$(send_action preview "$release" --targets "Key=tag:aws:autoscaling:groupName,Values=$group" \
		--max-errors 0)
	wait_command "$id"
	# The preview's token, from each instance's answer: one for the fleet (one preview key).
	tokens=$(aws ssm list-command-invocations --command-id "$id" --details \
		--query 'CommandInvocations[].CommandPlugins[0].Output' --output text |
		grep -oE '"preview_token": "[0-9]+\.[0-9a-f]{32}"' | sort -u)
	if [[ $(wc -l <<<"$tokens") != 1 || -z $tokens ]]; then
		say "the instances answered $(grep -c . <<<"$tokens") preview tokens: upgrade.preview_key must name one key for the fleet"
		exit 1
	fi
	token=${tokens#*: \"}
	token=${token%\"}
	say "smoke test against the preview: $BERTH_ROLLOUT_SMOKE"
	BERTH_PREVIEW_RELEASE=$release BERTH_PREVIEW_TOKEN=$token bash -c "$BERTH_ROLLOUT_SMOKE"
	say "canary $canary: berth promote"
	id=$(send_action promote "$release" --instance-ids "$canary")
else
	say "canary $canary: berth upgrade --release $release"
	id=$(send "$release" --instance-ids "$canary")
fi
wait_command "$id"
wait_healthy "$canary"
say "canary $canary is healthy on $release"

say "the rest of $group, one at a time"
id=$(send "$release" --targets "Key=tag:aws:autoscaling:groupName,Values=$group" \
	--max-concurrency 1 --max-errors 0)
wait_command "$id"
wait_healthy
say "every instance of $group runs $release"
report "$release" released "$previous"
