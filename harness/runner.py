"""Run a suite: expand cells, skip finished ones (resume by fingerprint), write one record each.

A cell's record is written the moment it finishes, atomically, so a killed run loses at most the
cell in flight; a restart re-runs exactly the cells without an ``ok`` record.  A failing cell is
recorded with ``status: failed`` and its one-line error, and the run continues.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import environment, records
from .backbones import model_identity, open_backbone
from .console import stderr_to
from .errors import HarnessError
from .scenarios import SCENARIOS, CellContext
from .suite import Cell, Suite, expand

FINGERPRINT_FIELDS = (
    "backbone identity, method stack + params, task + version, scenario, mode, library versions"
)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``i/N`` (1-based) -> (i, N)."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise HarnessError(f"--shard takes i/N such as 1/3, got '{text}'") from None
    if not (n >= 1 and 1 <= i <= n):
        raise HarnessError(f"--shard {text}: need 1 <= i <= N")
    return i, n


def select_shard(cells: list[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    if shard is None:
        return cells
    i, n = shard
    return [c for c in cells if c.index % n == i - 1]


def cell_fingerprint(cell: Cell) -> str:
    from harness.baselines.registry import build_stack

    from .tasks import task_version

    stack = build_stack(cell.method.name, cell.method.params)
    payload = {
        "backbone": model_identity(cell.backbone.model),
        "dtype": cell.backbone.dtype,
        "device": cell.backbone.device,
        "method": stack.name,
        "params": stack.params(),
        "task": cell.task,
        "task_version": task_version(cell.task),
        "scenario": cell.scenario.dump(),
        "mode": cell.mode,
        "versions": environment.fingerprint_versions(),
    }
    return records.fingerprint(payload)


@dataclass
class RunSummary:
    cells: int = 0
    ran: int = 0
    skipped: int = 0
    failed: int = 0
    skipped_unavailable: int = 0
    records: list[records.Record] = field(default_factory=list)  # written by this run
    all_records: list[records.Record] = field(default_factory=list)  # every cell of the suite (incl. resumed)

    def add(self, rec: records.Record) -> None:
        """Count a record this run wrote."""
        self.records.append(rec)
        self.ran += 1
        self.failed += rec.status == "failed"
        self.skipped_unavailable += rec.status == "skipped"


class _Backbones:
    """Opens each backbone once per run."""

    def __init__(self) -> None:
        self._cache: dict[tuple, Any] = {}

    def get(self, cell: Cell):
        key = (cell.backbone.model, cell.backbone.dtype, cell.backbone.device)
        if key not in self._cache:
            self._cache.clear()
            self._cache[key] = open_backbone(*key)
        return self._cache[key]


TIMED_SCENARIOS = ("latency",)  # run at the configured thread count (1 unless told otherwise)


def worker_threads(cores: int | None = None) -> int:
    """In a launcher's worker process: timed cells at $SEEBENCH_THREADS or 1 thread, as the local
    launcher times them; returns the thread count for the cells that time nothing (the cores this
    worker may use)."""
    import os

    torch.set_num_threads(int(os.environ.get("SEEBENCH_THREADS", "1")))
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores)


def run_cell(
    cell: Cell, fp: str, backbones: _Backbones, env: dict[str, Any], work_threads: int | None = None
) -> records.Record:
    """One cell.  ``work_threads``: torch threads for cells that time nothing (accuracy, FLOPs,
    verify); timed cells keep the process setting, so their figures stay comparable."""
    if work_threads and cell.scenario.kind not in TIMED_SCENARIOS:
        before = torch.get_num_threads()
        torch.set_num_threads(work_threads)
        try:
            return _run_cell(cell, fp, backbones, env)
        finally:
            torch.set_num_threads(before)
    return _run_cell(cell, fp, backbones, env)


def _run_cell(cell: Cell, fp: str, backbones: _Backbones, env: dict[str, Any]) -> records.Record:
    from harness.baselines.registry import build_stack
    from harness.models.method import MethodError

    start = time.perf_counter()
    base = dict(
        fingerprint=fp, suite=cell.suite, backbone=cell.backbone.name, task=cell.task,
        scenario=cell.scenario.kind, cell=cell.spec(), environment=env,
    )  # fmt: skip
    try:
        stack = build_stack(cell.method.name, cell.method.params)
        base.update(method=stack.name, params=stack.params())
        bb = backbones.get(cell)
        torch.manual_seed(cell.scenario.seed)
        metrics, details = SCENARIOS[cell.scenario.kind].run(CellContext(bb, stack, cell))
        details = {**details, "threads": torch.get_num_threads()}
        base["params"] = stack.params()  # as run: a method may resolve a default on the backbone
        return records.Record(
            **base, metrics=metrics, details=details, backbone_info=bb.describe(),
            duration_s=time.perf_counter() - start,
        )  # fmt: skip
    except (HarnessError, MethodError, ValueError, RuntimeError) as exc:
        base.setdefault("method", cell.method.name)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return records.Record(
            **base, status="failed", error=f"{type(exc).__name__}: {msg}",
            details={"traceback": traceback.format_exc(limit=8)}, duration_s=time.perf_counter() - start,
        )  # fmt: skip


def unavailable_record(cell: Cell, fp: str, env: dict[str, Any]) -> records.Record | None:
    """A skipped record (with the reason) for a cell this machine cannot run; FLOPs cells of a
    published geometry complete analytically instead.  None when the cell can run."""
    from .availability import analytic_flops_metrics, cell_needs

    needs = cell_needs(cell)
    if needs.available:
        return None
    base = dict(fingerprint=fp, suite=cell.suite, backbone=cell.backbone.name, method=cell.method.name,
                params=cell.method.params, task=cell.task, scenario=cell.scenario.kind, cell=cell.spec(),
                environment=env)  # fmt: skip
    if cell.scenario.kind == "flops" and cell.backbone.geometry:
        m = analytic_flops_metrics(cell.backbone.geometry, cell.method.name, cell.method.params)
        if m is not None:
            return records.Record(**base, metrics=m, details={
                "source": f"analytic model at the {cell.backbone.geometry} geometry (weights unavailable here)",
                "unit": "FLOPs = 2 x MACs", "missing": needs.missing})  # fmt: skip
    return records.Record(**base, status="skipped", error="; ".join(needs.missing))


def execute(
    cell: Cell,
    fp: str,
    backbones: _Backbones,
    env: dict[str, Any],
    *,
    work_threads: int | None = None,
    attempt: int = 1,
) -> records.Record:
    """One cell to its record, wherever it runs (this process, a Ray actor, a SLURM array task):
    a skipped record when this machine cannot run it, else the measured (or failed) one; the
    record says which attempt of its launcher produced it (``details.attempt``)."""
    rec = unavailable_record(cell, fp, env) or run_cell(cell, fp, backbones, env, work_threads)
    rec.details["attempt"] = attempt
    return rec


def make_progress(enabled: bool):
    """The one progress display of every launcher: the cell in flight, done/total, elapsed, ETA."""
    from rich import progress as rp

    return rp.Progress(
        rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(), rp.TimeElapsedColumn(),
        rp.TextColumn("eta"), rp.TimeRemainingColumn(), disable=not enabled, transient=False,
    )  # fmt: skip


def select_cells(suite: Suite, shard: tuple[int, int] | None = None, indices: list[int] | None = None):
    """The suite's cells, narrowed to a shard and then to explicit cell indices (a launcher's chunk)."""
    cells = select_shard(expand(suite), shard)
    if indices is not None:
        wanted = set(indices)
        cells = [c for c in cells if c.index in wanted]
    return cells


def collect(summary: RunSummary, out_dir: Path, fingerprints: list[str]) -> RunSummary:
    """Fill ``summary.all_records`` with the folder's record of each planned fingerprint."""
    wanted = set(fingerprints)
    by_fp = {r.fingerprint: r for r in records.load_dir(out_dir) if r.fingerprint in wanted}
    summary.all_records = [by_fp[fp] for fp in fingerprints if fp in by_fp]
    return summary


