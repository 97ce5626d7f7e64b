#!/usr/bin/env bash
# packaging/test.sh: builds the static binary and both packages, installs the .deb on this
# machine and checks what it put where, checks the .rpm's contents, then removes the package so
# the machine is left as it was found. Needs root (dpkg). Installs the tools it lacks.
#
#   bash packaging/test.sh
#
# CARGO_TARGET_DIR is honoured (default: the repository's target/).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
target=x86_64-unknown-linux-musl
max_bytes=17500000
# Hardening must not quietly regress: systemd-analyze's exposure score, lower is better.
max_exposure=2.0
failures=0

step() { echo "==> $*" >&2; }
ok() { echo "    ok: $*" >&2; }
fail() {
    echo "    FAIL: $*" >&2
    failures=$((failures + 1))
}
die() {
    echo "test.sh: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "run as root: the test installs the .deb with dpkg"

# --- tools -------------------------------------------------------------------------------------
apt_install() {
    local missing=()
    local pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return
    step "installing ${missing[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >/dev/null ||
        { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
}
# command:package
apt_install musl-gcc:musl-tools rpm:rpm systemd-analyze:systemd readelf:binutils file:file
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
# Pinned: a packager's new release may change what the packages contain.
for tool in cargo-deb@3.8.0 cargo-generate-rpm@0.21.1; do
    if ! command -v "${tool%@*}" >/dev/null; then
        step "installing $tool (cargo install --locked; slow)"
        cargo install --locked "$tool"
    fi
done

# --- the machine as found ----------------------------------------------------------------------
if dpkg-query -W -f='${Status}' berth 2>/dev/null | grep -q 'installed'; then
    die "the berth package is already installed here; this test installs and purges it"
fi
for path in /usr/bin/berth /etc/berth /usr/lib/systemd/system/berth.service; do
    [ ! -e "$path" ] || die "$path exists but belongs to no berth package; the test would remove it"
done

# --- build -------------------------------------------------------------------------------------
step "building the binary and the packages"
mapfile -t packages < <(packaging/package.sh --target "$target")
[ ${#packages[@]} -eq 2 ] || die "package.sh printed ${#packages[@]} paths, expected a .deb and an .rpm"
deb=${packages[0]}
rpm=${packages[1]}
[[ $deb == *.deb && -f $deb ]] || die "no .deb: $deb"
[[ $rpm == *.rpm && -f $rpm ]] || die "no .rpm: $rpm"
version=$(cargo metadata --no-deps --format-version 1 |
    python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "berth"))')
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

# --- the .deb, installed -----------------------------------------------------------------------
installed=no
cleanup() {
    if [ "$installed" = yes ]; then
        dpkg --purge berth >/dev/null 2>&1 || echo "test.sh: could not purge berth: dpkg --purge berth" >&2
    fi
}
trap cleanup EXIT

step "installing $(basename "$deb") with dpkg"
dpkg -i "$deb" >/dev/null
installed=yes

check_file() { # path mode owner
    local got
    if ! got=$(stat -c '%a %U:%G' "$1" 2>/dev/null); then
        fail "$1: expected a file with mode $2 owned by $3; it is missing"
    elif [ "$got" != "$2 $3" ]; then
        fail "$1: expected mode $2 owner $3, got $got"
    else
        ok "$1 $got"
    fi
}
check_file /usr/bin/berth 755 root:root
check_file /usr/lib/systemd/system/berth.service 644 root:root
check_file /usr/lib/systemd/system/berth-proxy.service 644 root:root
check_file /usr/lib/systemd/system/berth-proxy.socket 644 root:root
check_file /usr/lib/systemd/system/berth.socket 644 root:root
check_file /etc/berth/berth.toml 644 root:root
check_file /usr/share/doc/berth/README.md 644 root:root

# The release key: installed as trusted when the build was given one, and the package's own
# signature checks with it; one byte changed does not.
if [ -n "${BERTH_RELEASE_PUBKEY:-}" ]; then
    check_file /usr/share/berth/keys/berth-release.pub 644 root:root
    if cmp -s /usr/share/berth/keys/berth-release.pub "$BERTH_RELEASE_PUBKEY"; then
        ok "the trusted key is the build's ($BERTH_RELEASE_PUBKEY)"
    else
        fail "/usr/share/berth/keys/berth-release.pub is not $BERTH_RELEASE_PUBKEY"
    fi
fi
if [ -n "${BERTH_SIGNING_KEY:-}" ]; then
    if said=$(/usr/bin/berth verify-package "$deb" 2>&1); then
        ok "berth verify-package: $said"
    else
        fail "the .deb's own signature does not verify: $said"
    fi
    tampered=$(mktemp)
    { cat "$deb"; printf x; } >"$tampered"
    cp "$deb.minisig" "$tampered.minisig"
    if said=$(/usr/bin/berth verify-package "$tampered" 2>&1); then
        fail "a changed .deb verified: $said"
    else
        ok "a changed .deb is refused: $said"
    fi
    rm -f "$tampered" "$tampered.minisig"
fi

if cmp -s /etc/berth/berth.toml packaging/berth.toml.example; then
    ok "/etc/berth/berth.toml is packaging/berth.toml.example"
else
    fail "/etc/berth/berth.toml differs from packaging/berth.toml.example"
fi
conffiles=$(dpkg-query -W -f='${Conffiles}' berth)
if grep -q '^ */etc/berth/berth.toml ' <<<"$conffiles"; then
    ok "/etc/berth/berth.toml is a conffile"
else
    fail "expected /etc/berth/berth.toml among the conffiles, got: ${conffiles:-none}"
fi
# Installed, not enabled: the real settings are written at boot (see packaging/README.md).
for unit in berth berth-proxy; do
    if [ -e "/etc/systemd/system/multi-user.target.wants/$unit.service" ]; then
        fail "$unit.service was enabled at install; expected it installed but not enabled"
    else
        ok "$unit.service installed, not enabled"
    fi
done

got_version=$(/usr/bin/berth --version 2>&1) || fail "/usr/bin/berth --version failed: $got_version"
if [ "$got_version" = "berth $version ($commit)" ]; then
    ok "berth --version: $got_version"
else
    fail "berth --version: expected 'berth $version ($commit)', got '$got_version'"
fi

# Static: no interpreter, no shared libraries; ldd and file agree.
if readelf -lW /usr/bin/berth | grep -q 'program interpreter'; then
    fail "/usr/bin/berth has a program interpreter; expected a static binary"
elif readelf -dW /usr/bin/berth | grep -q '(NEEDED)'; then
    fail "/usr/bin/berth needs shared libraries; expected none"
elif ! ldd /usr/bin/berth 2>&1 | grep -Eq 'statically linked|not a dynamic executable'; then
    fail "ldd does not call /usr/bin/berth static: $(ldd /usr/bin/berth 2>&1 | head -3)"
elif ! file -L /usr/bin/berth | grep -Eq 'static(-pie)? linked'; then
    fail "file does not call /usr/bin/berth static: $(file -L /usr/bin/berth)"
else
    ok "static: $(file -b -L /usr/bin/berth | grep -Eo 'static(-pie)? linked')"
fi
bin_size=$(stat -c %s /usr/bin/berth)
if [ "$bin_size" -le "$max_bytes" ]; then
    ok "binary $bin_size bytes (limit $max_bytes)"
else
    fail "binary is $bin_size bytes, expected at most $max_bytes"
fi

# The example parses: the only error allowed is the one past the config loader, about fetching
# a remote location in a local run (no AWS here). A config error names "config <path>".
plan_out=$(timeout 60 /usr/bin/berth plan --config /etc/berth/berth.toml --local 2>&1) || true
if grep -q 'config /etc/berth/berth.toml' <<<"$plan_out"; then
    fail "the example config does not load: $plan_out"
elif ! grep -q 'is remote, and this is a local run' <<<"$plan_out"; then
    fail "expected the example config to load and then stop at its remote locations, got: $plan_out"
else
    ok "the example config loads (berth plan --config ... --local stops at the remote release)"
fi

# Clean means nothing printed: systemd-analyze only warns (exit 0) about unknown keys.
verify_out=$(systemd-analyze verify /usr/lib/systemd/system/berth.service \
    /usr/lib/systemd/system/berth-proxy.service /usr/lib/systemd/system/berth-proxy.socket \
    /usr/lib/systemd/system/berth.socket 2>&1) && verify_rc=0 || verify_rc=$?
if [ "$verify_rc" -eq 0 ] && [ -z "$verify_out" ]; then
    ok "systemd-analyze verify: clean"
else
    fail "systemd-analyze verify (exit $verify_rc): $verify_out"
fi
declare -A exposure
for unit in berth berth-proxy; do
    score=$(systemd-analyze security --offline=yes "/usr/lib/systemd/system/$unit.service" 2>&1 |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    exposure[$unit]=${score:-?}
    if [ -z "$score" ]; then
        fail "systemd-analyze security printed no exposure level for $unit.service"
    elif awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }'; then
        ok "$unit.service exposure $score (limit $max_exposure)"
    else
        fail "$unit.service exposure $score, expected at most $max_exposure"
    fi
done

# --- the .rpm, listed --------------------------------------------------------------------------
step "checking $(basename "$rpm")"
expected_rpm_files="/etc/berth/berth.toml
/usr/bin/berth
/usr/lib/systemd/system/berth-proxy.service
/usr/lib/systemd/system/berth-proxy.socket
/usr/lib/systemd/system/berth.service
/usr/lib/systemd/system/berth.socket
/usr/share/berth/keys/berth-release.pub
/usr/share/doc/berth/PACKAGING.md
/usr/share/doc/berth/README.md"
rpm_files=$(rpm -qlp "$rpm" 2>/dev/null | sort)
if [ "$rpm_files" = "$expected_rpm_files" ]; then
    ok "rpm -qlp lists the $(wc -l <<<"$rpm_files") expected files"
else
    fail "rpm -qlp: expected
$expected_rpm_files
got
$rpm_files"
fi
if rpm -qp --configfiles "$rpm" 2>/dev/null | grep -qx /etc/berth/berth.toml; then
    ok "/etc/berth/berth.toml is a config file"
else
    fail "expected /etc/berth/berth.toml in rpm -qp --configfiles"
fi
# name|mode|owner|flags (c: config, n: noreplace)|sha256
rpm_meta=$(rpm -qp --qf '[%{FILENAMES}|%{FILEMODES:perms}|%{FILEUSERNAME}:%{FILEGROUPNAME}|%{FILEFLAGS:fflags}|%{FILEDIGESTS}\n]' "$rpm" 2>/dev/null)
check_rpm_file() { # path mode owner flags
    local line
    line=$(grep "^$1|" <<<"$rpm_meta" | cut -d'|' -f1-4)
    if [ "$line" = "$1|$2|$3|$4" ]; then
        ok "rpm $1 $2 $3 ${4:-(no flags)}"
    else
        fail "rpm $1: expected mode $2 owner $3 flags '${4}', got '${line:-missing}'"
    fi
}
check_rpm_file /usr/bin/berth -rwxr-xr-x root:root ""
check_rpm_file /usr/lib/systemd/system/berth.service -rw-r--r-- root:root ""
check_rpm_file /usr/lib/systemd/system/berth-proxy.service -rw-r--r-- root:root ""
check_rpm_file /usr/lib/systemd/system/berth-proxy.socket -rw-r--r-- root:root ""
check_rpm_file /usr/lib/systemd/system/berth.socket -rw-r--r-- root:root ""
check_rpm_file /etc/berth/berth.toml -rw-r--r-- root:root cn
rpm_sha=$(grep '^/usr/bin/berth|' <<<"$rpm_meta" | cut -d'|' -f5)
if [ "$rpm_sha" = "$(sha256sum /usr/bin/berth | cut -d' ' -f1)" ]; then
    ok "the .rpm carries the same binary as the .deb"
else
    fail "the .rpm's /usr/bin/berth (sha256 $rpm_sha) differs from the .deb's"
fi
rpm_arch=$(rpm -qp --qf '%{ARCH} %{VERSION}' "$rpm" 2>/dev/null)
if [ "$rpm_arch" = "x86_64 $version" ]; then
    ok "rpm arch and version: $rpm_arch"
else
    fail "rpm arch and version: expected 'x86_64 $version', got '$rpm_arch'"
fi
if rpm -qp --scripts "$rpm" 2>/dev/null | grep -q 'disable --now berth.service berth.socket berth-proxy.service berth-proxy.socket'; then
    ok "rpm stops and disables the units on erase"
else
    fail "expected the rpm's preuninstall scriptlet to disable --now all four units"
fi
if rpm -qp --scripts "$rpm" 2>/dev/null | grep -q 'try-reload-or-restart berth-proxy.service' \
    && rpm -qp --scripts "$rpm" 2>/dev/null | grep -q 'try-restart berth.service'; then
    ok "rpm restarts the running agent and proxy on an upgrade"
else
    fail "expected the rpm's postinstall scriptlet to reload the proxy and try-restart the agent on an upgrade"
fi
if dpkg-deb -I "$deb" postinst 2>/dev/null | grep -q 'try-reload-or-restart berth-proxy.service' \
    && dpkg-deb -I "$deb" postinst 2>/dev/null | grep -q 'try-restart berth.service'; then
    ok "deb restarts the running agent and proxy on an upgrade"
else
    fail "expected the .deb's postinst to reload the proxy and try-restart the agent on an upgrade"
fi

# --- removal -----------------------------------------------------------------------------------
step "purging the package"
dpkg --purge berth >/dev/null
installed=no
for path in /usr/bin/berth /etc/berth /usr/lib/systemd/system/berth.service \
    /usr/lib/systemd/system/berth-proxy.service /usr/lib/systemd/system/berth-proxy.socket \
    /usr/lib/systemd/system/berth.socket /usr/share/doc/berth; do
    if [ -e "$path" ]; then fail "$path is still there after dpkg --purge"; fi
done
if dpkg-query -W -f='${Status}' berth 2>/dev/null | grep -q 'installed'; then
    fail "dpkg still lists berth as installed after the purge"
else
    ok "purged: nothing left"
fi

# --- summary -----------------------------------------------------------------------------------
echo "packaging summary ($target):" >&2
echo "  binary  $bin_size bytes ($(numfmt --to=iec-i --suffix=B "$bin_size")), limit $max_bytes" >&2
echo "  .deb    $(stat -c %s "$deb") bytes  $deb" >&2
echo "  .rpm    $(stat -c %s "$rpm") bytes  $rpm" >&2
echo "  exposure: berth.service ${exposure[berth]}, berth-proxy.service ${exposure[berth-proxy]}" >&2
if [ "$failures" -gt 0 ]; then
    echo "packaging: $failures check(s) FAILED" >&2
    exit 1
fi
echo "packaging: all checks passed" >&2
