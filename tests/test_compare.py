"""harness compare: passes on identical records; fails naming the cell on real regressions."""

import copy

from harness.cli import main
from harness.records import Record, save


def _records():
    per = {f"s{i}": float(i % 4 != 0) for i in range(100)}  # 75% correct
    env = {"machine": "m1"}
    acc = Record(fingerprint="a" * 64, backbone="tiny", method="fastv", task="shapes_exist", scenario="accuracy",
                 metrics={"accuracy": 0.75, "n": 100}, details={"per_sample": per}, environment=env,
                 cell={"scenario": {"kind": "accuracy"}})  # fmt: skip
    fl = Record(fingerprint="b" * 64, backbone="tiny", method="fastv", task="none", scenario="flops",
                metrics={"flops_total_prefill": 1.5e9, "fvcore_macs": 7.5e8}, environment=env,
                cell={"scenario": {"kind": "flops"}})  # fmt: skip
    lat = Record(fingerprint="c" * 64, backbone="tiny", method="fastv", task="none", scenario="latency",
                 metrics={"prefill_p50_s": 0.1, "dense_prefill_p50_s": 0.4}, environment=env,
                 cell={"scenario": {"kind": "latency"}})  # fmt: skip
    return [acc, fl, lat]


def _dirs(tmp_path, edit=None):
    base, new = tmp_path / "base", tmp_path / "new"
    recs = _records()
    for r in recs:
        save(r, base)
    changed = [copy.deepcopy(r) for r in recs]
    if edit:
        edit(changed)
    for r in changed:
        save(r, new)
    return str(base), str(new)


def test_identical_records_pass(tmp_path, capsys):
    assert main(["compare", *_dirs(tmp_path)]) == 0
    assert "compare: ok" in capsys.readouterr().out


def test_accuracy_lowered_by_5_points_fails(tmp_path, capsys):
    def edit(recs):
        acc = recs[0]
        flipped = dict(acc.details["per_sample"])
        for k in [k for k, v in flipped.items() if v == 1.0][:5]:
            flipped[k] = 0.0
        acc.details["per_sample"] = flipped
        acc.metrics["accuracy"] = 0.70

    assert main(["compare", *_dirs(tmp_path, edit)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "tiny | fastv | shapes_exist | accuracy" in out.splitlines()[-1]


def test_accuracy_metric_alone_lowered_fails(tmp_path, capsys):
    def edit(recs):
        recs[0].metrics["accuracy"] = 0.70

    assert main(["compare", *_dirs(tmp_path, edit)]) == 1


def test_flops_change_fails(tmp_path, capsys):
    def edit(recs):
        recs[1].metrics["flops_total_prefill"] = 1.6e9

    assert main(["compare", *_dirs(tmp_path, edit)]) == 1
    assert "tiny | fastv | none | flops" in capsys.readouterr().out.splitlines()[-1]


def test_latency_ratio_30_percent_worse_fails(tmp_path, capsys):
    def edit(recs):
        recs[2].metrics["prefill_p50_s"] = 0.13  # ratio 0.25 -> 0.325

    assert main(["compare", *_dirs(tmp_path, edit)]) == 1
    assert "tiny | fastv | none | latency" in capsys.readouterr().out.splitlines()[-1]


def test_absolute_latency_from_another_machine_is_not_comparable(tmp_path, capsys):
    def edit(recs):
        recs[2].environment["machine"] = "m2"
        recs[2].metrics["prefill_p50_s"] = 0.2
        recs[2].metrics["dense_prefill_p50_s"] = 0.8  # same ratio, twice slower machine

    assert main(["compare", "--all", *_dirs(tmp_path, edit)]) == 0
    assert "not comparable (machine m1 vs m2)" in capsys.readouterr().out


def test_missing_cell_fails(tmp_path):
    def edit(recs):
        recs[1].backbone = "other"

    assert main(["compare", *_dirs(tmp_path, edit)]) == 1
