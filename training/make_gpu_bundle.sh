#!/usr/bin/env bash
# One tar with the train split and the Keras wheels for the GPU machine (its Python is 3.12).
set -euo pipefail
data=${1:-../shared/data/chest_xray}
rm -rf .gpu/stage && mkdir -p .gpu/stage/whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .gpu/stage/whl \
  keras==3.15.1 namex==0.1.0 optree==0.20.0
mkdir -p .gpu/stage/chest_xray && cp -r "$data/train" .gpu/stage/chest_xray/
tar -cf .gpu/bundle.tar -C .gpu/stage whl chest_xray && rm -rf .gpu/stage
ls -la .gpu/bundle.tar
