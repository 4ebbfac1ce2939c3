"""Writes models/golden.json: a small fixed set of validation crops (paths relative
to the data folder) with the class and probability that onnxruntime gives with the
shipped int8 model on the tensors of `leukoscope preprocess`.

The Rust suite (tests/classifier.rs) classifies the same files with tract and the
Rust preprocessing and checks that (1) the classes agree (no train/serve skew) and
(2) the blast figures on the LMU crops hold up (a real outcome, not a copy).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common import MODELS, data_root, log, read_json, write_json

PER_PBC_GROUP = 8


def write_golden(data, card_path: Path = MODELS / "leukoscope.card.json", out: Path = MODELS / "golden.json") -> Path:
    import evaluate as ev

    card = read_json(card_path)
    classes = [c["code"] for c in card["classes"]]
    if classes != data.classes:
        raise RuntimeError(f"card classes {classes} differ from data classes {data.classes}")
    root = data_root().resolve()
    va = data.idx("val")
    chosen, seen = [], {}
    for i in va:
        s = data.samples[i]
        g = f"{s.source}:{'|'.join(s.labels)}"
        # Every LMU validation crop (the blast question), a few of each PBC group.
        if s.source == "lmu" or seen.get(g, 0) < PER_PBC_GROUP:
            seen[g] = seen.get(g, 0) + 1
            chosen.append(i)
    x = data.prep.take(np.array(chosen))
    logits = ev.onnx_logits(card_path.parent / card["file"], x)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    items = []
    for r, i in enumerate(chosen):
        s = data.samples[i]
        k = int(p[r].argmax())
        items.append({
            "path": str(Path(s.path).resolve().relative_to(root)),
            "labels": s.labels,
            "class": classes[k],
            "p": round(float(p[r, k]), 5),
            **({"um_per_px": s.um_per_px} if s.um_per_px else {}),
        })
    write_json(out, {
        "about": __doc__.strip().splitlines()[0],
        "model_sha256": card["sha256"],
        "items": items,
    })
    log(f"wrote {out}: {len(items)} crops ({sum(1 for it in items if it['path'].startswith('lmu/'))} LMU)")
    return out
