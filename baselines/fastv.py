"""FastV: after layer K-1, keep the visual tokens the last prompt token attends to most.

Score (docs/baselines.md §2.1): layer K-1's attention probabilities of the last prompt token over all keys,
mean over heads, visual columns -- one row computed inside the executor, not eager attention.  Layers
K.. run on the kept tokens; positions keep their original ids; decode continues at the full length.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from pydantic import Field

from harness.models.method import Method, MethodError, PaperRow
from harness.models.plan import VisualPlan
from harness.models.selection import SampleCounts, SelectContext, top_k_slots

from .common import kept_count


@dataclass(frozen=True)
class TopKAttention:
    """Keep round(budget / 576 x n_visual) tokens by the last prompt token's attention."""

    budget: float
    positions: str = "keep"
    needs: frozenset = frozenset({"attn_last"})

    def kept(self, counts: SampleCounts) -> int:
        return min(kept_count(self.budget, counts.n_visual), counts.present)

    def select(self, ctx: SelectContext):
        assert ctx.scores is not None  # needs attn_last
        return top_k_slots(ctx.scores, ctx.k)


class FastV(Method):
    name: ClassVar[str] = "fastv"
    stage: ClassVar = "in-llm"
    description: ClassVar[str] = "drop visual tokens after layer K-1 by the last token's attention"
    reference: ClassVar[dict[str, str]] = {
        "repository": "pkunlp-icler/FastV",
        "commit": "d1659729b5bf1be225e99ee15783deeea80f63b1",
        "file": "src/transformers/src/transformers/models/llama/modeling_llama.py",
        "rule": "LlamaModel.forward, FASTV_INPLACE branch at AGG_LAYER",
    }
    k: int = Field(2, ge=1, description="first layer that runs on the kept tokens (scores from layer K-1)")
    budget: float | None = Field(None, gt=0, description="visual tokens kept, of 576 (default: ratio)")
    ratio: float = Field(0.5, gt=0, lt=1, description="drop ratio R when no budget is given")

    def kept_of_576(self) -> float:
        return self.budget if self.budget is not None else 576 * (1 - self.ratio)

    def validate_for(self, backbone: Any) -> None:
        if self.k >= backbone.num_layers:
            raise MethodError(f"method 'fastv': k={self.k} must be < the {backbone.num_layers} layers")

    def apply(self, plan: VisualPlan, backbone: Any) -> VisualPlan:
        li = self.k - 1
        return plan.with_layer(li, replace(plan.layers[li], drop_after=TopKAttention(self.kept_of_576())))

    @classmethod
    def paper_rows(cls, backbone: Any) -> list[PaperRow]:
        """FastV's K=2, R=50% (not on the Qwen-VL models), and on LLaVA-1.5 the kept counts x whose layer
        average (2 v + (L - 2) x) / L is 192 / 128 / 64."""
        if backbone.family in ("qwen2_vl", "qwen2_5_vl"):
            return []
        rows = [PaperRow("K=2 R=50%")]
        if backbone.family == "llava":
            n, v = backbone.num_layers, backbone.geometry.v
            for target in (192, 128, 64):
                x = round((target * n - 2 * v) / (n - 2))
                rows.append(
                    PaperRow(f"{target} layer-avg (K=2 keep {x})", {"fastv": {"budget": x * 576 / v}})
                )
        return rows
