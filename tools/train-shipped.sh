#!/usr/bin/env bash
# Reproduces the shipped model (leukoscope-cnn-v9) in one command: v6 from scratch
# (20 epochs), then v7 (+10 epochs at lr 5e-4) and v9 (+12 epochs at lr 5e-4 with the
# style augmentation), each continuing from the previous run's weights. About 40 +
# 15 + 20 min on 2 quiet cores. Writes models/ (card, both ONNX files, golden set) at
# the end; runs already in tools/runs/ are not trained again.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-tools/.venv/bin/python}
common=(--image-aug --optics-aug --mixstyle --stain-aug)
[ -f tools/runs/v6/model.pt ] || "$py" tools/pipeline.py train --epochs 20 "${common[@]}" --run v6
[ -f tools/runs/v7/model.pt ] || "$py" tools/pipeline.py train --epochs 10 --lr 5e-4 --init v6 "${common[@]}" --run v7
"$py" tools/pipeline.py all --epochs 12 --lr 5e-4 --init v7 "${common[@]}" --style-aug --run v9
