"""The process that runs cells for a remote launcher: it keeps its backbone loaded across cells,
computes fingerprints in its own environment (its weights, its torch build) and returns each
record as JSON for the driver to write.  A plain class: the Ray launcher wraps it in an actor."""

from __future__ import annotations

import os
import platform
from typing import Any

from .. import environment
from ..runner import _Backbones, cell_fingerprint, execute, worker_threads
from ..suite import Suite, expand


class CellWorker:
    def __init__(self, suite: Suite, threads: int | None = None, launcher: str = "ray") -> None:
        self.work_threads = worker_threads(threads)  # the CPU slots this worker holds
        self.cells = {c.index: c for c in expand(suite)}
        self.backbones = _Backbones()
        self.launcher = launcher
        self._env: dict[str, Any] | None = None

    def where(self) -> dict[str, Any]:
        """This worker's process, host and (on Ray) node id: the driver pings it with this."""
        info: dict[str, Any] = {"pid": os.getpid(), "host": platform.node(), "node_id": None, "job": None}
        try:
            import ray

            if ray.is_initialized():
                ctx = ray.get_runtime_context()
                info.update(node_id=ctx.get_node_id(), job=f"{ctx.get_job_id()}/{ctx.get_actor_id()}")
        except ImportError:
            pass
        return info

    def plan(self, indices: list[int]) -> list[str]:
        """The fingerprints of these cells as this worker computes them."""
        return [cell_fingerprint(self.cells[i]) for i in indices]

    def environment(self) -> dict[str, Any]:
        if self._env is None:
            w = self.where()
            place = environment.placement(self.launcher, job_id=w["job"], node=w["host"])
            self._env = {**environment.capture(), **place, "ray_node_id": w["node_id"]}
        return self._env

    def run(self, index: int, fingerprint: str, attempt: int) -> str:
        """One cell; the record as JSON (the driver validates and writes it)."""
        rec = execute(
            self.cells[index], fingerprint, self.backbones, self.environment(),
            work_threads=self.work_threads, attempt=attempt,
        )  # fmt: skip
        return rec.model_dump_json()
