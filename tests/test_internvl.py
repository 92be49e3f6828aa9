"""InternVL3 / InternVL3.5: tiles recovered from the prompt, coordinates on each tile's token grid,
raw features that are the tower's 2 x 2 patch groups, InternVL3.5's per-head q/k norms, one-line
errors, FLOPs.  The executor matches the HF forward on both (tests/test_executor_dense.py runs
every random family)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from method_params import CLIP_METHODS

from harness.models.backbones.base import BackboneError, collate
from harness.models.backbones.random import (
    IMAGE_TOKEN,
    IMG_END,
    IMG_START,
    _image_processor,
    ragged_samples,
    random_image,
    random_sample_inputs,
)
from harness.models.batch import TokenType

FAMILIES = ["internvl3", "internvl3.5"]


@pytest.mark.parametrize("family", FAMILIES)
def test_tiles_per_image_come_from_the_prompt(random_backbones, family):
    bb = random_backbones[family]
    samples = ragged_samples(bb, 4)
    # 112 px tiles on grids of 1-4: 84 x 84 and 112 x 112 -> 1 tile; 140 x 84 and 84 x 168 -> 2 + thumbnail
    assert [int(s["pixel_values"].shape[0]) for s in samples] == [1, 3, 3, 1]
    batch_inputs = collate(bb, samples)
    assert batch_inputs["pixel_values"].shape[0] == 8  # the batch's tiles, flat, as the processor gives them
    assert bb.tiles_per_image(batch_inputs) == [1, 3, 3, 1]
    batch = bb.encode(batch_inputs)
    assert batch.visual_counts() == [16, 48, 48, 16]  # 16 tokens per tile
    big = random_sample_inputs(bb, 0, 5, (224, 224))  # 2 x 2 tiles + thumbnail
    assert bb.tiles_per_image(big) == [5] and bb.encode(big).visual_counts() == [80]


def test_coords_are_tile_row_col_and_the_thumbnail_is_its_own_grid(random_backbones):
    bb = random_backbones["internvl3"]
    sample = random_sample_inputs(bb, 0, 5, (224, 224))
    batch = bb.encode(sample)
    vis = batch.token_type[0] == int(TokenType.VISUAL)
    coords = batch.visual_coords[0, vis]
    assert coords[:, 0].tolist() == [t for t in range(5) for _ in range(16)]  # tile 4 = the thumbnail
    assert coords[:16, 1:].tolist() == [[r, c] for r in range(4) for c in range(4)]
    assert (batch.visual_coords[0, ~vis] == -1).all()


def test_raw_features_are_the_towers_2x2_patch_groups(random_backbones):
    """Each visual token's raw feature holds the final states of the 4 patches at rows 2r, 2r+1 and
    columns 2c, 2c+1 of its tile's 8 x 8 patch grid; the projector maps it to the token's embedding,
    which is what the HF model's own get_image_features gives."""
    bb = random_backbones["internvl3.5"]
    sample = random_sample_inputs(bb, 1, 5, (140, 84))
    out = bb.vision(sample)
    feats, embeds = out.features[0], out.embeds[0]
    hf = bb.model.model
    with torch.no_grad():
        ref = hf.get_image_features(pixel_values=sample["pixel_values"]).pooler_output
        torch.testing.assert_close(embeds, ref.flatten(0, 1))
        torch.testing.assert_close(hf.multi_modal_projector(feats), embeds)
        patches = hf.vision_tower(pixel_values=sample["pixel_values"]).last_hidden_state[:, 1:]
    d = patches.shape[-1]
    grid = patches.reshape(-1, 8, 8, d)
    for (tile, r, c), f in zip(out.coords[0].tolist(), feats, strict=True):
        group = grid[tile, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].reshape(4, d)
        chunks = f.reshape(4, d)
        assert all(any(torch.allclose(x, y) for y in group) for x in chunks), (tile, r, c)
    assert out.vision_layers_run == 2 * 3 and out.vision_layers_total == 2 * 3  # 2 layers x 3 tiles


def test_img_start_is_system_and_img_end_text(random_backbones):
    bb = random_backbones["internvl3"]
    sample = random_sample_inputs(bb, 0, 4)
    ids = sample["input_ids"][0]
    tt = bb.encode(sample).token_type[0]
    assert tt[ids == IMG_START].tolist() == [int(TokenType.SYSTEM)]
    assert tt[ids == IMG_END].tolist() == [int(TokenType.TEXT)]
    assert (tt[ids == IMAGE_TOKEN] == int(TokenType.VISUAL)).all()


