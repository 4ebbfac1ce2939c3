#!/usr/bin/env bash
# The board checks (issue #3), run on an x86_64 Debian/Ubuntu machine without a board:
#   1. setup: cross gcc, qemu-user, rustup targets, cargo-deb
#      (tools/build-deb.sh --setup-only) and, as root, binfmt_misc entries for
#      qemu-aarch64/qemu-arm (the CLI tests start the leukoscope binary themselves);
#   2. release builds: x86_64 (the reference) and each ARM target;
#   3. `cargo test --release --target T` under qemu-user (runner in .cargo/config.toml),
#      with each test's time; the slowest are listed;
#   4. same answers on ARM as on x86: `classify --json` on 50 PBC crops (+ 10 LMU
#      crops, the blasts' source) and `analyze --json` on 10 BCCD test fields, the ARM
#      binary under qemu emulating a Cortex-A72 (Pi 4) and a Cortex-A76 (Pi 5): same
#      class for every crop, same boxes and classes per field;
#      then `leukoscope bench` runs under qemu (correctness; qemu timings mean nothing);
#   5. the .deb (tools/build-deb.sh): unpacked with dpkg -x into a scratch root, the
#      expected files, conffile, stripped binary, glibc floor, sizes; the unpacked
#      binary reads the unpacked config and model; `systemd-analyze verify` and
#      `systemd-analyze security --offline` on the unit.
#
# Usage: tools/cross-test.sh [TARGET ...]
#   TARGET: aarch64-unknown-linux-gnu (default), armv7-unknown-linux-gnueabihf, all.
# Env: LEUKOSCOPE_DATA (default ../shared/data), CARGO_TARGET_DIR (default
#      target/cross, see tools/build-deb.sh), CROSS_TEST_SUITE=0 skips step 3 (the
#      slow one), LEUKOSCOPE_KILLS (tests/kill.rs; default 5 here), CROSS_TEST_CPUS
#      (the aarch64 cores compared with x86, default "cortex-a72 cortex-a76"),
#      CROSS_TEST_HOST_BIN (an x86_64 leukoscope built from the same tree, instead of
#      building one), CROSS_TEST_WORK=DIR keeps the outputs there (default: a temp
#      dir, removed at the end).
# Exit status: 0 when every step passes; the summary names the failed ones.
# Timings under qemu say nothing about a board's speed (see `leukoscope bench`).
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 2
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target/cross}
export LEUKOSCOPE_DATA=${LEUKOSCOPE_DATA:-../shared/data}
data=$LEUKOSCOPE_DATA
t_all=$(date +%s)

log() { printf '[cross-test] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

# shellcheck source=tools/targets.sh
. "$repo/tools/targets.sh"

targets=()
for a in "$@"; do
    case $a in
        -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) add_targets "$a" || die "unknown target '$a'" ;;
    esac
