#!/usr/bin/env bash
# Builds the .deb (cargo-deb) and the .rpm (cargo-generate-rpm) from the static musl binary;
# prints their paths and sizes, the paths last, one a line.
#
#   packaging/package.sh [--target x86_64-unknown-linux-musl | aarch64-unknown-linux-musl] [--no-build]
#
# It runs build.sh first (cargo does nothing when the binary is up to date), so a package never
# carries a stale binary; --no-build packages the binary that is there, and builds only if it is
# missing. Packages go to $CARGO_TARGET_DIR/<target>/packages/ (default target/).
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
for p in "${debs[0]}" "${rpms[0]}"; do
    size=$(stat -c %s "$p")
    echo "$(basename "$p"): $size bytes ($(numfmt --to=iec-i --suffix=B "$size"))" >&2
done
echo "${debs[0]}"
echo "${rpms[0]}"
