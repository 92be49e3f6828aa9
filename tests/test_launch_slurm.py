"""``harness run --launcher slurm`` through submitit's local executor (no SLURM here): chunks as
job arrays whose tasks each run the ordinary suite runner into the shared folder; the same cells
and metrics as the local launcher; a re-run submits nothing; a killed array task's unfinished cells
are resubmitted (attempt 2); a task past its time limit is requeued and resumes."""

from __future__ import annotations

import signal
import threading
import time

import pytest

submitit = pytest.importorskip("submitit", reason="seebench[slurm] is part of the test install")

import cloudpickle  # noqa: E402
import launch_helpers as h  # noqa: E402
import psutil  # noqa: E402

from harness.launch.slurm_launcher import SlurmOptions, launch_slurm  # noqa: E402
from harness.suite import load_suite  # noqa: E402

pytestmark = pytest.mark.slow

LOCAL = SlurmOptions(cluster="local")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cloudpickle.register_pickle_by_value(h)  # the task processes cannot import tests/
    root = tmp_path_factory.mktemp("launch-slurm")
    suite = load_suite(str(h.write_suite(root)))
    return suite, h.local_reference(suite, root / "local")


def test_slurm_arrays_match_local_and_a_rerun_submits_nothing(small, tmp_path):
    suite, reference = small
    out = tmp_path / "slurm"
    driver = launch_slurm(suite, out, LOCAL, chunk_minutes=2, progress=False)
    assert len(driver.submitted) == 3  # 6 unpriced cells at 1 GPU-min, 2 per chunk
    got = h.by_fingerprint(out)
    assert {fp: r.metrics for fp, r in got.items()} == reference
    assert all(r.status == "ok" and r.details["attempt"] == 1 for r in got.values())
    assert {r.environment["launcher"] for r in got.values()} == {"slurm"}
    assert len({r.environment["job_id"] for r in got.values()}) == 3
    assert driver.summary.ran == len(reference) and driver.summary.failed == 0

    before = h.mtimes(out)
    again = launch_slurm(suite, out, LOCAL, chunk_minutes=2, progress=False)
    assert again.submitted == [] and (again.summary.ran, again.summary.skipped) == (0, len(reference))
    assert h.mtimes(out) == before


def _task_processes(folder):
    return [
        p for p in psutil.process_iter(["cmdline"])
        if "submitit.core._submit" in " ".join(p.info["cmdline"] or []) and str(folder) in " ".join(p.info["cmdline"])
    ]  # fmt: skip


def test_a_killed_array_task_has_its_unfinished_cells_resubmitted(small, tmp_path):
    suite, reference = small
    out = tmp_path / "slurm"
    killed: list[int] = []

    def kill_tasks_after_the_first_record():
        deadline = time.time() + 300
        while time.time() < deadline and not list(out.glob("*.json")):
            time.sleep(0.05)
        for p in _task_processes(out / ".slurm"):
            p.send_signal(signal.SIGKILL)
            killed.append(p.pid)

    watcher = threading.Thread(target=kill_tasks_after_the_first_record, daemon=True)
    watcher.start()
    driver = launch_slurm(suite, out, LOCAL, chunk_minutes=3, progress=False)
    watcher.join()
    assert len(killed) == 2
    got = h.by_fingerprint(out)
    assert {fp: r.metrics for fp, r in got.items()} == reference
    assert all(r.status == "ok" for r in got.values())
    attempts = sorted(r.details["attempt"] for r in got.values())
    assert attempts.count(1) >= 1 and attempts.count(2) >= 4  # at most one cell per chunk was done
    assert {s.attempt for s in driver.submitted} == {1, 2}


def test_a_task_past_its_time_limit_is_requeued_and_resumes(small, tmp_path):
    suite, reference = small
    out = tmp_path / "slurm"
    # 6 cells at 4 s extra each in one chunk, USR2 20 s after each start: two or three requeues
    opts = SlurmOptions(cluster="local", time_min=0.5, signal_delay_s=10)
    driver = launch_slurm(suite, out, opts, retries=0, progress=False, task=h.SlowChunkRun())
    logs = " ".join(p.read_text() for p in (out / ".slurm").glob("*_log.*"))
    assert "Requeued job" in logs
    got = h.by_fingerprint(out)
    assert {fp: r.metrics for fp, r in got.items()} == reference
    assert all(r.status == "ok" and r.details["attempt"] == 1 for r in got.values())
    assert len(driver.submitted) == 1 and driver.summary.failed == 0


def test_no_wait_returns_after_submission_and_a_rerun_collects(small, tmp_path):
    suite, reference = small
    out = tmp_path / "slurm"
    t0 = time.perf_counter()
    driver = launch_slurm(suite, out, LOCAL, chunk_minutes=3, progress=False, wait=False)
    assert time.perf_counter() - t0 < 10 and len(driver.submitted) == 2
    assert len(list(out.glob("*.json"))) < len(reference)  # returned before the tasks finished
    deadline = time.time() + 300
    while time.time() < deadline and not all(s.job.done() for s in driver.submitted):
        time.sleep(0.5)
    again = launch_slurm(suite, out, LOCAL, chunk_minutes=3, progress=False)
    assert again.submitted == [] and again.summary.skipped == len(reference)
    assert {fp: r.metrics for fp, r in h.by_fingerprint(out).items()} == reference
