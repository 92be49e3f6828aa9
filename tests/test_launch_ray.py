"""``harness run --launcher ray`` on a local Ray cluster (2 CPU workers): the same cells and
metrics as the local launcher, a worker killed mid-cell costs exactly that cell one attempt, a cell
whose worker always dies ends ``failed`` after retries + 1 attempts, a re-run runs nothing, and a
worker with another torch build writes its own fingerprints."""

from __future__ import annotations

import os
import signal

import pytest

ray = pytest.importorskip("ray", reason="seebench[ray] is part of the test install (./install.sh test)")

import launch_helpers as h  # noqa: E402

from harness.cli.run import exit_code  # noqa: E402
from harness.launch.ray_launcher import launch_ray  # noqa: E402
from harness.runner import cell_fingerprint  # noqa: E402
from harness.suite import expand, load_suite  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("ray-home")
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "HOME")}
    os.environ.update(RAY_AUTH_MODE="disabled", HOME=str(home))  # Ray 2.60 turns token auth on by default
    ray.cloudpickle.register_pickle_by_value(h)
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch-ray")
    suite = load_suite(str(h.write_suite(root)))
    return suite, h.local_reference(suite, root / "local")


def test_ray_matches_local_and_a_rerun_runs_nothing(cluster, small, tmp_path):
    suite, reference = small
    out = tmp_path / "ray"
    summary = launch_ray(suite, out, workers=2, progress=False)
    got = h.by_fingerprint(out)
    assert set(got) == set(reference)
    assert {fp: r.metrics for fp, r in got.items()} == reference
    assert all(r.status == "ok" and r.details["attempt"] == 1 for r in got.values())
    assert {r.environment["launcher"] for r in got.values()} == {"ray"}
    assert all(r.environment["job_id"] and r.environment["node"] for r in got.values())
    assert summary.ran == len(reference) and exit_code(summary) == 0

    before = h.mtimes(out)
    again = launch_ray(suite, out, workers=2, progress=False)
    assert (again.ran, again.skipped) == (0, len(reference))
    assert h.mtimes(out) == before


def test_worker_killed_mid_cell_costs_that_cell_one_attempt(cluster, small, tmp_path):
    suite, reference = small
    out = tmp_path / "ray"
    killed: list[int] = []

    def kill_one(record, driver):
        if killed:
            return
        info, cell = driver.busy()[0]
        os.kill(info["pid"], signal.SIGKILL)
        killed.append(cell)

    summary = launch_ray(suite, out, workers=2, progress=False, worker_cls=h.SlowWorker, on_record=kill_one)
    got = h.by_fingerprint(out)
    assert set(got) == set(reference) and all(r.status == "ok" for r in got.values())
    assert {fp: r.metrics for fp, r in got.items()} == reference
    cells = {c.index: c for c in expand(suite)}
    killed_fp = cell_fingerprint(cells[killed[0]])
    assert got[killed_fp].details["attempt"] == 2
    assert all(r.details["attempt"] == 1 for fp, r in got.items() if fp != killed_fp)
    assert summary.failed == 0


def test_a_cell_whose_worker_always_dies_fails_after_its_retries(cluster, small, tmp_path):
    suite, reference = small
    out = tmp_path / "ray"
    summary = launch_ray(suite, out, workers=2, retries=1, progress=False, worker_cls=h.DyingWorker)
    got = h.by_fingerprint(out)
    assert set(got) == set(reference)
    failed = [r for r in got.values() if r.status == "failed"]
    assert len(failed) == 1 and (failed[0].method, failed[0].scenario) == ("fastv", "flops")
    assert failed[0].details["attempt"] == 2
    assert (failed[0].error or "").startswith(
        "WorkerLost: the Ray worker running this cell was lost 2 times (--retries 1)"
    )
    ok = [r for r in got.values() if r.status == "ok"]
    assert len(ok) == len(reference) - 1 and all(r.metrics == reference[r.fingerprint] for r in ok)
    assert summary.failed == 1 and exit_code(summary) == 1


def test_worker_fingerprints_are_the_workers_own(cluster, small, tmp_path, monkeypatch):
    suite, _ = small
    out = tmp_path / "ray"
    driver_fps = {cell_fingerprint(c) for c in expand(suite)}
    import harness.environment

    monkeypatch.setattr(harness.environment, "fingerprint_versions", h.other_versions)
    worker_fps = {cell_fingerprint(c) for c in expand(suite)}
    monkeypatch.undo()
    assert not worker_fps & driver_fps

    launch_ray(suite, out, workers=2, progress=False, worker_cls=h.OtherTorchWorker)
    got = h.by_fingerprint(out)
    assert set(got) == worker_fps and len(list(out.glob("*.json"))) == len(worker_fps)
    before = h.mtimes(out)
    again = launch_ray(suite, out, workers=2, progress=False, worker_cls=h.OtherTorchWorker)
    assert (again.ran, again.skipped) == (0, len(worker_fps))
    assert h.mtimes(out) == before


def test_with_no_worker_left_the_remaining_cells_fail_with_the_reason(cluster, small, tmp_path):
    suite, reference = small
    out = tmp_path / "ray"
    h.BrokenOnRestartWorker.marker = str(tmp_path / "broken")
    summary = launch_ray(suite, out, workers=2, revive_timeout=20, progress=False,
                         worker_cls=h.BrokenOnRestartWorker)  # fmt: skip
    got = h.by_fingerprint(out)
    assert set(got) == set(reference) and all(r.status == "failed" for r in got.values())
    assert all((r.error or "").startswith("WorkerLost: no Ray worker left (") for r in got.values())
    assert any("this worker's node lost its GPU" in (r.error or "") for r in got.values())
    assert summary.failed == len(reference) and exit_code(summary) == 1