def test_internvl35_q_k_norms_matter():
    """The executor applies InternVL3.5's per-head q/k RMSNorm before RoPE; with the (randomised)
    norms left out the logits move far beyond the tolerance, so verify would catch a missing one."""
    from harness.models.backbones.random import build_random
    from harness.models.executor import Executor

    bb = build_random("internvl3.5")
    attn = bb.layers[0].self_attn
    assert (
        bb.qk_norm
        and attn.q_norm.weight.shape == (bb.head_dim,)
        and bb.head_dim * bb.num_heads != bb.hidden_size
    )
    assert float((attn.q_norm.weight.detach() - 1).abs().max()) > 0.05  # randomised, not HF's unit weights
    sample = ragged_samples(bb, 1)[0]
    ref = bb.hf_logits(sample)[0]
    with torch.inference_mode():
        on = Executor(bb).prefill(bb.encode(sample), all_logits=True).all_logits[0]
        bb.qk_norm = False
        off = Executor(bb).prefill(bb.encode(sample), all_logits=True).all_logits[0]
    assert float((on - ref).abs().max()) <= 1e-4
    assert float((off - ref).abs().max()) > 1e-2
    assert not build_random("internvl3").qk_norm  # InternVL3's Qwen2 decoder has none


def test_one_line_errors(random_backbones):
    bb = random_backbones["internvl3"]
    sample = random_sample_inputs(bb, 0, 4)
    ids = sample["input_ids"]

    def with_ids(new):
        return dict(sample, input_ids=new, attention_mask=torch.ones_like(new))

    two = with_ids(torch.cat([ids, torch.tensor([[IMG_START, IMAGE_TOKEN, IMG_END]])], 1))
    with pytest.raises(BackboneError, match="has 2 images") as err:
        bb.encode(two)
    assert "\n" not in str(err.value)
    short = with_ids(torch.cat([ids[:, ids[0] != IMAGE_TOKEN], torch.full((1, 15), IMAGE_TOKEN)], 1))
    with pytest.raises(BackboneError, match="not a whole number of tiles of 16 tokens"):
        bb.encode(short)


@pytest.mark.parametrize("name", sorted(CLIP_METHODS))
def test_clip_tower_methods_are_rejected_with_the_reason(random_backbones, name):
    from harness.baselines.registry import build_stack
    from harness.models.executor import Executor
    from harness.models.method import MethodError

    bb = random_backbones["internvl3"]
    plan = build_stack(name, {}).plan(bb)
    with pytest.raises(MethodError, match="needs a LLaVA-1.5 backbone with a CLIP tower") as err:
        Executor(bb).prefill(bb.encode(ragged_samples(bb, 1)[0], tower=plan.tower), plan)
    msg = str(err.value)
    assert "\n" not in msg and ("pixel-shuffled" in msg or "pixel shuffle" in msg), msg


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("stack", ["dense", "fastv", "divprune"])
def test_fvcore_equals_analytic(random_backbones, family, stack):
    from harness.baselines.registry import build_stack
    from harness.flops.counted import flops_cell

    bb = random_backbones[family]
    params = {"fastv": {"budget": 200}} if stack == "fastv" else {}
    cell = flops_cell(bb, ragged_samples(bb, 2)[1], build_stack(stack, params).plan(bb), "drop")
    assert cell.analytic.vision_tower.macs > 0 and cell.counted.ok
    assert max(cell.rel_diff().values()) <= 0.01, cell.rel_diff()


def test_paper_geometry_is_cdpruners_896_image():
    """896 x 896 on 448 px tiles (1-12, the processor's defaults): 2 x 2 tiles + the thumbnail, 256
    tokens each = the 1280 visual tokens of both paper geometries and their synthetic layouts."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    from harness.models.backbones.synthetic import SYNTHETIC_TOKEN_LAYOUTS
    from harness.models.geometry import PAPER_GEOMETRIES

    proc = GotOcr2ImageProcessorPil(size={"height": 448, "width": 448}, crop_to_patches=True)
    tiles = proc.get_number_of_image_patches(896, 896, {})
    assert tiles == 5
    for name, paper in (("internvl3", "internvl3-8b"), ("internvl3.5", "internvl3.5-8b")):
        g = PAPER_GEOMETRIES[paper]
        assert g.v == tiles * 256 == g.projector_rows and g.vision.crops == tiles and g.vision.tokens == 1025
        assert SYNTHETIC_TOKEN_LAYOUTS[name] == {"s": g.s, "v": 1280, "t": g.t - g.s, "grid": 16}
    assert PAPER_GEOMETRIES["internvl3.5-8b"].extra["text_model_type"] == "qwen3"


def test_a_saved_checkpoint_loads_as_internvl(random_backbones, tmp_path):
    from harness.models.backbones.loading import load_backbone

    bb = random_backbones["internvl3.5"]
    bb.model.save_pretrained(tmp_path)
    loaded = load_backbone(str(tmp_path))
    assert type(loaded).__name__ == "InternVLBackbone" and loaded.family == "internvl" and loaded.qk_norm
    sample = random_sample_inputs(bb, 0, 5, (84, 168))
    a, b = bb.encode(sample), loaded.encode(sample)
    torch.testing.assert_close(a.embeds, b.embeds)
    assert torch.equal(a.positions, b.positions) and a.positions.shape[0] == 1  # 1-D RoPE


def test_random_image_processor_tiles(random_backbones):
    proc = _image_processor(random_backbones["internvl3"])
    out = proc(images=[random_image(np.random.default_rng(0), (300, 150))], return_tensors="pt")
    assert out["pixel_values"].shape == (3, 3, 112, 112) and out["num_patches"].tolist() == [3]
