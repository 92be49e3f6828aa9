"""random: keep a seeded random subset of the visual tokens (the control every pruning method must beat).

Seeded per sample id (docs/methods.md §2.4 rule 4), so batched and batch-1 runs keep the same tokens.  ``layer``
0 drops before the first decoder layer (pre-LLM style, positions renumbered); a later layer is the
in-LLM variant (positions keep).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from pydantic import Field

from harness.models.method import Method, MethodError
from harness.models.plan import VisualPlan
from harness.models.selection import SampleCounts, SelectContext

from .common import kept_count


@dataclass(frozen=True)
class RandomSubset:
    budget: float
    seed: int = 0
    positions: str = "renumber"
    needs: frozenset = frozenset()

    def kept(self, counts: SampleCounts) -> int:
        return min(kept_count(self.budget, counts.n_visual), counts.present)

    def select(self, ctx: SelectContext):
        # drawn on the CPU generator from host counts (the same tokens on every device, nothing
        # read from the device), then uploaded once
        out = torch.zeros(ctx.batch_size, ctx.k, dtype=torch.long)
        for i, (sid, c, k) in enumerate(zip(ctx.sample_ids, ctx.counts, ctx.kept, strict=True)):
            g = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{sid}".encode()))
            out[i, :k] = torch.randperm(c.present, generator=g)[:k]
        return out.to(ctx.valid.device)


class RandomDrop(Method):
    name: ClassVar[str] = "random"
    stage: ClassVar = "in-llm"
    description: ClassVar[str] = "keep a seeded random subset of visual tokens (control)"
    reference: ClassVar[dict[str, str]] = {
        "repository": "seebench",
        "commit": "",
        "file": "baselines/random_drop.py",
        "rule": "seebench's own control (no official code)",
    }
    budget: float = Field(128, gt=0, description="visual tokens kept, of 576")
    layer: int = Field(0, ge=0, description="drop before this layer (0: pre-LLM style)")
    seed: int = 0

    def validate_for(self, backbone: Any) -> None:
        if self.layer >= backbone.num_layers:
            raise MethodError(f"method 'random': layer={self.layer} out of range")

    def apply(self, plan: VisualPlan, backbone: Any) -> VisualPlan:
        li = self.layer
        sel = RandomSubset(self.budget, self.seed, "renumber" if li == 0 else "keep")
        return plan.with_layer(li, replace(plan.layers[li], drop_before=sel))
