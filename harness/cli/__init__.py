"""The ``harness`` command line: one module per command, each with ``add_parser(subparsers)``
beside its ``run(args)`` handler; shared helpers in ``common.py``.

Every user error prints one line ``harness: error: ...`` naming the problem and the fix, and
exits 2; a check that runs but fails (``verify`` out of tolerance) exits 1.  Handlers import
their heavy dependencies (torch, transformers) inside ``run``: ``harness --help`` imports none.
"""

from __future__ import annotations

import argparse
import os
import sys

from harness.models.errors import SeebenchError

from . import (
    calibrate,
    compare,
    convert,
    flops,
    latency,
    merge,
    methods,
    report,
    run,
    tasks_path,
    train,
    verify,
)
from .common import positive, set_threads

#: the subcommands in the order ``harness --help`` lists them
COMMANDS = (verify, run, flops, latency, train, tasks_path, calibrate,
            report, compare, merge, convert, methods)  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump): the problem, then where to look."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="harness", description="seebench: compare efficient multimodal-LLM methods.")
    p.add_argument("--threads", type=positive("--threads"), default=None,
                   help="torch threads (default: $SEEBENCH_THREADS or 1)")  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser()
    args = parser.parse_args(argv)
    set_threads(args.threads)
    try:
        return args.func(args)
    except SeebenchError as exc:  # every user error (models/errors.py): one line, the problem and the fix
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted; finished cells are kept, re-run to resume", file=sys.stderr)
        return 130
