"""``harness report RECORDS --out DIR``: tables and charts from records only."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    rp = subparsers.add_parser(
        "report", help="tables (Markdown, LaTeX, CSV, HTML) and charts from records only"
    )
    rp.add_argument("records", help="folder of records")
    rp.add_argument("--out", required=True, help="output folder")
    rp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from ..report.build import build_report

    t0 = time.perf_counter()
    paths = build_report(Path(args.records), Path(args.out))
    for kind, p in paths.items():
        print(f"{kind:5s} {p}")
    print(f"report built from records in {time.perf_counter() - t0:.1f} s")
    return 0