def run_suite(
    suite: Suite,
    out_dir: Path,
    *,
    force: bool = False,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    work_threads: int | None = None,
    indices: list[int] | None = None,
    attempt: int = 1,
    placement: dict[str, Any] | None = None,
    redo_before: float | None = None,
    log: Path | None = None,
) -> RunSummary:
    """Run the suite's cells in this process (the ``local`` launcher, and the body of every SLURM
    array task).  ``indices``: only these cells; ``placement``: where the run happens (launcher,
    node, job id) for the records' ``environment``; ``redo_before``: with ``force``, re-run only
    the cells whose ok record is older than this time (a requeued forced chunk keeps its progress);
    ``log``: the file that takes what libraries print to stderr while a cell runs (None: the terminal)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = select_cells(suite, shard, indices)
    if force and redo_before is not None:
        done = records.finished_fingerprints(out_dir, newer_than=redo_before)
    else:
        done = set() if force else records.finished_fingerprints(out_dir)
    env = {**environment.capture(), **(placement or environment.placement("local"))}
    summary = RunSummary(cells=len(cells))
    backbones = _Backbones()
    todo = [(c, cell_fingerprint(c)) for c in cells]
    with make_progress(progress) as bar:
        job = bar.add_task(f"suite {suite.name}", total=len(todo))
        for cell, fp in todo:
            bar.update(job, description=f"{cell.label()}")
            if fp in done:
                summary.skipped += 1
                bar.advance(job)
                continue
            with stderr_to(log):
                rec = execute(cell, fp, backbones, env, work_threads=work_threads, attempt=attempt)
            records.save(rec, out_dir)
            summary.add(rec)
            bar.advance(job)
    return collect(summary, out_dir, [fp for _, fp in todo])
