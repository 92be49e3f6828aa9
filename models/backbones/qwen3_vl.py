"""Qwen3-VL backbone: Qwen2-VL's prompt layout and M-RoPE inputs, a Qwen3 decoder, DeepStack.

- The decoder layers RMS-normalise each head's queries and keys before RoPE (``q_norm`` /
  ``k_norm``); the executor applies them wherever it projects q or k (``Backbone.queries/keys``).
- Its rotary module interleaves the temporal, height and width frequencies; the executor takes
  cos/sin from that module, so nothing changes here.
- The vision tower (16 px patches, full attention, 2 x 2 merger: one token per 32 x 32 px) also
  merges the states of a few of its layers (8, 16, 24 in the released models) with extra mergers:
  the decoder adds the i-th of those features to every visual token's hidden state after layer i.
  They travel in ``Batch.deepstack``; what methods do with them is docs/methods.md §2.9.
"""

from __future__ import annotations

from typing import Any

from .qwen2_vl import Qwen2VLBackbone


class Qwen3VLBackbone(Qwen2VLBackbone):
    family = "qwen3_vl"

    def vision_extras(self, out: Any, sizes: list[int]) -> dict[str, Any]:
        """The DeepStack features, one [n_image_tokens, h] tensor per decoder layer they enter."""
        feats = getattr(out, "deepstack_features", None) or []
        return {"deepstack": list(feats)} if feats else {}
