"""VisPruner: important patches by CLS attention, then diverse ones by ToMe-style de-duplication.

Follows the official code (Theia-4869/VisPruner, llava/model/llava_arch.py ``encode_images``), which
docs/baselines.md §3.3 summarises:
Important: the top int(k x r) patches by CLS attention of CLIP layer -2 (mean over heads); int, not
round, as the code takes ``int(visual_token_num * important_ratio)``.
Diverse: the other patches in descending CLS-attention order form the list (cosine similarity of the
layer -2 features).  Each round splits the current list alternately into A (even positions) and B
(odd); each a scores its best match in B; the min(8, |list| - (k - int(k x r))) highest-scoring a are
dropped; the list is rebuilt as the kept a (by descending score) followed by B, and the next round
splits that list.  Until k - int(k x r) remain.  Output: the union, ascending; no merging.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from harness.models.plan import ReducedVisual

from .clip_attention import clip_state, cls_attention, visual_embeds
from .prellm import PreLLM


class VisPruner(PreLLM):
    name: ClassVar[str] = "vispruner"
    description: ClassVar[str] = (
        "important patches by CLIP [CLS] attention + diverse patches by de-duplication"
    )
    reference: ClassVar[dict[str, str]] = {
        "repository": "Theia-4869/VisPruner",
        "commit": "aefa01adc7c7ce6334e880c88225e90cede760d1",
        "file": "llava/model/llava_arch.py",
        "rule": "encode_images",
    }
    budget: float = Field(128, gt=0, description="visual tokens fed to the LLM, of 576")
    important_ratio: float = Field(0.5, gt=0, le=1, description="share of the budget chosen by CLS attention")

    def reduce_one(self, bb, batch, i, k):
        state = clip_state(batch, i, self.name)
        attn, _, macs = cls_attention(bb, state)
        n_imp = int(k * self.important_ratio)
        # patches by descending attention (ties toward the lower index): the first n_imp are the
        # important ones, the rest start the de-duplication list in that order (static sizes)
        order = torch.sort(attn, descending=True, stable=True).indices
        imp, remain = order[:n_imp], order[n_imp:]
        feats = F.normalize(state["h_out"][1:].float(), dim=-1)
        target = k - n_imp
        while target > 0 and remain.numel() > target:
            a, b = remain[0::2], remain[1::2]
            if b.numel() == 0:
                remain = remain[:target]
                break
            scores = (feats[a] @ feats[b].T).max(1).values
            macs += float(a.numel() * b.numel() * feats.shape[1])
            drop = min(8, remain.numel() - target, a.numel())
            distinct = torch.sort(scores, descending=True, stable=True).indices[drop:]
            remain = torch.cat([a[distinct], b])  # kept a by descending score, then B
        keep = torch.sort(torch.cat([imp, remain]) if target > 0 else imp).values
        return ReducedVisual(visual_embeds(batch, i)[keep], keep), macs
