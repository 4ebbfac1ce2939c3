"""Training of the leukoscope cell classifier on tensors made by the Rust
preprocessing (`leukoscope preprocess`), and export to f32 ONNX.

The network is a plain VGG-style CNN, chosen for tract's int8 path: only 3x3
convolutions (+BatchNorm, folded at export) + ReLU and max-pooling are quantized
(QLinearConv per-tensor, fused ReLU); global average pooling and the linear head
stay f32. No residual adds, no depthwise convolutions.

Partial labels (PBC 'NEUTROPHIL_' = NGB or NGS, 'IG_' = MMZ/MYB/PMO) use the loss
-log(sum of softmax over the allowed set).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import log, write_json

# (out_channels, stride) per conv; 'M' = 2x2 max-pool.
ARCHS = {
    "vgg": [(16, 2), (32, 1), "M", (64, 1), "M", (96, 1), (96, 1), "M", (160, 1)],
    # The same widths with stride-2 convolutions where "vgg" pools: tract's max-pool is
    # scalar, and a stride-2 convolution computes a quarter of the outputs.
    "strided": [(16, 2), (32, 2), (64, 2), (96, 1), (96, 2), (160, 1)],
}
ARCH = ARCHS["vgg"]


class MixStyle(nn.Module):
    """MixStyle (Zhou et al., ICLR 2021): in training, mixes each sample's
    per-channel feature statistics (mean, std over space: the "style") with
    another sample's of the batch, so that the features after it cannot keep
    which lab an image came from. Identity at inference (not in the export)."""

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6):
        super().__init__()
        self.p, self.alpha, self.eps = p, alpha, eps

    def forward(self, x):
        if not self.training or torch.rand(1).item() > self.p:
            return x
        b = x.size(0)
        mu = x.mean((2, 3), keepdim=True)
        sig = (x.var((2, 3), keepdim=True) + self.eps).sqrt()
        mu, sig = mu.detach(), sig.detach()
        xn = (x - mu) / sig
        lam = torch.distributions.Beta(self.alpha, self.alpha).sample((b, 1, 1, 1))
        perm = torch.randperm(b)
        mu2 = mu * lam + mu[perm] * (1 - lam)
        sig2 = sig * lam + sig[perm] * (1 - lam)
        return xn * sig2 + mu2


# MixStyle after these conv blocks (0-based): the early layers, where style lives.
MIXSTYLE_AFTER = (0, 1, 2)


def norm_layer(kind: str, c: int) -> nn.Module:
    """'batch': BatchNorm (folded into the convolution at export: free at inference,
    but its statistics are the training labs'). 'group': GroupNorm with groups of
    4 channels, statistics of each image itself (Tsutsui et al. 2023 found batch
    normalisation a main cause of the accuracy drop between imaging setups)."""
    if kind == "batch":
        return nn.BatchNorm2d(c)
    if kind == "group":
        return nn.GroupNorm(max(1, c // 4), c)
    raise ValueError(f"unknown norm {kind!r} (batch, group)")


class CellNet(nn.Module):
    def __init__(self, n_classes: int, arch=ARCH, dropout: float = 0.3, mixstyle: bool = False, norm: str = "batch"):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        conv = 0
        for a in arch:
            if a == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                cout, stride = a
                layers += [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm_layer(norm, cout), nn.ReLU(inplace=True)]
                if mixstyle and conv in MIXSTYLE_AFTER:
                    layers.append(MixStyle())
                conv += 1
                cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(cin, n_classes)

    def forward(self, x):
        x = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(x))


def checkpoint_arch(info: dict) -> list:
    """A checkpoint's layout as ARCHS writes it (JSON and torch.save give lists for tuples)."""
    return [tuple(a) if isinstance(a, list) else a for a in info["arch"]]


def count_macs(model: nn.Module, size: int = 96) -> tuple[int, int]:
    """(multiply-accumulates of one forward pass at size x size, parameters)."""
    macs = 0

    def hook(m, inp, out):
        nonlocal macs
        if isinstance(m, nn.Conv2d):
            macs += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            macs += m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    model.train(was)
    for h in hs:
        h.remove()
    return macs, sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------
# Augmentation on preprocessed (stain/scale-normalised, standardised Lab) tensors.


def _gauss_kernel(sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def augment(x: torch.Tensor, g: torch.Generator, stain: bool = False,
            scale_range: tuple[float, float] = (0.85, 1.15)) -> torch.Tensor:
    """x: [B,3,S,S] standardised Lab. Geometric: flips, any rotation (covers the
    90-degree ones), scale 0.85-1.15 (`scale_range`), translation +-6%, one grid_sample with border
    padding. Photometric: a/b hue rotation +-20 degrees, per-channel gain 0.8-1.2 and
    offset +-0.2, occasional blur (defocus) and Gaussian noise. stain=True adds
    non-affine stain changes (experimental, off by default): on half the batch a
    random 3x3 channel mix (identity + N(0, 0.1)) and a per-channel curve
    x + k (x^2 - 1) / 2, k in +-0.15."""
    b = x.shape[0]
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    ang = u(b) * 2 * math.pi
    scale = scale_range[0] + (scale_range[1] - scale_range[0]) * u(b)
    flip = torch.where(u(b) < 0.5, -1.0, 1.0)
    tx, ty = (u(b) - 0.5) * 0.12, (u(b) - 0.5) * 0.12  # +-6% of the side (grid spans 2)
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1
    )  # [B,2,3]: output -> input coordinates
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # a/b rotation (hue shift) in the standardised a/b plane.
    phi = (u(b) - 0.5) * math.radians(40)
    c, s = torch.cos(phi)[:, None, None], torch.sin(phi)[:, None, None]
    a_, b_ = x[:, 1], x[:, 2]
    x = torch.stack([x[:, 0], c * a_ - s * b_, s * a_ + c * b_], 1)
    gain = 0.8 + 0.4 * u(b, 3, 1, 1)
    off = (u(b, 3, 1, 1) - 0.5) * 0.4
    x = x * gain + off
    if stain:
        sel = (u(b) < 0.5).float()[:, None, None]
        mix = torch.eye(3) + sel * 0.1 * torch.randn(b, 3, 3, generator=g)
        x = torch.einsum("bij,bjhw->bihw", mix, x)
        k = (u(b, 3, 1, 1) - 0.5) * 0.3 * sel[..., None]
        x = x + k * (x * x - 1) / 2
    # Defocus: blur ~20% of the batch with one sigma per batch.
    sel = u(b) < 0.2
    if sel.any():
        k = _gauss_kernel(0.5 + 1.0 * float(u(1)))
        r = k.numel() // 2
        xs = x[sel]
        n = xs.shape[0]
        xs = xs.reshape(n * 3, 1, *xs.shape[2:])
        xs = F.conv2d(F.pad(xs, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        xs = F.conv2d(F.pad(xs, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
        x = x.clone()
        x[sel] = xs.reshape(n, 3, *xs.shape[2:])
    # Another camera's resolution (optics, sensor, a scanner's demosaicing):
    # down by 1.3-2.5 and back up, on ~25% of the batch.
    sel = u(b) < 0.25
    if sel.any():
        f = 1.3 + 1.2 * float(u(1))
        size = x.shape[-1]
        xs = F.interpolate(x[sel], size=max(8, int(size / f)), mode="area")
        x = x.clone()
        x[sel] = F.interpolate(xs, size=size, mode="bilinear", align_corners=False)
    # Sensor noise on ~30%.
    sel = (u(b) < 0.3).float()[:, None, None, None]
    sd = 0.02 + 0.08 * u(b)[:, None, None, None]
    x = x + sel * sd * torch.randn(x.shape, generator=g)
    return x


def style_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Two style randomisations that keep a cell's structure and change how a lab
    renders it, on standardised Lab tensors:
    - Fourier amplitude mix (Xu et al., CVPR 2021, "FACT"): on half the batch,
      the low-frequency amplitude spectrum (a square of 5-15% of the side around
      DC) is mixed with another image's of the batch (lambda ~ U(0, 1)), the
      phase (where things are) kept: colour, contrast and blur of another lab
      on this cell;
    - random convolution (Xu et al., ICLR 2021, "RandConv"): on a quarter, a
      random 1x1 or 3x3 convolution (N(0, 1/fan_in)), blended with the image
      (alpha ~ U(0, 1)) and re-standardised per channel: textures and colours
      no lab has, so the network cannot lean on any one."""
    b, _, h, w = x.shape
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    sel = u(b) < 0.5
    if sel.any():
        f = torch.fft.fft2(x)
        amp, pha = f.abs(), f.angle()
        perm = torch.randperm(b, generator=g)
        lam = u(b, 1, 1, 1) * sel.float()[:, None, None, None]
        r = max(1, int(h * (0.05 + 0.10 * float(u(1)))))
        # Low frequencies sit at the corners of an unshifted spectrum.
        low = torch.zeros(1, 1, h, w, dtype=torch.bool)
        for ys in (slice(0, r + 1), slice(h - r, h)):
            for xs in (slice(0, r + 1), slice(w - r, w)):
                low[..., ys, xs] = True
        mixed = torch.where(low, (1 - lam) * amp + lam * amp[perm], amp)
        x = torch.fft.ifft2(torch.polar(mixed, pha)).real
    sel = u(b) < 0.25
    if sel.any():
        k = 1 if float(u(1)) < 0.5 else 3
        wgt = torch.randn(3, 3, k, k, generator=g) / math.sqrt(3 * k * k)
        xs = F.conv2d(x[sel], wgt, padding=k // 2)
        xs = (xs - xs.mean((2, 3), keepdim=True)) / xs.std((2, 3), keepdim=True).clamp_min(1e-3)
        alpha = u(int(sel.sum()), 1, 1, 1)
        x = x.clone()
        x[sel] = alpha * x[sel] + (1 - alpha) * xs
    return x


# --------------------------------------------------------------------------------------


def partial_label_loss(logits: torch.Tensor, mask: torch.Tensor, smoothing: float = 0.05) -> torch.Tensor:
    """-log(sum_{k in allowed} softmax_k), mixed with uniform label smoothing.
    mask: bool [B,C], True for allowed classes."""
    lse_all = torch.logsumexp(logits, 1)
    lse_set = torch.logsumexp(logits.masked_fill(~mask, float("-inf")), 1)
    nll = lse_all - lse_set
    if smoothing > 0:
        uniform = lse_all - logits.mean(1)
        nll = (1 - smoothing) * nll + smoothing * uniform
    return nll.mean()


def sampling_weights(groups: list[str], lmu_boost: float = 2.0) -> np.ndarray:
    """Per-sample weights: group mass ~ sqrt(group size) (i.e. weight 1/sqrt(n)),
    LMU groups (the only blasts, and the second lab's neutrophils) boosted."""
    n = Counter(groups)
    w = np.array([1.0 / math.sqrt(n[g]) * (lmu_boost if g.startswith("lmu:") else 1.0) for g in groups])
    return w / w.sum()


BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def feature_keys(state: dict, learned_only: bool = False) -> list[str]:
    """The feature layers' tensors in order; `learned_only` leaves out BatchNorm's
    running statistics (what a GroupNorm network has no place for)."""
    return [k for k in state if k.startswith("features.") and not (learned_only and k.endswith(BN_STATS))]


def matching_keys(model: CellNet, src: dict) -> list[tuple[str, str]] | None:
    """Pairs (model's key, earlier run's key) to start `model` from, when the feature
    layers fit in order: every tensor, or, where the normalisation differs (BatchNorm
    for GroupNorm), the learned ones (convolutions, the norms' scale and shift)."""
    dst_state = model.state_dict()
    for learned_only in (False, True):
        dst, old = feature_keys(dst_state, learned_only), feature_keys(src, learned_only)
        if [dst_state[k].shape for k in dst] == [src[k].shape for k in old]:
            return list(zip(dst, old))
    return None


def load_features_and_head(model: CellNet, ck: dict, classes: list[str]) -> list[str]:
    """Loads an earlier run's weights into `model`: the convolutions as they are
    (MixStyle has no weights, so layer indices are mapped in order), the head
    row by row for the classes both have. Returns the classes that start new."""
    src = ck["state_dict"]
    old = ck["info"]["classes"]
    pairs = matching_keys(model, src)
    if pairs is None:
        raise ValueError("its layers' weights do not fit this run's architecture")
    state = model.state_dict()
    for d, s_ in pairs:
        state[d] = src[s_]
    new = []
    for i, c in enumerate(classes):
        if c in old:
            j = old.index(c)
            state["head.weight"][i] = src["head.weight"][j]
            state["head.bias"][i] = src["head.bias"][j]
        else:
            new.append(c)
    model.load_state_dict(state)
    return new


def export_onnx(model: nn.Module, path: Path, size: int = 96) -> None:
    model.eval()
    dummy = torch.zeros(1, 3, size, size)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=False,
        opset_version=13,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        do_constant_folding=True,
    )
    # Check against torch.
    import onnxruntime as ort

    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    err = float(np.abs(got - ref).max())
    if err > 1e-3:
        raise RuntimeError(f"ONNX export differs from torch by {err}")


def train(
    x: np.ndarray,
    masks: np.ndarray,
    groups: list[str],
    classes: list[str],
    run_dir: Path,
    *,
    epochs: int = 15,
    batch: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 5e-4,
    seed: int = 2019,
    smoothing: float = 0.05,
    lmu_boost: float = 2.0,
    stain_aug: bool = False,
    steps_per_epoch: int | None = None,
    threads: int = 2,
    meta: dict | None = None,
    init: Path | None = None,
    mixstyle: bool = False,
    norm: str = "batch",
    arch: str = "vgg",
    style_aug: bool = False,
    scale_range: tuple[float, float] = (0.85, 1.15),
    teacher: Path | None = None,
    distill_alpha: float = 0.5,
    distill_t: float = 2.0,
    distill_clean: bool = False,
) -> dict:
    """Trains on x [N,3,S,S] with allowed-class masks [N,C]; writes model.pt,
    model-f32.onnx and train.json into run_dir. Fixed epochs, no model selection.
    With `teacher` (an earlier run's checkpoint, any architecture, same classes) the
    loss is (1 - alpha) x the label loss + alpha x T^2 x KL(teacher || student) at
    temperature T on the same augmented batch (Hinton et al. 2015): a smaller network
    learns the teacher's calls, including what it learnt between the labs. With
    `distill_clean` the teacher sees the batch before augmentation: the student must
    give the teacher's call on the unaltered cell whatever stain, optics and style the
    augmentation gave it (consistency across the looks of the labs)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    n = x.shape[0]
    size = x.shape[-1]
    model = CellNet(len(classes), arch=ARCHS[arch], mixstyle=mixstyle, norm=norm)
    init_info = None
    if init is not None:
        ck = torch.load(init, map_location="cpu", weights_only=False)  # our own checkpoint
        try:
            new_classes = load_features_and_head(model, ck, classes)
        except ValueError as e:
            raise ValueError(f"{init}: {e}") from None
        init_info = {"from": str(init), "epochs": ck["info"]["epochs"], "lr": ck["info"]["lr"]}
        if ck["info"].get("norm", "batch") != norm:
            # The convolutions and the norms' scale and shift carry over; the
            # statistics become each image's own.
            init_info["norm_from"] = ck["info"].get("norm", "batch")
            log(f"{init} normalises with {init_info['norm_from']}: its weights start this {norm}-norm network")
        if checkpoint_arch(ck["info"]) != ARCHS[arch]:
            # Network surgery: "strided" is "vgg" with each max-pool folded into the
            # stride of the convolution before it, the same weights in the same order.
            init_info["arch_from"] = checkpoint_arch(ck["info"])
            log(f"{init} has another layout ({ck['info'].get('arch_name', '?')}): its weights start this one's")
        init_info["new_classes"] = new_classes
        log(f"fine-tuning from {init} ({ck['info']['epochs']} epochs at lr {ck['info']['lr']}); "
            f"new head rows: {init_info['new_classes']}")
    teacher_net, teacher_info = None, None
    if teacher is not None:
        tk = torch.load(teacher, map_location="cpu", weights_only=False)  # our own checkpoint
        if tk["info"]["classes"] != classes:
            raise ValueError(f"{teacher}: the teacher's classes differ from this run's")
        # MixStyle has no weights but shifts the layer indices: built as the teacher was
        # (in eval mode it does nothing).
        teacher_net = CellNet(len(classes), arch=checkpoint_arch(tk["info"]), mixstyle=tk["info"].get("mixstyle", False),
                              norm=tk["info"].get("norm", "batch"))
        teacher_net.load_state_dict(tk["state_dict"])
        teacher_net.eval()
        teacher_info = {"from": str(teacher), "alpha": distill_alpha, "temperature": distill_t,
                        "teacher_sees": "the batch before augmentation" if distill_clean else "the augmented batch"}
        log(f"distilling from {teacher} (alpha {distill_alpha}, T {distill_t})")
    macs, params = count_macs(model, size)
    log(f"model: {macs / 1e6:.1f} M MACs at {size}x{size}, {params / 1e3:.0f} k parameters, {len(classes)} classes")
    w = sampling_weights(groups, lmu_boost)
    steps = steps_per_epoch or max(1, n // batch)
    total = epochs * steps
    gshare = Counter()
    for gname, wi in zip(groups, w):
        gshare[gname] += wi
    log(f"train: {n} tensors, {epochs} epochs x {steps} steps of {batch}; sampling share per group: "
        + ", ".join(f"{k} {v * 100:.1f}%" for k, v in sorted(gshare.items())))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warm = min(200, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm)))
    )
    xt = torch.from_numpy(np.ascontiguousarray(x)) if not isinstance(x, torch.Tensor) else x
    mt = torch.from_numpy(masks)
    hist = []
    t0 = time.time()
    step = 0
    for ep in range(epochs):
        model.train()
        idx = torch.from_numpy(rng.choice(n, size=steps * batch, replace=True, p=w))
        tot, correct, seen = 0.0, 0, 0
        te = time.time()
        for i in range(steps):
            bi = idx[i * batch : (i + 1) * batch]
            xb = augment(xt[bi].float(), g, stain_aug, scale_range)
            if style_aug:
                xb = style_augment(xb, g)
            mb = mt[bi]
            logits = model(xb)
            loss = partial_label_loss(logits, mb, smoothing)
            if teacher_net is not None:
                with torch.no_grad():
                    soft = torch.log_softmax(teacher_net(xt[bi].float() if distill_clean else xb) / distill_t, 1)
                kd = torch.nn.functional.kl_div(torch.log_softmax(logits / distill_t, 1), soft, log_target=True,
                                                reduction="batchmean")
                loss = (1 - distill_alpha) * loss + distill_alpha * distill_t**2 * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            tot += loss.item() * len(bi)
            correct += int(mb.gather(1, logits.argmax(1, keepdim=True)).sum())
            seen += len(bi)
            if (i + 1) % 50 == 0 or i + 1 == steps:
                print(f"\repoch {ep + 1}/{epochs} step {i + 1}/{steps} loss {tot / seen:.4f} acc {correct / seen:.3f}"
                      f" ({time.time() - te:.0f}s)", end="", flush=True)
        print(flush=True)
        hist.append({"epoch": ep + 1, "loss": tot / seen, "train_acc_aug": correct / seen, "lr": sched.get_last_lr()[0],
                     "seconds": time.time() - te})
    secs = time.time() - t0
    log(f"trained in {secs:.0f}s")
    info = {
        "classes": classes,
        "arch": ARCHS[arch],
        "arch_name": arch,
        "macs": macs,
        "params": params,
        "epochs": epochs,
        "steps_per_epoch": steps,
        "batch": batch,
        "lr": lr,
        "weight_decay": weight_decay,
        "label_smoothing": smoothing,
        "lmu_boost": lmu_boost,
        "stain_aug": stain_aug,
        "seed": seed,
        "n_train": n,
        "train_groups": dict(Counter(groups)),
        "sampling_share": {k: round(v, 4) for k, v in sorted(gshare.items())},
        "history": hist,
        "train_seconds": secs,
        "init": init_info,
        "teacher": teacher_info,
        "mixstyle": mixstyle,
        "norm": norm,
        "style_aug": style_aug,
        "scale_range": list(scale_range),
        **(meta or {}),
    }
    torch.save({"state_dict": model.state_dict(), "info": info}, run_dir / "model.pt")
    export_onnx(model, run_dir / "model-f32.onnx", size)
    write_json(run_dir / "train.json", info)
    log(f"wrote {run_dir / 'model.pt'} and {run_dir / 'model-f32.onnx'}")
    return info


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Print the model's size (training runs through pipeline.py train).")
    ap.add_argument("--classes", type=int, default=12)
    a = ap.parse_args(argv)
    macs, params = count_macs(CellNet(a.classes))
    print(json.dumps({"macs": macs, "params": params}))


if __name__ == "__main__":
    main()
