"""``harness run --launcher slurm``: submitit job arrays over the partitioned chunks.

Each array task runs the ordinary ``run_suite`` on its chunk into the shared ``--out`` (SLURM sites
have a shared filesystem), so fingerprints are computed on the compute node.  Latency chunks go in
an array of their own with ``--exclusive``.  Preemption and timeouts requeue the task, which
resumes; a task that ends without finishing its chunk (killed, node failure) has its unfinished
cells resubmitted, up to ``--retries`` times, then written ``failed`` naming why.  ``--wait``
(default) follows progress by counting records against the plan and polling the jobs;
``--no-wait`` returns after submission (re-run the same command later: it resumes and retries).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import environment, records
from ..errors import HarnessError
from ..runner import RunSummary, cell_fingerprint, collect, make_progress, select_cells
from ..suite import Cell, Suite
from . import require
from .partition import DEFAULT_CHUNK_MINUTES, Chunk, partition

#: SLURM job states of a task that may still write records (an earlier submission being followed)
ACTIVE_STATES = frozenset(
    [
        "PENDING",
        "RUNNING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "SUSPENDED",
        "CONFIGURING",
        "COMPLETING",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "RESV_DEL_HOLD",
    ]
)
CLUSTERS = ("slurm", "local", "debug")  # local / debug: submitit's test stand-ins, no SLURM needed
SIGNAL_DELAY_S = 90  # USR2 this long before the time limit: the task requeues itself and resumes


@dataclass
class SlurmOptions:
    partition: str | None = None
    gpus_per_task: int = 1
    max_parallel: int = 256
    time_min: float | None = None  # None: twice the largest chunk's estimate, at least 30 minutes
    slurm_args: dict[str, str] = field(default_factory=dict)
    cluster: str = "slurm"
    signal_delay_s: int = SIGNAL_DELAY_S
    poll_s: float | None = None  # None: 30 s on SLURM (sacct is shared), 1 s on the stand-ins


def parse_time(text: str) -> int:
    """SLURM time forms -> minutes: M, H:MM:SS, D-HH, D-HH:MM[:SS]."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise HarnessError(f"--time {text}: give minutes (240) or H:MM:SS (4:00:00) or D-HH:MM (1-00:00)")
    days, first, second, third = m.groups()
    a, b, c = int(first), int(second or 0), int(third or 0)
    if days is not None:  # D-HH[:MM[:SS]]
        minutes = int(days) * 1440 + a * 60 + b + (1 if c else 0)
    elif second is None:  # M
        minutes = a
    elif third is None:  # M:SS
        minutes = a + (1 if b else 0)
    else:  # H:MM:SS
        minutes = a * 60 + b + (1 if c else 0)
    if minutes < 1:
        raise HarnessError(f"--time {text}: the time limit must be at least one minute")
    return minutes


def parse_slurm_args(items: list[str] | None) -> dict[str, str]:
    """--slurm-arg KEY=VALUE (repeatable) -> extra #SBATCH lines, passed through verbatim."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise HarnessError(f"--slurm-arg {item}: give KEY=VALUE, e.g. --slurm-arg account=my_lab")
        out[key.strip().lstrip("-")] = value
    return out


def time_limit(opts: SlurmOptions, chunks: list[Chunk]) -> float:
    """One array's time limit: --time, else twice its largest chunk's estimate (at least 30 min)."""
    if opts.time_min is not None:
        return opts.time_min
    largest = max((c.minutes for c in chunks), default=0.0)
    return max(30, int(2 * largest + 0.999))


def sbatch_parameters(opts: SlurmOptions, job_name: str, minutes: float, exclusive: bool) -> dict[str, Any]:
    """What the array's sbatch script says (submitit's SlurmExecutor parameters): one task per array
    element, so ``--gpus-per-task`` is the element's ``--gpus-per-node``."""
    params: dict[str, Any] = {
        "job_name": job_name, "time": math.ceil(minutes), "nodes": 1, "ntasks_per_node": 1,
        "gpus_per_node": opts.gpus_per_task, "array_parallelism": opts.max_parallel,
        "signal_delay_s": opts.signal_delay_s,
    }  # fmt: skip
    if opts.partition:
        params["partition"] = opts.partition
    if exclusive:
        params["exclusive"] = True
    if opts.slurm_args:
        params["additional_parameters"] = dict(opts.slurm_args)
    return params


