#!/usr/bin/env bash
# Train the recipe candidates (docs/recipes.md) on the shared Kermany images, 128 px, 2 epochs, from scratch,
# two backbones at a time with one thread each; interrupted runs resume. DATA=folder overrides the data.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
DATA=${DATA:-../shared/data/kermany-cxr-224}
light=resnet18,efficientnet_b0,mobilenetv2_100,mobilenetv3_large_100
heavy=densenet121,resnet50
run() {  # recipe backbones
  echo "=== $(date -u +%H:%M:%S) recipe $1: $2"
  $PY -m cli.main train-all --data "$DATA" --size 128 --epochs 2 --backbones "$2" --out "runs-recipes/$1" \
      --recipe "$1" --jobs 2 --threads 1 --resume --no-progress
  echo "=== $(date -u +%H:%M:%S) done $1 rc=$?"
}
run baseline "$light"
run smooth-ema "$light"
run equalize "$light"
run strong-aug "$light"
run lean "$light"
run baseline "$heavy"
run smooth-ema "$heavy"
echo "=== all done $(date -u +%H:%M:%S)"
