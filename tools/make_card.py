"""Writes the model card (models/leukoscope.card.json) the Rust runtime reads, and
copies the int8 model (and its f32 source) next to it.

The card is the contract with the runtime: class order = model output order,
`input.preprocessing` = the spec the training tensors were made with (copied
verbatim from the `leukoscope preprocess` sidecar), sha256 of the model file.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import MODELS, RUNS, PipelineError, log, read_json, sha256_file, write_json
from datasets import (
    BLAST_CLASSES,
    NAMES,
    NON_LEUKOCYTES,
    NORMAL_CLASSES,
    PBC_FOLDERS,
    PBC_PREFIXES,
    SOURCE_UM_PER_PX,
    VAL_PERCENT,
)

CARD_NAME = "leukoscope.card.json"
INT8_NAME = "leukoscope-int8.onnx"
F32_NAME = "leukoscope-f32.onnx"
MODEL_NAME = "leukoscope-cnn-v1"
MIN_CONFIDENCE = 0.5
# x86_64: tract's f32 kernels beat its int8 ones on the shipped net (1.7-2.1 ms vs
# 2.2-2.6 ms per crop, docs/performance.md). ARM is not measured on a board yet: int8.
PRECISION_BY_ARCH = {"x86_64": "f32"}

CHANNELS = "CIELAB L*,a*,b* standardised per crop (zero mean, unit variance per channel)"


def card_dict(
    *,
    classes: list[str],
    spec: dict,
    model_file: str,
    model_sha256: str,
    f32_file: str | None = None,
    f32_sha256: str | None = None,
    train_info: dict | None = None,
    quant_info: dict | None = None,
    metrics: dict | None = None,
    ood: dict | None = None,
) -> dict:
    size = int(spec["size"])
    physical = str(spec.get("method", "")).startswith("physical")
    ti = train_info or {}
    max_pools = "M" in (ti.get("arch") or ["M"])  # the layout; unknown: the shipped one, with pools
    extra = {
        "description": (
            "Classifies one centred white blood cell (or platelet) of a May-Gruenwald-Giemsa peripheral blood smear "
            "into the classes below; blasts (myeloblasts) are flagged. A plain VGG-style CNN (3x3 conv + ReLU, "
            + ("max-pooling" if max_pools else "stride-2 convolutions instead of pooling")
            + ", global average pooling, linear head) on a nucleus-centred, stain-standardised CIELAB crop"
            + (f" of fixed physical size ({spec.get('window_um')} um over {size} px)." if physical else ".")
        ),
        "caveat": (
            "SCREENING AID ONLY, not a diagnostic device: every flagged cell and every count must be verified by a "
            "qualified person. Trained on two labs' images only (healthy donors: PBC; AML patients and controls: LMU); "
            "blasts were seen only from LMU, and the LMU classes other than MYO and NGS from 11-19 cells each. "
            "See docs/classifier-report.md for a lab never trained on."
        ),
        "format": "onnx QOperator int8: QLinearConv per-tensor (ReLU fused)"
        + (", int8 MaxPool" if max_pools else "")
        + ", rest (GlobalAveragePool, Gemm) f32",
        "output": "logits [batch, n_classes] in the order of `classes`; the runtime applies softmax",
        "f32_model": {"file": f32_file, "sha256": f32_sha256} if f32_file else None,
        "architecture": {"arch": ti.get("arch"), "macs": ti.get("macs"), "params": ti.get("params")},
        # Scale (um per pixel) of each training source's crops: what `classify
        # --um-per-px` should be given for crops from the same scanners.
        **({"source_um_per_px": ti.get("source_um_per_px") or dict(SOURCE_UM_PER_PX)} if physical else {}),
        "quantization": quant_info,
        "class_mapping": {
            "scheme": "the 15 class codes of AML-Cytomorphology_LMU plus PLT (platelet); the model keeps the codes with training data",
            "pbc_folders": PBC_FOLDERS,
            "pbc_file_prefixes": PBC_PREFIXES,
            "lmu": "folder name = class code (lmu/MYO, lmu/NGS)",
            "partial_labels": "PBC NEUTROPHIL_ (NGB or NGS) and IG_ (MMZ, MYB or PMO): loss -log(sum of softmax over the set)",
        },
        "training_data": [
            {
                "name": "PBC dataset (Acevedo et al. 2020, Data in Brief 30:105474)",
                "licence": "CC BY 4.0",
                "what": "single cells, May-Gruenwald-Giemsa, CellaVision DM96, healthy donors, Hospital Clinic of Barcelona; "
                "used as downscaled by 1/2 (Lanczos, JPEG q92)",
            },
            {
                "name": "AML-Cytomorphology_LMU (Matek et al. 2019, Nature Machine Intelligence 1:538), TCIA doi 10.7937/tcia.2019.36f5o9ld",
                "licence": "CC BY 3.0",
                "what": "myeloblasts (MYO) and segmented neutrophils (NGS), Munich University Hospital, M8 scanner 100x oil; "
                "used as 200x200 JPEG re-encodes of the 400x400 TIFFs",
            },
        ],
        "split": (
            f"by file md5: val if int(md5(f'{{seed}}:{{file_md5}}').hexdigest()[:8], 16) % 100 < {VAL_PERCENT} else train, "
            f"seed {ti.get('seed', 2019)}; identical files share a split; training uses train only, fixed epochs, "
            + (
                "no model selection on val"
                if not ti.get("lineage")
                else "no per-epoch selection on val; but the run was continued (fine-tuned from the previous run, see "
                "training.lineage) while its val PBC macro-F1 was below 97%: a mild selection on val"
            )
        ),
        "training": {
            k: ti.get(k)
            for k in ("command", "epochs", "steps_per_epoch", "batch", "lr", "weight_decay", "label_smoothing", "lmu_boost",
                      "stain_aug", "seed", "n_train", "train_seconds", "lineage")
        },
        "metrics": metrics,
        "physical_scale": (
            f"The input covers {spec.get('window_um')} um in {size} px ({spec.get('window_um', 0) / size:.3f} um per input "
            "pixel) around the nucleus: the model sees each cell's true size. The image's scale comes from the field "
            "(configured, calibrated or red-cell estimate) or, for crops, `classify --um-per-px` / the red cells around "
            f"the cell. Training scales (um/px of the shared crops): {ti.get('source_um_per_px') or SOURCE_UM_PER_PX}."
            if physical
            else "The preprocessing rescales each cell so that its nucleus spans a fixed share (1/window_factor) of the "
            f"{size}x{size} input: the model sees no absolute size."
        ),
    }
    return {
        "name": ti.get("model_name", MODEL_NAME),
        "file": model_file,
        "sha256": model_sha256,
        "input": {"shape": [1, 3, size, size], "channels": CHANNELS, "preprocessing": spec},
        "classes": [{"code": c, "name": NAMES[c], "leukocyte": c not in NON_LEUKOCYTES} for c in classes],
        "blast_classes": list(BLAST_CLASSES),
        "normal_classes": list(NORMAL_CLASSES),
        "min_confidence": MIN_CONFIDENCE,
        # Which file runs fastest in tract per CPU architecture (`leukoscope bench`,
        # docs/performance.md); unlisted architectures run the int8 file.
        "precision_by_arch": dict(PRECISION_BY_ARCH) if f32_file else {},
        **({"ood": {k: ood[k] for k in ("max_energy", "warn_percent")}} if ood else {}),
        "extra": extra,
    }


def card_metrics(report: dict) -> dict:
    """The figures of report.json that go into the card."""
    keep = {}
    for fmt in ("f32", "int8"):
        r = report["figures"][fmt]
        keep[fmt] = {
            "val_accuracy": r["accuracy"],
            "val_macro_f1": r["macro_f1"],
            "pbc_macro_f1": r["pbc"]["macro_f1"],
            "lmu_blast": r["lmu_blast"],
            "per_class": {c: {k: v[k] for k in ("precision", "recall", "f1", "n")} for c, v in r["per_class"].items()},
            "robustness": report.get("robustness", {}).get(fmt),
        }
    if "tract_int8" in report["figures"]:
        t = report["figures"]["tract_int8"]
        keep["tract_int8"] = {"val_accuracy": t["accuracy"], "pbc_macro_f1": t["pbc"]["macro_f1"], "lmu_blast": t["lmu_blast"],
                              "vs_onnxruntime_int8": {k: v for k, v in report["tract"].items() if k != "model"}}
    keep["n_val"] = report.get("n_val")
    keep["note"] = "val split (20% by md5); 'robustness' = LMU val MYO/NGS crops re-stained / rescaled, see tools/README.md"
    return keep


def write_card(
    out_dir: Path,
    run_dir: Path,
    *,
    report: dict | None = None,
    copy: bool = True,
    card_name: str = CARD_NAME,
) -> Path:
    """Writes out_dir/card_name for the run's int8 model. copy=True copies the int8
    and f32 models to out_dir as leukoscope-int8.onnx / leukoscope-f32.onnx; else the
    card points at the run's files (out_dir must then be run_dir)."""
    run_dir = Path(run_dir)
    int8, f32 = run_dir / "model-int8.onnx", run_dir / "model-f32.onnx"
    for p in (int8, f32, run_dir / "train.json", run_dir / "spec.json"):
        if not p.is_file():
            raise PipelineError(f"{p} missing: run train and quantize first")
    out_dir.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copyfile(int8, out_dir / INT8_NAME)
        shutil.copyfile(f32, out_dir / F32_NAME)
        int8, f32 = out_dir / INT8_NAME, out_dir / F32_NAME
    elif Path(out_dir).resolve() != run_dir.resolve():
        raise PipelineError("write_card(copy=False) needs out_dir == run_dir")
    ti = read_json(run_dir / "train.json")
    # Runs fine-tuned from earlier runs: record the chain, oldest first.
    lineage, rd = [], run_dir
    while True:
        info = read_json(rd / "train.json")
        lineage.append({"run": rd.name, "epochs": info.get("epochs"), "lr": info.get("lr"), "command": info.get("command")})
        init = (info.get("init") or {}).get("from")
        if not init or not (Path(init).parent / "train.json").is_file():
            break
        rd = Path(init).parent
    if len(lineage) > 1:
        ti = {**ti, "lineage": lineage[::-1], "epochs": sum(e["epochs"] or 0 for e in lineage)}
    ti = {**ti, "model_name": f"leukoscope-cnn-{run_dir.name}"}
    qi = read_json(run_dir / "quant.json") if (run_dir / "quant.json").is_file() else None
    card = card_dict(
        classes=ti["classes"],
        spec=read_json(run_dir / "spec.json"),
        model_file=int8.name,
        model_sha256=sha256_file(int8),
        f32_file=f32.name,
        f32_sha256=sha256_file(f32),
        train_info=ti,
        quant_info=qi,
        metrics=card_metrics(report) if report else None,
        ood=report.get("ood") if report else None,
    )
    path = out_dir / card_name
    write_json(path, card)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Write models/leukoscope.card.json from a finished run.")
    ap.add_argument("--run", required=True, help="run name under tools/runs/ or a path")
    ap.add_argument("--out", default=str(MODELS), help="output folder (default models/)")
    a = ap.parse_args(argv)
    run_dir = Path(a.run) if Path(a.run).is_dir() else RUNS / a.run
    rep = run_dir / "report.json"
    if not rep.is_file():
        raise PipelineError(f"{rep} missing: run evaluate first")
    p = write_card(Path(a.out), run_dir, report=read_json(rep))
    log(f"wrote {p}")


if __name__ == "__main__":
    main()
