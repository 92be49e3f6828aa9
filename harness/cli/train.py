"""``harness train tiny-llava``: train the embedded tiny LLaVA (or a method's variant)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..errors import HarnessError
from .common import pick_device


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    tr = subparsers.add_parser("train", help="train the embedded tiny model: harness train tiny-llava")
    tr.add_argument("what", help="tiny-llava")
    tr.add_argument(
        "--out", help="checkpoint folder (default: the committed models/tiny/checkpoints/tiny-llava)"
    )
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument(
        "--scale", type=float, default=1.0, help="fraction of the recipe's steps (CI smoke: 0.01)"
    )
    tr.add_argument(
        "--arch",
        default="dense",
        help="dense, vica, saisa or yopo (same recipe and budget, that structure in training)",
    )
    tr.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where to train (default cpu)"
    )
    tr.add_argument("--no-progress", action="store_true")
    tr.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.models.tiny.model import CHECKPOINT_DIR
    from harness.models.tiny.recipe import Recipe
    from harness.models.tiny.train import train_tiny

    if args.what != "tiny-llava":
        raise HarnessError(f"harness train knows 'tiny-llava', got '{args.what}'")
    from harness.models.tiny.structures import ARCHES

    if args.arch not in ARCHES:
        raise HarnessError(f"--arch {args.arch}: use one of {', '.join(ARCHES)}")
    if args.scale <= 0:
        raise HarnessError(f"--scale must be > 0, got {args.scale}")
    if args.threads is None:  # training uses every core unless told otherwise (timing uses 1)
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    out = (
        Path(args.out)
        if args.out
        else CHECKPOINT_DIR / ("tiny-llava" + ("" if args.arch == "dense" else f"-{args.arch}"))
    )
    recipe = Recipe.default(seed=args.seed, scale=args.scale, arch=args.arch)
    summary = train_tiny(out, recipe, progress=not args.no_progress, device=pick_device(args.device))
    print(
        json.dumps(
            {"out": str(out), "wall_time_s": summary["wall_time_s"], "eval_ci": summary["eval_ci"]}, indent=2
        )
    )
    return 0
