#!/usr/bin/env bash
# Install seebench into a virtual environment with the pinned CPU torch.
#   ./install.sh         runtime (creates .venv, or uses $VENV)
#   ./install.sh test    runtime + test tools (pytest, pytest-benchmark, ruff)
# torch is pinned by constraints.txt so that no resolver pulls a newer (multi-GB CUDA) build.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
extras=""
[ "${1:-}" = "test" ] && extras="[test]"
"$PY" -m pip install -q -c constraints.txt -e ".${extras}"
"$PY" -c "import torch, transformers; from transformers import LlavaForConditionalGeneration; print('seebench installed: torch', torch.__version__, 'transformers', transformers.__version__)"
