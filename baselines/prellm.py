"""Shared shape of the pre-LLM methods: a budget knob and a reducer applied before layer 0."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from harness.models.method import Method
from harness.models.plan import ReducedVisual, VisualPlan

from .common import kept_count


class BudgetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    budget: float = Field(128, gt=0, description="visual tokens fed to the LLM, of 576")


class PreLLM(Method):
    """Subclasses implement ``reduce_one(bb, batch, i, k) -> (ReducedVisual, overhead MACs)``."""

    stage: ClassVar = "pre-llm"
    Params: ClassVar[type[BaseModel]] = BudgetParams

    def apply(self, plan: VisualPlan, backbone: Any) -> VisualPlan:
        return plan.with_reducer(self)

    def k(self, n_visual: int) -> int:
        return kept_count(self.params.budget, n_visual)

    def reduce(self, bb: Any, batch: Any) -> list[ReducedVisual]:
        out = []
        for i in range(batch.batch_size):
            n = int((batch.token_type[i] == 2).sum())
            out.append(self.reduce_one(bb, batch, i, self.k(n))[0])
        return out

    def overhead_macs(self, bb: Any, batch: Any) -> float:
        """MACs the reduction itself spends (counted as overhead), for sample 0."""
        n = int((batch.token_type[0] == 2).sum())
        return self.reduce_one(bb, batch, 0, self.k(n))[1]

    def reduce_one(self, bb: Any, batch: Any, i: int, k: int) -> tuple[ReducedVisual, float]:
        raise NotImplementedError
