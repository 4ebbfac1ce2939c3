"""Per-crop speed in tract of candidate network layouts, before training any of them.

Each layout is built with random weights (BatchNorm statistics set to non-trivial values,
as a trained network has), exported to f32 ONNX and quantized to int8 exactly as a
trained run is (`train.export_onnx`, `quantize.quantize`), given a copy of the shipped
card, and timed with `leukoscope bench --model CARD`. The time does not depend on the
weights, so this says what a layout costs on this CPU before hours of training.

    python tools/arch_speed.py [--out DIR] [--seconds 1.5]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quantize  # noqa: E402
import train  # noqa: E402
from common import REPO, ensure_binary  # noqa: E402

LAYOUTS = {
    "vgg (shipped)": train.ARCHS["vgg"],
    "strided": train.ARCHS["strided"],
    "strided, widths x1.5": [(24, 2), (48, 2), (96, 2), (128, 1), (128, 2), (192, 1)],
    "strided, one more conv": [(16, 2), (32, 2), (64, 1), (64, 2), (96, 1), (96, 2), (160, 1)],
    "vgg, first pool a stride": [(16, 2), (32, 2), (64, 1), "M", (96, 1), (96, 1), "M", (160, 1)],
}


def export(name: str, arch, card: dict, d: Path) -> tuple[Path, int]:
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    m = train.CellNet(len(card["classes"]), arch=arch)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    macs, _ = train.count_macs(m)
    train.export_onnx(m, d / "f32.onnx")
    calib = np.random.default_rng(0).normal(size=(64, 3, 96, 96)).astype(np.float32)
    quantize.quantize(d / "f32.onnx", d / "int8.onnx", calib)
    c = copy.deepcopy(card)
    c["name"] = f"speed test: {name}"
    c["file"], c["sha256"] = "int8.onnx", hashlib.sha256((d / "int8.onnx").read_bytes()).hexdigest()
    c["extra"]["f32_model"] = dict(c["extra"]["f32_model"], file="f32.onnx",
                                   sha256=hashlib.sha256((d / "f32.onnx").read_bytes()).hexdigest())
    (d / "card.json").write_text(json.dumps(c, indent=1))
    return d / "card.json", macs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="where the exported layouts go (default: a temporary folder)")
    ap.add_argument("--seconds", type=float, default=1.5, help="seconds per figure of leukoscope bench")
    a = ap.parse_args(argv)
    card = json.loads((REPO / "models/leukoscope.card.json").read_text())
    binary = ensure_binary()
    out = a.out or Path(tempfile.mkdtemp(prefix="arch-speed-"))
    print("| layout | M MACs | tract f32 ms per crop | tract int8 ms per crop |")
    print("|---|---|---|---|")
    for i, (name, arch) in enumerate(LAYOUTS.items()):
        path, macs = export(name, arch, card, out / str(i))
        r = subprocess.run([str(binary), "bench", "--model", str(path), "--seconds", str(a.seconds)],
                           capture_output=True, text=True, check=True)
        ms = dict(re.findall(r"inference per crop, (int8|f32) \(tract, batch 1\)\s+([\d.]+)", r.stdout))
        print(f"| {name} | {macs / 1e6:.1f} | {ms.get('f32', '?')} | {ms.get('int8', '?')} |", flush=True)


if __name__ == "__main__":
    main()
