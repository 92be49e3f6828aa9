"""PyramidDrop: rank visual tokens at each stage boundary with that layer's own q/k, keep fewer.

Rule (docs/baselines.md §2.2): before rank layer l, apply layer l's input norm, q/k projections and RoPE to
the incoming states; the last instruction token's softmax over all keys (mean over heads) scores the
visual tokens; keep int(576 x ratio_s) scaled to the sample's visual count.  Positions are renumbered
after every drop.  Defaults: the seebench schedules for 192 / 128 / 64 layer-averaged tokens, else
[8, 16, 24] with lambda = 0.5; on other depths the layer list scales with the depth.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from pydantic import Field

from harness.models.method import Method, MethodError, PaperRow
from harness.models.plan import VisualPlan

from .common import scaled_layers
from .fastv import TopKAttention

BUDGET_SCHEDULES = {192: ([8, 16, 24], 0.25), 128: ([2, 8, 16], 0.42), 64: ([2, 8, 16], 0.195)}


class PDrop(Method):
    name: ClassVar[str] = "pdrop"
    stage: ClassVar = "in-llm"
    description: ClassVar[str] = (
        "multi-stage drop before rank layers by the last instruction token's attention"
    )
    reference: ClassVar[dict[str, str]] = {
        "repository": "Cooperx521/PyramidDrop",
        "commit": "6444f304aee4b7edcb022839fb9e8cd07859704a",
        "file": "llava/model/modeling_llama_pdrop.py",
        "rule": "pdrop_forward, pdrop_rank_drop",
    }
    budget: int | None = Field(
        None, description="layer-averaged visual tokens: 192, 128 or 64 (seebench schedules)"
    )
    layer_list: list[int] | None = Field(None, description="rank layers (for a 32-layer decoder)")
    lam: float | None = Field(None, gt=0, lt=1, description="keep ratio per stage")

    def schedule(self, num_layers: int) -> tuple[list[int], float]:
        p = self
        if p.budget is not None and p.budget not in BUDGET_SCHEDULES:
            raise MethodError(
                f"method 'pdrop': budget {p.budget} has no schedule; use 192, 128 or 64 or give layer_list and lam"
            )
        layers, lam = BUDGET_SCHEDULES[p.budget] if p.budget is not None else ([8, 16, 24], 0.5)
        layers = p.layer_list if p.layer_list is not None else layers
        lam = p.lam if p.lam is not None else lam
        if num_layers != 32:
            layers = scaled_layers(layers, 32, num_layers)
        bad = [i for i in layers if not 0 < i < num_layers]
        if bad:
            raise MethodError(
                f"method 'pdrop': rank layers {bad} out of range for a {num_layers}-layer decoder"
            )
        return sorted(set(layers)), lam

    def validate_for(self, backbone: Any) -> None:
        self.schedule(backbone.num_layers)

    def apply(self, plan: VisualPlan, backbone: Any) -> VisualPlan:
        layers, lam = self.schedule(backbone.num_layers)
        out = plan
        for s, li in enumerate(layers, start=1):
            keep = int(576 * lam**s)
            out = out.with_layer(
                li, replace(out.layers[li], drop_before=TopKAttention(keep, positions="renumber"))
            )
        return out

    @classmethod
    def paper_rows(cls, backbone: Any) -> list[PaperRow]:
        """seebench's schedules for 192 / 128 / 64 layer-averaged tokens, on LLaVA-1.5."""
        if backbone.family != "llava":
            return []
        return [
            PaperRow(f"{b} layer-avg ({layers}, λ={lam})", {"pdrop": {"budget": b}})
            for b, (layers, lam) in BUDGET_SCHEDULES.items()
        ]
