"""``harness compare BASE NEW``: the CI gate on accuracy, FLOPs and latency ratios."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    cp = subparsers.add_parser(
        "compare", help="CI gate: fail on accuracy, FLOPs or latency-ratio regressions"
    )
    cp.add_argument("base")
    cp.add_argument("new")
    cp.add_argument("--acc-floor", type=float, default=0.01, help="minimum accuracy tolerance (default 0.01)")
    cp.add_argument("--latency-tol", type=float, default=0.15, help="allowed worsening of method/dense ratio")
    cp.add_argument("--abs-latency-tol", type=float, default=0.5, help="allowed slowdown, same machine only")
    cp.add_argument("--all", action="store_true", help="show passing checks too")
    cp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from ..gate import compare_dirs

    findings = compare_dirs(Path(args.base), Path(args.new), acc_floor=args.acc_floor,
                            latency_tol=args.latency_tol, abs_latency_tol=args.abs_latency_tol)  # fmt: skip
    shown = findings if args.all else [f for f in findings if f.verdict != "ok"]
    if shown:
        print(tabulate([[f.cell, f.check, f.base, f.new, f.verdict] for f in shown],
                       headers=["cell", "check", "base", "new", "verdict"]))  # fmt: skip
    failed = [f for f in findings if f.failed]
    n_cells = len({f.cell for f in findings})
    if failed:
        cells = sorted({f.cell for f in failed})
        print(f"compare: FAIL: {len(failed)} check(s) in {len(cells)} cell(s): " + "; ".join(cells))
        return 1
    print(f"compare: ok ({len(findings)} checks over {n_cells} cells)")
    return 0
