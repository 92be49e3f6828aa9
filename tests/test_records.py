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


def _folder_with_strays(tmp_path):
    records.save(_rec(fingerprint="a" * 64), tmp_path)
    (tmp_path / "bench.json").write_text('{"bs1": {"p50_s": 0.1}}')  # a benchmark's own output
    (tmp_path / "cut.json").write_text('{"fingerprint": "x", "scen')  # half copied
    (tmp_path / "odd.json").write_text(json.dumps({**_rec().model_dump(), "status": "maybe"}))
    (tmp_path / ".slurm").mkdir()
    (tmp_path / ".slurm" / "state.json").write_text("{}")  # a launcher's bookkeeping: not even read
    return tmp_path


def test_load_dir_skips_non_records_with_one_warning_each(tmp_path, capsys):
    folder = _folder_with_strays(tmp_path)
    assert [r.fingerprint for r in records.load_dir(folder)] == ["a" * 64]
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"harness: warning: skipped {folder / 'bench.json'}: not a seebench record (no 'fingerprint' and "
        "'scenario' keys)",
        f"harness: warning: skipped {folder / 'cut.json'}: not valid JSON (line 1)",
        f"harness: warning: skipped {folder / 'odd.json'}: not a valid record (status: Input should be 'ok', "
        "'failed' or 'skipped')",
    ]
    records.load_dir(folder)  # once per file and process
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", [["report", "{d}", "--out", "{d}/../report"], ["compare", "{d}", "{d}"],
                                     ["merge", "{d}", "--out", "{d}/../merged"]])  # fmt: skip
def test_report_compare_merge_run_over_stray_json_files(command, tmp_path, capsys):
    from harness.cli import main

    folder = _folder_with_strays(tmp_path / "recs")
    records._WARNED.clear()
    assert main([a.format(d=folder) for a in command]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [ln.split(":")[2].strip().split()[-1] for ln in err.splitlines()] == [
        str(folder / n) for n in ("bench.json", "cut.json", "odd.json")
    ]