done
[[ ${#targets[@]} -gt 0 ]] || targets=(aarch64-unknown-linux-gnu)

[[ -d $data/pbc && -d $data/bccd ]] || die "data folder '$data' is missing (set LEUKOSCOPE_DATA)"

if [[ -n ${CROSS_TEST_WORK:-} ]]; then
    work=$CROSS_TEST_WORK
    mkdir -p "$work"
else
    work=$(mktemp -d /tmp/cross-test.XXXXXX)
    trap 'rm -rf "$work"' EXIT
fi
work=$(cd "$work" && pwd)

summary=()
failed=()
# step NAME CMD...: runs CMD, records its duration and status.
step() {
    local name=$1 t0 rc
    shift
    log "== $name"
    t0=$(date +%s)
    "$@"
    rc=$?
    summary+=("$(printf '%-52s %5d s  %s' "$name" $(($(date +%s) - t0)) "$([[ $rc -eq 0 ]] && echo ok || echo "FAILED ($rc)")")")
    [[ $rc -eq 0 ]] || failed+=("$name")
    return 0
}

gnu_triple() { case $1 in aarch64-*) echo aarch64-linux-gnu ;; armv7-*) echo arm-linux-gnueabihf ;; esac; }
qemu_of() { case $1 in aarch64-*) echo qemu-aarch64 ;; armv7-*) echo qemu-arm ;; esac; }
# The emulated core, as in .cargo/config.toml's runners: the Pi 4's Cortex-A72 (not
# qemu's default "max", whose SVE2 no board has); armv7: a Cortex-A7 (NEON, VFPv4).
cpu_of() { case $1 in aarch64-*) echo cortex-a72 ;; armv7-*) echo cortex-a7 ;; esac; }
# The cores whose answers are compared with x86: also the Cortex-A76 (Pi 5; the Orin's
# A78AE has the same dotprod/fp16 features), where tract picks other int8 kernels.
cpus_to_compare() { case $1 in aarch64-*) echo "${CROSS_TEST_CPUS:-cortex-a72 cortex-a76}" ;; *) cpu_of "$1" ;; esac; }
deb_arch() { case $1 in aarch64-*) echo arm64 ;; armv7-*) echo armhf ;; esac; }
# The unit file in an unpacked package (cargo-deb puts it in /usr/lib or /lib).
unit_in() {
    local f
    for f in "$1"/usr/lib/systemd/system/leukoscope.service "$1"/lib/systemd/system/leukoscope.service; do
        [[ -f $f ]] && { echo "$f"; return 0; }
    done
    return 1
}
# run_arm TARGET CPU CMD...: an ARM binary under emulation, the cross libc as the
# loader's root.
run_arm() {
    local t=$1 cpu=$2
    shift 2
    "$(qemu_of "$t")" -cpu "$cpu" -L "/usr/$(gnu_triple "$t")" "$@"
}

