"""PruMerge+ (fixed-k, labelled ``prumerge_plus[fixed]`` in the spec): outliers + spatial samples, merged.

Importance: CLS attention of the last CLIP layer with all dims as one head, from that layer's q_proj /
k_proj applied to layer_norm1 of the layer's INPUT, as the official forward hooks see them
(42Shawn/LLaVA-PruMerge, llava/model/multimodal_encoder/clip_encoder.py
``token_prune_merge_advanced_plus``: hooks on ``layers[23].self_attn.{q,k}_proj``, softmax(q k^T
C^-0.5)); on a feature layer -1 backbone that input is the feature layer's input, on -2 its output
(``clip_attention.cls_attention``).  Keep the IQR outliers
(Q3 + 1.5 IQR; the top k-1 by attention if there are more), fill to k-1 with uniform-grid patches
(highest attention first); each kept token adds the attention-weighted features of its 32 most
key-similar other patches; one more token = the attention-weighted sum of all pruned patches.  Then
the projector.  (docs/baselines.md §3.4)

Computed without host reads where the count is static: the patches are ranked outliers first (by
attention, descending), then the other grid patches (by attention, descending), and the first k-1
are kept, which is the rule above whenever the grid alone has k-1 patches.  When it has fewer (budget
192 of 576: a 144-patch grid) the kept count min(k-1, |outliers + grid|) depends on the data, and that
one number per sample is read on the host, once per prefill for the whole batch (``host_reads``).

Where the fixed-k mode departs from the official (adaptive) code: the official keeps every IQR
outlier (``topk(int(N * ratio))``, ratio = outlier share) and adds the 1-D arithmetic sequence
``arange(0, 575, int(int(1 / ratio) / 3))`` of flattened patch indices not already kept, so its count
is data-dependent; seebench caps at k-1 and samples a square grid of stride round(sqrt(n / (k-1))),
highest attention first.  The official tokens come in selection order (outliers by descending
attention, then the sequence), seebench's in ascending patch order.  Attention, the 32-neighbour
key-similarity merge (other kept and pruned patches, weights = CLS attention, unnormalised) and the
pruned-summary token are the official ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from harness.models.plan import ReducedVisual

from .clip_attention import clip_state, cls_attention, project
from .prellm import VISUAL, PreLLM

NEIGHBOURS = 32
OUTLIER, GRID, OTHER = 0, 1, 2  # ranking groups


def grid_indices(n: int, budget: int) -> list[int]:
    """The uniform-grid patches for ``budget`` kept tokens of n (a side x side grid), ascending."""
    side = int(round(n**0.5))
    stride = max(1, int(round((n / max(1, budget)) ** 0.5)))
    return [r * side + c for r in range(0, side, stride) for c in range(0, side, stride) if r * side + c < n]


@dataclass
class _Ranked:
    """One sample up to the data-dependent count: attention, keys, features and the ranking."""

    attn: torch.Tensor
    keys: torch.Tensor
    feats: torch.Tensor
    macs: float
    order: torch.Tensor  # patches by (group, attention descending), ties toward the lower index
    group: torch.Tensor  # OUTLIER / GRID / OTHER per patch
    budget: int  # k - 1 merged tokens wanted (at least 1)
    static: bool  # the grid alone fills the budget: exactly ``budget`` patches kept


class PruMergePlus(PreLLM):
    name: ClassVar[str] = "prumerge_plus"
    description: ClassVar[str] = (
        "CLIP-attention outliers + spatial samples, merged with their neighbours (fixed k)"
    )
    reference: ClassVar[dict[str, str]] = {
        "repository": "42Shawn/LLaVA-PruMerge",
        "commit": "1ca8b2baa21b3614a8f1672c781b15af573f5b13",
        "file": "llava/model/multimodal_encoder/clip_encoder.py",
        "rule": "token_prune_merge_advanced_plus",
    }
    host_reads: ClassVar[int] = 1  # the kept count, only when the grid is smaller than k-1

    def reduce(self, bb, batch):
        ks = [self.kept(n) for n in batch.layout.count(VISUAL)]
        ranked = [self._rank(bb, batch, i, k) for i, k in enumerate(ks)]
        counts = [r.budget for r in ranked]  # a dynamic one is replaced below
        dynamic = [i for i, r in enumerate(ranked) if not r.static]
        if dynamic:  # one host read for the whole batch
            found = torch.stack([(ranked[i].group != OTHER).sum() for i in dynamic]).tolist()
            for i, c in zip(dynamic, found, strict=True):
                counts[i] = min(ranked[i].budget, int(c))
        return [self._merge(bb, r, c, k)[0] for r, c, k in zip(ranked, counts, ks, strict=True)]

    def reduce_one(self, bb, batch, i, k):
        r = self._rank(bb, batch, i, k)
        count = r.budget if r.static else min(r.budget, int((r.group != OTHER).sum()))
        return self._merge(bb, r, count, k)

    def _rank(self, bb, batch, i, k) -> _Ranked:
        state = clip_state(batch, i, self.name)
        attn, keys, macs = cls_attention(bb, state, last_layer=True)
        feats = state["h_out"][1:]
        n = int(feats.shape[0])
        dev = attn.device
        q1, q3 = torch.quantile(attn.float(), torch.tensor([0.25, 0.75], device=dev))
        is_out = attn > q3 + 1.5 * (q3 - q1)
        budget = max(1, k - 1)
        grid = grid_indices(n, budget)
        group = torch.full((n,), OTHER, dtype=torch.long, device=dev)
        group[torch.tensor(grid, dtype=torch.long, device=dev)] = GRID
        group = group.masked_fill(is_out, OUTLIER)
        # by attention (descending, ties toward the lower index), then stably by group: outliers
        # first, then the other grid patches.  More than k-1 outliers: the first k-1 are the top k-1
        # by attention, as the rule cuts them.
        by_attn = torch.sort(attn, descending=True, stable=True).indices
        order = by_attn[torch.sort(group[by_attn], stable=True).indices]
        return _Ranked(attn, keys, feats, macs, order, group, budget, len(grid) >= budget)

    def _merge(self, bb, r: _Ranked, count: int, k: int) -> tuple[ReducedVisual, float]:
        attn, keys, feats, macs = r.attn, r.keys, r.feats, r.macs
        n = int(feats.shape[0])
        dev = attn.device
        keep = torch.sort(r.order[:count]).values
        kn = F.normalize(keys.float(), dim=-1)
        sim = kn[keep] @ kn.T
        macs += float(count * n * keys.shape[1])
        sim[torch.arange(count, device=dev), keep] = -float("inf")
        nb = torch.topk(sim, min(NEIGHBOURS, n - 1), dim=1).indices  # [k-1, 32]
        weighted = feats * attn[:, None]
        merged = feats[keep] + weighted[nb].sum(1)
        # the pruned patches in ascending order: stable sort of the kept mask, the first n - count
        is_kept = torch.zeros(n, dtype=torch.int8, device=dev)
        is_kept[keep] = 1
        pruned = torch.sort(is_kept, stable=True).indices[: n - count]
        summary = weighted[pruned].sum(0, keepdim=True)
        tokens = torch.cat([merged, summary]) if k > 1 else summary
        anchors = torch.cat([keep, keep[-1:]]) if k > 1 else torch.zeros(1, dtype=torch.long, device=dev)
        x, pmacs = project(bb, tokens)
        return ReducedVisual(x, anchors), macs + pmacs
