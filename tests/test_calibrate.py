"""``harness calibrate METHOD``: generic over the methods that calibrate; each method computes its
result and keeps its own seebench.json section, which its default then reads back."""

from __future__ import annotations

import json
import shutil

import pytest

from harness.backbones import open_backbone
from harness.baselines.registry import build_stack
from harness.cli import main
from harness.models.tiny.model import default_checkpoint


@pytest.fixture()
def checkpoint(tmp_path):
    out = tmp_path / "tiny"
    shutil.copytree(default_checkpoint("dense"), out)
    return out


def test_shortv_calibration_is_saved_and_becomes_the_default(checkpoint, capsys):
    args = ["calibrate", "shortv", str(checkpoint), "--tasks", "shapes_exist_ci", "--limit", "2"]
    assert main([*args, "--save", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    bb = open_backbone(str(checkpoint))
    assert res["method"] == "shortv" and len(res["samples"]) == 2
    assert sorted(res["layers"]) == list(range(bb.num_layers))
    assert [res["lc"][i] for i in res["layers"]] == sorted(res["lc"])  # ascending layer contribution
    saved = json.loads((checkpoint / "seebench.json").read_text())["calibration"]["shortv"]
    assert saved == {"layers": res["layers"], "samples": res["samples"]}
    plan = build_stack("shortv").plan(open_backbone(str(checkpoint)))  # reads the saved order
    n = round(19 / 32 * bb.num_layers)  # a full calibrated order: ShortV's share, lowest LC first
    frozen = [i for i, lp in enumerate(plan.layers) if not lp.visual_query]
    assert frozen == sorted(res["layers"][:n])


def test_yopo_options_reach_the_method(checkpoint, capsys):
    args = ["calibrate", "yopo", str(checkpoint), "--tasks", "shapes_exist_ci", "--limit", "2", "--json"]
    assert main([*args, "--tau", "1e9"]) == 0  # no head passes an impossible ratio
    res = json.loads(capsys.readouterr().out)
    assert res["tau"] == 1e9 and res["vote"] == 0.4
    kept = [len(h) for h in res["head_mask"]]
    assert kept[2:] == [0] * (len(kept) - 2) and kept[0] > 0  # layers 0-1 keep every head


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["calibrate", "fastv"], "method 'fastv' has no calibration; methods that calibrate: shortv, yopo"),
        (["calibrate", "shortvv"], "unknown method 'shortvv': did you mean 'shortv'?"),
        (["calibrate", "shortv", "--tau", "0.2"], "method 'shortv' takes no calibration option ['tau']"),
    ],
)
def test_bad_calibration_is_one_line(checkpoint, capsys, args, message):
    argv = [*args[:2], str(checkpoint), "--tasks", "shapes_exist_ci", "--limit", "1", *args[2:]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
