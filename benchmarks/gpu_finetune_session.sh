#!/usr/bin/env bash
# Issue #13's fine-tuning benchmarks on a lent GPU machine, in one prepared call (no network).
# Carried in: .whl/ (wheels of the missing pure-Python deps) and .gpu2/ (Fashion-MNIST's idx files
# from Debian's dataset-fashion-mnist, EfficientNet-Lite0's .pth). Most important section first;
# every section appends its rows, so a time-out keeps what finished.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee $OUT/device.txt
COMMON="--device cuda --image-size 224 --seeds 0,1,2 --epochs 20 --n-test 10000 --data-dir .gpu2/fmnist --lite0-weights .gpu2/efficientnet-lite0-57934424.pth"
FT="benchmarks/bench_finetune_images.py $COMMON --label GPU --out $OUT/finetune_images_gpu"
timeout ${T100:-230} python3 $FT --per-class 100 2>&1 | tee $OUT/ft100.log | tail -12
timeout ${T20:-80} python3 $FT --per-class 20 --append 2>&1 | tee $OUT/ft20.log | tail -8
timeout ${TMT:-120} python3 benchmarks/bench_multitask.py $COMMON --per-class 100 --label GPU --out $OUT/multitask_gpu 2>&1 | tee $OUT/mt.log | tail -8