def _slurm_executor(submitit: Any, folder: Path, offline: bool = False) -> Any:
    cls = submitit.SlurmExecutor
    if offline:  # render scripts on a machine without SLURM (the --plan view, the golden test)

        class _Offline(cls):  # type: ignore[misc, valid-type]
            @classmethod
            def affinity(cls) -> int:
                return 1

        cls = _Offline
    return cls(folder=folder)


def executor(opts: SlurmOptions, folder: Path, job_name: str, minutes: float, exclusive: bool) -> Any:
    submitit = require("slurm")
    if opts.cluster == "slurm":
        try:
            ex = _slurm_executor(submitit, folder)
        except RuntimeError as exc:
            raise HarnessError(
                f"--launcher slurm: {exc} (run on a SLURM login node, or test with --slurm-cluster local)"
            ) from None
        ex.update_parameters(**sbatch_parameters(opts, job_name, minutes, exclusive))
        return ex
    ex = submitit.LocalExecutor(folder=folder) if opts.cluster == "local" else submitit.DebugExecutor(folder)
    ex.update_parameters(timeout_min=minutes, signal_delay_s=opts.signal_delay_s)
    if opts.cluster == "local":
        ex.update_parameters(gpus_per_node=0)  # the stand-in runs on this machine's devices
    return ex


def sbatch_scripts(suite: Suite, out_dir: Path, chunks: list[Chunk], opts: SlurmOptions) -> list[str]:
    """The sbatch script of each array this launch would submit (shared chunks, then exclusive
    latency chunks), as submitit writes them."""
    submitit = require("slurm")
    folder = Path(out_dir) / ".slurm"
    texts = []
    for exclusive in (False, True):
        group = [c for c in chunks if c.exclusive == exclusive]
        n, minutes = len(group), time_limit(opts, group)
        if not n:
            continue
        ex = _slurm_executor(submitit, folder, offline=True)
        ex.update_parameters(**sbatch_parameters(opts, _job_name(suite, exclusive), minutes, exclusive))
        if n > 1:
            ex.parameters["map_count"] = n
        texts.append(ex._make_submission_file_text(ex._submitit_command_str, "plan"))
    return texts


def _job_name(suite: Suite, exclusive: bool) -> str:
    return f"seebench-{suite.name}" + ("-latency" if exclusive else "")


