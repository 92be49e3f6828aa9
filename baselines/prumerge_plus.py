"""PruMerge+ (fixed-k, labelled ``prumerge_plus[fixed]`` in the spec): outliers + spatial samples, merged.

Importance: CLS attention of the last CLIP layer with all dims as one head.  Keep the IQR outliers
(Q3 + 1.5 IQR; the top k-1 by attention if there are more), fill to k-1 with uniform-grid patches
(highest attention first); each kept token adds the attention-weighted features of its 32 most
key-similar other patches; one more token = the attention-weighted sum of all pruned patches.  Then
the projector.  (baselines.md 3.4)
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from harness.models.plan import ReducedVisual

from .clip_attention import clip_state, cls_attention, project
from .common import top_k
from .prellm import PreLLM

NEIGHBOURS = 32


class PruMergePlus(PreLLM):
    name: ClassVar[str] = "prumerge_plus"
    description: ClassVar[str] = (
        "CLIP-attention outliers + spatial samples, merged with their neighbours (fixed k)"
    )

    def reduce_one(self, bb, batch, i, k):
        state = clip_state(batch, i, self.name)
        attn, keys, macs = cls_attention(bb, state, last_layer=True)
        feats = state["h_out"][1:]
        n = int(feats.shape[0])
        q1, q3 = torch.quantile(attn.float(), torch.tensor([0.25, 0.75], device=attn.device))
        outliers = (attn > q3 + 1.5 * (q3 - q1)).nonzero().flatten()
        budget = max(1, k - 1)
        if outliers.numel() > budget:
            outliers = top_k(attn, budget)
        chosen = set(outliers.tolist())
        side = int(round(n**0.5))
        stride = max(1, int(round((n / max(1, budget)) ** 0.5)))
        grid = [
            r * side + c for r in range(0, side, stride) for c in range(0, side, stride) if r * side + c < n
        ]
        dev = attn.device
        grid_idx = torch.tensor([j for j in grid if j not in chosen], dtype=torch.long, device=dev)
        fill = grid_idx[torch.sort(attn[grid_idx], descending=True, stable=True).indices][
            : budget - len(chosen)
        ]
        keep = torch.sort(
            torch.cat([torch.tensor(sorted(chosen), dtype=torch.long, device=dev), fill])
        ).values
        kn = F.normalize(keys.float(), dim=-1)
        sim = kn[keep] @ kn.T
        macs += float(keep.numel() * n * keys.shape[1])
        sim[torch.arange(keep.numel(), device=dev), keep] = -float("inf")
        nb = torch.topk(sim, min(NEIGHBOURS, n - 1), dim=1).indices  # [k-1, 32]
        weighted = feats * attn[:, None]
        merged = feats[keep] + weighted[nb].sum(1)
        pruned = torch.ones(n, dtype=torch.bool, device=dev)
        pruned[keep] = False
        summary = weighted[pruned].sum(0, keepdim=True)
        tokens = torch.cat([merged, summary]) if k > 1 else summary
        anchors = torch.cat([keep, keep[-1:]]) if k > 1 else torch.zeros(1, dtype=torch.long, device=dev)
        x, pmacs = project(bb, tokens)
        return ReducedVisual(x, anchors), macs + pmacs
