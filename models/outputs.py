"""What a prefill returns, shared by the compiled and the reference executor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LayerStats:
    """Visual-token budget of one layer, per sample (docs/methods.md §2.2)."""

    present: list[int]  # visual tokens carried into the layer
    attn_q: list[int]  # visual tokens that are attention queries
    kv: list[int]  # visual keys readable by non-visual queries
    ffn: list[int]  # visual tokens through the FFN
    rows_q: int = 0  # query rows computed (incl. padding slots): the work drop mode does
    rows_kv: int = 0  # key rows computed
    score_rows: list[int] = field(default_factory=list)  # attention-score rows of a drop_after selector


@dataclass
class PrefillOutput:
    logits: torch.Tensor  # [B, V] at the last prompt token
    cache: Any  # a KV cache (None when none was asked for)
    stats: list[LayerStats]
    all_logits: torch.Tensor | None = None  # [B, N, V] at original sequence slots (rows not present: nan)
    text_logits_mask: torch.Tensor | None = None  # [B, N] bool: slots holding real logits
