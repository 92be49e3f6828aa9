"""SparseVLM (v1.0): text raters score the visual tokens inside chosen layers; deleted ones are recycled.

Rule (docs/baselines.md §2.3; v1.0 = the ``main`` branch code):

1. Raters, once per prompt, on the LLM input embeddings: for each visual token a softmax over the
   text tokens T (after the image) of the unscaled dot products H_V . H_T^T; the mean over visual
   tokens is each text token's relevance; raters = the text tokens with relevance > the mean (all
   of T when none is, e.g. a one-token question: seebench).
2. Pruning layer l runs on the current set (attention, FFN and KV cache see every token).  Score of
   a visual token = layer l's attention probability on it (fp32 softmax over all allowed keys), mean
   over heads, then over raters; only the rater rows are computed.  The top k_s are kept (ties
   toward the lower index) and the drop applies to layer l's output.
3. Recycling: of the d deleted tokens, the top int(0.3 d) + 1 by score are clustered with DPC-kNN
   into int(c / 10) + 1 clusters; each cluster's states (layer l's output) are averaged into one
   token, placed right after the kept visual tokens, in the order of the cluster centres.  The next
   stage's visual count is kept + clusters.
   DPC-kNN: d_ij = ||x_i - x_j|| / sqrt(hidden); density rho_i = exp(-mean d^2 to its k nearest,
   itself included, k = the cluster count as in the code); delta_i = distance to the nearest denser
   token (the largest distance for the densest); centres = the top clusters by rho * delta; every
   token joins its nearest centre.  Ties break toward the lower index: of two equally dense tokens
   the lower-index one counts as denser (the code adds random noise to the densities instead).

Published defaults (code ``score.py``): tokens kept after layers [2, 6, 15], of 576 visual tokens
(other counts keep the same fraction), by ``budget`` (the authors' layer-averaged label):
192 -> 300/200/110, 128 -> 303/110/36, 96 -> 238/48/26, 64 -> 66/30/17.  The code uses layers
[2, 6, 15] for every LLaVA; decoders of 16 layers or fewer (tiny lab, test models) get
round-half-up(l x L / 32), capped at L - 2.

Positions: v1.0 renumbers.  After each stage the survivors (system, kept, merged, text) get
contiguous ids 0..n-1 and generated tokens continue at the compacted length (docs/methods.md §2.3; M-RoPE
keeps 3-D ids, a merged token takes its centre's).  Drop and mask modes: the executor writes the kept
and merged tokens into the first rows of the visual span (rows keep their causal order) and drops
(drop mode) or masks (mask mode) the rest, so both modes run the same sequence and drop == mask.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from harness.models.method import Method, MethodError
from harness.models.plan import VisualPlan
from harness.models.selection import SampleCounts, SelectContext, slots_of, top_k_slots

from .common import check_layers, kept_count, top_k

VISUAL, TEXT = 2, 3  # TokenType values
LAYERS: tuple[int, ...] = (2, 6, 15)
KEEP = {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)}
RECYCLE = 0.3  # share of the deleted tokens that are recycled (plus one)
PER_CLUSTER = 10  # recycled tokens per cluster


@dataclass(frozen=True)
class TextRaters:
    """Per sample: which of its text tokens are raters (relevance above the mean) [B, T] bool."""

    def choose(self, batch: Any) -> torch.Tensor:
        lay = batch.layout
        spans = lay.visual_spans()
        text = [np.flatnonzero(lay.ttype[i] == TEXT) for i in range(batch.batch_size)]
        width = max((r.size for r in text), default=0)
        out = torch.zeros(batch.batch_size, width, dtype=torch.bool, device=batch.embeds.device)
        for i, ((vs, ve), rows) in enumerate(zip(spans, text, strict=True)):
            if not rows.size:
                continue
            hv = batch.embeds[i, vs:ve].float()
            ht = batch.embeds[i, int(rows[0]) : int(rows[-1]) + 1].float()  # text follows the image
            relevance = torch.softmax(hv @ ht.transpose(0, 1), dim=-1).mean(0)
            raters = relevance > relevance.mean()
            out[i, : rows.size] = torch.where(raters.any(), raters, torch.ones_like(raters))  # none: all
        return out


def dpc_knn(x: torch.Tensor, clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peak clustering with kNN density: (centre indices in centre order, cluster of each row)."""
    x = x.float()
    n = x.shape[0]
    sq = (x * x).sum(-1)
    d2 = (sq[:, None] + sq[None, :] - 2 * (x @ x.transpose(0, 1))).clamp(min=0) / x.shape[-1]
    ids = torch.arange(n, device=x.device)
    d2[ids, ids] = 0
    dist = ((d2 + d2.transpose(0, 1)) / 2).sqrt()  # exactly symmetric: equal densities tie exactly
    nearest = torch.sort(dist, dim=-1, stable=True).values[:, :clusters]
    density = torch.exp(-(nearest**2).mean(-1))
    # [i, j]: j is denser than i; equal densities: the lower index counts as denser
    same = density[None, :] == density[:, None]
    denser = (density[None, :] > density[:, None]) | (same & (ids[None, :] < ids[:, None]))
    delta = torch.where(denser, dist, dist.max()).min(-1).values
    centres = top_k(density * delta, clusters)
    member = torch.sort(dist[:, centres], dim=-1, stable=True).indices[:, 0]
    member[centres] = torch.arange(clusters, device=x.device)
    return centres, member


def recycled_counts(deleted: int) -> tuple[int, int]:
    """(tokens recycled, clusters) for d deleted tokens."""
    if deleted == 0:
        return 0, 0
    c = int(RECYCLE * deleted) + 1
    return c, int(c / PER_CLUSTER) + 1


