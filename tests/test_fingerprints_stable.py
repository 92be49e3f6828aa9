"""Refactors keep every committed record current: the cells of the ``ci`` and ``tiny`` suites
fingerprint exactly as the records under ``results/`` say, so no committed record would re-run."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.records import load_dir
from harness.runner import cell_fingerprint
from harness.suite import expand, load_suite

RESULTS = Path(__file__).resolve().parent.parent / "results"


@pytest.mark.parametrize("suite", ["ci", "tiny"])
def test_committed_records_keep_their_fingerprints(suite):
    committed = {r.fingerprint for r in load_dir(RESULTS / suite) if r.status == "ok"}
    assert committed, f"results/{suite} holds no ok record"
    computed = {cell_fingerprint(c) for c in expand(load_suite(suite))}
    assert computed == committed
