#!/usr/bin/env bash
# Install seebench into a virtual environment with the pinned CPU torch.
#   ./install.sh         runtime (creates .venv, or uses $VENV)
#   ./install.sh test    runtime + test tools (pytest, pytest-benchmark, ruff, pyright, codespell) + both
#                        launchers' engines (the launcher tests run them: Ray and submitit)
#   ./install.sh ray     runtime + Ray (harness run --launcher ray)
#   ./install.sh slurm   runtime + submitit (harness run --launcher slurm)
# torch is pinned by constraints.txt so that no resolver pulls a newer (multi-GB CUDA) build.
# lmms-eval is installed with --no-deps plus the dependencies it really uses
# (requirements-lmms.txt): its metadata hard-requires torchvision, and PyPI's torchvision beside
# the CPU torch fails to import and then breaks transformers' LLaVA import.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
case "${1:-}" in
  "") extras="" ;;
  test) extras="[test,ray,slurm]" ;;
  ray | slurm) extras="[$1]" ;;
  *) echo "install.sh: unknown argument '$1': give nothing, test, ray or slurm" >&2; exit 2 ;;
esac
# strict: a tree of links under build/, so editors and type checkers follow harness.models.* and
# harness.baselines.*; a file added under models/ or baselines/ needs ./install.sh again
"$PY" -m pip install -q -c constraints.txt -e ".${extras}" --config-settings editable_mode=strict
"$PY" -m pip install -q -c constraints.txt -r requirements-lmms.txt
"$PY" -m pip install -q -c constraints.txt --no-deps "lmms-eval==0.7.3"
# no broken torchvision may stay behind (a GPU user's matching CUDA torchvision is left alone)
if "$PY" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('torchvision') else 1)"; then
  if ! "$PY" -c "import torchvision" >/dev/null 2>&1; then
    echo "install.sh: removing a torchvision that cannot import beside this torch"
    "$PY" -m pip uninstall -q -y torchvision
  fi
fi
"$PY" -c "import torch, transformers, lmms_eval; from transformers import LlavaForConditionalGeneration; print('seebench installed: torch', torch.__version__, 'transformers', transformers.__version__)"
