"""``harness run``: a suite into one record per cell; ``--plan`` lists the cells and what they need."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    r = subparsers.add_parser("run", help="run a suite (YAML file or bundled name) into one record per cell")
    r.add_argument("--suite", required=True, help="suite YAML file or bundled suite name")
    r.add_argument("--out", help="records folder (default out/SUITE)")
    r.add_argument("--force", action="store_true", help="re-run cells that already have a record")
    r.add_argument("--shard", help="i/N: run only every N-th cell starting at i (1-based)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument(
        "--plan", action="store_true", help="print the cell matrix, what each needs and what is here"
    )
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..runner import parse_shard, run_suite
    from ..suite import load_suite

    suite = load_suite(args.suite)
    if args.plan:
        return _print_plan(suite, parse_shard(args.shard))
    out = Path(args.out or f"out/{suite.name}")
    # cells that time nothing use every core unless --threads / SEEBENCH_THREADS says otherwise
    explicit = args.threads is not None or "SEEBENCH_THREADS" in os.environ
    summary = run_suite(
        suite, out, force=args.force, shard=parse_shard(args.shard), progress=not args.no_progress,
        work_threads=None if explicit else (os.cpu_count() or 1),
    )  # fmt: skip
    _print_run(summary, out)
    return 1 if summary.failed else 0


def _print_plan(suite, shard) -> int:
    import time

    from tabulate import tabulate

    from ..availability import analytic_flops_metrics, cell_needs, estimate_gpu_minutes
    from ..runner import select_shard
    from ..suite import expand

    t0 = time.perf_counter()
    cells = select_shard(expand(suite), shard)
    rows, runnable, total_min = [], 0, 0.0
    for c in cells:
        n = cell_needs(c)
        est = estimate_gpu_minutes(c)
        total_min += est or 0.0
        analytic = (
            c.scenario.kind == "flops" and not n.available and c.backbone.geometry
            and analytic_flops_metrics(c.backbone.geometry, c.method.name, c.method.params) is not None
        )  # fmt: skip
        if c.scenario.kind == "flops" and not n.available and not analytic:
            n.missing.append("no analytic schedule for this method stack")
        status = "runs" if n.available else ("runs (analytic FLOPs)" if analytic else "skipped")
        runnable += status.startswith("runs")
        needs = ", ".join(x for x in ["weights", "dataset" if n.dataset else "", "GPU" if n.gpu else ""] if x)
        rows.append([c.index, c.backbone.name, c.method.name, c.task, c.scenario.kind, needs, status,
                     "; ".join(n.missing) if status == "skipped" else "", "" if est is None else f"{est:.0f}"])  # fmt: skip
    print(tabulate(rows, headers=["#", "backbone", "method", "task", "scenario", "needs", "here", "reason",
                                  "est. GPU-min"]))  # fmt: skip
    print(f"{len(cells)} cells: {runnable} can run here, {len(cells) - runnable} skipped; "
          f"estimated {total_min / 60:.1f} GPU-hours for the accuracy and latency cells (prefill-bound, "
          f"{__import__('harness.availability', fromlist=['x']).GPU_EFFECTIVE_TFLOPS:.0f} TFLOPS sustained); "
          f"planned in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    return 0


def _print_run(summary, out: Path) -> None:
    from ..tables import run_summary

    print(run_summary(summary.all_records))
    print(
        f"{summary.cells} cells: {summary.ran - summary.skipped_unavailable} ran, {summary.skipped} already done (resumed), "
        f"{summary.failed} failed, {summary.skipped_unavailable} skipped (not runnable here); records in {out}"
    )
    for r in summary.records:
        if r.status == "failed":
            print(f"failed: {r.backbone} | {r.method} | {r.task} | {r.scenario}: {r.error}")
