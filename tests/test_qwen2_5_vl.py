"""Qwen2.5-VL: Qwen2-VL's decoder with a window-attention tower.  The executor matches the HF
forward (tests/test_executor_dense.py runs every random family); here, the raw vision features the
pre-LLM methods read are in the image tokens' (raster) order, although the tower's
``last_hidden_state`` comes out in window order."""

from __future__ import annotations

import numpy as np
import torch

from harness.models.backbones.random import _image_processor, random_image


def _image(bb, side=168):
    proc = _image_processor(bb)
    out = proc(images=[random_image(np.random.default_rng(0), (side, side))], return_tensors="pt")
    return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}


def test_raw_features_are_in_raster_order(random_backbones):
    bb = random_backbones["qwen2.5-vl"]
    inputs = _image(bb)
    visual = bb.model.model.visual
    t, h, w = inputs["image_grid_thw"][0].tolist()
    assert (h // 2) * (w // 2) > 4  # more merged tokens than one 2 x 2 window holds
    out = bb.vision(inputs)
    feats, embeds = out.features[0], out.embeds[0]
    d = feats.shape[-1] // 4
    with torch.no_grad():
        remerged = visual.merger(feats.reshape(-1, d))
    torch.testing.assert_close(remerged, embeds)  # the merger on our order gives the tokens' order
    raw = visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).last_hidden_state
    with torch.no_grad():
        assert not torch.allclose(visual.merger(raw), embeds)  # the tower's own order is not it


def test_a_saved_checkpoint_loads_as_qwen2_5_vl(random_backbones, tmp_path):
    from harness.models.backbones.loading import load_backbone
    from harness.models.backbones.random import random_sample_inputs

    bb = random_backbones["qwen2.5-vl"]
    bb.model.save_pretrained(tmp_path)
    loaded = load_backbone(str(tmp_path))
    assert type(loaded).__name__ == "Qwen25VLBackbone" and loaded.family == "qwen2_5_vl"
    sample = random_sample_inputs(bb, 0, 5, (168, 112))
    a, b = bb.encode(sample), loaded.encode(sample)
    torch.testing.assert_close(a.embeds, b.embeds)
    assert torch.equal(a.positions, b.positions) and a.positions.shape[0] == 3  # M-RoPE (t, row, col)


def test_window_attention_area():
    """448 px: a 32 x 32 patch grid in 8 x 8-patch windows (16 windows of 64 patches) in the
    windowed blocks, the whole grid in blocks 7/15/23/31; a grid that windows do not tile leaves a
    short last window per axis."""
    from dataclasses import replace

    from harness.models.geometry import PAPER_GEOMETRIES

    vg = PAPER_GEOMETRIES["qwen2.5-vl-7b"].vision
    assert vg.attention_area(0) == 16 * 64**2 and vg.attention_area(7) == 1024**2
    odd = replace(vg, image_size=14 * 20)  # 20 patches per side: windows 8, 8, 4
    assert odd.attention_area(0) == (8 * 8 + 8 * 8 + 4 * 4) ** 2
    assert PAPER_GEOMETRIES["qwen2-vl-7b"].vision.attention_area(0) == 1024**2  # no windows there
