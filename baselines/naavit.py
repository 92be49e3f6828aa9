"""NAAViT (SAISA paper): visual tokens are never attention queries; their FFN is kept.

seebench's reading (docs/seed-methods.md §6): text reads visual keys normally, visual K/V come from
the current visual state, original positions, visual K/V cached in every layer.  Training-free use on
a stock checkpoint is an ablation (the paper retrains).
"""

from __future__ import annotations

from dataclasses import replace
from dataclasses import replace as dc_replace
from typing import Any, ClassVar

from harness.models.method import Method, PaperRow
from harness.models.plan import VisualPlan


class NAAViT(Method):
    name: ClassVar[str] = "naavit"
    stage: ClassVar = "structural"
    description: ClassVar[str] = "visual tokens never queried, FFN kept (no attention among visual tokens)"
    reference: ClassVar[dict[str, str]] = {
        "repository": "icip-cas/SAISA",
        "commit": "53a3670",
        "file": "llava_llama.py",
        "rule": "NAAViT: SAISA's attention block without its projectors",
    }

    def apply(self, plan: VisualPlan, backbone: Any) -> VisualPlan:
        return dc_replace(plan, layers=tuple(replace(lp, visual_query=False) for lp in plan.layers))

    @classmethod
    def paper_rows(cls, backbone: Any) -> list[PaperRow]:
        return [PaperRow("all layers")] if backbone.family in ("llava", "llava_next") else []
