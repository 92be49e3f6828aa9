"""A Ray node removed mid-cell (``ray.cluster_utils.Cluster``, two one-GPU nodes): the lost cell
is re-run on the surviving node, the worker that cannot be placed again is dropped after the
revive timeout, and the run completes."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray", reason="seebench[ray] is part of the test install (./install.sh test)")

import launch_helpers as h  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from harness.launch.ray_launcher import launch_ray  # noqa: E402
from harness.runner import cell_fingerprint  # noqa: E402
from harness.suite import expand, load_suite  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def two_nodes(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.cloudpickle.register_pickle_by_value(h)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


def test_node_loss_mid_cell_completes_on_the_survivor(two_nodes, tmp_path):
    cluster, nodes = two_nodes
    suite = load_suite(str(h.write_suite(tmp_path)))
    out = tmp_path / "ray"
    removed: list[int] = []

    def remove_a_busy_node(record, driver):
        if removed:
            return
        info, cell = driver.busy()[0]
        node = next(n for n in nodes if n.node_id == info["node_id"])
        cluster.remove_node(node, allow_graceful=False)
        removed.append(cell)

    summary = launch_ray(
        suite, out, revive_timeout=10, progress=False, worker_cls=h.SlowWorker, on_record=remove_a_busy_node
    )
    got = h.by_fingerprint(out)
    cells = expand(suite)
    assert len(summary.all_records) == len(cells) and all(r.status == "ok" for r in got.values())
    survivor = next(n.node_id for n in nodes if n in cluster.worker_nodes)
    assert got[cell_fingerprint(cells[removed[0]])].environment["ray_node_id"] == survivor
    lost = cell_fingerprint(cells[removed[0]])
    assert got[lost].details["attempt"] == 2
    assert sorted(r.details["attempt"] for r in got.values()) == [1] * (len(cells) - 1) + [2]
