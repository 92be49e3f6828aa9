"""Shared shape of the pre-LLM methods: a budget knob and a reducer applied before layer 0."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from harness.models.method import Method
from harness.models.plan import ReducedVisual, VisualPlan

from .common import kept_count

VISUAL = 2  # TokenType.VISUAL


class PreLLM(Method):
    """Subclasses implement ``reduce_one(bb, batch, i, k) -> (ReducedVisual, overhead MACs)``.

    Reducers read no device value on the host (no ``.item()``, boolean-mask indexing, ``nonzero``
    ...): counts and row spans come from ``batch.layout`` and from shapes, selections use
    static-size sorts and slices, so a prefill never synchronises on a GPU
    (``tests/test_prellm_host_reads.py``)."""

    stage: ClassVar = "pre-llm"
    budget: float = Field(128, gt=0, description="visual tokens fed to the LLM, of 576")

    def apply(self, plan: VisualPlan, backbone: Any) -> VisualPlan:
        return plan.with_reducer(self)

    def kept(self, n_visual: int) -> int:
        return kept_count(self.budget, n_visual)

    def reduce(self, bb: Any, batch: Any) -> list[ReducedVisual]:
        """Every sample's reduced visual tokens; the counts come from the host layout, so nothing
        is read back from the device (``reduce_one`` implementations keep to that too)."""
        counts = batch.layout.count(VISUAL)
        return [self.reduce_one(bb, batch, i, self.kept(n))[0] for i, n in enumerate(counts)]

    def overhead_macs(self, bb: Any, batch: Any) -> float:
        """MACs the reduction itself spends (counted as overhead), for sample 0."""
        return self.reduce_one(bb, batch, 0, self.kept(batch.layout.count(VISUAL)[0]))[1]

    def reduce_one(self, bb: Any, batch: Any, i: int, k: int) -> tuple[ReducedVisual, float]:
        raise NotImplementedError
