"""LLaVA-OneVision's anyres_max_9 packing: a tile map larger than 9 crops is bilinearly shrunk
before the newline column; the backbone packs through the model's own packer, so the executor
still matches the HF forward, and every packed token keeps a (grid, row, col) coordinate."""

from __future__ import annotations

import numpy as np
import torch

from harness.models.backbones.random import build_random, random_image
from harness.models.verify import TOLERANCE, verify_dense


def test_a_shrunk_tile_map_matches_hf():
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    bb = build_random("llava-onevision")
    bb.config.image_grid_pinpoints = [[336, 336]]  # 4 x 4 crops of 84 px: more than 9
    proc = LlavaOnevisionImageProcessorPil(
        size={"height": 84, "width": 84}, image_grid_pinpoints=[[336, 336]]
    )
    out = proc(images=[random_image(np.random.default_rng(0), (336, 336))], return_tensors="pt")
    inputs = {"pixel_values": out["pixel_values"], "image_sizes": out["image_sizes"]}
    vision = bb.vision(inputs)
    # base 6 x 6, then the 24 x 24 map shrunk by sqrt(576 / 324) to 18 x 18, one newline per row
    assert vision.embeds[0].shape[0] == 36 + 18 * 19
    coords = vision.coords[0]
    assert int((coords[:, 0] == 1).sum()) == 18 * 18 and int((coords[:, 0] == -1).sum()) == 18
    n = vision.embeds[0].shape[0]
    ids = torch.cat(
        [torch.tensor([1, 5, 6, 7]), torch.full((n,), bb.image_token_id), torch.tensor([9, 10, 11])]
    )
    sample = {
        **inputs,
        "input_ids": ids[None],
        "attention_mask": torch.ones(1, ids.numel(), dtype=torch.long),
    }
    rep = verify_dense(bb, [sample, sample], max_new_tokens=4)
    assert rep.max_abs_diff_batch1 <= TOLERANCE and rep.max_abs_diff_batched <= TOLERANCE
    assert rep.greedy_equal_batch1 and rep.greedy_equal_batched
