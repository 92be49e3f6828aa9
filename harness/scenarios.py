"""Scenario kinds a suite cell can run.  Each returns (metrics, details) for one cell.

``verify``: the executor against the HF forward (dense) or drop mode against mask mode (any other
method) on a ragged batch; metrics are the same figures ``harness verify`` prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.models.backbone import Backbone, collate
from harness.models.random_models import ragged_samples
from harness.models.verify import checkpoint_samples, verify_dense, verify_plan


@dataclass
class CellContext:
    backbone: Backbone
    stack: Any  # harness.baselines.registry.Stack
    cell: Any  # harness.suite.Cell


@dataclass(frozen=True)
class ScenarioKind:
    name: str
    needs_tasks: bool
    run: Callable[[CellContext], tuple[dict[str, float], dict[str, Any]]]
    description: str = ""


def verify_inputs(bb: Backbone, n: int, seed: int) -> list[dict[str, Any]]:
    if bb.weights == "random-init" and bb.source.startswith("random:"):
        return ragged_samples(bb, n, seed)
    return checkpoint_samples(bb, n, seed)


def run_verify(ctx: CellContext) -> tuple[dict[str, float], dict[str, Any]]:
    sc = ctx.cell.scenario
    samples = verify_inputs(ctx.backbone, sc.batch_size, sc.seed)
    if not ctx.stack.methods:
        rep = verify_dense(ctx.backbone, samples, sc.max_new_tokens)
        metrics = {
            "max_abs_diff_batch1": rep.max_abs_diff_batch1,
            "max_abs_diff_batched": rep.max_abs_diff_batched,
            "greedy_equal_batch1": float(rep.greedy_equal_batch1),
            "greedy_equal_batched": float(rep.greedy_equal_batched),
            "ok": float(rep.ok),
        }
        return metrics, rep.as_dict()
    plan = ctx.stack.plan(ctx.backbone)
    inputs = collate(ctx.backbone, samples) if len(samples) > 1 else samples[0]
    rep = verify_plan(ctx.backbone, inputs, plan, sc.max_new_tokens)
    metrics = {
        "max_abs_diff_drop_mask": rep.max_abs_diff_drop_mask,
        "greedy_equal_drop_mask": float(rep.greedy_equal_drop_mask),
        "greedy_equal_batched_batch1": float(rep.greedy_equal_batched_batch1),
        "ok": float(rep.ok),
    }
    return metrics, {
        "plan": plan.describe(),
        "kv_bytes_drop": rep.kv_bytes_drop,
        "kv_bytes_mask": rep.kv_bytes_mask,
    }


SCENARIOS: dict[str, ScenarioKind] = {
    "verify": ScenarioKind("verify", False, run_verify, "executor vs HF forward; drop vs mask"),
}
