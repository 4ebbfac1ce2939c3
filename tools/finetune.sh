#!/usr/bin/env bash
# Reproduces the shipped model (leukoscope-cnn-v5): the base run v2, then three
# continuations from the previous run's weights at decreasing learning rates.
# Each `train` step is ~10-25 min on 2 cores. Writes models/ at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-tools/.venv/bin/python}
[ -f tools/runs/v2/model.pt ] || "$py" tools/pipeline.py all --epochs 12 --stain-aug --image-aug --run v2
prev=v2
for step in "v3 8 6e-4" "v4 10 5e-4" "v5 10 4e-4"; do
    set -- $step
    "$py" tools/pipeline.py train --run "$1" --init "$prev" --epochs "$2" --lr "$3" --stain-aug --image-aug
    prev=$1
done
"$py" tools/pipeline.py quantize --run v5
"$py" tools/pipeline.py evaluate --run v5
"$py" tools/pipeline.py card --run v5
"$py" tools/pipeline.py golden --run v5
