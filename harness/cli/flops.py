"""``harness flops``: counted (fvcore) vs analytic FLOPs of one prefill, or ``--suite paper``'s table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import HarnessError
from .common import RANDOM_FAMILIES, parse_params


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    f = subparsers.add_parser(
        "flops", help="FLOPs: counted (fvcore) vs analytic, or the paper geometries table"
    )
    f.add_argument("model", nargs="?", help="local checkpoint directory")
    f.add_argument("--suite", help="'paper': published backbones x methods, analytically (no weights)")
    f.add_argument("--random", choices=RANDOM_FAMILIES, help="random-init small geometry")
    f.add_argument("--method", default="dense", help="method stack or plan:SPEC (default dense)")
    f.add_argument("--params", help='method parameters as JSON, e.g. \'{"fastv": {"budget": 64}}\'')
    f.add_argument("--mode", choices=["drop", "mask"], default="drop")
    f.add_argument("--out", help="with --suite: folder for CSV / JSON / Markdown tables")
    f.add_argument("--no-check", action="store_true", help="with --suite: skip the FakeTensor cross-check")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.suite:
        return _flops_paper(args)
    from harness.baselines.registry import build_stack

    from ..backbones import open_backbone
    from ..scenarios import count_flops

    if bool(args.model) == bool(args.random):
        raise HarnessError("give --suite paper, a checkpoint directory, or --random FAMILY")
    bb = open_backbone(args.model or f"random:{args.random}")
    stack = build_stack(args.method, parse_params(args.params))
    bb = stack.prepare_backbone(bb)  # e.g. random per-layer projectors on a random decoder
    plan = stack.plan(bb)
    cell = count_flops(bb, plan, args.mode)  # what a suite's flops cell counts (seed 0)
    data = {"backbone": bb.source, "method": args.method, "mode": args.mode, **cell.metrics(),
            "fvcore_vs_analytic": cell.rel_diff(), "unsupported_ops": cell.counted.unsupported}  # fmt: skip
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        from tabulate import tabulate

        a, c = cell.analytic, cell.counted
        rows = [
            [name, f"{2 * cv:.4g}", f"{av.flops:.4g}", f"{cell.rel_diff()[key]:.2%}"]
            for name, key, cv, av in [
                ("vision tower", "vision_tower", c.vision_tower, a.vision_tower),
                ("projector", "projector", c.projector, a.projector),
                ("decoder (+ score rows)", "decoder", c.decoder, a.decoder_total + a.overhead),
                ("LM head", "lm_head", c.lm_head, a.lm_head),
                ("total", "total", c.macs, a.total),
            ]
        ]
        print(tabulate(rows, headers=["FLOPs (2 x MACs)", "fvcore (counted)", "analytic", "rel. diff"]))
        print(f"unsupported ops: {c.unsupported or 'none'} (share {c.unsupported_share:.2%}); "
              f"visual side: YOPO {a.decoder_visual_yopo.flops:.4g}, ViCA {a.decoder_visual_vica.flops:.4g}")  # fmt: skip
    return 0 if cell.counted.ok and max(cell.rel_diff().values()) <= 0.01 else 1


def _flops_paper(args: argparse.Namespace) -> int:
    import time

    from ..flops.crosscheck import cross_check_dense
    from ..flops.paper import paper_table

    if args.suite != "paper":
        raise HarnessError(
            f"harness flops --suite takes 'paper' (the published geometries), got '{args.suite}'"
        )
    t0 = time.perf_counter()
    rows = paper_table()
    checks = []
    if not args.no_check:
        from harness.models.geometry import PAPER_GEOMETRIES

        for name in PAPER_GEOMETRIES:
            res = cross_check_dense(PAPER_GEOMETRIES[name])
            checks.append({"backbone": name, **res})
    elapsed = time.perf_counter() - t0
    out = Path(args.out) if args.out else None
    if out:
        import pandas as pd

        out.mkdir(parents=True, exist_ok=True)
        df = pd.DataFrame(rows)
        df.to_csv(out / "paper_flops.csv", index=False)
        (out / "paper_flops.json").write_text(json.dumps(rows, indent=2, default=str))
        (out / "paper_flops.md").write_text(df.to_markdown(index=False))
        if checks:
            (out / "paper_flops_crosscheck.json").write_text(json.dumps(checks, indent=2, default=str))
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    from tabulate import tabulate

    cols = [
        "backbone",
        "method",
        "setting",
        "convention",
        "tflops",
        "tflops_visual",
        "visual_convention",
        "published",
    ]
    print(tabulate([[r.get(c) for c in cols] for r in rows], headers=cols, floatfmt=".3f"))
    if checks:
        print()
        print("dense cross-check: analytic vs torch FlopCounterMode under FakeTensorMode")
        table = [
            [
                c["backbone"],
                part,
                c["analytic"][part] / 1e12,
                c["fake"][part] / 1e12,
                f"{c['rel_diff'][part]:+.2e}",
            ]
            for c in checks
            for part in ("decoder", "vision_tower", "projector", "lm_head")
        ]
        print(tabulate(table, headers=["backbone", "line", "analytic TFLOPs", "counted TFLOPs", "rel. diff"],
                       floatfmt=".4f"))  # fmt: skip
    print(f"{len(rows)} rows in {elapsed:.1f} s; FLOPs = 2 x MACs; conventions: fastv (F2, MACs), "
          "swiglu (F3, GQA-aware, MACs), shortv (paper D/S formulas, t=64, FLOPs), exact (per class)")  # fmt: skip
    return 0
