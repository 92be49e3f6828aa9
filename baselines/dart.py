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

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from harness.models.method import Method, MethodError
from harness.models.plan import SelectContext, VisualPlan

from .common import kept_count, top_k

PIVOTS = 4


@dataclass(frozen=True)
class DuplicationPivots:
    budget: float
    positions: str = "keep"
    needs: frozenset = frozenset({"keys", "hidden_out"})

    def overhead_macs(self, n_visual: int, hidden: int) -> float:
        """Cosine similarities of every present visual token to the 8 pivots (counted as overhead)."""
        return float(2 * PIVOTS * n_visual * hidden)

    def select(self, ctx: SelectContext):
        norm = ctx.extra["final_norm"]
        out = []
        for keys, tkeys, hid, thid, n in zip(ctx.keys, ctx.text_keys, ctx.hidden, ctx.text_hidden, ctx.n_visual,
                                              strict=True):  # fmt: skip
            b = kept_count(self.budget, n)
            per = max(0, (b - PIVOTS) // (2 * PIVOTS))
            v_piv = top_k(keys.float().abs().sum(-1), PIVOTS)
            t_piv = top_k(tkeys.float().abs().sum(-1), PIVOTS)
            hv = F.normalize(norm(hid).float(), dim=-1)
            ht = F.normalize(norm(thid).float(), dim=-1)
            taken = torch.zeros(hid.shape[0], dtype=torch.bool, device=hid.device)
            taken[v_piv] = True
            # pivots in ascending position order: visual pivots come before the text after the image
            pivots = [hv[i] for i in sorted(v_piv.tolist())] + [ht[i] for i in sorted(t_piv.tolist())]
            for p in pivots:
                sim = (hv @ p[:, None])[:, 0]
                sim[taken] = float("inf")
                pick = torch.sort(sim, stable=True).indices[: min(per, int((~taken).sum()))]
                taken[pick] = True
            out.append(torch.nonzero(taken).flatten())
        return out


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
