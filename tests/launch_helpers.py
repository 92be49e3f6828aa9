"""Shared by the launcher tests: a small suite, a local reference run, and worker classes that
misbehave on purpose (pickled by value, so Ray actors and submitit tasks can load them)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from harness.launch.slurm_task import ChunkRun
from harness.launch.worker import CellWorker
from harness.records import Record, load_dir
from harness.runner import run_suite
from harness.suite import Suite

SMALL_SUITE = """
name: launch-small
backbones:
  - {name: tiny-llava, model: embedded}
methods:
  - dense
  - {name: fastv, params: {fastv: {budget: 64}}}
tasks: [shapes_exist_ci, shapes_count_ci]
scenarios:
  - {kind: accuracy, batch_size: 20, limit: 20}
  - {kind: flops}
"""


def write_suite(folder: Path, text: str = SMALL_SUITE) -> Path:
    path = folder / "suite.yaml"
    path.write_text(text)
    return path


def by_fingerprint(out: Path) -> dict[str, Record]:
    return {r.fingerprint: r for r in load_dir(out)}


def local_reference(suite: Suite, out: Path) -> dict[str, dict[str, float]]:
    """fingerprint -> metrics of the ordinary in-process run."""
    summary = run_suite(suite, out, progress=False)
    assert summary.failed == 0
    return {r.fingerprint: r.metrics for r in summary.all_records}


def mtimes(out: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}


class SlowWorker(CellWorker):
    """Waits before each cell, 1 s for even cell indices and 5 s for odd ones: when the first record
    arrives the other worker is seconds from done, so a worker killed then is killed mid-cell."""

    def run(self, index: int, fingerprint: str, attempt: int) -> str:
        time.sleep(5.0 if index % 2 else 1.0)
        return super().run(index, fingerprint, attempt)


class DyingWorker(CellWorker):
    """Its process dies on every attempt at the fastv FLOPs cell."""

    def run(self, index: int, fingerprint: str, attempt: int) -> str:
        cell = self.cells[index]
        if cell.method.name == "fastv" and cell.scenario.kind == "flops":
            os._exit(1)
        return super().run(index, fingerprint, attempt)


OTHER_TORCH = "2.13.0+cu999"


def other_versions() -> dict[str, str | None]:
    from harness.environment import lib_version

    return {"torch": OTHER_TORCH, "transformers": lib_version("transformers")}


class OtherTorchWorker(CellWorker):
    """A worker on a node with another torch build than the driver's."""

    def __init__(self, *args, **kwargs) -> None:
        import harness.environment

        harness.environment.fingerprint_versions = other_versions  # this worker process only
        super().__init__(*args, **kwargs)


class SlowChunkRun(ChunkRun):
    """A chunk whose cells each take a few seconds longer (the preemption test needs a chunk that
    outlives its time limit)."""

    def __call__(self, *args, **kwargs):
        import harness.runner

        inner = harness.runner.execute

        def slow(*a, **k):
            time.sleep(4.0)
            return inner(*a, **k)

        harness.runner.execute = slow
        return super().__call__(*args, **kwargs)


class BrokenOnRestartWorker(CellWorker):
    """Dies at its first cell and cannot start again (its constructor raises once ``marker``
    exists): the run is left without workers."""

    marker = ""

    def __init__(self, *args, **kwargs) -> None:
        if Path(self.marker).exists():
            raise RuntimeError("this worker's node lost its GPU")
        super().__init__(*args, **kwargs)

    def run(self, index: int, fingerprint: str, attempt: int) -> str:
        Path(self.marker).touch()
        os._exit(1)
