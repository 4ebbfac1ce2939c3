#!/usr/bin/env bash
# Runs `leukoscope camera-check` against a real V4L2 driver without a camera:
# Debian's stock kernel boots in qemu with a busybox initramfs, loads `vivid`
# (the kernel's virtual video test driver) and the binary captures from
# /dev/video0 over mmap streaming, exactly as on the appliance.
#
# Usage: tools/vivid-check.sh [BINARY] [WORKDIR]
#   BINARY   leukoscope binary under test (default target/release/leukoscope)
#   WORKDIR  scratch folder for the initramfs (default: a new temp dir, removed after)
# Env: VIVID_KERNEL_PKG (default: what linux-image-amd64 depends on),
#      VIVID_TIMEOUT (seconds for the whole VM, default 300),
#      VIVID_ACCEL=kvm to use KVM instead of TCG emulation.
#
# Runs: (1) default request (MJPEG 1280x960) -> vivid has no MJPEG, so the
# fallback to YUYV and the granted size are shown; (2) YUYV 640x480;
# (3) reconnection: vivid's "Disconnect" control is pressed after 5 frames and
# the run must get frames again after the device comes back; (4) stall: vivid
# drops every buffer for two capture timeouts, then frames must resume.
# Exit status: 0 when all runs pass, else the first failing run's status.
# Needs root or sudo for apt-get only; the kernel and modules are cached in
# tools/cache/vivid/ (gitignored).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$repo/target/release/leukoscope}
work=${2:-}
cache=$repo/tools/cache/vivid
vm_timeout=${VIVID_TIMEOUT:-300}
t_start=$(date +%s)

log() { printf '[vivid-check] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

[[ -x $bin ]] || die "binary $bin not found or not executable (cargo build --release?)"
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

if [[ -z $work ]]; then
    work=$(mktemp -d /tmp/vivid-check.XXXXXX)
    trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work" "$cache"

# --- host tools -------------------------------------------------------------
sudo=""
[[ $(id -u) -eq 0 ]] || sudo=sudo
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
[[ -x /bin/busybox ]] && /bin/busybox --list 2>/dev/null | grep -qx insmod || missing+=(busybox-static)
command -v cpio >/dev/null || missing+=(cpio)
command -v depmod >/dev/null || [[ -x /sbin/depmod ]] || missing+=(kmod)
command -v xz >/dev/null || missing+=(xz-utils)
command -v zstd >/dev/null || missing+=(zstd)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
busybox=/bin/busybox
file -L "$busybox" 2>/dev/null | grep -q 'statically linked' || [[ ! -x /usr/bin/file ]] ||
    die "$busybox is not static (install busybox-static)"

# --- kernel and vivid modules (cached) ---------------------------------------
if [[ ! -s $cache/vmlinuz || ! -s $cache/kver ]]; then
    pkg=${VIVID_KERNEL_PKG:-}
    if [[ -z $pkg ]]; then
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
        if [[ -z $pkg ]]; then
            $sudo apt-get update -qq
            pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
        fi
    fi
    [[ -n $pkg ]] || die "cannot find a linux-image-*-amd64 package (set VIVID_KERNEL_PKG)"
    log "downloading $pkg (cached in $cache)"
    rm -rf "$cache/deb" "$cache/root"
    mkdir -p "$cache/deb"
    sandbox=()
    [[ $(id -u) -ne 0 ]] || sandbox=(-o APT::Sandbox::User=root) # else apt warns it cannot drop to _apt
    (cd "$cache/deb" && apt-get download -q "${sandbox[@]}" "$pkg" >/dev/null)
    dpkg-deb -x "$cache"/deb/*.deb "$cache/root"
    kver=$(ls "$cache/root/lib/modules")
    mods=$cache/root/lib/modules/$kver
    # The package ships no modules.dep (its postinst generates it): make one.
    depmod=$(command -v depmod || echo /sbin/depmod)
    "$depmod" -b "$cache/root" "$kver"
    # Keep only vivid and its dependencies (from modules.dep: already transitive,
    # each module depending only on those after it, so they load right to left).
    line=$(grep -E '/vivid\.ko(\.[a-z]+)?:' "$mods/modules.dep") || die "vivid is not in $pkg"
    read -r -a deps <<<"${line#*:}"
    rm -rf "$cache/modules"
    for ((i = ${#deps[@]} - 1; i >= 0; i--)); do echo "${deps[i]}"; done >"$cache/modules.order"
    echo "${line%%:*}" >>"$cache/modules.order"
    while read -r m; do
        mkdir -p "$cache/modules/$(dirname "$m")"
        cp "$mods/$m" "$cache/modules/$m"
    done <"$cache/modules.order"
    cp "$cache/root/boot/vmlinuz-$kver" "$cache/vmlinuz"
    echo "$kver" >"$cache/kver"
    rm -rf "$cache/root" "$cache/deb"
fi
kver=$(cat "$cache/kver")
log "kernel $kver"

# --- initramfs ---------------------------------------------------------------
root=$work/initramfs
rm -rf "$root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp}
: >"$root/modules.order"
while read -r m; do
    # busybox insmod wants plain .ko: decompress on the host.
    plain=lib/modules/$kver/$(sed -E 's/\.ko\.(xz|zst|gz)$/.ko/' <<<"$m")
    mkdir -p "$root/$(dirname "$plain")"
    case $m in
    *.xz) xz -dc "$cache/modules/$m" ;;
    *.zst) zstd -qdc "$cache/modules/$m" ;;
    *.gz) gzip -dc "$cache/modules/$m" ;;
    *) cat "$cache/modules/$m" ;;
    esac >"$root/$plain"
    echo "/$plain" >>"$root/modules.order"
done <"$cache/modules.order"
log "modules: $(xargs -n1 basename <"$root/modules.order" | tr '\n' ' ')"

cp "$busybox" "$root/bin/busybox"
cp "$bin" "$root/bin/leukoscope"
# The binary is dynamically linked: bring its libraries and loader along.
ldd "$bin" | awk '/=> \// {print $3} /^[ \t]*\/[^ ]+ \(/ {print $1}' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done

cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin RUST_LOG=info RUST_LOG_STYLE=never RUST_BACKTRACE=1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "== guest: $(uname -r)"
for m in $(cat /modules.order); do
    case $m in
    */vivid.ko) insmod "$m" n_devs=1 node_types=0x1 || echo "insmod $m failed" ;;
    *) insmod "$m" || echo "insmod $m failed" ;;
    esac
