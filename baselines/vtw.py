"""VTW (Visual Tokens Withdrawal): visual tokens take part in layers 0..K-1 only.

From layer K on they are withdrawn: no queries, no keys/values, no FFN, no KV-cache entries.
Positions keep.  Default K = half the depth (ShortV compares K = 16 for 7B, 20 for 13B).
"""

from __future__ import annotations

from dataclasses import replace
from dataclasses import replace as dc_replace
from typing import Any, ClassVar

from pydantic import Field

from harness.models.method import Method, MethodError, PaperRow
from harness.models.plan import INVISIBLE, VisualPlan


class VTW(Method):
    name: ClassVar[str] = "vtw"
    stage: ClassVar = "in-llm"
    description: ClassVar[str] = "withdraw all visual tokens from layer K on"
    reference: ClassVar[dict[str, str]] = {
        "repository": "unknown (paper: arXiv 2405.05803)",
        "commit": "",
        "file": "",
        "rule": "the paper's rule: visual tokens withdrawn from layer K on",
    }
    k: int | None = Field(None, ge=0, description="layers that see visual tokens (default: half the depth)")

    def validate_for(self, backbone: Any) -> None:
        if self.k is not None and self.k > backbone.num_layers:
            raise MethodError(f"method 'vtw': k={self.k} exceeds the {backbone.num_layers} layers")

    def apply(self, plan: VisualPlan, backbone: Any) -> VisualPlan:
        k = self.k if self.k is not None else backbone.num_layers // 2
        layers = [
            lp if i < k else replace(INVISIBLE, drop_before=lp.drop_before)
            for i, lp in enumerate(plan.layers)
        ]
        return dc_replace(plan, layers=tuple(layers))

    @classmethod
    def paper_rows(cls, backbone: Any) -> list[PaperRow]:
        """ShortV Table 1 compares VTW at K = 16 (7B) and K = 20 (13B)."""
        k = {32: 16, 40: 20}.get(backbone.num_layers) if backbone.family in ("llava", "llava_next") else None
        if k is None or backbone.hidden_size == 2560:  # not the 3B model
            return []
        row = {"published": {"tflops": 4.7, "ratio": 0.55}, "source": "ShortV Table 1"}
        published = row if backbone.geometry.name == "llava-1.5-7b" else {}
        return [PaperRow(f"K={k}", {"vtw": {"k": k}}, **published)]
