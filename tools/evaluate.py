"""Evaluation of the f32 and int8 ONNX models (onnxruntime) on the val split, of
the Rust runtime (tract, `leukoscope classify`) on the same crops, and of stain /
scale robustness on transformed LMU val crops. Writes report.json, report.md and
confusion.png into the run folder.

Robustness variants (LMU val MYO + NGS, written as PNG under tools/cache/robust/,
then preprocessed by the Rust binary like everything else):
  pbc_stain        Reinhard transfer in CIELAB to PBC's colour statistics
  bccd_stain       Reinhard transfer to BCCD fields' statistics (a third lab)
  hed_stain        H-E-DAB colour deconvolution (Ruifrok & Johnston), H x1.3,
                   E x0.7, DAB +0.01 (a brownish cast), back to RGB
  pbc_scale        downscale by 1/1.4 (LMU cells are ~1.4x larger than PBC's)
  pbc_stain_scale  pbc_stain then pbc_scale
  hed_stain_scale  hed_stain then pbc_scale
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from common import CACHE, PipelineError, log, preprocess, read_json, run_classify, write_json
from datasets import BLAST_CLASSES, CODE_TO_PBC, PBC_CLASSES, Sample

ROBUST_VERSION = "robust-v1"
VARIANTS = ["pbc_stain", "bccd_stain", "hed_stain", "pbc_scale", "pbc_stain_scale", "hed_stain_scale"]
SCALE = 1 / 1.4

# ------------------------------------------------------------------------------ colour


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """rgb float in [0,1], [...,3] -> CIELAB (D65)."""
    c = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    d = 6 / 29
    f = np.where(xyz > d**3, np.cbrt(xyz), xyz / (3 * d * d) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    fy = (lab[..., 0] + 16) / 116
    fx = fy + lab[..., 1] / 500
    fz = fy - lab[..., 2] / 200
    d = 6 / 29
    finv = lambda f: np.where(f > d, f**3, 3 * d * d * (f - 4 / 29))  # noqa: E731
    xyz = np.stack([finv(fx), finv(fy), finv(fz)], -1) * np.array([0.95047, 1.0, 1.08883])
    m = np.array([[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560], [0.0556434, -0.2040259, 1.0572252]])
    c = np.clip(xyz @ m.T, 0, 1)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


def load_rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


def to_image(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8))


def lab_stats(paths: list[str], max_side: int = 0) -> dict:
    """Mean over images of the per-image Lab mean and std (Reinhard target)."""
    means, stds = [], []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if max_side and max(im.size) > max_side:
                f = max_side / max(im.size)
                im = im.resize((round(im.width * f), round(im.height * f)), Image.LANCZOS)
            lab = srgb_to_lab(np.asarray(im, dtype=np.float64) / 255.0).reshape(-1, 3)
        means.append(lab.mean(0))
        stds.append(lab.std(0))
    return {"mean": np.mean(means, 0).tolist(), "std": np.mean(stds, 0).tolist(), "n_images": len(paths)}


def reinhard(rgb: np.ndarray, target: dict) -> np.ndarray:
    lab = srgb_to_lab(rgb)
    flat = lab.reshape(-1, 3)
    mu, sd = flat.mean(0), np.maximum(flat.std(0), 1e-6)
    out = (lab - mu) / sd * np.array(target["std"]) + np.array(target["mean"])
    return lab_to_srgb(out)


# Ruifrok & Johnston (2001) stain vectors (rows: haematoxylin, eosin, DAB), as in skimage.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
_LOG_ADJUST = np.log(1e-6)


def rgb_to_hed(rgb: np.ndarray) -> np.ndarray:
    od = np.log(np.maximum(rgb, 1e-6)) / _LOG_ADJUST
    return np.maximum(od @ HED_FROM_RGB, 0)


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    log_rgb = -(hed * -_LOG_ADJUST) @ RGB_FROM_HED
    return np.clip(np.exp(log_rgb), 0, 1)


def hed_restain(rgb: np.ndarray, h: float = 1.3, e: float = 0.7, d_shift: float = 0.01) -> np.ndarray:
    """Deterministic stain change: haematoxylin x h, eosin x e, DAB + d_shift."""
    hed = rgb_to_hed(rgb)
    hed = hed * np.array([h, e, 1.0]) + np.array([0.0, 0.0, d_shift])
    return hed_to_rgb(hed)


def rescale(img: Image.Image, f: float = SCALE) -> Image.Image:
    """Shrinks the whole image (cell and canvas) by f, Lanczos (antialiased)."""
    return img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.LANCZOS)


def transform(rgb: np.ndarray, variant: str, stats: dict) -> Image.Image:
    if variant.startswith("pbc_stain"):
        rgb = reinhard(rgb, stats["pbc"])
    elif variant.startswith("bccd_stain"):
        rgb = reinhard(rgb, stats["bccd"])
    elif variant.startswith("hed_stain"):
        rgb = hed_restain(rgb)
    img = to_image(rgb)
    if variant.endswith("scale"):
        img = rescale(img)
    return img


def colour_stats(pbc_train_paths: list[str], bccd_dir: Path, cache: Path = CACHE / "robust" / "stats.json", n_pbc: int = 1000) -> dict:
    """Reinhard targets, computed once: PBC train images (a fixed subset of up to
    n_pbc, by path hash) and all BCCD fields (at most 320 px wide)."""
    pbc = sorted(pbc_train_paths, key=lambda p: hashlib.md5(p.encode()).hexdigest())[:n_pbc]
    bccd = sorted(str(p) for p in bccd_dir.glob("*.jpg"))
    if not bccd:
        raise PipelineError(f"no BCCD fields in {bccd_dir}")
    key = hashlib.sha256(("\n".join(pbc) + "\n".join(bccd) + ROBUST_VERSION).encode()).hexdigest()[:16]
    if cache.is_file():
        s = read_json(cache)
        if s.get("key") == key:
            return s
    log(f"colour statistics of {len(pbc)} PBC train images and {len(bccd)} BCCD fields")
    s = {"key": key, "pbc": lab_stats(pbc), "bccd": lab_stats(bccd, max_side=320)}
    write_json(cache, s)
    return s


def make_variants(samples: list[Sample], stats: dict, root: Path = CACHE / "robust") -> dict[str, list[str]]:
    """Writes the transformed crops (PNG, lossless) once; returns {variant: paths}
    in the order of `samples`."""
    out = {}
    for v in VARIANTS:
        d = root / v
        d.mkdir(parents=True, exist_ok=True)
        names = [f"{s.labels[0]}_{Path(s.path).stem}_{s.md5[:8]}.png" for s in samples]
        man = d / "manifest.json"
        key = hashlib.sha256((ROBUST_VERSION + stats["key"] + "".join(s.md5 for s in samples)).encode()).hexdigest()
        if not (man.is_file() and read_json(man).get("key") == key and all((d / n).is_file() for n in names)):
            for s, n in zip(samples, names):
                transform(load_rgb(s.path), v, stats).save(d / n)
            write_json(man, {"key": key, "n": len(names)})
        out[v] = [str(d / n) for n in names]
    return out


# ------------------------------------------------------------------------------ metrics


def onnx_logits(model: Path, x: np.ndarray, batch: int = 256, threads: int = 2) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: np.ascontiguousarray(x[i : i + batch], dtype=np.float32)})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs, 0)


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def blast_figures(samples: list[Sample], pred: list[str], blast=BLAST_CLASSES) -> dict:
    """LMU blast flagging: sensitivity on blast-labelled cells (MYO), specificity on
    the others, LMU NGS separately (with what it was called)."""
    bl = set(blast)
    pos = [p in bl for s, p in zip(samples, pred) if s.source == "lmu" and s.labels[0] in bl]
    neg = [p not in bl for s, p in zip(samples, pred) if s.source == "lmu" and s.labels[0] not in bl]
    ngs = [p for s, p in zip(samples, pred) if s.source == "lmu" and s.labels == ["NGS"]]
    r = lambda v: round(float(np.mean(v)), 4) if v else None  # noqa: E731
    return {
        "sensitivity": r(pos),
        "n_blast": len(pos),
        "specificity": r(neg),
        "n_nonblast": len(neg),
        "ngs_specificity": r([p not in bl for p in ngs]),
        "ngs_called_ngs": r([p == "NGS" for p in ngs]),
        "ngs_called_neutrophil": r([p in ("NGS", "NGB") for p in ngs]),
        "n_ngs": len(ngs),
        "ngs_predictions": dict(Counter(ngs).most_common()),
    }


def pbc_figures(samples: list[Sample], pred: list[str]) -> dict:
    """8-class PBC score: predictions mapped back to PBC folders (NGS/NGB ->
    neutrophil, MMZ/MYB/PMO -> ig, ...); a blast predicted on a PBC cell is wrong."""
    pairs = [(s.folder, CODE_TO_PBC.get(p) or "other") for s, p in zip(samples, pred) if s.source == "pbc"]
    if not pairs:
        return {"macro_f1": None, "n": 0}
    per = {}
    for c in PBC_CLASSES:
        tp = sum(t == c and q == c for t, q in pairs)
        fp = sum(t != c and q == c for t, q in pairs)
        fn = sum(t == c and q != c for t, q in pairs)
        p, r, f = _prf(tp, fp, fn)
        per[c] = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4), "n": tp + fn}
    present = [c for c in PBC_CLASSES if per[c]["n"]]
    return {
        "macro_f1": round(float(np.mean([per[c]["f1"] for c in present])), 4),
        "accuracy": round(float(np.mean([t == q for t, q in pairs])), 4),
        "n": len(pairs),
        "called_blast": sum(q == "other" for _, q in pairs),
        "per_class": per,
    }


def figures(samples: list[Sample], pred: list[str], classes: list[str]) -> dict:
    """Per-class P/R/F1 (single-label samples), accuracy (prediction in the label
    set, partial labels included), confusion matrix, PBC and LMU blast figures."""
    single = [(s.labels[0], p) for s, p in zip(samples, pred) if not s.partial]
    per = {}
    for c in classes:
        tp = sum(t == c and q == c for t, q in single)
        fp = sum(t != c and q == c for t, q in single)
        fn = sum(t == c and q != c for t, q in single)
        p, r, f = _prf(tp, fp, fn)
        per[c] = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4), "n": tp + fn}
    rows = list(classes) + sorted({s.key for s in samples if s.partial})
    cm = {r: [0] * len(classes) for r in rows}
    for s, p in zip(samples, pred):
        cm[s.key][classes.index(p)] += 1
    present = [c for c in classes if per[c]["n"]]
    by_source = {}
    for src in sorted({s.source for s in samples}):
        v = [p in s.labels for s, p in zip(samples, pred) if s.source == src]
        by_source[src] = {"accuracy": round(float(np.mean(v)), 4), "n": len(v)}
    return {
        "accuracy": round(float(np.mean([p in s.labels for s, p in zip(samples, pred)])), 4) if samples else None,
        "macro_f1": round(float(np.mean([per[c]["f1"] for c in present])), 4) if present else None,
        "n": len(samples),
        "by_source": by_source,
        "per_class": per,
        "confusion": {"rows": rows, "cols": list(classes), "counts": [cm[r] for r in rows]},
        "pbc": pbc_figures(samples, pred),
        "lmu_blast": blast_figures(samples, pred),
    }


# ------------------------------------------------------------------------------ report


def plot_confusion(rep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fmts = [f for f in ("f32", "int8", "tract_int8") if f in rep["figures"]]
    fig, axes = plt.subplots(1, len(fmts), figsize=(6.5 * len(fmts), 6.5))
    axes = np.atleast_1d(axes)
    for ax, f in zip(axes, fmts):
        cm = rep["figures"][f]["confusion"]
        m = np.array(cm["counts"], dtype=float)
        norm = m / np.maximum(m.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(cm["cols"])), cm["cols"], rotation=90, fontsize=8)
        ax.set_yticks(range(len(cm["rows"])), cm["rows"], fontsize=8)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true (val)")
        ax.set_title(f"{f}: acc {rep['figures'][f]['accuracy']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def report_md(rep: dict) -> str:
    F = rep["figures"]
    fmts = [f for f in ("f32", "int8", "tract_int8") if f in F]
    L = [f"# leukoscope evaluation: run `{rep['run']}`", "",
         f"val split: {rep['n_val']} crops ({rep['val_groups']}); figures in %.", ""]
    L += ["## Summary", "", "| figure | " + " | ".join(fmts) + " |", "|---|" + "---|" * len(fmts)]
    rows = [("val accuracy (partial labels: any of the set)", lambda r: r["accuracy"]),
            ("val macro-F1 (model classes, single-label)", lambda r: r["macro_f1"]),
            ("PBC macro-F1 (8 PBC classes)", lambda r: r["pbc"]["macro_f1"]),
            ("LMU blast sensitivity (MYO)", lambda r: r["lmu_blast"]["sensitivity"]),
            ("LMU blast specificity (NGS)", lambda r: r["lmu_blast"]["specificity"]),
            ("LMU NGS called NGS", lambda r: r["lmu_blast"]["ngs_called_ngs"])]
    for name, get in rows:
        L.append(f"| {name} | " + " | ".join(_pct(get(F[f])) for f in fmts) + " |")
    if "tract" in rep:
        t = rep["tract"]
        L += ["", f"Rust runtime (tract) vs onnxruntime int8 on the same {t['n']} val crops: top-1 agreement "
              f"{_pct(t['agreement'])}%, max |dprob| {t['max_abs_prob_diff']:.4f}; differences (points): "
              + ", ".join(f"{k} {v:+.2f}" for k, v in t["diff_points"].items())
              + f". Skew {'OK' if t['skew_ok'] else 'TOO LARGE'} (limit {t['limit_points']} points)."]
    if "robustness" in rep:
        L += ["", "## Stain and scale robustness (LMU val MYO + NGS)", "",
              "| variant | f32 sens | f32 spec | int8 sens | int8 spec | int8 NGS called NGS |", "|---|---|---|---|---|---|"]
        for v, _ in rep["robustness"]["int8"].items():
            a, b = rep["robustness"]["f32"][v], rep["robustness"]["int8"][v]
            L.append(f"| {v} | {_pct(a['sensitivity'])} | {_pct(a['specificity'])} | {_pct(b['sensitivity'])} | "
                     f"{_pct(b['specificity'])} | {_pct(b['ngs_called_ngs'])} |")
    L += ["", "## Per class (val, single-label crops)", "",
          "| class | n | " + " | ".join(f"{f} P / R / F1" for f in fmts) + " |", "|---|---|" + "---|" * len(fmts)]
    for c, v in F["int8"]["per_class"].items():
        L.append(f"| {c} | {v['n']} | " + " | ".join(
            f"{_pct(F[f]['per_class'][c]['precision'])} / {_pct(F[f]['per_class'][c]['recall'])} / {_pct(F[f]['per_class'][c]['f1'])}"
            for f in fmts) + " |")
    L += ["", "## PBC classes (predictions mapped to PBC folders)", "",
          "| PBC class | n | " + " | ".join(f"{f} F1" for f in fmts) + " |", "|---|---|" + "---|" * len(fmts)]
    for c, v in F["int8"]["pbc"].get("per_class", {}).items():
        L.append(f"| {c} | {v['n']} | " + " | ".join(_pct(F[f]["pbc"]["per_class"][c]["f1"]) for f in fmts) + " |")
    L += ["", "LMU NGS predictions (int8): " + json.dumps(F["int8"]["lmu_blast"]["ngs_predictions"]), "",
          "Confusion matrices: confusion.png.", ""]
    return "\n".join(L)


# A count warns when this share of its cells is unfamiliar: ten times the
# in-domain rate the threshold allows, set before any out-of-domain measurement.
OOD_PERCENTILE = 99
OOD_WARN_PERCENT = 10.0


def evaluate(
    run_dir: Path,
    val: list[Sample],
    x_val: np.ndarray,
    classes: list[str],
    *,
    pbc_train_paths: list[str],
    bccd_dir: Path | None,
    tract: bool = True,
    robust: bool = True,
    skew_limit: float | None = 0.5,
    robust_root: Path = CACHE / "robust",
) -> dict:
    """skew_limit: largest allowed |tract - onnxruntime int8| difference in points
    (None: report only)."""
    run_dir = Path(run_dir)
    rep: dict = {"run": run_dir.name, "n_val": len(val), "val_groups": dict(Counter(f"{s.source}:{s.key}" for s in val)),
                 "classes": classes, "figures": {}}
    preds = {}
    probs = {}
    energies = {}
    for fmt in ("f32", "int8"):
        lg = onnx_logits(run_dir / f"model-{fmt}.onnx", x_val)
        m = lg.max(1, keepdims=True)
        e = np.exp(lg - m)
        probs[fmt] = e / e.sum(1, keepdims=True)
        energies[fmt] = -(m[:, 0] + np.log(e.sum(1)))
        preds[fmt] = [classes[i] for i in lg.argmax(1)]
        rep["figures"][fmt] = figures(val, preds[fmt], classes)
        f = rep["figures"][fmt]
        log(f"{fmt}: val acc {f['accuracy']:.3f}, macro-F1 {f['macro_f1']:.3f}, PBC macro-F1 {f['pbc']['macro_f1']}, "
            f"LMU blast sens {f['lmu_blast']['sensitivity']} spec {f['lmu_blast']['specificity']}")
    # Out-of-distribution rule for the card: the energy score -logsumexp(logits)
    # of these in-domain validation crops; above their 99th percentile a crop is
    # "unfamiliar" (about 1% of in-domain cells by construction). Taken over both
    # files so that either flags as few in-domain cells (energies from the loop above).
    rep["ood"] = {
        "max_energy": round(float(max(np.percentile(e, OOD_PERCENTILE) for e in energies.values())), 4),
        "warn_percent": OOD_WARN_PERCENT,
        "from": f"{OOD_PERCENTILE}th percentile of the energy on the {len(x_val)} validation crops (PBC + LMU)",
    }
    log(f"ood: max energy {rep['ood']['max_energy']} (warn at {OOD_WARN_PERCENT}% of a count)")
    rep["int8_vs_f32_agreement"] = round(float(np.mean([a == b for a, b in zip(preds["f32"], preds["int8"])])), 4)
    if tract:
        from make_card import write_card

        card = write_card(run_dir, run_dir, copy=False)
        res = run_classify(card, [s.path for s in val], scales=[s.um_per_px for s in val])
        errors = [s.path for s in val if "error" in res[str(Path(s.path).resolve())]]
        if errors:
            raise PipelineError(f"leukoscope classify failed on {len(errors)} val crops, e.g. {errors[0]}")
        tp = [res[str(Path(s.path).resolve())]["class"] for s in val]
        tprob = np.array([[res[str(Path(s.path).resolve())]["probs"][c] for c in classes] for s in val])
        rep["figures"]["tract_int8"] = figures(val, tp, classes)
        a, b = rep["figures"]["int8"], rep["figures"]["tract_int8"]
        diff = {
            "pbc_macro_f1": 100 * ((b["pbc"]["macro_f1"] or 0) - (a["pbc"]["macro_f1"] or 0)),
            "blast_sensitivity": 100 * ((b["lmu_blast"]["sensitivity"] or 0) - (a["lmu_blast"]["sensitivity"] or 0)),
            "blast_specificity": 100 * ((b["lmu_blast"]["specificity"] or 0) - (a["lmu_blast"]["specificity"] or 0)),
            "accuracy": 100 * (b["accuracy"] - a["accuracy"]),
        }
        rep["tract"] = {
            "n": len(val),
            "agreement": round(float(np.mean([p == q for p, q in zip(tp, preds["int8"])])), 4),
            "max_abs_prob_diff": float(np.abs(tprob - probs["int8"]).max()),
            "diff_points": {k: round(v, 3) for k, v in diff.items()},
            "limit_points": skew_limit if skew_limit is not None else 0.5,
            "skew_ok": all(abs(v) < (skew_limit if skew_limit is not None else 0.5) for v in diff.values()),
            "model": res["__model__"],
        }
        log(f"tract vs onnxruntime int8: agreement {rep['tract']['agreement']:.4f}, diff (points) {rep['tract']['diff_points']}")
    if robust:
        lmu = [i for i, s in enumerate(val) if s.source == "lmu" and s.labels[0] in ("MYO", "NGS")]
        if lmu and bccd_dir is not None:
            sub = [val[i] for i in lmu]
            stats = colour_stats(pbc_train_paths, bccd_dir, cache=robust_root / "stats.json")
            rep["robust_stats"] = {k: stats[k] for k in ("pbc", "bccd")}
            paths = make_variants(sub, stats, robust_root)
            rb = {"f32": {}, "int8": {}}
            for fmt in ("f32", "int8"):
                rb[fmt]["original"] = blast_figures(sub, [preds[fmt][i] for i in lmu])
            for v in VARIANTS:
                # The scale variants shrink the image by 1/1.4: 1.4x the µm per pixel.
                k = 1.4 if "scale" in v else 1.0
                pv = preprocess(paths[v], scales=[s.um_per_px and s.um_per_px * k for s in sub],
                                cache_sub="pre-robust", quiet=True)
                if not pv.ok.all():
                    raise PipelineError(f"robustness variant {v}: {len(pv.errors)} crops failed to preprocess")
                for fmt in ("f32", "int8"):
                    lg = onnx_logits(run_dir / f"model-{fmt}.onnx", np.asarray(pv.x))
                    rb[fmt][v] = blast_figures(sub, [classes[i] for i in lg.argmax(1)])
                r = rb["int8"][v]
                log(f"robust {v}: int8 blast sens {r['sensitivity']} spec {r['specificity']} (NGS called NGS {r['ngs_called_ngs']})")
            rep["robustness"] = rb
    write_json(run_dir / "report.json", rep)
    (run_dir / "report.md").write_text(report_md(rep))
    plot_confusion(rep, run_dir / "confusion.png")
    log(f"wrote {run_dir / 'report.json'}, report.md, confusion.png")
    if tract and skew_limit is not None and not rep["tract"]["skew_ok"]:
        raise PipelineError(f"train/serve skew too large: {rep['tract']['diff_points']} (limit {skew_limit} points)")
    return rep
