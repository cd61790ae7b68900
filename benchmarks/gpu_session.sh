#!/usr/bin/env bash
# One prepared session on a lent GPU machine (no network; torch, timm, sentence-transformers preinstalled).
# Carried in: .whl/ (wheels of the missing pure-Python deps), .gpu/ (all-MiniLM-L6-v2 in fp16 plus its
# tokenizer, Rotten Tomatoes snippets as JSON). Results go to $OUT.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee $OUT/device.txt
python3 -c "import torch, timm, transformers, sentence_transformers as st; print(torch.__version__, timm.__version__, transformers.__version__, st.__version__)" | tee -a $OUT/device.txt
# The model folder: weights back to float32 (carried as float16 to fit the transfer limit).
mkdir -p /tmp/minilm && cp -r .gpu/minilm/. /tmp/minilm/
python3 - <<'PY'
from safetensors.torch import load_file, save_file
sd = load_file(".gpu/minilm16.safetensors")
save_file({k: v.float().contiguous() for k, v in sd.items()}, "/tmp/minilm/model.safetensors")
PY
SECTION=${1:-all}
if [ "$SECTION" = all ] || [ "$SECTION" = tests ]; then
  # GPU paths of the test suite: device="auto" picks CUDA here.
  timeout 170 python3 -m pytest -q -p no:cacheprovider --timeout 60 tests/test_engine.py tests/test_text.py \
    tests/test_image_encoder.py tests/test_pickling.py tests/test_zero_shot.py 2>&1 | tail -25 | tee $OUT/tests.txt
fi
if [ "$SECTION" = all ] || [ "$SECTION" = bench ]; then
  timeout 330 python3 benchmarks/bench_gpu.py --text-model /tmp/minilm --texts .gpu/rt.json --n-texts 5000 \
    --repeats 2 --n-files 512 --out $OUT 2>&1 | tail -45
fi
