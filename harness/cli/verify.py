"""``harness verify``: the executor against the HF model's own forward (logits, greedy tokens)."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import HarnessError
from .common import RANDOM_FAMILIES, positive


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    v = subparsers.add_parser("verify", help="check the executor against the HF forward on a checkpoint")
    v.add_argument("model", nargs="?", help="local checkpoint directory (save_pretrained) or hub id")
    v.add_argument("--random", choices=RANDOM_FAMILIES,
                   help="build a small random-init model of this family's geometry instead")  # fmt: skip
    v.add_argument("--save-folder", metavar="DIR",
                   help="with --random: save the model as a checkpoint folder laid out the way the hub ships "
                        "one (weights, tokenizer, processor configs, chat template) and verify that folder")  # fmt: skip
    v.add_argument("--batch", type=positive("batch size"), default=4, help="ragged batch size (default 4)")
    v.add_argument(
        "--tokens", type=positive("--tokens"), default=16, help="greedy tokens to compare (default 16)"
    )
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--json", action="store_true", help="print the figures as JSON")
    v.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.models.verify import checkpoint_samples, verify_dense

    from ..backbones import open_backbone
    from ..scenarios import verify_inputs

    if bool(args.model) == bool(args.random):
        raise HarnessError(
            "give a checkpoint directory (harness verify MODEL) or --random FAMILY, not both/neither"
        )
    if args.save_folder:
        if not args.random:
            raise HarnessError("--save-folder saves a random model: give it with --random FAMILY")
        from harness.models.backbones.hub_layout import save_hub_checkpoint

        args.model, args.random = str(save_hub_checkpoint(args.random, args.save_folder)), None
        print(f"saved {args.model}", file=sys.stderr)  # stdout stays the figures (--json)
    if args.random:
        bb = open_backbone(f"random:{args.random}")
        samples = verify_inputs(bb, args.batch, args.seed)  # a suite's verify cell: ragged random inputs
    else:
        bb = open_backbone(args.model)
        try:
            samples = checkpoint_samples(bb, args.batch, args.seed)
        except ValueError as exc:
            raise HarnessError(str(exc).splitlines()[0]) from None
    rep = verify_dense(bb, samples, args.tokens)
    data = rep.as_dict()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        from tabulate import tabulate

        rows = [
            ["backbone", f"{rep.backbone} ({rep.family}, {rep.weights})"],
            [
                "samples (ragged)",
                f"{rep.samples}: prompt lengths {rep.prompt_lengths}, visual tokens {rep.visual_tokens}",
            ],
            ["max |logit diff| batch 1", f"{rep.max_abs_diff_batch1:.3e}  (tolerance {rep.tolerance:g})"],
            [f"max |logit diff| batch {rep.samples}", f"{rep.max_abs_diff_batched:.3e}"],
            [f"greedy {rep.greedy_tokens} tokens == HF (batch 1)", rep.greedy_equal_batch1],
            [f"greedy {rep.greedy_tokens} tokens == HF (batched)", rep.greedy_equal_batched],
            ["result", "PASS" if rep.ok else "FAIL"],
        ]
        print(tabulate(rows, tablefmt="simple"))
    return 0 if rep.ok else 1
