"""VisPruner: important patches by CLS attention, then diverse ones by ToMe-style de-duplication.

Important (baselines.md 3.3): top round(k x r) by CLS attention of CLIP layer -2 (mean over heads).
Diverse: on the remaining patches (cosine similarity of layer -2 features), split the list
alternately into A and B, score each a by its best match in B and drop the 8 highest-scoring a
(fewer in the last round) until k - round(k x r) remain.  Output: the union, ascending; no merging.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from harness.models.plan import ReducedVisual

from .clip_attention import clip_state, cls_attention, visual_embeds
from .common import top_k
from .prellm import PreLLM


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    budget: float = Field(128, gt=0, description="visual tokens fed to the LLM, of 576")
    important_ratio: float = Field(0.5, gt=0, le=1, description="share of the budget chosen by CLS attention")


class VisPruner(PreLLM):
    name: ClassVar[str] = "vispruner"
    description: ClassVar[str] = (
        "important patches by CLIP [CLS] attention + diverse patches by de-duplication"
    )
    Params: ClassVar[type[BaseModel]] = Params

    def reduce_one(self, bb, batch, i, k):
        state = clip_state(batch, i, self.name)
        attn, _, macs = cls_attention(bb, state)
        n_imp = round(k * self.params.important_ratio)
        imp = top_k(attn, n_imp)
        n = attn.numel()
        # the other patches in ascending order: stable sort of the importance mask, first n - |imp|
        # (static sizes throughout: nothing is read on the host)
        remain = _without(torch.arange(n, device=attn.device), imp)
        feats = F.normalize(state["h_out"][1:].float(), dim=-1)
        target = k - n_imp
        while remain.numel() > target:
            a, b = remain[0::2], remain[1::2]
            if b.numel() == 0:
                remain = remain[:target]
                break
            scores = (feats[a] @ feats[b].T).max(1).values
            macs += float(a.numel() * b.numel() * feats.shape[1])
            drop = min(8, remain.numel() - target, a.numel())
            gone = torch.sort(scores, descending=True, stable=True).indices[:drop]
            remain = _without(remain, 2 * gone)  # a's j-th entry is remain's (2j)-th
        keep = torch.sort(torch.cat([imp, remain])).values
        return ReducedVisual(visual_embeds(batch, i)[keep], keep), macs


def _without(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """x [m] without the entries at the distinct positions ``pos``, order kept (size m - |pos|)."""
    mask = torch.zeros(x.numel(), dtype=torch.int8, device=x.device)
    mask[pos] = 1
    return x[torch.sort(mask, stable=True).indices[: x.numel() - pos.numel()]]
