#!/usr/bin/env bash
# Builds the static berth binary (musl, release profile: LTO, stripped) and checks it: statically
# linked, at most 17.5 MB. Prints its path last.
#
#   packaging/build.sh [--target x86_64-unknown-linux-musl | aarch64-unknown-linux-musl]
#
# Environment: CARGO_TARGET_DIR (default: the repository's target/; the binary lands in
# $CARGO_TARGET_DIR/<target>/release/berth), BERTH_MAX_BYTES (default 17500000).
# It installs nothing: packaging/test.sh does, or see packaging/README.md.
set -euo pipefail

die() {
    echo "build.sh: $*" >&2
    exit 1
}

target=x86_64-unknown-linux-musl
while [ $# -gt 0 ]; do
    case "$1" in
        --target) [ $# -ge 2 ] || die "--target needs a value"; target=$2; shift 2 ;;
        --target=*) target=${1#--target=}; shift ;;
        -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
# 17.5 MB: unwinding (the proxy contains a panic to its connection) added about 1 MB to a binary
# just under 15 MB, and the proxy's request path at opt-level 3 about 0.3 MB to one of 16.7 MB.
max_bytes=${BERTH_MAX_BYTES:-17500000}

# aws-lc-sys (TLS for the AWS SDK) compiles C, so each target needs a C compiler for
# musl. cc-rs picks musl-gcc by itself for x86_64; the aarch64 cross tools are set here.
case "$target" in
    x86_64-unknown-linux-musl)
        command -v musl-gcc >/dev/null || die "musl-gcc is missing: apt-get install musl-tools"
        ;;
    aarch64-unknown-linux-musl)
        command -v aarch64-linux-gnu-gcc >/dev/null ||
            die "aarch64-linux-gnu-gcc is missing: apt-get install gcc-aarch64-linux-gnu"
        export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
        export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar
        # Rust links musl's own crt and libc (self-contained); gcc only drives the link.
        export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
        ;;
    *) die "unsupported target $target (x86_64-unknown-linux-musl or aarch64-unknown-linux-musl)" ;;
esac
rustup target list --installed | grep -qx "$target" ||
    die "the Rust target is missing: rustup target add $target"

echo "building berth for $target into $CARGO_TARGET_DIR" >&2
cargo build --manifest-path "$root/Cargo.toml" --release --locked --target "$target" -p berth

bin=$CARGO_TARGET_DIR/$target/release/berth
[ -x "$bin" ] || die "no binary at $bin after the build"

# Static: no program interpreter and no shared libraries. readelf reads any architecture.
if readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
    die "$bin has a program interpreter: it is not static"
fi
if readelf -dW "$bin" | grep -q '(NEEDED)'; then
    die "$bin needs shared libraries: $(readelf -dW "$bin" | grep '(NEEDED)' | tr -s ' ')"
fi

size=$(stat -c %s "$bin")
echo "berth $target: $size bytes ($(numfmt --to=iec-i --suffix=B "$size"), limit $max_bytes bytes), static" >&2
[ "$size" -le "$max_bytes" ] || die "$bin is $size bytes, over the $max_bytes-byte limit"
echo "$bin"
