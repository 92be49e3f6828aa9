"""The ``harness`` command line.

Every user error prints one line ``harness: error: ...`` naming the problem and the fix, and
exits 2; a check that runs but fails (``verify`` out of tolerance) exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .errors import HarnessError


def _threads(n: int | None) -> None:
    import torch

    torch.set_num_threads(n or int(os.environ.get("SEEBENCH_THREADS", "1")))


def _positive(name: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got '{text}'") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v

    return parse


# ------------------------------------------------------------------ verify
def cmd_verify(args: argparse.Namespace) -> int:
    from harness.models.random_models import ragged_samples
    from harness.models.verify import checkpoint_samples, verify_dense

    from .backbones import open_backbone

    if bool(args.model) == bool(args.random):
        raise HarnessError(
            "give a checkpoint directory (harness verify MODEL) or --random FAMILY, not both/neither"
        )
    if args.random:
        bb = open_backbone(f"random:{args.random}")
        samples = ragged_samples(bb, args.batch, args.seed)
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


# ------------------------------------------------------------------ run
def cmd_run(args: argparse.Namespace) -> int:
    from .runner import parse_shard, run_suite
    from .suite import load_suite

    suite = load_suite(args.suite)
    out = Path(args.out or f"out/{suite.name}")
    summary = run_suite(
        suite, out, force=args.force, shard=parse_shard(args.shard), progress=not args.no_progress
    )
    _print_run(summary, out)
    return 1 if summary.failed else 0


def _print_run(summary, out: Path) -> None:
    from tabulate import tabulate

    rows = []
    for r in summary.records:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in list(r.metrics.items())[:6])
        rows.append([r.backbone, r.method, r.task, r.scenario, r.status, shown or (r.error or "")])
    if rows:
        print(tabulate(rows, headers=["backbone", "method", "task", "scenario", "status", "metrics"]))
    print(
        f"{summary.cells} cells: {summary.ran} ran, {summary.skipped} already done (resumed), "
        f"{summary.failed} failed; records in {out}"
    )


# ------------------------------------------------------------------ methods
def cmd_methods(args: argparse.Namespace) -> int:
    from harness.baselines import registry

    rows: list[dict[str, Any]] = [
        {"name": "dense", "stage": "none", "needs_weights": False, "knobs": {}, "description": "no method"}
    ]
    for name in registry.names()[1:]:
        cls = registry.get(name)
        rows.append(
            {"name": name, "stage": cls.stage, "needs_weights": cls.needs_weights, "knobs": cls.knobs(),
             "description": cls.description}
        )  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        from tabulate import tabulate

        table = [
            [r["name"], r["stage"], "yes" if r["needs_weights"] else "no",
             ", ".join(f"{k}={v['default']}" for k, v in r["knobs"].items()), r["description"]]
            for r in rows
        ]  # fmt: skip
        print(
            tabulate(table, headers=["method", "stage", "needs weights", "knobs (defaults)", "description"])
        )
    return 0


# ------------------------------------------------------------------ parser
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump): the problem, then where to look."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="harness", description="seebench: compare efficient multimodal-LLM methods.")
    p.add_argument("--threads", type=_positive("--threads"), default=None,
                   help="torch threads (default: $SEEBENCH_THREADS or 1)")  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    v = sub.add_parser("verify", help="check the executor against the HF forward on a checkpoint")
    v.add_argument("model", nargs="?", help="local checkpoint directory (save_pretrained) or hub id")
    v.add_argument("--random", choices=["llava-1.5", "llava-next", "qwen2-vl"],
                   help="build a small random-init model of this family's geometry instead")  # fmt: skip
    v.add_argument("--batch", type=_positive("batch size"), default=4, help="ragged batch size (default 4)")
    v.add_argument(
        "--tokens", type=_positive("--tokens"), default=16, help="greedy tokens to compare (default 16)"
    )
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--json", action="store_true", help="print the figures as JSON")
    v.set_defaults(func=cmd_verify)

    r = sub.add_parser("run", help="run a suite (YAML file or bundled name) into one record per cell")
    r.add_argument("--suite", required=True, help="suite YAML file or bundled suite name")
    r.add_argument("--out", help="records folder (default out/SUITE)")
    r.add_argument("--force", action="store_true", help="re-run cells that already have a record")
    r.add_argument("--shard", help="i/N: run only every N-th cell starting at i (1-based)")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=cmd_run)

    m = sub.add_parser("methods", help="list registered methods")
    m.add_argument("--json", action="store_true", help="print a JSON list of objects")
    m.set_defaults(func=cmd_methods)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser()
    args = parser.parse_args(argv)
    _threads(args.threads)
    try:
        return args.func(args)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted; finished cells are kept, re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
