"""``harness methods``: the registered methods, their knobs and references."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    m = subparsers.add_parser("methods", help="list registered methods")
    m.add_argument("--json", action="store_true", help="print a JSON list of objects")
    m.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.baselines import registry

    rows: list[dict[str, Any]] = [
        {
            "name": "dense",
            "stage": "none",
            "needs_weights": False,
            "knobs": {},
            "description": "no method",
            "host_reads": 0,
            "calibrates": None,
            "deepstack": "as in HF",
            "reference": {
                "repository": "transformers",
                "commit": "",
                "file": "",
                "rule": "the stock HF forward",
            },
        }  # fmt: skip
    ]
    for name in registry.names()[1:]:
        cls = registry.get(name)
        rows.append(
            {"name": name, "stage": cls.stage, "needs_weights": cls.needs_weights, "knobs": cls.knobs(),
             "description": cls.description, "host_reads": cls.host_reads, "calibrates": cls.calibration_key,
             "reference": cls.reference, "deepstack": cls.deepstack_effect()}
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
