#!/usr/bin/env python3
"""FROZEN copy of tools/reference_pipeline.py as it was before issue 17's fairness
changes (main at 0fd39c9), kept only so that `reference_pipeline.py --check-same`
can show the fair reference finds the same cells. Do not edit or use it as a
yardstick: it runs the int8 file and has the handicaps issue 17 lists.

Original docstring: a straightforward Python OpenCV + onnxruntime leukocyte pipeline (issue #6).

The thing a user would write instead of leukoscope, used only as a yardstick
for speed (tools/bench_compare.py) and detection quality (--eval-bccd).  It is
NOT the appliance's algorithm and does not reproduce its preprocessing:

  background-normalised colour (divide by the mean colour of the brightest
  pixels) -> optical density -> nucleus stain channel OD_red - OD_blue
  -> (on a copy shrunk to ~2 px/µm) threshold max(Otsu, 0.12) -> opening -> connected components
  -> lobes merged by dilating the mask by half the lobe gap
  -> drop platelet-sized nuclei -> box = nucleus box + margin
  -> square crop 1.7x the nucleus extent (mirrored border), resize to 96x96
     (INTER_AREA), white balance, CIELAB, per-channel standardisation
  -> onnxruntime int8, batch 1, one thread -> class = argmax.

Scale: known (--um-per-px; default BCCD's 0.073 µm/px at 640 px width, scaled
with the field width) or estimated as a user would: Otsu on green optical
density = red-cell mask, holes filled, median equivalent diameter of its
connected components (full resolution) taken as 7.5 µm.

Single thread throughout (cv2.setNumThreads(1), ORT intra/inter = 1).
"""
import argparse
import json
import os
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("LEUKOSCOPE_DATA", ROOT.parent / "shared" / "data"))
CARD = ROOT / "models" / "leukoscope.card.json"

RBC_UM = 7.5
BCCD_UM_PER_PX = 0.073  # at 640 px width
NUCLEUS_OD = 0.12
OPEN_UM = 0.3
LOBE_GAP_UM = 2.5
MIN_NUCLEUS_UM2 = 15.0
MARGIN_UM = 1.3
WINDOW = 1.7
SIZE = 96
WORK_PX_PER_UM = 2.0


