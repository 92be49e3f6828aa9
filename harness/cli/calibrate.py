"""``harness calibrate METHOD MODEL``: a method's calibration (ShortV's layer order, YOPO's head masks)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import positive


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    ca = subparsers.add_parser(
        "calibrate", help="ShortV layer order (LC) or YOPO head masks from calibration samples"
    )
    ca.add_argument("method", help='a method that calibrates (harness methods --json: "calibrates")')
    ca.add_argument("model", help="checkpoint directory, 'embedded' or a hub id")
    ca.add_argument(
        "--tasks", required=True, help="comma-separated lmms-eval tasks, e.g. shapes_attr_ci,shapes_exist_ci"
    )
    ca.add_argument("--limit", type=positive("--limit"), default=40, help="samples per task (default 40)")
    ca.add_argument(
        "--tau", type=float, help="head masks: visual/non-visual mass ratio of an active head (default 0.1)"
    )
    ca.add_argument(
        "--vote", type=float, help="head masks: share of samples on which a kept head is active (default 0.4)"
    )
    ca.add_argument("--out", help="write the result JSON here")
    ca.add_argument("--save", action="store_true", help="store the result in the checkpoint's seebench.json")
    ca.add_argument("--json", action="store_true")
    ca.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..backbones import open_backbone
    from ..calibrate import calibrate, method_for_calibration, save_calibration

    cls = method_for_calibration(args.method)
    options = {k: v for k, v in (("tau", args.tau), ("vote", args.vote)) if v is not None}
    cls.calibration_settings(**options)  # a wrong option is one line before any loading
    bb = open_backbone(args.model)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    res = calibrate(args.method, bb, tasks, args.limit, **options)
    res["backbone"] = bb.source
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    if args.save:
        save_calibration(bb.source, args.method, res)
    print(json.dumps(res, indent=2) if args.json else cls.calibration_summary(res))
    return 0
