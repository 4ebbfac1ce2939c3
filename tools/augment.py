"""Stain augmentation in image space, before the Rust preprocessing.

The preprocessing standardises each crop's Lab channels, which cancels any stain
difference that is affine per Lab channel. What it cannot cancel (a stain whose
haematoxylin/eosin balance differs, a camera with another gamma or white
balance) the model must learn to ignore, so training sees each image also in
a random other "lab": written as PNG under tools/cache/aug/ and preprocessed by
`leukoscope preprocess` like every other image.

Deliberately NOT used here: the colour statistics of BCCD (the held-out third lab
of the robustness report) and the evaluation's fixed H x1.3 / E x0.7 restain,
which lies outside the H/E jitter range below.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from common import CACHE, log

H_RANGE = (0.85, 1.15)
E_RANGE = (0.85, 1.15)
# `wide_stain`: how strongly a lab stains, haematoxylin and eosin apart. The two
# training labs differ in it, and within LMU the nuclear optical density of
# myeloblasts and neutrophils differs ~2.5x, so a model can read "pale nucleus"
# as "blast" when it is "another lab's stain"; copies span 0.6-1.5x on each.
WIDE_RANGE = (0.6, 1.5)


def _other_lab_stats(samples, rng, n: int = 400) -> dict[str, list[dict]]:
    """Lab mean/std of up to n train images per source: targets for swaps."""
    from evaluate import load_rgb, srgb_to_lab

    out: dict[str, list[dict]] = {}
    for src in sorted({s.source for s in samples}):
        paths = [s.path for s in samples if s.source == src]
        pick = rng.choice(len(paths), size=min(n, len(paths)), replace=False)
        stats = []
        for i in pick:
            lab = srgb_to_lab(load_rgb(paths[i])).reshape(-1, 3)
            stats.append({"mean": lab.mean(0).tolist(), "std": lab.std(0).tolist()})
        out[src] = stats
    return out


def _camera(rgb: np.ndarray, rng) -> np.ndarray:
    gain = rng.uniform(0.9, 1.1, 3)
    gamma = rng.uniform(0.8, 1.25)
    return np.clip((rgb * gain) ** gamma, 0, 1)


def _optics(rgb: np.ndarray, r) -> np.ndarray:
    """Another microscope and camera: defocus, lower resolution (down and up
    again), sensor noise, in random combination (each with probability 1/2,
    at least one). JPEG at a random quality is applied when the copy is saved."""
    from PIL import ImageFilter

    img = Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8))
    todo = r.random(3) < 0.5
    if not todo.any():
        todo[r.integers(3)] = True
    if todo[0]:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(r.uniform(0.5, 1.8))))
    if todo[1]:
        f = r.uniform(1.3, 2.5)
        w, h = img.size
        img = img.resize((max(8, int(w / f)), max(8, int(h / f))), Image.BILINEAR).resize((w, h), Image.BICUBIC)
    out = np.asarray(img, dtype=np.float32) / 255
    if todo[2]:
        out = out + r.normal(0, r.uniform(0.005, 0.03), out.shape)
    return np.clip(out, 0, 1)


def augment_train(samples, copies: dict[str, int], seed: int, root: Path = CACHE / "aug", optics: bool = False,
                  wide_stain: bool = False, jitter_range: tuple[float, float] = (0.85, 1.18)) -> list:
    """Returns new Samples (same labels, split 'train') for augmented copies of the
    given train samples: `copies[source]` copies each. Cached by path + seed.
    optics=True: each copy also goes through `_optics` (half of them) and is
    saved as JPEG at quality 40-95 instead of PNG: the camera, not only the stain.
    wide_stain=True: the H/E restain spans WIDE_RANGE, and the other two kinds of
    copy get such a restain too, on half of them."""
    from evaluate import hed_restain, load_rgb, reinhard

    rng = np.random.default_rng(seed)
    stats = _other_lab_stats(samples, rng)
    sources = sorted(stats)
    out = []
    made = 0
    for s in samples:
        for c in range(copies.get(s.source, 0)):
            tag = (":optics" if optics else "") + (":wide" if wide_stain else "")
            key = hashlib.md5(f"{seed}:{c}:{s.path}{tag}".encode()).hexdigest()[:16]
            dst = root / str(seed) / f"{key}.{'jpg' if optics else 'png'}"
            if not dst.exists():
                r = np.random.default_rng(int(key, 16))
                rgb = load_rgb(s.path)
                kind = r.integers(3)
                if kind == 0 and len(sources) > 1:
                    # Into another lab's colour space.
                    other = [x for x in sources if x != s.source]
                    tgt = stats[other[r.integers(len(other))]]
                    rgb = reinhard(rgb, tgt[r.integers(len(tgt))])
                elif kind == 1:
                    hr, er = (WIDE_RANGE, WIDE_RANGE) if wide_stain else (H_RANGE, E_RANGE)
                    rgb = hed_restain(rgb, h=r.uniform(*hr), e=r.uniform(*er), d_shift=r.uniform(-0.01, 0.01))
                else:
                    rgb = _camera(rgb, r)
                if wide_stain and kind != 1 and r.random() < 0.5:
                    rgb = hed_restain(rgb, h=r.uniform(*WIDE_RANGE), e=r.uniform(*WIDE_RANGE), d_shift=0.0)
                if optics and r.random() < 0.5:
                    rgb = _optics(rgb, r)
                dst.parent.mkdir(parents=True, exist_ok=True)
                out_img = Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8))
                if optics:
                    out_img.save(dst, quality=int(r.integers(40, 96)))
                else:
                    out_img.save(dst)
                made += 1
            jitter = float(np.random.default_rng(int(key, 16) + 1).uniform(*jitter_range)) if optics else 1.0
            out.append(replace(s, path=str(dst), source=s.source, split="train", scale_jitter=jitter))
    log(f"stain augmentation: {len(out)} copies ({made} newly written) under {root / str(seed)}")
    return out
