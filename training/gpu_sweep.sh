#!/usr/bin/env bash
# Train candidate models on a lent GPU machine (Keras 3 on the torch backend) and return them.
# Bundle first, on the dev machine:  bash training/make_gpu_bundle.sh
# Every choice between the candidates is made on the validation carve, never on test/.
set -uo pipefail
work=/tmp/sweep
mkdir -p "$work" && tar -xf .gpu/bundle.tar -C "$work"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$work"/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=torch PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
data=$work/chest_xray
out=${OUT:-/tmp/out}; mkdir -p "$out"
budget=${SWEEP_SECONDS:-360}
# Logs go straight to $out, so that a call cut by its time limit still returns them.
# Decode and cache the arrays once for the candidates' preprocessing (WARM: the training
# flags that decide it; one preprocessing, so candidates of one call share it), so
# parallel runs do not all build the same cache.
python3 -c "import sys; from mlcore.train import load_training_data, parse_config
load_training_data(parse_config(sys.argv[1:]))" --data "$data" --out /tmp/x \
  --cache-dir "$work/cache" ${WARM:-} > "$out/warm.log" 2>&1 || { tail "$out/warm.log"; exit 1; }
echo "cache warm after $SECONDS s"
nvidia-smi --query-gpu=name,memory.used --format=csv
run() {
  name=$1; shift
  python3 -m mlcore.train --data "$data" --out "$work/models/$name" --version "$name" \
    --cache-dir "$work/cache" --max-seconds "$budget" "$@" > "$out/$name.log" 2>&1
  echo "$name exit $?"
}
# Each argument is "name flags...", e.g. "w32-s1 --width 32 --seed 1 --epochs 9".
if [ $# -eq 0 ]; then
  set -- "w24-s0 --width 24 --seed 0 --epochs 40" "w24-s1 --width 24 --seed 1 --epochs 40" \
    "w24-s2 --width 24 --seed 2 --epochs 40" "w32-s0 --width 32 --seed 0 --epochs 40" \
    "w24-s0-e70 --width 24 --seed 0 --epochs 70 --learning-rate 1e-3"
fi
for spec in "$@"; do
  # shellcheck disable=SC2086
  run $spec &
done
wait
for dir in "$work"/models/*/; do
  name=$(basename "$dir"); tar -cf "$out/$name.tar" -C "$work/models" "$name"
done
tail -n 4 "$out"/*.log > "$out/logs.txt"
grep -h -E "validation:|^[0-9]+/[0-9]+ - " "$out"/*.log >> "$out/logs.txt"
cat "$out/logs.txt"
