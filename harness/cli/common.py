"""What several commands share: the thread count, ``--params``, ``--device`` and positive integers.

Nothing here imports torch at module level (``harness --help`` stays light)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

from ..errors import HarnessError

#: the small random-init geometries ``--random`` builds (harness verify / flops / latency)
RANDOM_FAMILIES = [
    "llava-1.5",
    "llava-next",
    "llava-onevision",
    "qwen2-vl",
    "qwen2.5-vl",
    "qwen3-vl",
    "internvl3",
    "internvl3.5",
]  # models/backbones/random.py (no torch here)


def set_threads(n: int | None) -> None:
    """--threads N, else $SEEBENCH_THREADS, else 1 (timing runs on a fixed thread count)."""
    import torch

    torch.set_num_threads(n or int(os.environ.get("SEEBENCH_THREADS", "1")))


def parse_params(text: str | None) -> dict:
    """--params '{"fastv": {"budget": 64}}' -> per-method parameters."""
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HarnessError(
            f'--params is not valid JSON ({exc.msg}); e.g. \'{{"fastv": {{"budget": 64}}}}\''
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise HarnessError(
            '--params maps method names to parameter objects, e.g. \'{"fastv": {"budget": 64}}\''
        )
    return data


def positive(name: str) -> Callable[[str], int]:
    """An argparse ``type`` for integers >= 1 whose error names the flag."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got '{text}'") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v

    return parse


def pick_device(choice: str) -> str:
    """--device auto|cpu|cuda -> the torch device to run on (one-line error without CUDA)."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise HarnessError("--device cuda: no CUDA device is visible; use --device cpu")
    return choice
