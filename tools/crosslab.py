"""Cross-lab evaluation: does the classifier recognise cells or labs?

One command, writing docs/classifier-report.md (and tools/runs/crosslab/<card name>.json):
the cross-lab figures first, then the in-domain evaluation of the run that made the
card (tools/runs/<run>/report.md, written by `pipeline.py evaluate`: PBC and LMU
validation, int8 vs f32, tract vs onnxruntime, stain and scale robustness).

    python tools/crosslab.py [--card models/leukoscope.card.json] [--precision auto int8 f32]

It runs the Rust runtime (`leukoscope classify --json`) on
- `jhh/`: 3.5k cells of 82 AML/APL patients from a lab never used in training
  (Johns Hopkins, CellaVision). EVALUATION ONLY: nothing here is fitted on it:
  no weights, thresholds, calibration or checkpoint choice. Its scale is the
  CellaVision scanner's, the same instrument (and the same halving) as PBC's,
  taken from the training data (`datasets.SOURCE_UM_PER_PX["pbc"]`), never
  measured on jhh; `--jhh-scale auto` instead lets `classify` estimate each
  crop's scale from its own red cells, as a user without calibration would;
- the LMU cells of 13 more classes (`lmu/<CODE>/*_mcbs_*`, the training lab
  of the myeloblasts), split as training splits them: those in the train split
  were trained on (when the run used them), so the val ones are the honest
  figure; both are reported.

Figures (blasts first): blasts called blast, blasts called a mature normal
class, mature normal cells called blast, per-class calls, per-patient blast
sensitivity (median, worst decile), 95% intervals by bootstrap over patients.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets as ds  # noqa: E402
from common import REPO, RUNS, PipelineError, data_root, log, read_json, run_classify, write_json  # noqa: E402

# jhh codes (CellaVision categories mapped by the data's README) -> what counts.
JHH_BLAST = {"BLAST"}
MATURE_NORMAL = ["LYT", "MON", "NGS", "NGB", "EOS", "BAS"]
BOOTSTRAP = 2000
IN_DOMAIN_MARK = "<!-- in-domain evaluation (tools/runs/<run>/report.md) -->"


def classify(card: Path, paths: list[str], precision: str, um_per_px: float | None) -> dict[str, dict]:
    """{abs path: classify result} for crops all at one scale (None: estimated per crop)."""
    res = run_classify(card, paths, batch=500, scales=[um_per_px] * len(paths), precision=precision)
    res.pop("__model__")
    return res


def call_of(res: dict, blast_classes: set[str]) -> str:
    """The call a person would see: the class, 'UNID' when the runtime does not
    identify the cell (low confidence, no nucleus), 'ERR' for unreadable files."""
    if "error" in res:
        return "ERR"
    if not res.get("identified", True):
        return "UNID"
    return res["class"]


def share(n: int, d: int) -> float | None:
    return n / d if d else None


def bootstrap_ci(per_patient: dict[str, tuple[int, int]], rng) -> tuple[float, float] | None:
    """95% interval of a pooled proportion, resampling patients."""
    pats = [v for v in per_patient.values() if v[1] > 0]
    if not pats:
        return None
    a = np.array(pats, dtype=float)
    idx = rng.integers(0, len(a), size=(BOOTSTRAP, len(a)))
    num, den = a[idx, 0].sum(1), a[idx, 1].sum(1)
    est = num / np.maximum(den, 1)
    return float(np.percentile(est, 2.5)), float(np.percentile(est, 97.5))


def jhh_figures(calls: dict[str, str], manifest: list[dict], blast_classes: set[str], rng) -> dict:
    by_code: dict[str, Counter] = defaultdict(Counter)
    pp: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for row in manifest:
        c = calls[row["abs"]]
        code = row["code"]
        by_code[code][c] += 1
        pat = row["patient"]
        if code in JHH_BLAST:
            pp["blast_called_blast"][pat][0] += c in blast_classes
            pp["blast_called_blast"][pat][1] += 1
            pp["blast_called_normal"][pat][0] += c in MATURE_NORMAL
            pp["blast_called_normal"][pat][1] += 1
        if code in MATURE_NORMAL:
            pp["normal_called_blast"][pat][0] += c in blast_classes
            pp["normal_called_blast"][pat][1] += 1
        if code in ("LYT", "NGS", "MON"):
            pp[f"{code}_correct"][pat][0] += c == code
            pp[f"{code}_correct"][pat][1] += 1
    figs = {}
    for k, d in pp.items():
        num = sum(v[0] for v in d.values())
        den = sum(v[1] for v in d.values())
        figs[k] = {"value": share(num, den), "n": den, "ci95": bootstrap_ci({p: tuple(v) for p, v in d.items()}, rng)}
    sens = sorted(v[0] / v[1] for v in pp["blast_called_blast"].values() if v[1] >= 5)
    figs["per_patient_blast_sensitivity"] = {
        "patients": len(sens),
        "median": float(np.median(sens)) if sens else None,
        "worst_decile": float(np.percentile(sens, 10)) if sens else None,
        "min_cells_per_patient": 5,
    }
    figs["calls_by_true_class"] = {k: dict(v.most_common()) for k, v in sorted(by_code.items())}
    return figs


def lmu_extra_figures(calls: dict[str, str], samples: list[ds.Sample], blast_classes: set[str]) -> dict:
    out = {}
    for split in ("val", "train", "all"):
        per = defaultdict(Counter)
        for s in samples:
            if split != "all" and s.split != split:
                continue
            per[s.labels[0]][calls[str(Path(s.path).resolve())]] += 1
        out[split] = {
            code: {"n": sum(c.values()), "called_blast": sum(v for k, v in c.items() if k in blast_classes),
                   "calls": dict(c.most_common())}
            for code, c in sorted(per.items())
        }
    return out


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def fmt_ci(f: dict) -> str:
    ci = f.get("ci95")
    return f"{fmt(f['value'])} ({fmt(ci[0])}-{fmt(ci[1])}, n={f['n']})" if ci else f"{fmt(f['value'])} (n={f['n']})"


def markdown(card: dict, results: dict, scale_rows: dict | None = None, prec: str = "") -> str:
    lines = [
        "# Cross-lab report: cells, not labs",
        "",
        f"Model `{card['name']}` (sha256 `{card['sha256'][:16]}...`), written by `python tools/crosslab.py`.",
        "",
        "`jhh/` is a lab in no training data (Johns Hopkins, CellaVision, 82 AML/APL patients): evaluation only,",
        "nothing is fitted on it. Intervals: 95%, bootstrap over patients. A call is the class the runtime reports;",
        "`UNID` = not identified (low confidence or no stained nucleus): routed to review. Blast classes: "
        + ", ".join(sorted(card["blast_classes"])) + ".",
        "",
        "## jhh (a lab never trained on), the figures that matter",
        "",
        "| run | blasts called blast (>= 85%) | blasts called mature normal (<= 5%) | mature normal called blast (<= 3%) "
        "| LYT correct (>= 80%) | NGS correct (>= 80%) | MON correct (>= 80%) | per-patient blast sensitivity: median / worst decile |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        j = r["jhh"]
        pp = j["per_patient_blast_sensitivity"]
        lines.append(
            f"| {name} | {fmt_ci(j['blast_called_blast'])} | {fmt_ci(j['blast_called_normal'])} | "
            f"{fmt_ci(j['normal_called_blast'])} | {fmt_ci(j['LYT_correct'])} | {fmt_ci(j['NGS_correct'])} | "
            f"{fmt_ci(j['MON_correct'])} | {fmt(pp['median'])} / {fmt(pp['worst_decile'])} ({pp['patients']} patients) |"
        )
    if scale_rows:
        lines += ["", f"## jhh with a wrong scale ({prec}): the scale off by 20%", "",
                  "| scale given / true | blasts called blast | blasts called mature normal | mature normal called blast "
                  "| LYT correct | NGS correct | MON correct |", "|---|---|---|---|---|---|---|"]
        for f, j in sorted(scale_rows.items()):
            lines.append(f"| {f:.2f} | {fmt(j['blast_called_blast']['value'])} | {fmt(j['blast_called_normal']['value'])} | "
                         f"{fmt(j['normal_called_blast']['value'])} | {fmt(j['LYT_correct']['value'])} | "
                         f"{fmt(j['NGS_correct']['value'])} | {fmt(j['MON_correct']['value'])} |")
    first = next(iter(results.values()))
    lines += ["", f"## jhh: calls per true class ({next(iter(results))})", "",
              "| true class | n | calls (most frequent first) |", "|---|---|---|"]
    for code, calls in first["jhh"]["calls_by_true_class"].items():
        n = sum(calls.values())
        lines.append(f"| {code} | {n} | " + ", ".join(f"{k} {v}" for k, v in list(calls.items())[:8]) + " |")
    lines += ["", "## LMU cells of 13 more classes (the myeloblasts' own lab)", "",
              "Split as training splits files (md5): the val cells were never trained on; train cells were, when the",
              "run's training data included them (see the card's `extra.training`).", "",
              "| run | split | class | n | called blast | calls |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        for split in ("val", "all"):
            for code, f in r["lmu_extra"][split].items():
                lines.append(f"| {name} | {split} | {code} | {f['n']} | {f['called_blast']} | "
                             + ", ".join(f"{k} {v}" for k, v in list(f["calls"].items())[:6]) + " |")
    lines += ["", "Reproduce: `python tools/crosslab.py` (about a minute per run on 2 cores).", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--card", default=str(REPO / "models" / "leukoscope.card.json"))
    ap.add_argument("--precision", nargs="+", default=["f32", "int8"], help="model files to run (auto, int8, f32)")
    ap.add_argument("--jhh-scale", default="scanner", choices=["scanner", "auto"],
                    help="scanner: the CellaVision scale of the training data; auto: each crop's red cells")
    ap.add_argument("--scale-errors", nargs="*", type=float, default=[0.8, 1.2],
                    help="also run jhh (first precision) with the scale off by these factors")
    ap.add_argument("--out", default=str(REPO / "docs" / "classifier-report.md"))
    ap.add_argument("--in-domain", default=None,
                    help="the run's report.md to append (default: tools/runs/<run of the card>/report.md)")
    a = ap.parse_args(argv)
    card_path = Path(a.card).resolve()
    card = read_json(card_path)
    blast = set(card["blast_classes"])
    root = data_root()
    jhh = root / "jhh"
    if not (jhh / "manifest.csv").is_file():
        raise PipelineError(f"{jhh}/manifest.csv missing: is LEUKOSCOPE_DATA={root} the shared data folder?")
    with open(jhh / "manifest.csv") as f:
        manifest = list(csv.DictReader(f))
    for row in manifest:
        row["abs"] = str((jhh / row["file"]).resolve())
    lmu_extra = [s for s in ds.read_lmu_tree(root / "lmu") if "_mcbs_" in Path(s.path).name]
    for s in lmu_extra:
        s.split = ds.split_of(s.md5)
    physical = card["input"]["preprocessing"]["method"].startswith("physical")
    jhh_um = ds.SOURCE_UM_PER_PX["pbc"] if (a.jhh_scale == "scanner" and physical) else None
    lmu_um = ds.SOURCE_UM_PER_PX["lmu"] if physical else None
    rng = np.random.default_rng(2019)
    results = {}
    for prec in a.precision:
        name = f"{card['name']} {prec}" + ("" if jhh_um or not physical else " (jhh scale: auto)")
        log(f"{name}: classifying {len(manifest)} jhh cells and {len(lmu_extra)} LMU cells")
        calls_j = classify(card_path, [r["abs"] for r in manifest], prec, jhh_um)
        calls_l = classify(card_path, [str(Path(s.path).resolve()) for s in lmu_extra], prec, lmu_um)
        cj = {k: call_of(v, blast) for k, v in calls_j.items()}
        cl = {k: call_of(v, blast) for k, v in calls_l.items()}
        results[name] = {"jhh": jhh_figures(cj, manifest, blast, rng), "lmu_extra": lmu_extra_figures(cl, lmu_extra, blast),
                         "jhh_um_per_px": jhh_um}
        j = results[name]["jhh"]
        log(f"{name}: blasts called blast {fmt(j['blast_called_blast']['value'])}, blasts called normal "
            f"{fmt(j['blast_called_normal']['value'])}, normal called blast {fmt(j['normal_called_blast']['value'])}, "
            f"LYT {fmt(j['LYT_correct']['value'])} NGS {fmt(j['NGS_correct']['value'])} MON {fmt(j['MON_correct']['value'])}")
    scale_rows = {}
    if jhh_um and a.scale_errors:
        prec = a.precision[0]
        for f in [1.0] + a.scale_errors:
            calls_j = classify(card_path, [r["abs"] for r in manifest], prec, jhh_um * f)
            cj = {k: call_of(v, blast) for k, v in calls_j.items()}
            scale_rows[f] = jhh_figures(cj, manifest, blast, rng)
            log(f"{prec} at {f:.2f}x the scale: blasts called blast {fmt(scale_rows[f]['blast_called_blast']['value'])}")
    out = Path(a.out)
    text = markdown(card, results, scale_rows, a.precision[0])
    run = card["name"].removeprefix("leukoscope-cnn-")
    in_domain = Path(a.in_domain) if a.in_domain else RUNS / run / "report.md"
    if in_domain.is_file():
        section = in_domain.read_text()
    elif out.is_file() and IN_DOMAIN_MARK in out.read_text():
        log(f"note: {in_domain} missing: keeping the in-domain section already in {out}")
        section = out.read_text().split(IN_DOMAIN_MARK, 1)[1].lstrip("\n")
    else:
        section = None
        log(f"warning: {in_domain} missing: the report has no in-domain section (run pipeline.py evaluate)")
    if section:
        text += "\n" + IN_DOMAIN_MARK + "\n\n" + section
    out.write_text(text)
    (RUNS / "crosslab").mkdir(parents=True, exist_ok=True)
    write_json(RUNS / "crosslab" / f"{card['name']}.json", results)
    log(f"wrote {out}")


if __name__ == "__main__":
    try:
        main()
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
