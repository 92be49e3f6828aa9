"""A suite run killed midway and restarted re-runs only the unfinished cells."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SUITE = """
name: resume
backbones:
  - {name: l15, model: "random:llava-1.5"}
methods: [dense]
scenarios:
""" + "".join(f"  - {{kind: verify, batch_size: 4, max_new_tokens: 16, seed: {s}}}\n" for s in range(6))


def _records(out: Path) -> dict[str, str]:
    """Finished records; a ``.tmp-*.json`` left by the killed cell in flight is not one (the
    harness's loaders skip it, as here)."""
    return {p.name: p.read_text() for p in sorted(out.glob("*.json")) if not p.name.startswith(".tmp-")}


@pytest.mark.slow
def test_killed_run_resumes_only_unfinished_cells(tmp_path):
    suite = tmp_path / "resume.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "harness.cli",
        "run",
        "--suite",
        str(suite),
        "--out",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and not (out.exists() and _records(out)):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = _records(out)
    assert 1 <= len(first) < 6, f"the kill must land midway (got {len(first)} records)"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    second = _records(out)
    assert len(second) == 6
    for name, text in first.items():
        assert second[name] == text, f"finished cell {name} was re-run"
    assert f"6 cells: {6 - len(first)} ran, {len(first)} already done" in done.stdout
    assert all(json.loads(t)["status"] == "ok" for t in second.values())


def test_failed_cells_are_rerun_and_force_reruns_all(tmp_path):
    from harness import records
    from harness.runner import run_suite
    from harness.suite import load_suite

    suite_file = tmp_path / "s.yaml"
    suite_file.write_text(
        SUITE.split("scenarios:")[0] + "scenarios:\n  - {kind: verify, batch_size: 2, max_new_tokens: 2}\n"
    )
    suite = load_suite(str(suite_file))
    out = tmp_path / "o"
    first = run_suite(suite, out, progress=False)
    assert first.ran == 1 and first.failed == 0
    rec = first.records[0]
    records.save(rec.model_copy(update={"status": "failed", "error": "boom"}), out)
    again = run_suite(suite, out, progress=False)
    assert again.ran == 1, "a failed cell is not finished"
    assert run_suite(suite, out, progress=False).skipped == 1
    assert run_suite(suite, out, progress=False, force=True).ran == 1