# -- 1. setup ---------------------------------------------------------------
setup() {
    tools/build-deb.sh --setup-only "${targets[@]}" || return 1
    command -v python3 >/dev/null || { log "python3 is needed for the comparison"; return 1; }
    command -v systemd-analyze >/dev/null || log "systemd-analyze missing (apt-get install systemd): the unit check will fail"
    # Tests that spawn the binary (tests/cli.rs, appliance.rs, kill.rs) exec an ARM ELF
    # directly: that needs the kernel's binfmt_misc to hand it to qemu.
    local b=/proc/sys/fs/binfmt_misc t q
    if [[ $(id -u) -eq 0 ]]; then
        [[ -e $b/register ]] || mount -t binfmt_misc binfmt_misc "$b" 2>/dev/null || true
        for t in "${targets[@]}"; do
            q=$(qemu_of "$t")
            q=${q#qemu-}
            if [[ -e $b/register && ! -e $b/qemu-$q && -f /usr/lib/binfmt.d/qemu-$q.conf ]]; then
                log "registering qemu-$q in binfmt_misc"
                cat "/usr/lib/binfmt.d/qemu-$q.conf" >"$b/register" || true
            fi
        done
    fi
    for t in "${targets[@]}"; do
        q=$(qemu_of "$t")
        [[ -e $b/${q} ]] || log "warning: no binfmt_misc entry $q: tests that start the binary will fail (run as root, or apt-get install qemu-user-binfmt)"
    done
    return 0
}
step "setup (toolchains, cargo-deb, binfmt)" setup

# -- 2. builds --------------------------------------------------------------
if [[ -n ${CROSS_TEST_HOST_BIN:-} ]]; then
    host_bin=$CROSS_TEST_HOST_BIN
else
    step "cargo build --release (x86_64 reference)" cargo build --release
    host_bin=$CARGO_TARGET_DIR/release/leukoscope
fi
for t in "${targets[@]}"; do
    step "cargo build --release --target $t" cargo build --release --target "$t"
done

# -- 3. the test suite under qemu --------------------------------------------
suite() {
    local t=$1 rc
    local out=$work/test-$t.log
    # libtest's per-test times (--report-time) are an unstable option: RUSTC_BOOTSTRAP
    # in the test processes' environment only (through the runner), not cargo's.
    # QEMU_CPU and QEMU_LD_PREFIX reach the binaries that tests start (via binfmt_misc).
    # LEUKOSCOPE_KILLS: tests/kill.rs's power cuts, 100 by default (210 s on x86);
    # under qemu 5 (6 kills in 2 rounds, ~250 s): the journal code is the same on ARM.
    local runner_var
    runner_var=CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$t")_RUNNER
    env "$runner_var=env RUSTC_BOOTSTRAP=1 $(qemu_of "$t") -cpu $(cpu_of "$t") -L /usr/$(gnu_triple "$t")" \
        QEMU_CPU="$(cpu_of "$t")" QEMU_LD_PREFIX="/usr/$(gnu_triple "$t")" \
        LEUKOSCOPE_KILLS="${LEUKOSCOPE_KILLS:-5}" \
        cargo test --release --target "$t" --lib --bins --tests \
        -- -Z unstable-options --report-time 2>&1 | tee "$out" >&2
    rc=${PIPESTATUS[0]}
    python3 - "$out" "$t" <<'EOF' >&2
import re, sys
text = open(sys.argv[1], errors="replace").read()
tot = [0, 0, 0, 0]
for m in re.finditer(r"test result: (\w+)\. (\d+) passed; (\d+) failed; (\d+) ignored; (\d+) measured; (\d+) filtered out; finished in ([\d.]+)s", text):
    for i, g in enumerate((2, 3, 4)):
        tot[i] += int(m.group(g))
    tot[3] += 1
times = sorted(((float(s), n) for n, s in re.findall(r"^test (\S+) \.\.\. ok <([\d.]+)s>", text, re.M)), reverse=True)
print(f"[cross-test] {sys.argv[2]}: {tot[0]} passed, {tot[1]} failed, {tot[2]} ignored, in {tot[3]} test binaries")
for s, n in times[:10]:
    print(f"[cross-test]   {s:8.1f} s  {n}")
for n in re.findall(r"^test (\S+) \.\.\. FAILED", text, re.M):
    print(f"[cross-test]   FAILED: {n}")
EOF
    return "$rc"
}
if [[ ${CROSS_TEST_SUITE:-1} != 0 ]]; then
    for t in "${targets[@]}"; do
        step "cargo test --release --target $t (qemu)" suite "$t"
    done
fi

# -- 4. same answers on ARM as on x86 ---------------------------------------
pick_inputs() {
    # 50 PBC crops spread over the 8 folders (sorted, evenly spaced), 5+5 LMU crops,
    # the first 10 BCCD test fields.
    python3 - "$data" "$work" <<'EOF'
import os, sys
data, work = sys.argv[1:3]
def spread(folder, n):
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpg", ".png", ".tif", ".tiff")))
    step = max(1, len(files) // n)
    return [os.path.join(folder, f) for f in files[::step][:n]]
pbc = os.path.join(data, "pbc")
classes = sorted(os.listdir(pbc))
crops = []
for i, c in enumerate(classes):
    crops += spread(os.path.join(pbc, c), 50 // len(classes) + (1 if i < 50 % len(classes) else 0))
for c in ("MYO", "NGS"):
    crops += spread(os.path.join(data, "lmu", c), 5)
test = open(os.path.join(data, "bccd", "ImageSets", "Main", "test.txt")).read().split()[:10]
fields = [os.path.join(data, "bccd", "JPEGImages", f + ".jpg") for f in test]
open(os.path.join(work, "crops.txt"), "w").write("\n".join(crops) + "\n")
open(os.path.join(work, "fields.txt"), "w").write("\n".join(fields) + "\n")
print(f"{len(crops)} crops, {len(fields)} fields")
EOF
}
compare() {
    local t=$1 cpu=$2 arm_bin=$CARGO_TARGET_DIR/$1/release/leukoscope rc=0
    mapfile -t crops <"$work/crops.txt"
    mapfile -t fields <"$work/fields.txt"
    # The same file on both sides: the card runs f32 on x86_64 (faster in tract
    # there) and int8 on ARM, so the int8 file is asked for explicitly.
    "$host_bin" classify --precision int8 --json "${crops[@]}" >"$work/classify-x86_64.json" || rc=1
    "$host_bin" analyze --precision int8 --json "${fields[@]}" >"$work/analyze-x86_64.json" || rc=1
    run_arm "$t" "$cpu" "$arm_bin" classify --precision int8 --json "${crops[@]}" >"$work/classify-$t-$cpu.json" || rc=1
    run_arm "$t" "$cpu" "$arm_bin" analyze --precision int8 --json "${fields[@]}" >"$work/analyze-$t-$cpu.json" || rc=1
    [[ $rc -eq 0 ]] || { log "a leukoscope run failed"; return 1; }
    python3 - "$work" "$t-$cpu" <<'EOF' >&2
import json, sys
work, t = sys.argv[1:3]
load = lambda n: json.load(open(f"{work}/{n}"))
ok = True
cx, ca = load("classify-x86_64.json")["results"], load(f"classify-{t}.json")["results"]
assert [r["path"] for r in cx] == [r["path"] for r in ca], "classify: different inputs"
same = sum(x["class"] == a["class"] for x, a in zip(cx, ca))
dp = max(abs(x["probs"][k] - a["probs"][k]) for x, a in zip(cx, ca) for k in x["probs"])
print(f"[cross-test] classify: {same}/{len(cx)} crops same class on {t} as on x86_64 (max probability difference {dp:.2g})")
for x, a in zip(cx, ca):
    if x["class"] != a["class"]:
        print(f"[cross-test]   DIFFERENT: {x['path']}: x86_64 {x['class']} ({x['confidence']:.3f}), {t} {a['class']} ({a['confidence']:.3f})")
ok &= same == len(cx)
ax, aa = load("analyze-x86_64.json"), load(f"analyze-{t}.json")
def cells(img):
    return [(tuple(c["bbox"]), c["class"], c.get("best_class")) for c in img["cells"]] + \
           [(tuple(c["bbox"]), "not_counted", c.get("class")) for c in img.get("not_counted", [])]
same_f = n_cells = 0
for x, a in zip(ax["images"], aa["images"]):
    n_cells += len(x["cells"])
    if cells(x) == cells(a):
        same_f += 1
    else:
        print(f"[cross-test]   DIFFERENT: {x['path']}: x86_64 {cells(x)}, {t} {cells(a)}")
dc = max((abs(c1["confidence"] - c2["confidence"]) for x, a in zip(ax["images"], aa["images"])
          for c1, c2 in zip(x["cells"], a["cells"])), default=0.0)
print(f"[cross-test] analyze: {same_f}/{len(ax['images'])} fields same boxes and classes ({n_cells} cells on x86_64, max confidence difference {dc:.2g}); "
      f"summary by_class x86_64 {ax['summary']['by_class']} / {t} {aa['summary']['by_class']}")
ok &= same_f == len(ax["images"]) and len(ax["images"]) == len(aa["images"]) and ax["summary"]["by_class"] == aa["summary"]["by_class"]
sys.exit(0 if ok else 1)
EOF
}
step "pick 60 crops and 10 fields" pick_inputs
# `leukoscope bench` on ARM, as a board runs it (board/README.md): under qemu for
# correctness only, its timings mean nothing.
arm_bench() {
    local t=$1
    run_arm "$t" "$(cpu_of "$t")" "$CARGO_TARGET_DIR/$t/release/leukoscope" bench --seconds 0.05 >"$work/bench-$t.txt" || return 1
    sed 's/^/[cross-test]   /' "$work/bench-$t.txt" | tail -n 3 >&2
}
for t in "${targets[@]}"; do
    for cpu in $(cpus_to_compare "$t"); do
        step "classify/analyze --json: $t on $cpu vs x86_64" compare "$t" "$cpu"
    done
    step "leukoscope bench under qemu ($t, correctness only)" arm_bench "$t"
done

# -- 5. the Debian package --------------------------------------------------
check_deb() {
    local t=$1 deb root ctl bin rc=0 f
    deb=$(tools/build-deb.sh "$t" | tail -n 1) || return 1
    root=$work/root-$t
    ctl=$work/control-$t
    rm -rf "$root" "$ctl"
    dpkg -x "$deb" "$root" && dpkg-deb -e "$deb" "$ctl" || return 1
    dpkg-deb -f "$deb" Package Version Architecture Depends Installed-Size | sed 's/^/[cross-test]   /' >&2
    [[ $(dpkg-deb -f "$deb" Architecture) == "$(deb_arch "$t")" ]] || { log "wrong Architecture"; rc=1; }
    local unit
    unit=$(unit_in "$root") && unit=${unit#"$root"/}
    for f in usr/bin/leukoscope \
        usr/share/leukoscope/models/leukoscope-int8.onnx \
        usr/share/leukoscope/models/leukoscope-f32.onnx \
        usr/share/leukoscope/models/leukoscope.card.json \
        etc/leukoscope/leukoscope.toml \
        "${unit:-usr/lib/systemd/system/leukoscope.service}" \
        usr/lib/udev/rules.d/60-leukoscope.rules \
        usr/share/leukoscope/boards/README.md \
        usr/share/leukoscope/boards/rpi4/leukoscope.toml \
        usr/share/leukoscope/boards/rpi5/leukoscope.toml \
        usr/share/leukoscope/boards/jetson-orin-nano/leukoscope.toml \
        usr/share/doc/leukoscope/copyright; do
        if [[ -f $root/$f ]]; then
            printf '[cross-test]   %-62s %10d bytes\n' "/$f" "$(stat -c %s "$root/$f")" >&2
        else
            log "  MISSING /$f"
            rc=1
        fi
    done
    grep -qx /etc/leukoscope/leukoscope.toml "$ctl/conffiles" || { log "  /etc/leukoscope/leukoscope.toml is not a conffile"; rc=1; }
    grep -q 'deb-systemd-helper.*enable' "$ctl/postinst" || { log "  postinst does not enable the unit"; rc=1; }
    grep -q 'groupadd' "$ctl/postinst" || { log "  postinst does not create the device groups"; rc=1; }
    bin=$root/usr/bin/leukoscope
    local tools_prefix
    tools_prefix=$(gnu_triple "$t")
    # (.debug_gdb_scripts, 34 allocated bytes of Rust's gdb hooks, survives strip: not debug info.)
    if "$tools_prefix-readelf" -S "$bin" | grep -Eq '\.(debug_(info|line|str|abbrev|ranges|loc)|symtab)'; then
        log "  /usr/bin/leukoscope still has debug sections"
        rc=1
    fi
    log "  $(file -b "$bin" | cut -d, -f1-2,5-)"
    log "  glibc floor: $("$tools_prefix-objdump" -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1); needs $("$tools_prefix-readelf" -d "$bin" | grep -o 'NEEDED.*' | grep -o '\[.*\]' | tr -d '[]' | tr '\n' ' ')"
    log "  .deb $(stat -c %s "$deb") bytes; installed binary $(stat -c %s "$bin") bytes (unstripped build: $(stat -c %s "$CARGO_TARGET_DIR/$t/release/leukoscope"))"
    # The unpacked binary, outside the source tree, reads the unpacked config and model.
    (cd "$work" && run_arm "$t" "$(cpu_of "$t")" "$bin" config --config "$root/etc/leukoscope/leukoscope.toml" >/dev/null) ||
        { log "  the packaged config does not load"; rc=1; }
    (cd "$work" && LEUKOSCOPE_MODEL=$root/usr/share/leukoscope/models/leukoscope.card.json \
        run_arm "$t" "$(cpu_of "$t")" "$bin" classify --json "$(head -n 1 "$work/crops.txt" | sed "s#^[^/]#$repo/&#")" >/dev/null) ||
        { log "  the packaged model does not load"; rc=1; }
    return $rc
}
check_unit() {
    local t=$1 root=$work/root-$1 unit tmp
    command -v systemd-analyze >/dev/null || { log "systemd-analyze not installed"; return 1; }
    unit=$(unit_in "$root") || { log "no unit in the package"; return 1; }
    # verify checks that ExecStart's binary exists: point it at the unpacked one.
    tmp=$work/unit-$t
    mkdir -p "$tmp"
    sed "s#/usr/bin/leukoscope#$root/usr/bin/leukoscope#" "$unit" >"$tmp/leukoscope.service"
    systemd-analyze verify --man=no "$tmp/leukoscope.service" || return 1
    systemd-analyze security --offline=yes "$tmp/leukoscope.service" 2>/dev/null | tail -n 1 | sed 's/^/[cross-test]   /' >&2
    return 0
}
for t in "${targets[@]}"; do
    step ".deb for $t: build, unpack, contents" check_deb "$t"
    step "systemd-analyze verify (unit in the $(deb_arch "$t") .deb)" check_unit "$t"
done

log "== summary ($(($(date +%s) - t_all)) s in all; work folder $work)"
printf '[cross-test] %s\n' "${summary[@]}" >&2
if [[ ${#failed[@]} -gt 0 ]]; then
    log "FAILED: ${failed[*]}"
    exit 1
fi
log "all passed"
