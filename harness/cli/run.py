"""``harness run``: a suite into one record per cell; ``--plan`` lists the cells and what they need."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import HarnessError
from ..launch import LAUNCHERS

RUN_LOG = "run.log"  # under --out: what the libraries printed while cells ran


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    r = subparsers.add_parser("run", help="run a suite (YAML file or bundled name) into one record per cell")
    r.add_argument("--suite", required=True, help="suite YAML file or bundled suite name")
    r.add_argument("--out", help="records folder (default out/SUITE)")
    r.add_argument("--force", action="store_true", help="re-run cells that already have a record")
    r.add_argument("--shard", help="i/N: run only every N-th cell starting at i (1-based)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--verbose", action="store_true",
                   help="show what lmms-eval, datasets and transformers print (default: OUT/run.log)")  # fmt: skip
    r.add_argument(
        "--plan", action="store_true",
        help="print the cell matrix, what each needs and what is here (with --launcher ray/slurm: the chunks, "
        "and for slurm the sbatch scripts)",
    )  # fmt: skip
    launch = r.add_argument_group("launchers (docs: README, 'Running on a cluster')")
    launch.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help="where cells run: this process (default), Ray actors, or SLURM job arrays")  # fmt: skip
    launch.add_argument("--retries", type=_count("--retries", 0), default=None,
                        help="ray/slurm: times a cell whose worker is lost is run again (default 2)")  # fmt: skip
    launch.add_argument("--chunk-minutes", type=_positive, default=None,
                        help="ray/slurm: at most this many estimated GPU-minutes per chunk (default 60)")  # fmt: skip
    launch.add_argument("--ray-address", help="ray: the cluster to join (default: start a local one)")
    launch.add_argument("--workers", type=_count("--workers", 1),
                        help="ray: actors (default: one per GPU, or one per CPU without GPUs)")  # fmt: skip
    launch.add_argument("--revive-timeout", type=_positive, default=None,
                        help="ray: seconds to wait for a restarted worker before dropping it (default 60)")  # fmt: skip
    launch.add_argument("--partition", help="slurm: the partition (default: the cluster's default)")
    launch.add_argument("--gpus-per-task", type=_count("--gpus-per-task", 0), default=None,
                        help="slurm: GPUs per array task (default 1)")  # fmt: skip
    launch.add_argument("--max-parallel", type=_count("--max-parallel", 1), default=None,
                        help="slurm: array tasks running at once (default 256)")  # fmt: skip
    launch.add_argument("--time", help="slurm: time limit per array task, minutes or H:MM:SS "
                                       "(default: twice the largest chunk's estimate, at least 30 min)")  # fmt: skip
    launch.add_argument("--slurm-arg", action="append", metavar="KEY=VALUE",
                        help="slurm: an extra #SBATCH option, e.g. account=my_lab (repeatable)")  # fmt: skip
    launch.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                        help="slurm: follow the jobs until they finish (default), or return after submitting")  # fmt: skip
    launch.add_argument("--slurm-cluster", choices=("slurm", "local", "debug"), default=None,
                        help="slurm: submitit's real SLURM executor (default) or its local stand-ins for testing")  # fmt: skip
    r.set_defaults(func=run)


#: launcher-specific flags: (argparse dest, flag, the launchers that take it)
_LAUNCHER_FLAGS = [
    ("retries", "--retries", ("ray", "slurm")), ("chunk_minutes", "--chunk-minutes", ("ray", "slurm")),
    ("ray_address", "--ray-address", ("ray",)), ("workers", "--workers", ("ray",)),
    ("revive_timeout", "--revive-timeout", ("ray",)), ("partition", "--partition", ("slurm",)),
    ("gpus_per_task", "--gpus-per-task", ("slurm",)), ("max_parallel", "--max-parallel", ("slurm",)),
    ("time", "--time", ("slurm",)), ("slurm_arg", "--slurm-arg", ("slurm",)), ("wait", "--wait", ("slurm",)),
    ("slurm_cluster", "--slurm-cluster", ("slurm",)),
]  # fmt: skip


def _count(flag: str, least: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"{flag} takes a whole number >= {least}, got '{text}'")
        return value

    return parse


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"takes a positive number, got '{text}'")
    return value


def _check_launcher_flags(args: argparse.Namespace) -> None:
    for dest, flag, launchers in _LAUNCHER_FLAGS:
        value = getattr(args, dest)
        if value is not None and args.launcher not in launchers:
            raise HarnessError(f"{flag} applies to --launcher {' or '.join(launchers)}, not {args.launcher}")


def run(args: argparse.Namespace) -> int:
    from ..runner import parse_shard, run_suite
    from ..suite import load_suite

    _check_launcher_flags(args)
    suite = load_suite(args.suite)
    out = Path(args.out or f"out/{suite.name}")
    if args.plan:
        _print_plan(suite, parse_shard(args.shard))
        if args.launcher != "local":
            _print_launch_plan(args, suite, out)
        return 0
    if args.launcher == "ray":
        return _run_ray(args, suite, out)
    if args.launcher == "slurm":
        return _run_slurm(args, suite, out)
    # cells that time nothing use every core unless --threads / SEEBENCH_THREADS says otherwise
    explicit = args.threads is not None or "SEEBENCH_THREADS" in os.environ
    log = None if args.verbose else out / RUN_LOG
    since = log.stat().st_size if log is not None and log.exists() else 0
    summary = run_suite(
        suite, out, force=args.force, shard=parse_shard(args.shard), progress=not args.no_progress,
        work_threads=None if explicit else (os.cpu_count() or 1), log=log,
    )  # fmt: skip
    _print_run(summary, out)
    if log is not None:
        from ..console import log_summary

        line = log_summary(log, since)
        if line:
            print(line)
    return exit_code(summary)


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


def _chunk_minutes(args) -> float:
    from ..launch.partition import DEFAULT_CHUNK_MINUTES

    return args.chunk_minutes or DEFAULT_CHUNK_MINUTES


def exit_code(summary) -> int:
    """1 when a cell failed (its record says why), else 0."""
    return 1 if summary.failed else 0


def _retries(args) -> int:
    return 2 if args.retries is None else args.retries


def _slurm_options(args):
    from ..launch.slurm_launcher import SlurmOptions, parse_slurm_args, parse_time

    return SlurmOptions(
        partition=args.partition,
        gpus_per_task=1 if args.gpus_per_task is None else args.gpus_per_task,
        max_parallel=args.max_parallel or 256,
        time_min=None if args.time is None else parse_time(args.time),
        slurm_args=parse_slurm_args(args.slurm_arg),
        cluster=args.slurm_cluster or "slurm",
    )


def _print_launch_plan(args, suite, out: Path) -> None:
    """The chunks a launcher would run (cells without an ok record here), and the sbatch scripts."""
    from .. import records
    from ..launch.partition import partition
    from ..runner import cell_fingerprint, select_cells

    cells = select_cells(suite, parse_shard_arg(args))
    done = set() if args.force else records.finished_fingerprints(out)
    todo = [c for c in cells if cell_fingerprint(c) not in done]
    chunks = partition(todo, _chunk_minutes(args))
    print(
        f"\n{len(todo)} cells to run in {len(chunks)} chunks (at most {_chunk_minutes(args):.0f} GPU-min each):"
    )
    for k, ch in enumerate(chunks):
        print(f"  chunk {k}: {ch.describe()}")
    if args.launcher == "slurm":
        from ..launch.slurm_launcher import sbatch_scripts

        opts = _slurm_options(args)
        if opts.time_min is not None:
            over = [k for k, ch in enumerate(chunks) if ch.minutes > opts.time_min]
            if over:
                print(f"warning: {len(over)} chunks are estimated above --time {args.time} (chunks "
                      f"{', '.join(map(str, over[:8]))}{' ...' if len(over) > 8 else ''}); a requeued task resumes "
                      "at its unfinished cells, but a single cell longer than the limit never finishes")  # fmt: skip
        for text in sbatch_scripts(suite, out, chunks, opts):
            print("\n" + text)


def parse_shard_arg(args):
    from ..runner import parse_shard

    return parse_shard(args.shard)


def _run_ray(args, suite, out: Path) -> int:
    from ..launch.ray_launcher import launch_ray

    summary = launch_ray(
        suite, out, address=args.ray_address, workers=args.workers, retries=_retries(args),
        revive_timeout=args.revive_timeout or 60.0, chunk_minutes=_chunk_minutes(args), force=args.force,
        shard=parse_shard_arg(args), progress=not args.no_progress,
    )  # fmt: skip
    _print_run(summary, out)
    return exit_code(summary)


def _run_slurm(args, suite, out: Path) -> int:
    from ..launch.slurm_launcher import launch_slurm

    wait = True if args.wait is None else args.wait
    driver = launch_slurm(
        suite, out, _slurm_options(args), retries=_retries(args), chunk_minutes=_chunk_minutes(args),
        force=args.force, shard=parse_shard_arg(args), progress=not args.no_progress, wait=wait,
    )  # fmt: skip
    if not wait:
        n = len(driver.submitted) - len(driver.adopted)
        if driver.adopted:
            print(f"{len(driver.adopted)} array tasks of an earlier submission are still queued or running "
                  f"({', '.join(driver.adopted)}); their cells were not submitted again")  # fmt: skip
        print(f"submitted {n} array tasks ({driver.summary.skipped} of {driver.summary.cells} cells already "
              f"done); job ids: {', '.join(driver.job_ids) or 'none'}; logs in {out / '.slurm'}. "
              f"Re-run the same command to follow, resume and retry.")  # fmt: skip
        return 0
    _print_run(driver.summary, out)
    return exit_code(driver.summary)
