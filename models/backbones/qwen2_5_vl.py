"""Qwen2.5-VL backbone: Qwen2-VL's decoder and positions, a vision tower with window attention.

The decoder, M-RoPE positions and prompt layout are Qwen2-VL's (``Qwen2VLBackbone``).  The vision
tower attends inside 112 px windows except in its full-attention blocks, and runs its blocks on
the patches permuted into window order; it returns the merged tokens in raster order but its
``last_hidden_state`` still in window order.  The raw features pre-LLM methods read are put back
in raster order here (the inverse of the tower's window permutation).
"""

from __future__ import annotations

import torch

from .qwen2_vl import Qwen2VLBackbone


class Qwen25VLBackbone(Qwen2VLBackbone):
    family = "qwen2_5_vl"

    def raster_order(self, merged_raw: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        from transformers.vision_utils import get_vision_window_index

        visual = self.model.model.visual
        window_index, _ = get_vision_window_index(
            grid, spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size,
            patch_size=visual.patch_size,
        )  # fmt: skip
        return merged_raw[torch.argsort(window_index.to(merged_raw.device))]
