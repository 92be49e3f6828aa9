"""Records: schema, atomic writes, fingerprints, resume bookkeeping."""

import json

import pytest

from harness import records


def _rec(**kw):
    base = dict(fingerprint="f" * 64, backbone="b", method="dense", task="t", scenario="verify",
                metrics={"accuracy": 0.5})  # fmt: skip
    base.update(kw)
    return records.Record(**base)


def test_record_roundtrip_and_required_top_level_keys(tmp_path):
    path = records.save(_rec(), tmp_path)
    data = json.loads(path.read_text())
    for key in ("fingerprint", "backbone", "method", "params", "task", "scenario", "metrics", "environment"):
        assert key in data
    assert records.load(path) == _rec(created=data["created"])


def test_metrics_must_be_finite():
    with pytest.raises(ValueError, match="not finite"):
        _rec(metrics={"x": float("nan")})


def test_unknown_record_field_is_rejected():
    with pytest.raises(ValueError, match="bogus"):
        _rec(bogus=1)


def test_fingerprint_is_canonical():
    a = records.fingerprint({"x": 1, "y": [1, 2]})
    assert a == records.fingerprint({"y": [1, 2], "x": 1})
    assert a != records.fingerprint({"x": 2, "y": [1, 2]})


def test_finished_fingerprints_ignore_failed_and_temp_files(tmp_path):
    records.save(_rec(fingerprint="a" * 64), tmp_path)
    records.save(_rec(fingerprint="b" * 64, status="failed", error="x", backbone="c"), tmp_path)
    (tmp_path / ".tmp-zzz.json").write_text('{"status": "ok", "fingerprint": "c"}')
    (tmp_path / "broken.json").write_text("{not json")
    assert records.finished_fingerprints(tmp_path) == {"a" * 64}


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    records.write_atomic(target, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(records.os, "replace", boom)
    with pytest.raises(OSError):
        records.write_atomic(target, "new")
    assert target.read_text() == "old"
    assert not list(tmp_path.glob(".tmp-*"))
