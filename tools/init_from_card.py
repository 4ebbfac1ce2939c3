"""Turns a shipped model (card + f32 ONNX) back into a checkpoint that
`pipeline.py train --init RUN` can fine-tune, when the run that trained it is
no longer on this machine (tools/runs/ is not in git).

The f32 file has each BatchNorm folded into its convolution (weight W, bias b).
A BatchNorm is put back after each convolution so that, on training data, it
computes what the folded layer computed: with the batch mean m and variance v
of the unbiased convolution's output on a calibration set, gamma =
sqrt(v + eps), beta = m + b, running statistics (m, v). In eval mode the
network is then the shipped one exactly (checked against onnxruntime); in
train mode it is the same up to batch-to-batch variation of the statistics.

    python tools/init_from_card.py --run v9-shipped   # then: pipeline.py train --init v9-shipped ...
"""

from __future__ import annotations

import argparse
import hashlib
import random

import numpy as np
import onnx
import torch
from onnx import numpy_helper

import datasets as ds
from common import REPO, RUNS, log, preprocess, read_json
from train import ARCHS, CellNet


def folded_layers(path) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    """[(W, b)] of every Conv in graph order, and the head's (W, b)."""
    m = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    convs = []
    for n in m.graph.node:
        if n.op_type == "Conv":
            convs.append((init[n.input[1]], init[n.input[2]]))
    return convs, init["head.weight"], init["head.bias"]


def rebuild(card: dict, x: torch.Tensor) -> tuple[CellNet, float]:
    """The card's network as a trainable CellNet, BatchNorm statistics taken on
    x [N,3,S,S]; and the largest |logit| difference from the f32 file in
    onnxruntime on x's first 64 tensors (eval mode)."""
    classes = [c["code"] for c in card["classes"]]
    extra = card["extra"]["training"]
    arch = [tuple(v) if isinstance(v, list) else v for v in card["extra"]["architecture"]["arch"]]
    arch_name = next((k for k, v in ARCHS.items() if v == arch), None)
    if arch_name is None:
        raise ValueError(f"the card's architecture {arch} is none of {sorted(ARCHS)}")
    # MixStyle has no weights; whether training used it is in its command line.
    mixstyle = "--mixstyle" in extra.get("command", "")
    f32 = REPO / "models" / card["extra"]["f32_model"]["file"]
    convs, hw, hb = folded_layers(f32)
    model = CellNet(len(classes), arch=ARCHS[arch_name], mixstyle=mixstyle, norm="batch")
    pairs = [(m, model.features[i + 1]) for i, m in enumerate(model.features) if isinstance(m, torch.nn.Conv2d)]
    if len(pairs) != len(convs):
        raise ValueError(f"{len(convs)} convolutions in {f32.name}, {len(pairs)} in the {arch_name} network")
    model.eval()
    with torch.no_grad():
        for (conv, _), (w, _) in zip(pairs, convs):
            conv.weight.copy_(torch.from_numpy(w.copy()))
        # Layer by layer: each convolution's input depends on the layers before.
        for (conv, bn), (_, b) in zip(pairs, convs):
            outs: list[torch.Tensor] = []
            hook = conv.register_forward_hook(lambda _m, _i, o, outs=outs: outs.append(o))
            model.features(x)
            hook.remove()
            mean, var = outs[0].mean((0, 2, 3)), outs[0].var((0, 2, 3), unbiased=False)
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.weight.copy_(torch.sqrt(var + bn.eps))
            bn.bias.copy_(mean + torch.from_numpy(b.copy()))
        model.head.weight.copy_(torch.from_numpy(hw.copy()))
        model.head.bias.copy_(torch.from_numpy(hb.copy()))
        import onnxruntime as ort

        sess = ort.InferenceSession(str(f32), providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x[:64].numpy()})[0]
        err = float(np.abs(model(x[:64]).numpy() - got).max())
    return model, err


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--card", default=str(REPO / "models" / "leukoscope.card.json"))
    ap.add_argument("--run", required=True, help="run name to write under tools/runs/")
    ap.add_argument("--calib", type=int, default=1024, help="train images for the BatchNorm statistics")
    ap.add_argument("--seed", type=int, default=ds.DEFAULT_SEED)
    a = ap.parse_args(argv)

    card = read_json(a.card)
    samples = [s for s in ds.load_all([], [], a.seed) if s.split == "train"]
    random.Random(a.seed).shuffle(samples)
    samples = sorted(samples[: a.calib], key=lambda s: hashlib.md5(s.path.encode()).hexdigest())
    prep = preprocess([s.path for s in samples], scales=[s.um_per_px for s in samples], cache_sub="pre")
    x = torch.from_numpy(prep.take(np.array([i for i in range(len(samples)) if prep.ok[i]]))).float()
    log(f"BatchNorm statistics from {x.shape[0]} train tensors")
    model, err = rebuild(card, x)
    if err > 1e-3:
        raise SystemExit(f"the rebuilt network differs from the ONNX file by {err}")
    extra = card["extra"]["training"]
    rd = RUNS / a.run
    rd.mkdir(parents=True, exist_ok=True)
    arch = [tuple(v) if isinstance(v, list) else v for v in card["extra"]["architecture"]["arch"]]
    info = {"classes": [c["code"] for c in card["classes"]], "arch": arch, "norm": "batch",
            "epochs": extra.get("epochs", 0), "lr": extra.get("lr", 0.0),
            "rebuilt_from": {"card": card["name"], "f32_sha256": card["extra"]["f32_model"]["sha256"]}}
    torch.save({"state_dict": model.state_dict(), "info": info}, rd / "model.pt")
    log(f"wrote {rd / 'model.pt'} ({card['name']}, max |logit difference| vs onnxruntime {err:.2e})")


if __name__ == "__main__":
    main()
