#!/usr/bin/env bash
# The one set-up command (README, `make install`, .ci/run): everything the test suite needs at the
# Python level, into the Python environment that runs this script.
#
#   bash scripts/install.sh            # PYTHON=python3.11 bash scripts/install.sh for another one
#
# torch: an installed torch is kept (a CUDA build on a GPU machine stays what it is); only when
# none is importable is torch==$TORCH_VERSION installed (TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# picks the small CPU wheel). Every later step is constrained to that torch, so no dependency can
# swap it for another build.
# DeepSpeed builds against that torch (--no-build-isolation; otherwise pip builds it next to a
# freshly downloaded torch). lmms-eval is installed without its declared dependencies (they pull a
# CUDA torch and torchvision); the modules its command line imports come with the `all` extra.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
LMMS_EVAL="lmms-eval==0.7.3"
pip_install() { "$PYTHON" -m pip install --progress-bar off "$@"; }

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  pip_install "torch==$TORCH_VERSION" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
"$PYTHON" -c "import torch; print(f'torch=={torch.__version__}')" > "$constraints"

pip_install -c "$constraints" -e ".[all]"
# Building without isolation uses this environment's build tools (Python >= 3.12 venvs have none).
pip_install -c "$constraints" setuptools wheel
pip_install -c "$constraints" --no-build-isolation -e ".[deepspeed]"
pip_install -c "$constraints" --no-deps "$LMMS_EVAL"
"$PYTHON" -c "import deepspeed, illume, lmms_eval, vision_tokenizer" && echo "install: done ($(cat "$constraints"))"
