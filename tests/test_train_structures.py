"""The structures `harness train tiny-llava --arch` trains under are the ones the executor runs.

For dense, vica and saisa: the packed training forward (masks over the full sequence) gives the
same answer logits as the executor with the matching method, in drop and mask mode, on a ragged
batch; the checkpoint's own files (T2V list, per-layer projectors) are what the loader and the
method read back."""

import json

import pytest
import torch

from harness.baselines.registry import build_stack
from harness.cli import main
from harness.models.backbones.loading import load_backbone
from harness.models.backbones.random import randomize_norms
from harness.models.executor import Executor
from harness.models.saisa import SaisaBackbone, make_projectors, save_projectors
from harness.models.tiny import shapes
from harness.models.tiny import tokenizer as tk
from harness.models.tiny.model import TinyConfig, build_model
from harness.models.tiny.packing import pack
from harness.models.tiny.recipe import Recipe
from harness.models.tiny.structures import ARCHES, VICA_T2V, Structure, forward_packed, yopo_structure


def _checkpoint(tmp_path, arch: str):
    """A random-init tiny model saved the way train_tiny saves a checkpoint of ``arch``."""
    cfg = TinyConfig()
    model = randomize_norms(build_model(cfg, seed=3))  # norms drawn at random: a misplaced one shows
    out = tmp_path / arch
    model.save_pretrained(out)
    tk.save_processor(out)
    meta = {"weights": "random-init", "architecture": arch}
    structure = Structure(arch)
    if arch == "yopo":  # the method's defaults, with heads 1 and 3 pruned in layers 2-5
        structure = yopo_structure(cfg)
        structure.head_mask = tuple((0, 1, 2, 3) if li < 2 else (0, 2) for li in range(cfg.layers))
        meta["calibration"] = {"yopo": {"head_mask": [list(h) for h in structure.head_mask]}}
    if arch == "vica":
        meta["vica"] = {"t2v_layers": [1, 4]}
        structure.t2v = (1, 4)
    if arch == "saisa":
        torch.manual_seed(4)
        proj = make_projectors(cfg.vit_hidden, cfg.hidden, cfg.layers)
        save_projectors(out / "saisa_projectors.safetensors", proj)
        structure.projectors = proj
    (out / "seebench.json").write_text(json.dumps(meta))
    return model, structure, out


@pytest.mark.parametrize("arch", ["dense", "vica", "saisa", "yopo"])
def test_training_structure_equals_executor(tmp_path, arch):
    model, structure, path = _checkpoint(tmp_path, arch)
    bb = load_backbone(str(path))
    assert isinstance(bb, SaisaBackbone) == (arch == "saisa")
    samples = shapes.generate_split("shapes_mc", "ci")[:2] + shapes.generate_split("shapes_count", "ci")[:2]
    with torch.no_grad():
        ref = forward_packed(model.eval(), pack(samples, [[] for _ in samples]), structure=structure)
        inputs = bb.build_inputs([tk.PROMPT_TEMPLATE.format(question=s.question) for s in samples],
                                 [s.image for s in samples])  # fmt: skip
        assert inputs["attention_mask"].min() == 0  # ragged: left padding in the executor's batch
        batch = bb.encode(inputs)
        plan = None if arch == "dense" else build_stack(arch).plan(bb)
        if arch == "vica":  # the checkpoint's own T2V list is the method's default
            kv = [i for i, lp in enumerate(plan.layers) if lp.kv_source == "fixed"]
            assert kv == [1, 4]
        for mode in ("drop", "mask"):
            logits = Executor(bb, mode).prefill(batch, plan).logits
            torch.testing.assert_close(logits, ref, atol=1e-4, rtol=0)
    if arch != "dense":  # the structure matters: the dense forward gives other logits
        with torch.no_grad():
            dense = forward_packed(model, pack(samples, [[] for _ in samples]))
        assert (dense - ref).abs().max() > 1e-2


def test_arch_recipes_and_bad_arch(capsys):
    recipes = [Recipe.default(arch=a) for a in ARCHES]
    assert ARCHES == ("dense", "vica", "saisa", "yopo")
    steps = [[st.steps for st in r.stages] for r in recipes]
    assert all(s == steps[0] for s in steps)  # the same training budget
    vica = recipes[1]
    assert set(vica.stages[1].aux_layers) <= set(vica.t2v_layers)  # objects read where text sees them
    # YOPO: objects are read before the cut, where text still sees visual values
    assert max(recipes[3].stages[1].aux_layers) < yopo_structure(recipes[3].model).k_cut
    with pytest.raises(ValueError, match="unknown arch 'fastv'"):
        Recipe.default(arch="fastv")
    assert main(["train", "tiny-llava", "--arch", "fastv"]) == 2
    assert "--arch fastv: use one of dense, vica, saisa, yopo" in capsys.readouterr().err


@pytest.mark.slow
def test_train_arch_smoke_writes_what_the_loader_reads(tmp_path):
    for arch in ("vica", "saisa", "yopo"):
        out = tmp_path / arch
        args = [
            "--threads",
            "1",
            "train",
            "tiny-llava",
            "--arch",
            arch,
            "--scale",
            "0.002",
            "--out",
            str(out),
        ]
        assert main([*args, "--no-progress"]) == 0
        meta = json.loads((out / "seebench.json").read_text())
        assert meta["architecture"] == arch and meta["recipe"]["arch"] == arch
        assert f"--arch {arch}" in (out / "README.md").read_text()
        bb = load_backbone(str(out))
        if arch == "vica":
            assert bb.info["vica"]["t2v_layers"] == list(VICA_T2V)
        elif arch == "yopo":  # the rules trained under are the yopo method's defaults on this model
            plan = build_stack("yopo").plan(bb)
            assert bb.info["yopo"]["k_cut"] == 6 and bb.info["yopo"]["ffn_width"] == bb.intermediate_size // 2
            assert [lp.visual_query for lp in plan.layers] == [True] * 6 + [False] * 2
            assert {lp.visual_ffn for lp in plan.layers} == {bb.info["yopo"]["ffn_width"]}
        else:
            assert isinstance(bb, SaisaBackbone) and len(bb.projectors) == bb.num_layers
            assert "saisa_projectors.safetensors" in meta["sha256"]
