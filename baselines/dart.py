"""DART: keep visual tokens that duplicate the pivots least (baselines.md 2.4).

After layer K-1: pivots = the 4 visual tokens and the 4 text tokens (after the image) with the
largest L1 norm of their post-RoPE key; for each pivot in ascending position order, among the
visual tokens not yet kept, keep the floor(B/8) with the lowest cosine similarity to the pivot's
final-normed hidden state.  Kept = 4 + 8 x floor(B/8) visual tokens.  No attention scores needed;
positions keep.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from harness.models.method import Method, MethodError
from harness.models.plan import VisualPlan
from harness.models.selection import SampleCounts, SelectContext, slots_of, top_k_slots

from .common import kept_count

PIVOTS = 4


@dataclass(frozen=True)
class DuplicationPivots:
    budget: float
    positions: str = "keep"
    needs: frozenset = frozenset({"keys", "hidden_out"})

    def overhead_macs(self, n_visual: int, hidden: int) -> float:
        """Cosine similarities of every present visual token to the 8 pivots (counted as overhead)."""
        return float(2 * PIVOTS * n_visual * hidden)

    def plan_counts(self, c: SampleCounts) -> tuple[int, int, list[int]]:
        """(visual pivots, text pivots, tokens each pivot adds) for one sample, on the host."""
        per = max(0, (kept_count(self.budget, c.n_visual) - PIVOTS) // (2 * PIVOTS))
        n_vp, n_tp = min(PIVOTS, c.present), min(PIVOTS, c.n_text)
        untaken = c.present - n_vp
        adds = []
        for _ in range(n_vp + n_tp):
            adds.append(min(per, untaken))
            untaken -= adds[-1]
        return n_vp, n_tp, adds

    def kept(self, counts: SampleCounts) -> int:
        n_vp, _, adds = self.plan_counts(counts)
        return n_vp + sum(adds)

    def select(self, ctx: SelectContext):
        norm = ctx.extra["final_norm"]
        b, v = ctx.valid.shape
        t = ctx.text_valid.shape[1]
        dev = ctx.valid.device
        plans = [self.plan_counts(c) for c in ctx.counts]
        # per pivot slot (4 visual then 4 text, each in ascending position), how many it adds per sample
        steps = [[0] * b for _ in range(2 * PIVOTS)]
        for i, (n_vp, _, adds) in enumerate(plans):
            for j, a in enumerate(adds):
                steps[j if j < n_vp else PIVOTS + j - n_vp][i] = a
        widths = [max(s) for s in steps]
        host = np.zeros((2 + 2 * PIVOTS, b, max([PIVOTS, *widths])), dtype=bool)
        for i, (n_vp, n_tp, _) in enumerate(plans):
            host[0, i, :n_vp] = True
            host[1, i, :n_tp] = True
            for j in range(2 * PIVOTS):
                host[2 + j, i, : steps[j][i]] = True
        masks = torch.from_numpy(host).to(dev)  # one upload of host counts
        vp_ok, tp_ok = masks[0, :, : min(PIVOTS, v)], masks[1, :, : min(PIVOTS, t)]
        v_piv = top_k_slots(ctx.keys.float().abs().sum(-1).masked_fill(~ctx.valid, float("-inf")), PIVOTS)
        t_piv = top_k_slots(
            ctx.text_keys.float().abs().sum(-1).masked_fill(~ctx.text_valid, float("-inf")), PIVOTS
        )
        hv = F.normalize(norm(ctx.hidden).float(), dim=-1)
        ht = F.normalize(norm(ctx.text_hidden).float(), dim=-1)
        taken = (~ctx.valid) | torch.zeros_like(ctx.valid).scatter(1, v_piv, vp_ok)
        # pivots in ascending position order: visual pivots come before the text after the image
        vps = torch.sort(torch.where(vp_ok, v_piv, v), dim=1).values.clamp(max=max(v - 1, 0))
        tps = torch.sort(torch.where(tp_ok, t_piv, t), dim=1).values.clamp(max=max(t - 1, 0))
        pv = torch.gather(hv, 1, vps[..., None].expand(-1, -1, hv.shape[-1]))
        pt = torch.gather(ht, 1, tps[..., None].expand(-1, -1, ht.shape[-1]))
        pivots = [pv[:, j] for j in range(pv.shape[1])] + [pt[:, j] for j in range(pt.shape[1])]
        slots = list(range(pv.shape[1])) + [PIVOTS + j for j in range(pt.shape[1])]
        for j, p in zip(slots, pivots, strict=True):
            if not widths[j]:
                continue
            sim = (hv @ p[..., None])[..., 0].masked_fill(taken, float("inf"))
            pick = torch.sort(sim, dim=1, stable=True).indices[:, : widths[j]]
            taken = taken | torch.zeros_like(taken).scatter(1, pick, masks[2 + j, :, : widths[j]])
        return slots_of(taken & ctx.valid, ctx.k)


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(2, ge=1, description="first layer that runs on the kept tokens")
    budget: float = Field(128, gt=0, description="visual tokens kept from layer K on, of 576")


class DART(Method):
    name: ClassVar[str] = "dart"
    stage: ClassVar = "in-llm"
    description: ClassVar[str] = "keep the visual tokens least similar to key-norm pivots (duplication-aware)"
    Params: ClassVar[type[BaseModel]] = Params

    def validate_for(self, backbone: Any) -> None:
        if self.params.k >= backbone.num_layers:
            raise MethodError(f"method 'dart': k={self.params.k} must be < the {backbone.num_layers} layers")

    def apply(self, plan: VisualPlan, backbone: Any) -> VisualPlan:
        li = self.params.k - 1
        return plan.with_layer(li, replace(plan.layers[li], drop_after=DuplicationPivots(self.params.budget)))
