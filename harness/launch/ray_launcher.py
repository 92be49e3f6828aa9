"""``harness run --launcher ray``: one Ray actor per GPU (or per ``--workers`` CPU slot), each
keeping its backbone loaded; the driver plans, schedules, retries and is the only writer of records
(no shared filesystem needed).

* Fingerprints come from a worker (``CellWorker.plan``): its weights and torch build, not the
  driver's, decide what is already done.
* An idle actor gets the next cell of the backbone it holds, else the backbone with the most work
  left.  A latency cell starts only when no other actor on its node is busy, and nothing else starts
  on that node while it runs.
* A lost worker (process killed, node gone) costs the cell in flight one attempt; the cell is
  re-queued until it has had ``retries + 1`` attempts, then written ``failed`` with the reason.
  The actor restarts (``max_restarts=-1``); the driver pings it until it answers, without charging
  any cell for the calls a restarting actor refuses, and drops it after ``revive_timeout`` seconds
  (an actor whose node is gone may never be placed again).  With no worker left, the remaining cells
  are written ``failed``, naming why; the run never hangs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import environment, records
from ..errors import HarnessError
from ..runner import RunSummary, collect, make_progress, select_cells
from ..suite import Cell, Suite
from . import require
from .partition import DEFAULT_CHUNK_MINUTES, backbone_key, is_exclusive, partition
from .worker import CellWorker

PING_INTERVAL_S = 0.5
START_TIMEOUT_S = 300.0  # a fresh actor imports torch and may wait for a node to join


@dataclass
class _Slot:
    number: int
    actor: Any
    state: str = "starting"  # starting | idle | busy | reviving | gone
    info: dict[str, Any] = field(default_factory=dict)  # CellWorker.where(): pid, host, node_id
    held: tuple | None = None  # backbone of the last cell it ran
    cell: int | None = None  # cell in flight
    ref: Any = None  # the call in flight (a cell or a ping)
    ping_at: float = 0.0
    deadline: float = 0.0
    reason: str = ""

    @property
    def node(self) -> str | None:
        return self.info.get("node_id")


class RayDriver:
    """The scheduling loop (one per invocation).  ``on_record(record, driver)`` is called after each
    record is written; ``busy()`` says which worker runs which cell (tests kill workers with it)."""

    def __init__(
        self, ray: Any, suite: Suite, out_dir: Path, *, workers: int | None, retries: int,
        revive_timeout: float, chunk_minutes: float, force: bool, shard: tuple[int, int] | None,
        progress: bool, worker_cls: type, on_record: Callable[[records.Record, RayDriver], None] | None,
    ) -> None:  # fmt: skip
        self.ray, self.suite, self.out = ray, suite, Path(out_dir)
        self.retries, self.revive_timeout, self.chunk_minutes = retries, revive_timeout, chunk_minutes
        self.force, self.progress, self.on_record = force, progress, on_record
        self.cells: dict[int, Cell] = {c.index: c for c in select_cells(suite, shard)}
        self.slots = self._start(workers, worker_cls)
        self.fps: dict[int, str] = {}
        self.attempts: dict[int, int] = {}
        self.queues: dict[tuple, deque[int]] = {}
        self.reserved: set[str | None] = set()  # nodes held free for a latency cell
        self.summary = RunSummary(cells=len(self.cells))
        self.env = {**environment.capture(), **environment.placement("ray")}

    # -- workers -------------------------------------------------------------------------------
    def _start(self, workers: int | None, worker_cls: type) -> list[_Slot]:
        res = self.ray.cluster_resources()
        gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
        n = (min(workers, gpus) if workers else gpus) if gpus else (workers or cpus)
        threads = max(1, cpus // n)
        remote = self.ray.remote(worker_cls).options(
            num_cpus=1, num_gpus=1 if gpus else 0, max_restarts=-1, max_task_retries=0
        )
        now = time.monotonic()
        slots = []
        for k in range(n):
            slot = _Slot(k, remote.remote(self.suite, threads, "ray"), deadline=now + START_TIMEOUT_S)
            slot.ref = slot.actor.where.remote()
            slots.append(slot)
        return slots

    def busy(self) -> list[tuple[dict[str, Any], int]]:
        return [(s.info, s.cell) for s in self.slots if s.state == "busy" and s.cell is not None]

    def _revive(self, slot: _Slot, reason: str) -> None:
        slot.state, slot.cell, slot.ref, slot.reason = "reviving", None, None, reason
        slot.deadline, slot.ping_at = time.monotonic() + self.revive_timeout, 0.0

    def _drop(self, slot: _Slot, reason: str) -> None:
        slot.state, slot.ref, slot.reason = "gone", None, reason
        with contextlib.suppress(Exception):  # an actor that cannot be reached is as gone
            self.ray.kill(slot.actor, no_restart=True)

    # -- planning ------------------------------------------------------------------------------
    def plan(self) -> None:
        """Fingerprints from the first worker that answers; queues of the cells not yet done."""
        indices = sorted(self.cells)
        while True:
            waiting = [s for s in self.slots if s.state in ("starting", "reviving")]
            if not waiting and not any(s.state == "idle" for s in self.slots):
                raise HarnessError(
                    "no Ray worker started (" + "; ".join(s.reason for s in self.slots if s.reason)
                    + "): check the cluster's resources with 'ray status'"
                )  # fmt: skip
            idle = [s for s in self.slots if s.state == "idle"]
            if idle:
                try:
                    fps = self.ray.get(idle[0].actor.plan.remote(indices))
                    break
                except self.ray.exceptions.RayActorError as exc:
                    self._revive(idle[0], _reason(exc))
                    continue
            self._poll(timeout=PING_INTERVAL_S)
        self.fps = dict(zip(indices, fps, strict=True))
        done = set() if self.force else records.finished_fingerprints(self.out)
        todo = [self.cells[i] for i in indices if self.fps[i] not in done]
        self.summary.skipped = len(indices) - len(todo)
        for chunk in partition(todo, self.chunk_minutes):
            key = backbone_key(self.cells[chunk.cells[0]])
            self.queues.setdefault(key, deque()).extend(chunk.cells)
        for q in self.queues.values():  # latency cells last: the node drains before they start
            ordered = sorted(q, key=lambda i: is_exclusive(self.cells[i]))
            q.clear()
            q.extend(ordered)

    # -- scheduling ----------------------------------------------------------------------------
    def _pending(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def _node_busy(self, node: str | None, but: _Slot) -> bool:
        return any(s.state == "busy" and s.node == node and s is not but for s in self.slots)

    def _exclusive_running(self, node: str | None) -> bool:
        return any(
            s.state == "busy" and s.node == node and s.cell is not None and is_exclusive(self.cells[s.cell])
            for s in self.slots
        )  # fmt: skip

    def _next_cell(self, slot: _Slot) -> int | None:
        order = sorted(self.queues, key=lambda k: (k != slot.held, -len(self.queues[k])))
        for key in order:
            q = self.queues[key]
            if not q:
                continue
            i = q[0]
            if is_exclusive(self.cells[i]):
                if self._node_busy(slot.node, slot):
                    self.reserved.add(slot.node)
                    return None
            elif slot.node in self.reserved or self._exclusive_running(slot.node):
                return None
            q.popleft()
            self.reserved.discard(slot.node)
            return i
        return None

    def _dispatch(self) -> None:
        for slot in self.slots:
            if slot.state != "idle":
                continue
            i = self._next_cell(slot)
            if i is None:
                continue
            self.attempts[i] = self.attempts.get(i, 0) + 1
            slot.state, slot.cell, slot.held = "busy", i, backbone_key(self.cells[i])
            slot.ref = slot.actor.run.remote(i, self.fps[i], self.attempts[i])

    # -- results -------------------------------------------------------------------------------
    def _poll(self, timeout: float) -> None:
        now = time.monotonic()
        for s in self.slots:
            if s.state in ("starting", "reviving") and s.ref is None:
                if now > s.deadline:
                    self._drop(s, f"worker {s.number} did not come back within {self.revive_timeout:.0f} s "
                                  f"({s.reason})")  # fmt: skip
                elif now >= s.ping_at:
                    s.ref = s.actor.where.remote()
            elif s.state in ("starting", "reviving") and now > s.deadline:
                what = "start" if s.state == "starting" else "come back"
                self._drop(s, f"worker {s.number} did not {what} in time ({s.reason or 'not placed'})")
        refs = [s.ref for s in self.slots if s.ref is not None]
        if not refs:
            time.sleep(timeout)
            return
        ready, _ = self.ray.wait(refs, num_returns=1, timeout=timeout)
        for ref in ready:
            slot = next(s for s in self.slots if s.ref is not None and s.ref == ref)
            slot.ref = None
            if slot.state == "busy":
                self._finished(slot, ref)
            else:
                self._pinged(slot, ref)

    def _pinged(self, slot: _Slot, ref: Any) -> None:
        try:
            slot.info = self.ray.get(ref)
            slot.state = "idle"
        except self.ray.exceptions.ActorDiedError as exc:
            self._drop(slot, _reason(exc))
        except self.ray.exceptions.RayError as exc:  # restarting: ask again shortly, charge nothing
            slot.reason = slot.reason or _reason(exc)
            slot.ping_at = time.monotonic() + PING_INTERVAL_S

    def _finished(self, slot: _Slot, ref: Any) -> None:
        i = slot.cell
        assert i is not None
        try:
            text = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:  # the worker died holding the cell
            self._revive(slot, _reason(exc))
            self._lost(i, _reason(exc))
            return
        except self.ray.exceptions.RayError as exc:  # an exception escaped the worker's cell
            slot.state, slot.cell = "idle", None
            self._lost(i, _reason(exc))
            return
        slot.state, slot.cell = "idle", None
        self._write(records.Record.model_validate_json(text))

    def _write(self, rec: records.Record) -> None:
        records.save(rec, self.out)
        self.summary.add(rec)
        self.bar.update(self.job, advance=1, description=f"{rec.backbone} | {rec.method} | {rec.task} | "
                                                         f"{rec.scenario}")  # fmt: skip
        if self.on_record is not None:
            self.on_record(rec, self)

    def _lost(self, i: int, reason: str) -> None:
        n = self.attempts[i]
        if n <= self.retries:
            self.queues[backbone_key(self.cells[i])].appendleft(i)
            return
        self._write(self._failed(i, f"WorkerLost: the Ray worker running this cell was lost {n} times "
                                    f"(--retries {self.retries}); last: {reason}"))  # fmt: skip

    def _failed(self, i: int, error: str) -> records.Record:
        c = self.cells[i]
        return records.Record(
            fingerprint=self.fps[i], suite=c.suite, backbone=c.backbone.name, method=c.method.name,
            params=c.method.params, task=c.task, scenario=c.scenario.kind, cell=c.spec(), status="failed",
            error=error, environment=self.env, details={"attempt": self.attempts.get(i, 0)},
        )  # fmt: skip

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        with make_progress(self.progress) as bar:
            self.bar = bar
            self.job = bar.add_task(f"suite {self.suite.name} on Ray", total=len(self.cells))
            self.plan()
            bar.update(self.job, completed=self.summary.skipped,
                       description=f"suite {self.suite.name}: {len(self.slots)} Ray workers")  # fmt: skip
            while self._pending() or any(s.state == "busy" for s in self.slots):
                self._dispatch()
                if not any(s.state in ("busy", "idle", "starting", "reviving") for s in self.slots):
                    why = "; ".join(sorted({s.reason for s in self.slots if s.reason})) or "all workers gone"
                    for q in self.queues.values():
                        while q:
                            self._write(self._failed(q.popleft(), f"WorkerLost: no Ray worker left ({why})"))
                    break
                self._poll(timeout=0.2)
        return collect(self.summary, self.out, [self.fps[i] for i in sorted(self.cells)])


def _reason(exc: BaseException) -> str:
    """One line for a Ray error: its type and, when Ray carries the worker's own exception (a
    failed constructor, an error in a task), that exception's last line."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if ln.strip()]
    inner = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b: ", ln)]
    if inner and not inner[-1].startswith(type(exc).__name__):
        return f"{type(exc).__name__} ({inner[-1][:200]})"
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def connect(ray: Any, address: str | None, workers: int | None, init_kwargs: dict[str, Any] | None) -> bool:
    """Join a running Ray (``address``, or the one this process already has), else start a local
    cluster sized to this machine.  True when this call started Ray (and so shuts it down)."""
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING, **(init_kwargs or {})}
    if address:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise HarnessError(f"--ray-address {address}: cannot connect to Ray ({_reason(exc)})") from None
        return True
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    ray.init(num_cpus=max(os.cpu_count() or 1, workers or 0), num_gpus=gpus, include_dashboard=False, **quiet)
    return True


def launch_ray(
    suite: Suite,
    out_dir: Path,
    *,
    address: str | None = None,
    workers: int | None = None,
    retries: int = 2,
    revive_timeout: float = 60.0,
    chunk_minutes: float = DEFAULT_CHUNK_MINUTES,
    force: bool = False,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    worker_cls: type = CellWorker,
    on_record: Callable[[records.Record, RayDriver], None] | None = None,
    init_kwargs: dict[str, Any] | None = None,
) -> RunSummary:
    ray = require("ray")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    started = connect(ray, address, workers, init_kwargs)
    driver = None
    try:
        driver = RayDriver(
            ray, suite, Path(out_dir), workers=workers, retries=retries, revive_timeout=revive_timeout,
            chunk_minutes=chunk_minutes, force=force, shard=shard, progress=progress,
            worker_cls=worker_cls, on_record=on_record,
        )  # fmt: skip
        return driver.run()
    finally:
        for s in driver.slots if driver else []:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(s.actor, no_restart=True)
        if started:
            ray.shutdown()