@dataclass(frozen=True)
class RaterTopK:
    """One SparseVLM stage: keep the top ``keep`` (of 576) by rater attention, recycle the rest."""

    keep: float
    stage: int  # 0 = the first pruning layer (it also pays for choosing the raters)
    positions: str = "renumber"
    needs: frozenset = frozenset({"attn_rows", "hidden_out"})
    rows: TextRaters = TextRaters()

    def kept(self, counts: SampleCounts) -> int:
        return min(kept_count(self.keep, counts.n_visual), counts.present)

    def recycled(self, counts: SampleCounts, kept: int) -> int:
        return recycled_counts(counts.present - kept)[1]

    def select(self, ctx: SelectContext) -> torch.Tensor:
        assert ctx.scores is not None  # needs attn_rows
        return top_k_slots(ctx.scores, ctx.k)

    def recycle(self, ctx: SelectContext, chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Merged states [B, R, h] and, per merged token, the slot of its centre (whose identity it
        takes); every count comes from the host, so each sample's clustering has static shapes."""
        b = ctx.batch_size
        made = [recycled_counts(c.present - k) for c, k in zip(ctx.counts, ctx.kept, strict=True)]
        width = max((m for _, m in made), default=0)
        hidden, scores = ctx.hidden, ctx.scores
        assert hidden is not None and scores is not None  # needs hidden_out and attn_rows
        embeds = hidden.new_zeros(b, width, hidden.shape[-1])
        anchors = torch.zeros(b, width, dtype=torch.long, device=hidden.device)
        for i, ((count, clusters), c, k) in enumerate(zip(made, ctx.counts, ctx.kept, strict=True)):
            if not count:
                continue
            deleted = ctx.valid[i].clone()
            deleted[chosen[i, :k]] = False
            gone = slots_of(deleted[None], c.present - k)[0]  # deleted slots, ascending
            pick = gone[top_k_slots(scores[i, gone], count)]  # by score, highest first
            x = hidden[i, pick].float()
            centres, member = dpc_knn(x, clusters)
            onehot = (member[None, :] == torch.arange(clusters, device=x.device)[:, None]).float()
            embeds[i, :clusters] = ((onehot @ x) / onehot.sum(1, keepdim=True)).to(hidden.dtype)
            anchors[i, :clusters] = pick[centres]
        return embeds, anchors

    def sample_overhead_macs(self, n_vis: int, n_visual: int, n_text: int, hidden: int) -> float:
        """Raters (first stage: H_V . H_T^T) and recycling (pairwise distances, cluster means)."""
        macs = float(n_visual * n_text * hidden) if self.stage == 0 else 0.0
        c, m = recycled_counts(n_vis - min(kept_count(self.keep, n_visual), n_vis))
        return macs + float(c * c * hidden + m * c * hidden)


class SparseVLM(Method):
    name: ClassVar[str] = "sparsevlm"
    stage: ClassVar = "in-llm"
    description: ClassVar[str] = (
        "text-rater attention prunes visual tokens after layers 2/6/15; deleted tokens recycled (v1.0)"
    )
    reference: ClassVar[dict[str, str]] = {
        "repository": "Gumpest/SparseVLMs",
        "commit": "26a5f48813c46cd1c7364160354e7fdd3febaa67",
        "file": "llava/model/language_model/sparse_llama/modelling_sparse_llama.py; score.py; utils.py",
        "rule": "LlamaModel.forward, attn_postprocess_topk, cluster_and_merge (v1.0, main)",
    }
    budget: int = Field(192, description="layer-averaged label 192, 128, 96 or 64: the published keep lists")
    keep: list[int] | None = Field(None, description="visual tokens kept after each pruning layer, of 576")
    layers: list[int] | None = Field(None, description="pruning layers (default 2, 6, 15)")

    def schedule(self, num_layers: int) -> tuple[list[int], list[int]]:
        p = self
        if p.keep is None and p.budget not in KEEP:
            raise MethodError(
                f"method 'sparsevlm': budget {p.budget} has no published schedule; use 192, 128, 96 or 64 or give keep"
            )
        keep = list(p.keep if p.keep is not None else KEEP[p.budget])
        if any(k < 1 for k in keep):
            raise MethodError(f"method 'sparsevlm': keep values must be >= 1, got {keep}")
        if p.layers is not None:
            layers = list(p.layers)
        elif num_layers > LAYERS[-1] + 1:
            layers = list(LAYERS)
        else:
            layers = [min(num_layers - 2, int(i * num_layers / 32 + 0.5)) for i in LAYERS]
        check_layers("sparsevlm", "layers", layers, num_layers)
        if any(a >= b for a, b in zip(layers, layers[1:], strict=False)):
            hint = (
                "" if p.layers is not None else f" (a {num_layers}-layer decoder is too shallow; give layers)"
            )
            raise MethodError(f"method 'sparsevlm': layers {layers} must be strictly increasing{hint}")
        if len(keep) != len(layers):
            raise MethodError(f"method 'sparsevlm': keep has {len(keep)} values for layers {layers}")
        return layers, keep

    def validate_for(self, backbone: Any) -> None:
        self.schedule(backbone.num_layers)

    def apply(self, plan: VisualPlan, backbone: Any) -> VisualPlan:
        layers, keep = self.schedule(backbone.num_layers)
        out = plan
        for stage, (li, k) in enumerate(zip(layers, keep, strict=True)):
            out = out.with_layer(li, replace(out.layers[li], drop_after=RaterTopK(k, stage)))
        return out