class Reference:
    def __init__(self, model=None, card=CARD):
        cv2.setNumThreads(1)
        meta = json.loads(Path(card).read_text())
        self.classes = [c["code"] for c in meta["classes"]]
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        model = model or (Path(card).parent / meta["file"])
        self.sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        self.inp = self.sess.get_inputs()[0].name

    # --- field steps -------------------------------------------------------
    @staticmethod
    def background(rgb):
        rgb = np.ascontiguousarray(rgb[::4, ::4])  # a subsample is plenty for one colour
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        hi = np.percentile(gray, 90)
        bg = np.array(cv2.mean(rgb, mask=(gray >= hi).astype(np.uint8))[:3], np.float32)
        return np.maximum(bg, 1.0)

    @staticmethod
    def od_lut(bg):
        v = np.arange(256, dtype=np.float32)
        # one 256-entry table per channel: OD = -log10(I / bg)
        return [np.clip(-np.log10(np.maximum(v, 1.0) / b), -1.0, 3.0).astype(np.float32) for b in bg]

    @staticmethod
    def estimate_scale(rgb, lut):
        """Median equivalent diameter of the round red-cell components (full resolution)."""
        od_g = lut[1][rgb[:, :, 1]]
        u8 = np.clip(od_g * 255.0, 0, 255).astype(np.uint8)
        _, mask = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
        h, w = mask.shape
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        diam = []
        for c in contours:
            area = cv2.contourArea(c)  # outer contour: pallor holes filled
            if area < 0.002 * h * w:
                continue
            x, y, bw, bh = cv2.boundingRect(c)
            if x == 0 or y == 0 or x + bw >= w or y + bh >= h:
                continue  # cut by the border
            if area / max(cv2.contourArea(cv2.convexHull(c)), 1.0) < 0.85:
                continue  # clump of touching cells
            diam.append(np.sqrt(4.0 * area / np.pi))
        if len(diam) < 2:
            return None
        return RBC_UM / float(np.median(diam))

    def detect(self, rgb, um_per_px=None):
        """Returns (cells, um_per_px, bg): cells = [(box, nucleus_box)] as (x0, y0, x1, y1)
        in field pixels. The nucleus steps run on a copy shrunk (INTER_AREA) to
        about WORK_PX_PER_UM, as anyone would once the scale is known."""
        h, w = rgb.shape[:2]
        bg = self.background(rgb)
        lut = self.od_lut(bg)
        if um_per_px is None:
            um_per_px = self.estimate_scale(rgb, lut) or BCCD_UM_PER_PX * 640.0 / w
        k = max(1, int(1.0 / (um_per_px * WORK_PX_PER_UM)))
        small = cv2.resize(rgb, (max(1, w // k), max(1, h // k)), interpolation=cv2.INTER_AREA) if k > 1 else rgb
        wum = um_per_px * w / small.shape[1]  # µm per working pixel
        px = 1.0 / wum
        stain = lut[0][small[:, :, 0]] - lut[2][small[:, :, 2]]
        u8 = np.clip(stain * 255.0, 0, 255).astype(np.uint8)
        otsu, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        t = max(otsu, NUCLEUS_OD * 255.0)
        _, mask = cv2.threshold(u8, t, 255, cv2.THRESH_BINARY)
        r = max(1, int(round(OPEN_UM * px)))
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
        g = max(1, int(round(LOBE_GAP_UM * px / 2)))
        merged = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * g + 1, 2 * g + 1)))
        n, labels = cv2.connectedComponents(merged, connectivity=8)
        # nucleus pixels and boxes per merged group (lobes of one nucleus)
        lab_nuc = np.where(mask > 0, labels, 0).astype(np.int32)
        area = np.bincount(lab_nuc.ravel(), minlength=n)
        cells = []
        sx, sy = w / small.shape[1], h / small.shape[0]
        for i in range(1, n):
            if area[i] * wum ** 2 < MIN_NUCLEUS_UM2:
                continue
            ys, xs = np.nonzero(lab_nuc == i)
            nb = (int(xs.min() * sx), int(ys.min() * sy), int(round((xs.max() + 1) * sx)), int(round((ys.max() + 1) * sy)))
            m = int(round(MARGIN_UM / um_per_px))
            box = (max(0, nb[0] - m), max(0, nb[1] - m), min(w, nb[2] + m), min(h, nb[3] + m))
            cells.append((box, nb))
        return cells, um_per_px, bg

    @staticmethod
    def crop_tensor(rgb, nb, bg):
        h, w = rgb.shape[:2]
        cx, cy = (nb[0] + nb[2]) / 2.0, (nb[1] + nb[3]) / 2.0
        half = int(round(WINDOW * max(nb[2] - nb[0], nb[3] - nb[1]) / 2.0))
        x0, y0, x1, y1 = int(cx) - half, int(cy) - half, int(cx) + half, int(cy) + half
        pad = max(0, -x0, -y0, x1 - w, y1 - h)
        src = rgb
        if pad:
            src = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
        win = src[y0 + pad:y1 + pad, x0 + pad:x1 + pad]
        small = cv2.resize(win, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
        small = np.clip(small / bg[None, None, :], 0.0, 1.0)
        lab = cv2.cvtColor(small, cv2.COLOR_RGB2Lab)
        mean = lab.reshape(-1, 3).mean(0)
        std = np.maximum(lab.reshape(-1, 3).std(0), 2.0)
        lab = (lab - mean) / std
        return np.ascontiguousarray(lab.transpose(2, 0, 1)[None], dtype=np.float32)

    def classify(self, x):
        logits = self.sess.run(None, {self.inp: x})[0][0]
        return self.classes[int(np.argmax(logits))]

    def analyze(self, rgb, um_per_px=None):
        cells, s, bg = self.detect(rgb, um_per_px)
        out = []
        for box, nb in cells:
            out.append({"box": box, "nucleus": nb, "class": self.classify(self.crop_tensor(rgb, nb, bg))})
        return out, s


def load_rgb(path):
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / u if u > 0 else 0.0


def wbc_boxes(xml):
    out = []
    for o in ET.parse(xml).getroot().iter("object"):
        if o.findtext("name") == "WBC":
            bb = o.find("bndbox")
            out.append(tuple(float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
    return out


def eval_bccd(ref, known_scale):
    root = DATA / "bccd"
    ids = [line.strip() for line in (root / "ImageSets/Main/test.txt").read_text().splitlines() if line.strip()]
    res = {}
    for variant in ("all detections", "class != PLT"):
        res[variant] = [0, 0, 0]  # tp, n_det, n_gt
    for i in ids:
        rgb = load_rgb(root / "JPEGImages" / f"{i}.jpg")
        gt = wbc_boxes(root / "Annotations" / f"{i}.xml")
        cells, _ = ref.analyze(rgb, BCCD_UM_PER_PX if known_scale else None)
        for variant in res:
            dets = [c["box"] for c in cells if variant == "all detections" or c["class"] != "PLT"]
            used = set()
            tp = 0
            for d in dets:
                best, bj = 0.0, None
                for j, g in enumerate(gt):
                    if j not in used and iou(d, g) > best:
                        best, bj = iou(d, g), j
                if best >= 0.5:
                    used.add(bj)
                    tp += 1
            r = res[variant]
            r[0] += tp
            r[1] += len(dets)
            r[2] += len(gt)
    out = {}
    for variant, (tp, nd, ng) in res.items():
        out[variant] = {"recall": tp / max(ng, 1), "precision": tp / max(nd, 1), "tp": tp, "detections": nd, "wbc": ng}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*", type=Path, help="field images")
    ap.add_argument("--um-per-px", type=float, default=None, help="known scale; default: estimate from red cells")
    ap.add_argument("--model", type=Path, default=None, help="ONNX model; default: the card's int8 model")
    ap.add_argument("--eval-bccd", action="store_true", help="recall/precision at IoU>=0.5 on the BCCD test split")
    ap.add_argument("--first-result", type=Path, default=None,
                    help="start-up probe: classify this single-cell crop (centre nucleus) and exit")
    a = ap.parse_args()
    ref = Reference(a.model)
    if a.first_result:
        rgb = load_rgb(a.first_result)
        cells, s, bg = ref.detect(rgb, a.um_per_px or 0.1)
        h, w = rgb.shape[:2]
        nb = min((c[1] for c in cells), default=(w // 4, h // 4, 3 * w // 4, 3 * h // 4),
                 key=lambda b: ((b[0] + b[2]) / 2 - w / 2) ** 2 + ((b[1] + b[3]) / 2 - h / 2) ** 2)
        print(ref.classify(ref.crop_tensor(rgb, nb, bg)))
        return
    if a.eval_bccd:
        for known in (True, False):
            print(json.dumps({"scale": "known" if known else "estimated", **eval_bccd(ref, known)}))
        return
    for p in a.inputs:
        t = time.perf_counter()
        cells, s = ref.analyze(load_rgb(p), a.um_per_px)
        ms = (time.perf_counter() - t) * 1e3
        print(json.dumps({"file": str(p), "um_per_px": round(s, 4), "ms": round(ms, 2), "cells": cells}))


if __name__ == "__main__":
    sys.exit(main())
