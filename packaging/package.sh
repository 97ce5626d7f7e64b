#!/usr/bin/env bash
# Builds the .deb (cargo-deb) and the .rpm (cargo-generate-rpm) from the static musl binary;
# prints their paths and sizes, the paths last, one a line.
#
#   packaging/package.sh [--target x86_64-unknown-linux-musl | aarch64-unknown-linux-musl] [--no-build]
#
# It runs build.sh first (cargo does nothing when the binary is up to date), so a package never
# carries a stale binary; --no-build packages the binary that is there, and builds only if it is
# missing. Packages go to $CARGO_TARGET_DIR/<target>/packages/ (default target/).
#
# BERTH_RELEASE_PUBKEY: the minisign public key the packages install as trusted
# (/usr/share/berth/keys/berth-release.pub); without it they trust none. BERTH_SIGNING_KEY: the
# matching secret key (packaging/sign.py's), which signs each package as <package>.minisig.
set -euo pipefail

die() {
    echo "package.sh: $*" >&2
    exit 1
}

target=x86_64-unknown-linux-musl
build=yes
while [ $# -gt 0 ]; do
    case "$1" in
        --target) [ $# -ge 2 ] || die "--target needs a value"; target=$2; shift 2 ;;
        --target=*) target=${1#--target=}; shift ;;
        --no-build) build=no; shift ;;
        -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
for tool in cargo-deb cargo-generate-rpm; do
    command -v "$tool" >/dev/null || die "$tool is missing: cargo install --locked $tool"
done

bin=$CARGO_TARGET_DIR/$target/release/berth
if [ "$build" = yes ] || [ ! -x "$bin" ]; then
    "$root/packaging/build.sh" --target "$target" >/dev/null
fi

# The trusted key goes into the packages; a build without one says so in the file, which no
# verifier takes for a key.
key_file=$root/packaging/keys/berth-release.pub
if [ -n "${BERTH_RELEASE_PUBKEY:-}" ]; then
    cp "$BERTH_RELEASE_PUBKEY" "$key_file"
else
    echo "untrusted comment: this build was given no release key (BERTH_RELEASE_PUBKEY)" >"$key_file"
fi

out=$CARGO_TARGET_DIR/$target/packages
rm -rf "$out"
mkdir -p "$out"
cd "$root"
# Both tools read the metadata in agent/Cargo.toml and map target/release/ to the target's dir.
cargo deb -p berth --no-build --target "$target" --output "$out/" >&2
cargo generate-rpm -p agent --target "$target" --output "$out/" >&2

shopt -s nullglob
debs=("$out"/*.deb)
rpms=("$out"/*.rpm)
[ ${#debs[@]} -eq 1 ] || die "expected one .deb in $out, found ${#debs[@]}"
[ ${#rpms[@]} -eq 1 ] || die "expected one .rpm in $out, found ${#rpms[@]}"
if [ -n "${BERTH_SIGNING_KEY:-}" ]; then
    python3 "$root/packaging/sign.py" sign "$BERTH_SIGNING_KEY" "${debs[0]}" "${rpms[0]}"
    echo "signed: ${debs[0]##*/}.minisig, ${rpms[0]##*/}.minisig" >&2
fi
for p in "${debs[0]}" "${rpms[0]}"; do
    size=$(stat -c %s "$p")
    echo "$(basename "$p"): $size bytes ($(numfmt --to=iec-i --suffix=B "$size"))" >&2
done
echo "${debs[0]}"
echo "${rpms[0]}"
