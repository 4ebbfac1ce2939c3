#!/usr/bin/env bash
# Builds leukoscope's Debian package for the boards: a cross build with Debian's
# cross gcc (linkers and qemu runners in .cargo/config.toml), then
# `cargo deb --target ... --no-build` (what goes in: [package.metadata.deb] in
# Cargo.toml; the files: board/). `apt install ./leukoscope_*.deb` is then the
# whole setup on the board (see board/README.md).
#
# Usage: tools/build-deb.sh [--setup-only] [TARGET ...]
#   TARGET  aarch64-unknown-linux-gnu or arm64 (default: Raspberry Pi 4/5 with a
#           64-bit OS, Jetson Orin with JetPack 6), armv7-unknown-linux-gnueabihf
#           or armhf (32-bit Raspberry Pi OS), or all.
#   --setup-only  install what is missing (cross gcc, qemu-user, rustup targets,
#           cargo-deb) and stop. No libclang: v4l's V4L2 bindings are pregenerated
#           (vendor/v4l2-sys-mit).
# Env: CARGO_TARGET_DIR (default target/cross: a build folder of its own, so that
#      a cross build never waits for, or blocks, the host build's lock on target/),
#      CARGO_BUILD_JOBS (default: cargo's).
# Output: the path of each .deb, one per line, on stdout (logs go to stderr).
# The binaries need glibc >= 2.35 on the board (Debian 12's cross gcc); see
# board/README.md for older systems.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target/cross}
CARGO_DEB_VERSION=3.8.0

log() { printf '[build-deb] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

# shellcheck source=tools/targets.sh
. "$repo/tools/targets.sh"

setup_only=0
targets=()
for a in "$@"; do
    case $a in
        --setup-only) setup_only=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) add_targets "$a" || die "unknown target '$a' (aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf, all)" ;;
    esac
done
[[ ${#targets[@]} -gt 0 ]] || targets=(aarch64-unknown-linux-gnu)

# Debian packages that provide each target's linker, libc and emulator.
apt_packages() {
    case $1 in
        aarch64-unknown-linux-gnu) echo "gcc-aarch64-linux-gnu libc6-dev-arm64-cross aarch64-linux-gnu-gcc qemu-aarch64" ;;
        armv7-unknown-linux-gnueabihf) echo "gcc-arm-linux-gnueabihf libc6-dev-armhf-cross arm-linux-gnueabihf-gcc qemu-arm" ;;
    esac
}

ensure_toolchain() {
    local missing=() t pkgs
    for t in "${targets[@]}"; do
        read -r gcc libc linker qemu <<<"$(apt_packages "$t")"
        command -v "$linker" >/dev/null || missing+=("$gcc" "$libc")
        command -v "$qemu" >/dev/null || missing+=(qemu-user)
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
        local sudo=""
        [[ $(id -u) -eq 0 ]] || sudo=sudo
        command -v apt-get >/dev/null || die "missing $pkgs and no apt-get: install them by hand"
        log "installing $pkgs"
        $sudo apt-get update -qq
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $pkgs >&2
    fi
    local installed
    installed=$(rustup target list --installed)
    for t in "${targets[@]}"; do
        grep -qx "$t" <<<"$installed" || { log "rustup target add $t"; rustup target add "$t" >&2; }
    done
    if ! cargo deb --version >/dev/null 2>&1; then
        log "cargo install --locked cargo-deb@$CARGO_DEB_VERSION (a few minutes, once)"
        cargo install --locked cargo-deb --version "$CARGO_DEB_VERSION" >&2
    fi
}

ensure_toolchain
[[ $setup_only -eq 0 ]] || exit 0

for t in "${targets[@]}"; do
    start=$(date +%s)
    log "cargo build --release --target $t (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    cargo build --release --target "$t" >&2
    log "cargo deb --target $t --no-build --strip"
    # --strip: cargo-deb keeps the debug info when the profile asks for some
    # ([profile.release] debug = "line-tables-only": ~150 MB). It strips with the
    # target's binutils (aarch64-linux-gnu-strip, arm-linux-gnueabihf-strip, which come
    # with the cross gcc) and prints the package's path last.
    deb=$(cargo deb --target "$t" --no-build --strip | tail -n 1)
    [[ -f $deb ]] || die "cargo deb did not produce a package for $t"
    log "$t: $deb ($(du -h "$deb" | cut -f1), $(($(date +%s) - start)) s)"
    echo "$deb"
done
