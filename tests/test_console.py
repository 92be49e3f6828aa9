"""One clean terminal: what lmms-eval, datasets and transformers print while a cell runs goes to
``OUT/run.log`` (``--verbose`` shows it instead), and the run ends with one line about it."""

from __future__ import annotations

import pytest

from harness.cli import main
from harness.console import log_summary, stderr_to

SUITE = """
name: console
backbones:
  - {name: tiny-llava, model: embedded}
methods: [dense]
tasks: [shapes_exist_ci]
scenarios:
  - {kind: accuracy, batch_size: 10, limit: 10}
"""
LIBRARY_BARS = ("Postprocessing", "Loading weights")


@pytest.mark.parametrize("verbose", [False, True])
def test_library_output_goes_to_the_run_log_unless_verbose(verbose, tmp_path, capfd):
    suite = tmp_path / "console.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    argv = ["run", "--suite", str(suite), "--out", str(out), "--no-progress"] + (
        ["--verbose"] if verbose else []
    )
    assert main(argv) == 0
    term = capfd.readouterr()
    log = out / "run.log"
    if verbose:
        assert any(bar in term.err for bar in LIBRARY_BARS) and not log.exists()
        return
    assert not any(bar in term.err or bar in term.out for bar in LIBRARY_BARS), term.err
    assert all(bar in log.read_text() for bar in LIBRARY_BARS)
    assert "library output of this run: " in term.out and str(log) in term.out


def test_stderr_capture_restores_the_terminal_and_summarises_warnings(tmp_path, capfd):
    import os
    import sys

    log = tmp_path / "run.log"
    with stderr_to(log):
        os.write(2, b"UserWarning: something the user should know\n")
        print("progress 10%\rprogress 100%", file=sys.stderr)
    print("after", file=sys.stderr)
    assert capfd.readouterr().err == "after\n"
    assert log_summary(log, 0) == (
        f"library output of this run: 2 lines in {log}, 1 distinct warnings: "
        "UserWarning: something the user should know"
    )
    assert log_summary(log, log.stat().st_size) is None
