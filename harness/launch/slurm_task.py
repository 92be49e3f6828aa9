"""The body of one SLURM array task: the ordinary ``run_suite`` on a chunk of cells, into the
shared records folder.  Checkpointable: on preemption or timeout submitit requeues the same call,
which resumes by fingerprint (finished cells are not run again)."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import submitit

from .. import environment
from ..runner import run_suite, worker_threads
from ..suite import Suite


class ChunkRun(submitit.helpers.Checkpointable):
    def __call__(
        self, suite: Suite, out_dir: str, indices: list[int], attempt: int = 1, force: bool = False,
        redo_before: float | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        try:
            job = submitit.JobEnvironment()
            job_id, node = str(job.job_id), job.hostname
        except RuntimeError:  # not inside a submitit job (called directly)
            job_id, node = None, platform.node()
        summary = run_suite(
            suite, Path(out_dir), indices=indices, attempt=attempt, force=force, redo_before=redo_before,
            progress=False, work_threads=worker_threads(), placement=environment.placement("slurm", job_id=job_id, node=node),
        )  # fmt: skip
        # every cell of the chunk was either run (its record written) or found done: the task is whole
        return {"ran": summary.ran, "resumed": summary.skipped, "failed": summary.failed}
