"""FasterVLM: keep the top-k patches by the CLS attention of CLIP layer -2 (mean over heads)."""

from __future__ import annotations

from typing import ClassVar

import torch

from harness.models.plan import ReducedVisual

from .clip_attention import clip_state, cls_attention, visual_embeds
from .common import top_k
from .prellm import PreLLM


class FasterVLM(PreLLM):
    name: ClassVar[str] = "fastervlm"
    description: ClassVar[str] = "keep the top-k patches by CLIP [CLS] attention (layer -2)"
    reference: ClassVar[dict[str, str]] = {
        "repository": "Theia-4869/FasterVLM",
        "commit": "29ed074a98262c50a0b86a34f59ea485695c99e3",
        "file": "llava/model/llava_arch.py",
        "rule": "encode_images",
    }

    def reduce_one(self, bb, batch, i, k):
        attn, _, macs = cls_attention(bb, clip_state(batch, i, self.name))
        keep = torch.sort(top_k(attn, k)).values
        return ReducedVisual(visual_embeds(batch, i)[keep], keep), macs
