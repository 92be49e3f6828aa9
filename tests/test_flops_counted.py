"""Counted FLOPs (fvcore on the executor's prefill) == the analytic model, per layer type."""

import json
import subprocess
import sys

import pytest
import torch

from harness.flops import counted as fl
from harness.models.backbones.random import ragged_samples
from harness.models.plan import VisualPlan
from harness.models.plan_spec import parse_plan

# one hand-written plan per layer type (4-layer decoders)
PLANS = {
    "dense": "",
    "dropped_tokens": "keep=8@1:renumber",
    "kv_only": "kv_only=1-2",
    "invisible": "invisible=2-3",
    "t2v": "t2v=0,2",
    "window": "window=3@0-3",
    "noquery_halfffn": "noquery=0-3;ffn=40@0-3",
    "heads": "heads=0,2@1-2:zero",
}


def _tiny_arch():
    """The tiny model's architecture with random weights (FLOPs need no trained weights)."""
    from harness.models.backbones.loading import wrap
    from harness.models.tiny.model import TinyConfig, build_model
    from harness.models.tiny.shapes import make_sample
    from harness.models.tiny.tokenizer import build_processor, build_prompt

    cfg = TinyConfig(layers=4)
    bb = wrap(build_model(cfg), processor=build_processor(), source="tiny-arch", weights="random-init")
    s = make_sample("shapes_mc", "ci", 3)
    inputs = bb.build_inputs([build_prompt(s.question)], [s.pil()])
    return bb, inputs


@pytest.fixture(scope="module")
def models(random_backbones):
    bb = random_backbones["llava-1.5"]
    return {"llava-1.5": (bb, ragged_samples(bb, 1)[0]), "tiny": _tiny_arch()}


@pytest.mark.parametrize("which", ["llava-1.5", "tiny"])
@pytest.mark.parametrize("mode", ["drop", "mask"])
@pytest.mark.parametrize("plan_name", list(PLANS))
def test_fvcore_equals_analytic(models, which, mode, plan_name):
    bb, inputs = models[which]
    plan = (
        parse_plan(PLANS[plan_name], bb.num_layers) if PLANS[plan_name] else VisualPlan.dense(bb.num_layers)
    )
    cell = fl.flops_cell(bb, inputs, plan, mode)
    rel = cell.rel_diff()
    assert max(rel.values()) <= 0.01, rel
    assert cell.counted.ok, cell.counted.unsupported
    assert cell.counted.by_operator["scaled_dot_product_attention"] > 0, "SDPA must be counted"


def test_drop_mode_shows_savings_and_mask_mode_does_not(models):
    bb, inputs = models["llava-1.5"]
    dense = fl.count_prefill(bb, inputs, VisualPlan.dense(bb.num_layers)).macs
    plan = parse_plan("kv_only=1-3", bb.num_layers)
    assert fl.count_prefill(bb, inputs, plan, "drop").macs < 0.9 * dense
    assert fl.count_prefill(bb, inputs, plan, "mask").macs == dense


def test_vision_tower_counts_the_layers_really_run(models):
    bb, inputs = models["llava-1.5"]
    batch = bb.encode(inputs)
    total = bb.config.vision_config.num_hidden_layers
    assert batch.extras["vision_layers_run"] == total - 1  # feature layer -2: the last layer is skipped
    g = fl.geometry_of(bb, batch)
    assert g.vision.layers_needed == total - 1
    counted = fl.count_prefill(bb, inputs, VisualPlan.dense(bb.num_layers))
    from harness.flops.model import vision_tower_compute

    assert counted.vision_tower == vision_tower_compute(g, total - 1).macs
    assert counted.vision_tower < vision_tower_compute(g, total).macs


def test_unsupported_ops_fail_the_cell(models, monkeypatch):
    """If elementwise ops were not excluded by convention they would exceed 1%: the check trips."""
    bb, inputs = models["llava-1.5"]
    monkeypatch.setattr(fl, "CONVENTION_EXCLUDED", frozenset())
    counted = fl.count_prefill(bb, inputs, VisualPlan.dense(bb.num_layers))
    assert "aten::mul" in counted.unsupported
    assert counted.unsupported_share > fl.UNSUPPORTED_LIMIT and not counted.ok


def test_sdpa_handle_counts_the_full_rectangle():
    class Fake:
        def __init__(self, shape):
            self.shape = shape

    q = torch.zeros(2, 4, 10, 16)
    k = torch.zeros(2, 2, 30, 16)
    from fvcore.nn import FlopCountAnalysis

    class M(torch.nn.Module):
        def forward(self, q, k):
            return torch.nn.functional.scaled_dot_product_attention(q, k, k, enable_gqa=True)

    an = FlopCountAnalysis(M(), (q, k)).set_op_handle("aten::scaled_dot_product_attention", fl.sdpa_macs)
    an.unsupported_ops_warnings(False)
    assert an.total() == 2 * 2 * 4 * 10 * 30 * 16


@pytest.mark.slow
def test_paper_flops_cli_json():
    out = subprocess.run([sys.executable, "-m", "harness.cli", "flops", "--suite", "paper", "--json"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    keys = {"backbone", "method", "setting", "convention", "tflops", "tflops_visual"}
    assert all(keys <= set(r) for r in rows)
    dense7 = next(r for r in rows if r["backbone"] == "llava-1.5-7b" and r["method"] == "dense")
    assert round(dense7["tflops"], 1) == 8.5 and dense7["convention"] == "shortv"
    assert {r["backbone"] for r in rows} >= {
        "llava-1.5-13b",
        "llava-next-7b",
        "qwen2-vl-7b",
        "mobilellama-2.7b",
    }  # its wall time (an acceptance figure) is measured by the command itself, never here


def test_flops_cli_random_llava_saisa_brings_random_projectors(capsys):
    """``harness flops --random llava-1.5 --method saisa``: the random decoder gets random per-layer
    projectors (no SAISA checkpoint exists at that geometry), and fvcore equals the analytic count."""
    from harness.cli import main

    assert main(["flops", "--random", "llava-1.5", "--method", "saisa", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["backbone"].endswith(":saisa")
    assert max(d["fvcore_vs_analytic"].values()) <= 0.01
    assert main(["flops", "--random", "llava-1.5", "--json"]) == 0
    d_dense = json.loads(capsys.readouterr().out)
    assert d["flops_decoder"] != d_dense["flops_decoder"]  # visual rows: projectors, K/V only
    assert main(["flops", "--random", "qwen2-vl", "--method", "saisa"]) == 2
    assert "needs a SAISA checkpoint" in capsys.readouterr().err
