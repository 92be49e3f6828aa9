"""The launchers' shared partitioner and their command line: chunks by backbone within a GPU-minute
budget, largest first, latency cells apart; the sbatch scripts for the paper suite equal a committed
golden file; flags of one launcher are refused with another; a missing engine is one line."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.launch.partition import UNPRICED_MINUTES, cell_minutes, partition
from harness.launch.slurm_launcher import parse_slurm_args, parse_time
from harness.suite import expand, load_suite

GOLDEN = Path(__file__).parent / "golden" / "sbatch_paper_gpu_max16.txt"


def test_paper_chunks_respect_backbones_budget_and_latency():
    cells = expand(load_suite("paper"))
    by_index = {c.index: c for c in cells}
    chunks = partition(cells, budget_minutes=60)
    assert sorted(i for ch in chunks for i in ch.cells) == [c.index for c in cells]  # each cell once
    for ch in chunks:
        members = [by_index[i] for i in ch.cells]
        assert len({(c.backbone.model, c.backbone.dtype, c.backbone.device) for c in members}) == 1
        assert {c.scenario.kind == "latency" for c in members} == {ch.exclusive}
        assert ch.minutes == pytest.approx(sum(cell_minutes(c) for c in members))
        assert ch.minutes <= 60 or len(members) == 1  # only a cell above the budget stands alone
        assert ch.cells == sorted(ch.cells)
    assert [ch.minutes for ch in chunks] == sorted((ch.minutes for ch in chunks), reverse=True)
    assert any(ch.exclusive for ch in chunks) and any(not ch.exclusive for ch in chunks)


def test_unpriced_cells_count_one_minute_and_pack_first_fit():
    cells = expand(load_suite("ci"))  # embedded backbone: no estimate
    assert {cell_minutes(c) for c in cells} == {UNPRICED_MINUTES}
    chunks = partition(cells, budget_minutes=5)
    assert [len(ch.cells) for ch in chunks] == [5, 5, 5, 5, 1]
    assert chunks[0].cells == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="positive"):
        partition(cells, budget_minutes=0)


def test_sbatch_scripts_for_the_paper_suite_equal_the_golden_file(tmp_path, capsys):
    out = tmp_path / "paper"
    argv = ["run", "--suite", "paper", "--launcher", "slurm", "--partition", "gpu", "--max-parallel", "16"]
    assert main([*argv, "--plan", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    scripts = text[text.index("#!/bin/bash") :]
    scripts = scripts.replace(str(out), "{OUT}").replace(shlex.quote(sys.executable), "{PYTHON}")
    if os.environ.get("SEEBENCH_UPDATE_GOLDEN"):  # after a change to the paper suite or its estimates
        GOLDEN.write_text(scripts)
    assert scripts == GOLDEN.read_text(), (
        "the sbatch scripts changed; if on purpose, re-run with SEEBENCH_UPDATE_GOLDEN=1 and review the diff"
    )
    assert "#SBATCH --array=0-483%16" in scripts and "#SBATCH --exclusive" in scripts
    assert "#SBATCH --signal=USR2@90" in scripts and "#SBATCH --gpus-per-node=1" in scripts


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--partition", "gpu"], "--partition applies to --launcher slurm, not local"),
        (["--launcher", "ray", "--max-parallel", "4"], "--max-parallel applies to --launcher slurm, not ray"),
        (["--launcher", "slurm", "--workers", "2"], "--workers applies to --launcher ray, not slurm"),
        (["--retries", "3"], "--retries applies to --launcher ray or slurm, not local"),
        (["--launcher", "slurm", "--time", "soon"], "--time soon: give minutes (240) or H:MM:SS"),
        (["--launcher", "slurm", "--slurm-arg", "account"], "--slurm-arg account: give KEY=VALUE"),
    ],
)
def test_bad_launcher_flags_are_one_line(argv, message, tmp_path, capsys):
    assert main(["run", "--suite", "ci", "--out", str(tmp_path), "--plan", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness: error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("flag", "value"), [("--retries", "-1"), ("--workers", "0"), ("--chunk-minutes", "0")]
)
def test_out_of_range_launcher_numbers_are_refused(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--suite", "ci", "--launcher", "ray", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err


def test_a_missing_engine_names_its_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(["run", "--suite", "ci", "--out", str(tmp_path), "--launcher", "ray"]) == 2
    assert capsys.readouterr().err == (
        "harness: error: --launcher ray needs ray, which is not installed: pip install 'seebench[ray]' "
        "(or ./install.sh ray)\n"
    )


def test_slurm_time_and_passthrough_parsing():
    assert [parse_time(t) for t in ["240", "4:00:00", "1-00:00", "1-2", "90:30"]] == [240, 240, 1440, 1560, 91]  # fmt: skip
    assert parse_slurm_args(["account=lab", "--qos=high", "constraint=a100|h100"]) == {
        "account": "lab", "qos": "high", "constraint": "a100|h100",
    }  # fmt: skip


def test_a_rerun_follows_the_arrays_still_queued_instead_of_resubmitting(tmp_path):
    """``--no-wait`` then the same command again: the tasks of the earlier submission that SLURM
    still lists as queued or running are followed, and only the other cells are submitted."""
    import json

    from harness.launch.slurm_launcher import SlurmDriver, SlurmOptions, _spec_key

    suite = load_suite("ci")
    cells = expand(suite)
    ledger = tmp_path / ".slurm" / "arrays.jsonl"
    ledger.parent.mkdir(parents=True)
    entries = [("41_0", cells[:5]), ("41_1", cells[5:10]), ("42", cells[10:12])]
    ledger.write_text(
        "".join(
            json.dumps({"job_id": j, "cluster": "slurm", "cells": [_spec_key(c.spec()) for c in cs]}) + "\n"
            for j, cs in entries
        )
        + '{"job_id": "43", "cells": ['
    )  # fmt: skip  (a line cut short by a killed driver)
    submitted: list[list[int]] = []

    class Driver(SlurmDriver):
        def reattach(self, job_id, cluster):
            return object() if job_id in ("41_1", "42") else None  # 41_0 has ended

        def _submit(self, indices, attempt):
            submitted.append(indices)

    driver = Driver(suite, tmp_path, SlurmOptions(), retries=2, chunk_minutes=60, force=False, shard=None,
                    progress=False, wait=False)  # fmt: skip
    driver.run()
    assert driver.adopted == ["41_1", "42"]
    assert submitted == [[c.index for c in cells[:5] + cells[12:]]]


def test_ray_scheduler_times_latency_cells_alone_on_their_node():
    """The Ray driver's choice of the next cell, without Ray: an actor keeps to its backbone, a
    latency cell waits until the other actors on its node are idle (and reserves the node), and
    nothing else starts on a node while a latency cell runs there."""
    from collections import deque

    from harness.launch.ray_launcher import RayDriver, _Slot
    from harness.suite import Suite

    suite = Suite.model_validate({
        "name": "sched",
        "backbones": [{"name": "a", "model": "random:llava-1.5"}, {"name": "b", "model": "random:qwen2-vl"}],
        "scenarios": [{"kind": "verify"}, {"kind": "flops"}, {"kind": "latency"}],
    })  # fmt: skip
    cells = {c.index: c for c in expand(suite)}  # a: 0 verify, 1 flops, 2 latency; b: 3, 4, 5
    driver = object.__new__(RayDriver)
    driver.cells, driver.reserved = cells, set()
    key_a, key_b = (("random:llava-1.5", "float32", "cpu"), ("random:qwen2-vl", "float32", "cpu"))
    driver.queues = {key_a: deque([1, 2]), key_b: deque([3, 4, 5])}
    busy = _Slot(0, None, state="busy", info={"node_id": "n1"}, held=key_a, cell=0)
    mate = _Slot(1, None, state="idle", info={"node_id": "n1"}, held=key_a)
    other = _Slot(2, None, state="idle", info={"node_id": "n2"}, held=key_b)
    driver.slots = [busy, mate, other]

    assert driver._next_cell(mate) == 1  # its own backbone first
    mate.state, mate.cell = "busy", 1
    busy.state, busy.cell = "idle", None
    assert driver._next_cell(busy) is None and driver.reserved == {"n1"}  # latency cell 2 waits for mate
    assert driver._next_cell(other) == 3  # another node is not held up
    mate.state, mate.cell = "idle", None
    assert driver._next_cell(mate) == 2 and driver.reserved == set()  # node n1 free: the latency cell runs
    mate.state, mate.cell = "busy", 2
    assert driver._next_cell(busy) is None  # nothing starts beside a running latency cell
    assert driver._next_cell(other) == 4
