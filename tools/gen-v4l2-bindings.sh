#!/usr/bin/env bash
# Regenerates the pregenerated V4L2 bindings of the vendored v4l2-sys-mit crate
# (vendor/v4l2-sys-mit/src/bindings/<arch>.rs) with the real, unpatched crate:
# a scratch cargo project outside the repository depends on v4l2-sys-mit =0.3.0
# from crates.io, whose build.rs runs bindgen 0.65 on <linux/videodev2.h> for
# each target; its $OUT_DIR/v4l2_bindings.rs is copied here. Not run by CI: the
# build itself never runs bindgen (see vendor/v4l2-sys-mit/README.md).
#
# Usage: tools/gen-v4l2-bindings.sh
# Needs (this script only, not the build): libclang-dev, the kernel headers of
# each target (linux-libc-dev, and for the ARM targets Debian's cross packages
#   apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
#                   gcc-arm-linux-gnueabihf libc6-dev-armhf-cross ),
# rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf,
# and network access to crates.io.
# Env: GEN_DIR (default: a fresh mktemp -d, removed at the end) for the scratch
#      project and its target folder.
# Then: git diff --stat vendor/v4l2-sys-mit/src/bindings, and build each target.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dest=$repo/vendor/v4l2-sys-mit/src/bindings

# Rust target triple -> the file its target_arch selects in src/lib.rs.
targets=(
    "x86_64-unknown-linux-gnu x86_64"
    "aarch64-unknown-linux-gnu aarch64"
    "armv7-unknown-linux-gnueabihf arm"
)

if [[ -n ${GEN_DIR:-} ]]; then
    gen=$GEN_DIR
    mkdir -p "$gen"
else
    gen=$(mktemp -d)
    trap 'rm -rf "$gen"' EXIT
fi
case $gen/ in "$repo"/*) echo "GEN_DIR must be outside the repository (its [patch] would apply)" >&2; exit 2 ;; esac

mkdir -p "$gen/src"
cat >"$gen/Cargo.toml" <<'TOML'
[package]
name = "gen-v4l2-bindings"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
v4l2-sys-mit = "=0.3.0"

[workspace]
TOML
: >"$gen/src/lib.rs"

for entry in "${targets[@]}"; do
    read -r triple arch <<<"$entry"
    echo "== $triple -> bindings/$arch.rs" >&2
    rm -rf "$gen/target/$triple/release/build"/v4l2-sys-mit-*
    # A library build only: the build script runs bindgen (with clang's --target=$triple),
    # nothing is linked for the target.
    CARGO_TARGET_DIR=$gen/target cargo build --release --quiet \
        --manifest-path "$gen/Cargo.toml" --target "$triple"
    out=$(ls "$gen/target/$triple/release/build"/v4l2-sys-mit-*/out/v4l2_bindings.rs)
    [[ $(wc -l <<<"$out") -eq 1 ]] || { echo "expected one v4l2_bindings.rs, found: $out" >&2; exit 1; }
    cp "$out" "$dest/$arch.rs"
    echo "   $(wc -c <"$dest/$arch.rs") bytes, $(head -1 "$dest/$arch.rs")" >&2
done
