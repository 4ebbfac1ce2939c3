"""Static int8 quantization of the f32 ONNX model in the one format tract runs as
real int8 (see shared TOOLCHAIN.md):

- onnxruntime `quant_pre_process` first (shape inference, folds BatchNorm);
- `quantize_static`, QOperator format, per-tensor (per_channel=False), int8
  weights and activations, only Conv / Relu / MaxPool quantized: the ReLU after
  each conv is fused into QLinearConv, MaxPool runs on int8, GlobalAveragePool and
  the linear head stay f32 (tract lacks QLinearGlobalAveragePool, QGemm, QLinearAdd);
- calibration: MinMax over a few hundred *training* tensors (stratified by group).

The result is checked: QLinearConv present, none of the ops tract cannot load.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from common import PipelineError, log

FORBIDDEN = {"QLinearAdd", "QLinearGlobalAveragePool", "QGemm", "QLinearMatMul", "QLinearMul", "QLinearConcat",
             "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax"}


def calibration_indices(groups: list[str], n: int, seed: int) -> np.ndarray:
    """~n indices spread evenly over groups (each group at most its size)."""
    rng = np.random.default_rng(seed)
    by: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by.setdefault(g, []).append(i)
    per = max(1, n // max(1, len(by)))
    out = []
    for g in sorted(by):
        idx = by[g]
        out += list(rng.choice(idx, size=min(per, len(idx)), replace=False))
    return np.array(sorted(out))


class _Reader:
    def __init__(self, x: np.ndarray, name: str, batch: int = 16):
        self.x, self.name, self.batch, self.i = x, name, batch, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        b = np.ascontiguousarray(self.x[self.i : self.i + self.batch], dtype=np.float32)
        self.i += self.batch
        return {self.name: b}

    def rewind(self):
        self.i = 0


def op_histogram(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def check_int8_graph(path: Path) -> Counter:
    ops = op_histogram(path)
    bad = sorted(set(ops) & FORBIDDEN)
    if bad:
        raise PipelineError(f"{path}: holds {bad}, which tract cannot load")
    if ops.get("QLinearConv", 0) == 0:
        raise PipelineError(f"{path}: no QLinearConv: quantization did nothing")
    if ops.get("Conv", 0):
        raise PipelineError(f"{path}: {ops['Conv']} Conv left in f32")
    return ops


def quantize(f32: Path, out: Path, calib: np.ndarray) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_name(out.stem + "-pre.onnx")
    quant_pre_process(str(f32), str(pre), skip_symbolic_shape=False)
    pre_ops = op_histogram(pre)
    if pre_ops.get("BatchNormalization"):
        raise PipelineError(f"{pre}: BatchNormalization not folded")
    name = onnx.load(str(pre)).graph.input[0].name
    # onnxruntime warns that QOperator s8s8 is slow *in onnxruntime* on x64: irrelevant
    # here, the target is tract (TOOLCHAIN.md).
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(pre),
            str(out),
            _Reader(calib, name),
            quant_format=QuantFormat.QOperator,
            op_types_to_quantize=["Conv", "Relu", "MaxPool"],
            per_channel=False,
            reduce_range=False,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    finally:
        root.setLevel(level)
    ops = check_int8_graph(out)
    pre.unlink(missing_ok=True)
    info = {
        "format": "onnx QOperator int8: QLinearConv per-tensor (ReLU fused), int8 MaxPool, GlobalAveragePool + Gemm f32",
        "calibration": {"method": "MinMax", "tensors": int(len(calib)), "from": "train split"},
        "ops": dict(sorted(ops.items())),
        "bytes_f32": f32.stat().st_size,
        "bytes_int8": out.stat().st_size,
    }
    log(f"quantized {f32.name} -> {out.name} ({info['bytes_f32'] // 1024} -> {info['bytes_int8'] // 1024} KiB); ops {info['ops']}")
    return info


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Quantize an f32 ONNX model with calibration tensors from an .npy file.")
    ap.add_argument("f32")
    ap.add_argument("out")
    ap.add_argument("--calib", required=True, help=".npy float32 [N,3,96,96]")
    a = ap.parse_args(argv)
    quantize(Path(a.f32), Path(a.out), np.load(a.calib))


if __name__ == "__main__":
    main()
