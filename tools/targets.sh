# shellcheck shell=bash
# Sourced by tools/build-deb.sh and tools/cross-test.sh: the board targets by name.

# target_triples NAME: the Rust target triple(s) NAME stands for (a triple, arm64,
# armhf or all), space-separated; fails on an unknown name.
target_triples() {
    case $1 in
        aarch64-unknown-linux-gnu | arm64) echo aarch64-unknown-linux-gnu ;;
        armv7-unknown-linux-gnueabihf | armhf) echo armv7-unknown-linux-gnueabihf ;;
        all) echo aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf ;;
        *) return 1 ;;
    esac
}

# add_targets NAME: appends NAME's triple(s) to the caller's `targets` array;
# fails (adding nothing) on an unknown name.
add_targets() {
    local t more
    t=$(target_triples "$1") || return 1
    read -ra more <<<"$t"
    targets+=("${more[@]}")
}