done
for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /dev/video0 ] && break; sleep 0.2; done
ls -l /dev/video* 2>&1
first_rc=0
run() {
    name=$1; shift
    echo "== run $name: leukoscope $*"
    timeout 120 /bin/leukoscope "$@"
    rc=$?
    echo "== run $name: exit $rc"
    [ $first_rc -ne 0 ] || first_rc=$rc
}
run default camera-check --device /dev/video0 --frames 10
run explicit-mjpeg camera-check --device /dev/video0 --frames 10 --format mjpeg
run yuyv-640 camera-check --device /dev/video0 --frames 10 --format yuyv --width 640 --height 480
run reconnect camera-check --device /dev/video0 --frames 15 --format yuyv --width 640 --height 480 \
    --reconnect-wait 15 --vivid-disconnect-after 5
run stall camera-check --device /dev/video0 --frames 8 --format yuyv --width 640 --height 480 \
    --vivid-stall-after 3
dmesg | grep -i -E 'vivid|disconnect|reconnect' | tail -n 12
echo "VIVID-CHECK-RC=$first_rc"
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initramfs.gz"
log "initramfs $(du -h "$work/initramfs.gz" | cut -f1)"

# --- boot ----------------------------------------------------------------------
# TCG (pure emulation) by default: nested KVM inside a VM can hang the guest
# silently (seen on the CI machines); VIVID_ACCEL=kvm where KVM is known good.
accel=(-accel tcg)
[[ ${VIVID_ACCEL:-tcg} != kvm ]] || accel=(-accel kvm -cpu host)
log "booting qemu (${accel[*]}), timeout ${vm_timeout}s"
set +e
timeout "$vm_timeout" qemu-system-x86_64 "${accel[@]}" -m 1024 -smp 2 -nographic -no-reboot \
    -kernel "$cache/vmlinuz" -initrd "$work/initramfs.gz" \
    -append "console=ttyS0 panic=-1 loglevel=4" </dev/null | tee "$work/console.log"
qemu_rc=${PIPESTATUS[0]}
set -e
rc=$(sed -n 's/.*VIVID-CHECK-RC=\([0-9]*\).*/\1/p' "$work/console.log" | tail -n 1)
log "qemu exit $qemu_rc, took $(($(date +%s) - t_start)) s"
[[ -n $rc ]] || die "the guest did not report a result (qemu exit $qemu_rc)"
log "result: $([[ $rc == 0 ]] && echo PASS || echo "FAIL ($rc)")"
exit "$rc"
