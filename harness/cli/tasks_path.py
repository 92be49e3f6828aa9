"""``harness tasks-path``: the folder of seebench's lmms-eval tasks (for ``--include_path``)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    tp = subparsers.add_parser(
        "tasks-path", help="print the folder of seebench's lmms-eval tasks (for --include_path)"
    )
    tp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..lmms_entry import TASKS_DIR

    print(TASKS_DIR)
    return 0