def _spec_key(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


@dataclass
class _Submitted:
    job: Any
    cells: list[int]
    attempt: int


class SlurmDriver:
    def __init__(
        self, suite: Suite, out_dir: Path, opts: SlurmOptions, *, retries: int, chunk_minutes: float,
        force: bool, shard: tuple[int, int] | None, progress: bool, wait: bool, task: Any = None,
    ) -> None:  # fmt: skip
        from .slurm_task import ChunkRun

        self.suite, self.out, self.opts = suite, Path(out_dir), opts
        self.retries, self.chunk_minutes, self.force, self.progress, self.wait = (
            retries, chunk_minutes, force, progress, wait,
        )  # fmt: skip
        self.task = task or ChunkRun()
        self.cells: dict[int, Cell] = {c.index: c for c in select_cells(suite, shard)}
        self.keys = {i: _spec_key(c.spec()) for i, c in self.cells.items()}
        # the driver's fingerprints only decide what need not be submitted; each array task
        # computes its own on its node, and the records carry those
        self.fps = {i: cell_fingerprint(c) for i, c in self.cells.items()}
        self.summary = RunSummary(cells=len(self.cells))
        self.folder = self.out / ".slurm"
        # "written by this launch" compares record mtimes with the shared filesystem's own clock
        # (a login node's clock may differ from the file server's)
        self.folder.mkdir(parents=True, exist_ok=True)
        marker = self.folder / "launch-started"
        marker.touch()
        self.started = marker.stat().st_mtime
        self.submitted: list[_Submitted] = []
        self.lost_reason: dict[int, str] = {}
        self.job_ids: list[str] = []
        self.adopted: list[str] = []  # job ids of an earlier submission, followed instead of resubmitted

    def todo(self) -> list[int]:
        done = set() if self.force else records.finished_fingerprints(self.out)
        return [i for i in sorted(self.cells) if self.fps[i] not in done]

    def _submit(self, indices: list[int], attempt: int) -> None:
        chunks = partition([self.cells[i] for i in indices], self.chunk_minutes)
        for exclusive in (False, True):
            group = [c for c in chunks if c.exclusive == exclusive]
            if not group:
                continue
            minutes = time_limit(self.opts, group)
            ex = executor(self.opts, self.folder, _job_name(self.suite, exclusive), minutes, exclusive)
            n = len(group)
            jobs = ex.map_array(
                self.task, [self.suite] * n, [str(self.out)] * n, [c.cells for c in group], [attempt] * n,
                [self.force] * n, [self.started] * n,
            )  # fmt: skip
            ledger = self.folder / "arrays.jsonl"
            with ledger.open("a") as fh:
                for job, chunk in zip(jobs, group, strict=True):
                    self.submitted.append(_Submitted(job, chunk.cells, attempt))
                    self.job_ids.append(str(job.job_id))
                    fh.write(json.dumps({"job_id": str(job.job_id), "cluster": self.opts.cluster,
                                         "cells": [self.keys[i] for i in chunk.cells]}) + "\n")  # fmt: skip

    def reattach(self, job_id: str, cluster: str) -> Any | None:
        """The job of an earlier submission if it is still queued or running, else None (the
        stand-in executors' jobs do not outlive their driver)."""
        if cluster != "slurm" or self.opts.cluster != "slurm":
            return None
        import submitit

        job = submitit.SlurmJob(folder=self.folder, job_id=job_id)
        return job if str(job.state).split(" ")[0] in ACTIVE_STATES else None

    def adopt(self) -> set[int]:
        """Follow the array tasks an earlier run of this command submitted that are still queued or
        running (``--no-wait``, or a driver that was stopped): their cells are not submitted again."""
        ledger = self.folder / "arrays.jsonl"
        if not ledger.exists():
            return set()
        planned = {k: i for i, k in self.keys.items()}
        taken: set[int] = set()
        for line in ledger.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a killed driver
            cells = [planned[k] for k in entry.get("cells", []) if k in planned]
            if not cells or set(cells) <= taken:
                continue
            job = self.reattach(str(entry["job_id"]), entry.get("cluster", "slurm"))
            if job is not None:
                self.submitted.append(_Submitted(job, cells, 1))
                self.adopted.append(str(entry["job_id"]))
                taken.update(cells)
        return taken

    def _written(self) -> dict[str, str]:
        """Spec key -> status of the records this launch's tasks wrote (by modification time)."""
        out: dict[str, str] = {}
        for p in records.record_files(self.out):
            try:
                if p.stat().st_mtime < self.started - 1:
                    continue
                data = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(data, dict) and "cell" in data:
                out[_spec_key(data["cell"])] = data.get("status", "")
        return out

    def _outcome(self, sub: _Submitted) -> tuple[bool, str]:
        """(whole, why not): a task is whole when it returned its summary."""
        from submitit.core.utils import FailedJobError, UncompletedJobError

        try:
            exc = sub.job.exception()
        except FailedJobError as e:
            return False, f"array task {sub.job.job_id} failed ({_first(e)})"
        except UncompletedJobError as e:
            return False, f"array task {sub.job.job_id} ended without a result ({_first(e)})"
        if exc is not None:
            return False, f"array task {sub.job.job_id} raised {type(exc).__name__}: {_first(exc)}"
        return True, ""

    def run(self) -> RunSummary:
        followed = self.adopt()
        todo = self.todo()
        self.summary.skipped = len(self.cells) - len(todo)
        fresh = [i for i in todo if i not in followed]
        if fresh:
            self._submit(fresh, attempt=1)
        if not self.wait:
            return self.summary
        poll = self.opts.poll_s or (30.0 if self.opts.cluster == "slurm" else 1.0)
        with make_progress(self.progress) as bar:
            job = bar.add_task(f"suite {self.suite.name} on SLURM", total=len(self.cells))
            attempt = 1
            while True:
                active = [s for s in self.submitted if s.attempt == attempt]
                while not all(s.job.done() for s in active):
                    written = self._written()
                    bar.update(job, completed=self.summary.skipped + sum(self.keys[i] in written for i in todo),
                               description=f"suite {self.suite.name}: {sum(not s.job.done() for s in active)} "
                                           f"array tasks running")  # fmt: skip
                    time.sleep(poll)
                written = self._written()
                lost: list[int] = []
                for s in active:
                    whole, why = self._outcome(s)
                    if whole:
                        continue
                    for i in s.cells:
                        if self.keys[i] not in written:
                            lost.append(i)
                            self.lost_reason[i] = why
                if not lost:
                    break
                if attempt > self.retries:
                    for i in lost:
                        records.save(self._failed(i, attempt), self.out)
                    break
                attempt += 1
                self._submit(sorted(lost), attempt)
            bar.update(job, completed=len(self.cells))
        return self._finish()

    def _failed(self, i: int, attempts: int) -> records.Record:
        c = self.cells[i]
        return records.Record(
            fingerprint=self.fps[i], suite=c.suite, backbone=c.backbone.name, method=c.method.name,
            params=c.method.params, task=c.task, scenario=c.scenario.kind, cell=c.spec(), status="failed",
            error=f"WorkerLost: the array task running this cell was lost {attempts} times "
                  f"(--retries {self.retries}); last: {self.lost_reason[i]}",
            environment={**environment.capture(), **environment.placement("slurm")},
            details={"attempt": attempts},
        )  # fmt: skip

    def _finish(self) -> RunSummary:
        """The summary from the folder: per planned cell its best record (ok first, then the
        newest); the ones written since this launch started count as run by it."""
        planned = {k: i for i, k in self.keys.items()}
        best: dict[int, tuple[records.Record, bool]] = {}
        for p in records.record_files(self.out):
            try:
                rec = records.load(p)
                fresh = p.stat().st_mtime >= self.started - 1
            except (OSError, ValueError):
                continue
            i = planned.get(_spec_key(rec.cell))
            if i is None:
                continue
            prev = best.get(i)
            if prev is None or (rec.status == "ok", rec.created) >= (prev[0].status == "ok", prev[0].created):
                best[i] = (rec, fresh)
        for i in sorted(best):
            rec, fresh = best[i]
            if fresh:
                self.summary.add(rec)
        self.summary.skipped = len(self.cells) - self.summary.ran
        return collect(self.summary, self.out, [best[i][0].fingerprint for i in sorted(best)])


def _first(exc: BaseException) -> str:
    lines = [x for x in str(exc).strip().splitlines() if x.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:200]


def launch_slurm(
    suite: Suite,
    out_dir: Path,
    opts: SlurmOptions,
    *,
    retries: int = 2,
    chunk_minutes: float = DEFAULT_CHUNK_MINUTES,
    force: bool = False,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    wait: bool = True,
    task: Any = None,
) -> SlurmDriver:
    require("slurm")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    driver = SlurmDriver(
        suite, Path(out_dir), opts, retries=retries, chunk_minutes=chunk_minutes, force=force, shard=shard,
        progress=progress, wait=wait, task=task,
    )  # fmt: skip
    driver.run()
    return driver
