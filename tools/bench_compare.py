#!/usr/bin/env python3
"""Side-by-side speed comparison for issue #6: leukoscope (Rust, tract) vs
onnxruntime per crop and vs the Python/OpenCV reference (tools/reference_pipeline.py)
per field, on the same inputs, interleaved in one run.

    python tools/bench_compare.py [--rounds 3] [--seconds 1] [--write-doc]
    python tools/bench_compare.py --fields [--size 1280x960] [--rounds 3] [--seconds 10]

The reference is the fair one of issue 17 (tools/reference_pipeline.py: the
card's f32 file in onnxruntime, cv2.LUT, exact-ratio INTER_AREA, window-only
padding; see its docstring for what it does and does not do). Each round runs
`leukoscope bench --json --seconds S` (its own inputs: crop
lmu/MYO/MYO_0001.jpg, field bccd BloodImage_00001 resized to 640x480, 1280x960,
1920x1080 with a triangle filter) and the Python figures on the same
inputs, the side going first alternating round by round (the crop's tensor comes from `leukoscope preprocess`, so both runtimes
see the very same [1,3,96,96] input; fields are resized with cv2 INTER_LINEAR,
which for these upscales is the same bilinear interpolation). Every figure is
the median over repeated runs (same rule as bench.rs), then the median over
rounds. Single thread everywhere. Start-up (process launch to first
classification) and peak RSS are measured on subprocesses.

With --fields: the whole field (and detection alone) averaged over the 72 BCCD
test fields resized to one size, each field's figure a median over repeated
runs; Rust via `leukoscope bench --fields` (the card's file for this CPU: f32 on
x86_64) and the fair reference with the f32 file (the headline), then as further
rows its int8 file and its scale measured on a ~320 px copy (--legacy adds the
pre-issue-17 reference), the side going first alternating round by round. One
field's cell count moves the single-field figures by 2x; this is the figure to
judge "N times faster" by. Every figure is printed with the 1-minute load
average before and after it: on this 2-core machine a figure taken above ~1.5
shared the cores with something else and is not a result.
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import reference_pipeline as ref_mod  # noqa: E402

# The binary under test: env LEUKOSCOPE_BIN (as for the other tools), else the release build.
BIN = Path(os.environ.get("LEUKOSCOPE_BIN") or ROOT / "target" / "release" / "leukoscope")
DATA = ref_mod.DATA
CROP = DATA / "lmu/MYO/MYO_0001.jpg"
FIELD = DATA / "bccd/JPEGImages/BloodImage_00001.jpg"
SIZES = [(640, 480), (1280, 960), (1920, 1080)]
# The file the model card runs on this CPU (precision_by_arch; int8 where unlisted):
# the whole-field rows compare that one with the reference.
RUST_FIELD = json.loads((ROOT / "models/leukoscope.card.json").read_text()).get("precision_by_arch", {}).get(
    platform.machine(), "int8")
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", LEUKOSCOPE_DATA=str(DATA))


def median_ms(budget_s, max_runs, f):
    f()
    start = time.perf_counter()
    times = []
    while len(times) < 3 or (time.perf_counter() - start < budget_s and len(times) < max_runs):
        t = time.perf_counter()
        f()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def ort_session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def rust_bench(seconds, field):
    out = subprocess.run([str(BIN), "bench", "--json", "--seconds", str(seconds), "--field", str(field)], env=ENV,
                         capture_output=True, text=True, check=True).stdout
    figs = {}
    for f in json.loads(out):
        w = f["what"]
        if w.startswith("load model"):
            figs["load"] = f["median_ms"]
        elif w.startswith("start-up"):
            figs["startup_inproc"] = f["median_ms"]
        elif w.startswith("preprocess"):
            figs["preprocess"] = f["median_ms"]
        elif w.startswith("inference per crop"):
            figs["int8" if "int8" in w else "f32"] = f["median_ms"]
        else:
            m = re.search(r"(\d+)x(\d+)", w.split(",")[-1])
            size = f"{m.group(1)}x{m.group(2)}"
            if w.startswith("detect"):
                figs[f"detect_{size}"] = f["median_ms"]
            elif w.startswith("cut + prepare"):
                figs[f"prepare_{size}"] = f["median_ms"]
            else:  # "whole field int8 (...)" / "whole field f32 (...)"
                figs[f"field_{'int8' if ' int8 ' in w else 'f32'}_{size}"] = f["median_ms"]
    return figs


def wall_ms(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, env=ENV, capture_output=True, check=True)
    return (time.perf_counter() - t) * 1e3


def peak_rss_mb(cmd):
    if Path("/usr/bin/time").exists():
        r = subprocess.run(["/usr/bin/time", "-v"] + cmd, env=ENV, capture_output=True, text=True, check=True)
        kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
        return kb / 1024.0
    import resource
    subprocess.run(cmd, env=ENV, capture_output=True, check=True)  # one child only: ru_maxrss is the max over children
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def many_fields(a):
    """--fields: the whole field averaged over the 72 BCCD test fields at one size,
    Rust (`leukoscope bench --fields`, the card's file for this CPU: f32 on x86_64)
    and the fair reference (f32 file; then its int8 file, its ~320 px scale level
    variant and the pre-issue-17 reference as further rows), alternated: odd rounds
    Rust first, even rounds the reference first. Every figure carries the 1-minute
    load average read just before and after it: a figure taken with the load above
    ~1.5 on this 2-core machine shared the cores with something else."""
    w, h = a.size
    fields = [f for _, f in ref_mod.bccd_fields((w, h))]
    refs = {"fair reference, f32": ref_mod.Reference(),
            "fair reference, int8 file": ref_mod.Reference(precision="int8"),
            "fair reference, f32, scale on a ~320 px copy": ref_mod.Reference(scale_level="level")}
    if a.legacy:
        import reference_legacy  # noqa: E402 - the pre-issue-17 reference, for the record only
        refs["pre-issue-17 reference (int8, handicapped)"] = reference_legacy.Reference()
    per_field = a.seconds / len(fields)

    def timed(f):
        before = os.getloadavg()[0]
        v = f()
        return {"ms": v, "load": (before, os.getloadavg()[0])}

    def rust_round():
        out = subprocess.run([str(BIN), "bench", "--fields", "--json", "--seconds", str(a.seconds), "--size", f"{w}x{h}"],
                             env=ENV, capture_output=True, text=True, check=True).stdout
        figs = json.loads(out)["figures"]
        return {f["what"].split(",")[0]: f["median_ms"] for f in figs}, next(f["what"] for f in figs if f["what"].startswith("whole field"))

    rows = []
    what = ""
    for r in range(a.rounds):
        row = {}

        def run_rust():
            nonlocal what
            before = os.getloadavg()[0]
            rust, what = rust_round()
            load = (before, os.getloadavg()[0])
            whole = next(v for k, v in rust.items() if k.startswith("whole field"))
            row["Rust whole field"] = {"ms": whole, "load": load}
            row["Rust detection"] = {"ms": rust["detect"], "load": load}
            row["Rust cut + prepare"] = {"ms": rust["cut + prepare"], "load": load}

        def run_ref():
            for name, ref in refs.items():
                row[f"{name}: whole field"] = timed(lambda ref=ref: statistics.mean(
                    median_ms(per_field, 100, lambda f=f: ref.analyze(f, None)) for f in fields))
            for name, ref in list(refs.items())[::2]:  # detection does not depend on the model file
                row[f"{name}: detection"] = timed(lambda ref=ref: statistics.mean(
                    median_ms(per_field, 100, lambda f=f: ref.detect(f, None)) for f in fields))

        for step in ((run_rust, run_ref) if r % 2 == 0 else (run_ref, run_rust)):
            step()
        rows.append(row)
        rw, pw = row["Rust whole field"], row["fair reference, f32: whole field"]
        print(f"round {r + 1}/{a.rounds} ({'Rust first' if r % 2 == 0 else 'reference first'}): Rust {rw['ms']:.2f} ms "
              f"(load {rw['load'][0]:.2f}-{rw['load'][1]:.2f}), fair reference f32 {pw['ms']:.2f} ms "
              f"(load {pw['load'][0]:.2f}-{pw['load'][1]:.2f}): {pw['ms'] / rw['ms']:.2f}x", file=sys.stderr)

    def cell(x):
        return f"{x['ms']:.2f} (load {x['load'][0]:.1f}-{x['load'][1]:.1f})"

    names = list(rows[0])
    lines = [f"| mean over the {len(fields)} BCCD test fields at {w}x{h}, scale estimated, one thread: ms (1-min load average before-after) | "
             + " | ".join(f"round {i + 1}" for i in range(len(rows))) + " | median of rounds | / Rust whole field (medians) |",
             "|---|" + "---|" * (len(rows) + 2)]
    rust_med = statistics.median(x["Rust whole field"]["ms"] for x in rows)
    for n in names:
        med = statistics.median(x[n]["ms"] for x in rows)
        ratio = f"{med / rust_med:.2f}x" if "whole field" in n and not n.startswith("Rust") else "-"
        lines.append(f"| {n} | " + " | ".join(cell(x[n]) for x in rows) + f" | {med:.2f} | {ratio} |")
    lines.append("")
    lines.append(f"Rust: `{what}` ({RUST_FIELD} file, the card's choice on this CPU); the reference runs the card's f32 "
                 f"file unless the row says int8. Rounds alternate which side goes first. "
                 f"Headline: fair reference f32 / Rust = {statistics.median(x['fair reference, f32: whole field']['ms'] for x in rows) / rust_med:.2f}x "
                 f"(> 1: Rust faster). Load average (1 min) over the whole run: "
                 f"{min(v for x in rows for y in x.values() for v in y['load']):.2f}-{max(v for x in rows for y in x.values() for v in y['load']):.2f}.")
    table = "\n".join(lines)
    print(table)
    if a.write_doc:
        cmd = "python tools/bench_compare.py " + " ".join(sys.argv[1:])
        with open(ROOT / "docs/performance.md", "a") as fh:
            fh.write(f"\n\n## {datetime.date.today().isoformat()}: many fields side by side against the fair reference (issue 17)\n\n"
                     f"Command: `{cmd}`\n\n{table}\n")
        print("appended to docs/performance.md", file=sys.stderr)


def parse_size(s):
    w, h = s.lower().split("x")
    return int(w), int(h)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0, help="seconds per figure per round (both sides)")
    ap.add_argument("--write-doc", action="store_true", help="append the table to docs/performance.md")
    ap.add_argument("--field", type=Path, default=FIELD,
                    help="smear field both sides time, resized to each size (default: BCCD BloodImage_00001, "
                         "whose one leukocyte is cut by the border)")
    ap.add_argument("--fields", action="store_true",
                    help="instead: the whole field averaged over the 72 BCCD test fields at --size, both sides "
                         "(--seconds is then the budget per figure per round for all fields together)")
    ap.add_argument("--size", type=parse_size, default=(1280, 960), help="with --fields: WIDTHxHEIGHT (default 1280x960)")
    ap.add_argument("--legacy", action="store_true",
                    help="with --fields: also time the pre-issue-17 reference (tools/reference_legacy.py), for the record")
    a = ap.parse_args()
    cv2.setNumThreads(1)
    if a.fields:
        return many_fields(a)
    tmp = Path(tempfile.mkdtemp(prefix="bench_compare_"))

    # Same inputs: the crop tensor from leukoscope preprocess, plus a few PBC crops.
    crops = [CROP] + sorted((DATA / "pbc/neutrophil").glob("*.jpg"))[:2] + sorted((DATA / "pbc/lymphocyte").glob("*.jpg"))[:2]
    (tmp / "list.txt").write_text("".join(f"{p}\n" for p in crops))
    subprocess.run([str(BIN), "preprocess", "--list", str(tmp / "list.txt"), "--out", str(tmp / "x.npy"),
                    "--card", str(ROOT / "models/leukoscope.card.json")], env=ENV, capture_output=True, check=True)
    tensors = np.load(tmp / "x.npy").astype(np.float32)
    x0 = np.ascontiguousarray(tensors[:1])
    sess = {k: ort_session(ROOT / f"models/leukoscope-{k}.onnx") for k in ("int8", "f32")}
    # sanity: both ORT models agree on the argmax for the crops (tract's agreement is in the card)
    agree = [int(np.argmax(sess["int8"].run(None, {"input": tensors[i:i + 1]})[0]) ==
                 np.argmax(sess["f32"].run(None, {"input": tensors[i:i + 1]})[0])) for i in range(len(tensors))]

    field = ref_mod.load_rgb(a.field)
    fields = {}
    for w, h in SIZES:
        f = field if (w, h) == (field.shape[1], field.shape[0]) else cv2.resize(field, (w, h), interpolation=cv2.INTER_LINEAR)
        fields[(w, h)] = f
    big = tmp / "field_1920x1080.png"
    cv2.imwrite(str(big), cv2.cvtColor(fields[(1920, 1080)], cv2.COLOR_RGB2BGR))
    ref = ref_mod.Reference()

    load_before = os.getloadavg()
    rounds = []
    for r in range(a.rounds):
        row = {"load_start": os.getloadavg()[0]}
        if r % 2 == 0:  # alternate which side goes first, so a drift in load hits both alike
            row["rust"] = rust_bench(a.seconds, a.field)
        py = {}
        for k, s in sess.items():
            py[k] = median_ms(a.seconds, 10_000, lambda s=s: s.run(None, {"input": x0}))
        for (w, h), f in fields.items():
            known = ref_mod.BCCD_UM_PER_PX * 640.0 / w
            py[f"field_{w}x{h}"] = median_ms(a.seconds, 1000, lambda f=f: ref.analyze(f, None))
            py[f"fieldknown_{w}x{h}"] = median_ms(a.seconds, 1000, lambda f=f, s=known: ref.analyze(f, s))
            py[f"detect_{w}x{h}"] = median_ms(a.seconds, 1000, lambda f=f: ref.detect(f, None))
            py[f"detectknown_{w}x{h}"] = median_ms(a.seconds, 1000, lambda f=f, s=known: ref.detect(f, s))
        row["py"] = py
        if r % 2 == 1:
            row["rust"] = rust_bench(a.seconds, a.field)
        row["start_rust"] = wall_ms([str(BIN), "classify", str(CROP)])
        row["start_py"] = wall_ms([sys.executable, str(ROOT / "tools/reference_pipeline.py"), "--first-result", str(CROP)])
        row["rss_rust"] = peak_rss_mb([str(BIN), "analyze", str(big)])
        row["rss_py"] = peak_rss_mb([sys.executable, str(ROOT / "tools/reference_pipeline.py"), str(big)])
        row["load_end"] = os.getloadavg()[0]
        rounds.append(row)
        print(f"round {r + 1}/{a.rounds} done (load average {row['load_start']:.2f}-{row['load_end']:.2f})", file=sys.stderr)

    def med(get):
        return statistics.median(get(x) for x in rounds)

    lines = ["| figure | Rust (tract) ms | Python (onnxruntime / OpenCV) ms | ratio Rust/Python |", "|---|---|---|---|"]

    def add(name, rv, pv, unit="ms"):
        lines.append(f"| {name} | {rv:.2f} | {pv:.2f} | {rv / pv:.2f} |")

    add("inference per crop, int8, batch 1 (tract / ORT)", med(lambda x: x["rust"]["int8"]), med(lambda x: x["py"]["int8"]))
    add("inference per crop, f32, batch 1 (tract / ORT)", med(lambda x: x["rust"]["f32"]), med(lambda x: x["py"]["f32"]))
    lines.append(f"| preprocess one crop (ours, Rust only) | {med(lambda x: x['rust']['preprocess']):.2f} | - | - |")
    for w, h in SIZES:
        k = f"{w}x{h}"
        rf = med(lambda x: x["rust"][f"field_{RUST_FIELD}_{k}"])
        add(f"whole field {k}, scale estimated (Rust {RUST_FIELD} vs fair reference f32)", rf, med(lambda x: x["py"][f"field_{k}"]))
        add(f"whole field {k}, Rust {RUST_FIELD} (estimated) vs reference with known scale", rf,
            med(lambda x: x["py"][f"fieldknown_{k}"]))
        lines.append(f"| cut + prepare the field's cells, {k} (Rust only) | {med(lambda x: x['rust'][f'prepare_{k}']):.2f} | - | - |")
        other = "int8" if RUST_FIELD == "f32" else "f32"
        lines.append(f"| whole field {k}, Rust {other} (the other file; Rust only) | "
                     f"{med(lambda x: x['rust'][f'field_{other}_{k}']):.2f} | - | - |")
        add(f"detect only {k}, scale estimated", med(lambda x: x["rust"][f"detect_{k}"]), med(lambda x: x["py"][f"detect_{k}"]))
        add(f"detect only {k}, Rust (estimated) vs reference known scale",
            med(lambda x: x["rust"][f"detect_{k}"]), med(lambda x: x["py"][f"detectknown_{k}"]))
    add("start-up to first result (process launch -> one crop classified)", med(lambda x: x["start_rust"]), med(lambda x: x["start_py"]))
    lines.append(f"| start-up in process (bench: load + one crop; Rust only) | {med(lambda x: x['rust']['startup_inproc']):.2f} | - | - |")
    lines.append(f"| peak RSS, analyze one 1920x1080 field (MB) | {med(lambda x: x['rss_rust']):.1f} | "
                 f"{med(lambda x: x['rss_py']):.1f} | {med(lambda x: x['rss_rust']) / med(lambda x: x['rss_py']):.2f} |")
    f1280 = med(lambda x: x["rust"][f"field_{RUST_FIELD}_1280x960"])
    lines.append("")
    lines.append(f"Field: `{a.field.name}`. Rust whole field 1280x960 ({RUST_FIELD}, the card's choice on this CPU): {1000.0 / f1280:.1f} fields/s on one thread. "
                 f"ORT int8 vs f32 argmax agreement on the {len(agree)} crops: {sum(agree)}/{len(agree)}. "
                 "Load average (1 min) per round: " + ", ".join(f"{x['load_start']:.2f}-{x['load_end']:.2f}" for x in rounds) + ".")
    table = "\n".join(lines)
    print(table)
    raw = tmp / "rounds.json"
    raw.write_text(json.dumps(rounds, indent=1))
    print(f"(per-round figures: {raw})", file=sys.stderr)

    if a.write_doc:
        cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.split(":", 1)[-1].strip()
        ncpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
        cmd = "python tools/bench_compare.py " + " ".join(sys.argv[1:])
        section = f"""

## {datetime.date.today().isoformat()}: side by side with onnxruntime and a Python/OpenCV reference (issue 6)

Command (venv from `tools/requirements.txt`, binary already built with
`cargo build --release`): `{cmd}`

Machine: `nproc` = {ncpu}, `{cpu}`; load average (1 min) {load_before[0]:.2f} before
the run and {os.getloadavg()[0]:.2f} after it (the run itself adds ~1): above ~1.5
something else shared the cores and absolute figures are upper bounds. Rust
and Python were measured interleaved in the same run
({a.rounds} rounds, {a.seconds} s per figure per side, median of runs, then
median over rounds), so the ratios are the figures to read. Single thread on
both sides (tract; ORT `intra_op_num_threads = inter_op_num_threads = 1`;
`cv2.setNumThreads(1)`).

{table}
"""
        with open(ROOT / "docs/performance.md", "a") as fh:
            fh.write(section)
        print("appended to docs/performance.md", file=sys.stderr)


if __name__ == "__main__":
    main()
