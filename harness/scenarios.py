"""Scenario kinds a suite cell can run.  Each returns (metrics, details) for one cell.

``verify``: the executor against the HF forward (dense) or drop mode against mask mode (any other
method) on a ragged batch; metrics are the same figures ``harness verify`` prints.

The commands that measure one thing outside a suite (``harness flops``, ``harness latency``,
``harness verify --random``) take their inputs and measurements from the functions here
(:func:`verify_inputs`, :func:`count_flops`, :func:`cell_batch`, :func:`timing_config`), so a
command and a suite cell with the same settings measure the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.models.backbones.base import Backbone, collate
from harness.models.backbones.random import ragged_samples
from harness.models.plan import VisualPlan
from harness.models.verify import checkpoint_samples, verify_dense, verify_plan

if TYPE_CHECKING:
    from .flops.counted import FlopsCell
    from .latency import TimingConfig


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
    """Single-sample inputs: ragged random ones for random backbones, shapes questions for a
    checkpoint built on the shapes tokenizer, noise images + chat prompts for other checkpoints."""
    if bb.weights == "random-init" and bb.source.startswith("random:"):
        return ragged_samples(bb, n, seed)
    if _is_shapes_checkpoint(bb):
        from harness.models.tiny import shapes
        from harness.models.tiny.tokenizer import build_prompt

        out = []
        for i in range(n):
            s = shapes.make_sample(shapes.TASKS[(seed + i) % len(shapes.TASKS)], "ci", seed + i)
            out.append(bb.build_inputs([build_prompt(s.question)], [s.pil()]))
        return out
    return checkpoint_samples(bb, n, seed)


def _is_shapes_checkpoint(bb: Backbone) -> bool:
    tok = getattr(bb.processor, "tokenizer", None)
    return tok is not None and tok.convert_tokens_to_ids("triangle") not in (
        None, tok.unk_token_id,
    )  # fmt: skip


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


def count_flops(bb: Backbone, plan: VisualPlan, mode: str, seed: int = 0) -> FlopsCell:
    """fvcore count of one prefill (of the first input :func:`verify_inputs` gives) against the
    analytic model."""
    from .flops.counted import flops_cell

    return flops_cell(bb, verify_inputs(bb, 1, seed)[0], plan, mode)


def run_flops(ctx: CellContext) -> tuple[dict[str, float], dict[str, Any]]:
    """fvcore count of the cell's prefill (drop mode: what really ran) against the analytic model."""
    from .flops.counted import UNSUPPORTED_LIMIT

    sc = ctx.cell.scenario
    plan = ctx.stack.plan(ctx.backbone)
    cell = count_flops(ctx.backbone, plan, ctx.cell.mode, sc.seed)
    metrics = cell.metrics()
    rel = cell.rel_diff()
    details = {
        "unit": "FLOPs = 2 x MACs; fvcore_macs in MACs",
        "fvcore_vs_analytic": rel,
        "fvcore_unsupported_ops": cell.counted.unsupported,
        "fvcore_by_operator_macs": cell.counted.by_operator,
        "budget": cell.analytic.as_dict().get("budget"),
        "plan": plan.describe(),
    }
    if not cell.counted.ok:
        raise ValueError(
            f"unsupported ops {sorted(cell.counted.unsupported)} could carry "
            f"{cell.counted.unsupported_share:.1%} of the counted FLOPs (limit {UNSUPPORTED_LIMIT:.0%}); "
            "add an fvcore handle for them"
        )
    return metrics, details


def cell_batch(bb: Backbone, n: int, seed: int):
    """The inputs a timing cell runs: synthetic token geometry, or real (ragged) samples."""
    geometry = getattr(bb, "synthetic_geometry", None)
    if geometry is not None:
        from harness.models.backbones.synthetic import synthetic_batch

        return synthetic_batch(bb, geometry, n, seed)
    samples = verify_inputs(bb, n, seed)
    return bb.encode(collate(bb, samples) if len(samples) > 1 else samples[0])


def timing_config(warmup: int, min_repeats: int, min_time_s: float, max_repeats: int = 200) -> TimingConfig:
    """The timing of a latency cell (at least ``min_repeats`` repeats, at
    most ``max(min_repeats, max_repeats)``); a plain ValueError for impossible settings."""
    from .latency import TimingConfig

    return TimingConfig(warmup, min_repeats, min_time_s, max(min_repeats, max_repeats))


def run_latency(ctx: CellContext) -> tuple[dict[str, float], dict[str, Any]]:
    """Prefill and decode timing of the method vs dense, same run (a separate pass from accuracy)."""
    from .latency import measure

    sc = ctx.cell.scenario
    batch = cell_batch(ctx.backbone, sc.batch_size, sc.seed)
    plan = ctx.stack.plan(ctx.backbone)
    timing = timing_config(sc.warmup, sc.min_repeats, sc.min_time_s)
    res = measure(
        ctx.backbone,
        batch,
        plan,
        mode=ctx.cell.mode,
        timing=timing,
        decode_tokens=sc.max_new_tokens,
        cuda_graphs=sc.cuda_graphs,
    )
    return res.metrics, res.details


def run_accuracy(ctx: CellContext) -> tuple[dict[str, float], dict[str, Any]]:
    """Greedy answers on one task through lmms-eval (exact match), per-sample correctness kept."""
    from .accuracy import evaluate_task

    sc = ctx.cell.scenario
    plan = ctx.stack.plan(ctx.backbone)
    res = evaluate_task(ctx.backbone, ctx.stack, plan, ctx.cell.task, mode=ctx.cell.mode,
                        batch_size=sc.batch_size, limit=sc.limit)  # fmt: skip
    res["details"]["plan"] = plan.describe()
    return res["metrics"], res["details"]


SCENARIOS: dict[str, ScenarioKind] = {
    "accuracy": ScenarioKind("accuracy", True, run_accuracy, "greedy accuracy through lmms-eval"),
    "verify": ScenarioKind("verify", False, run_verify, "executor vs HF forward; drop vs mask"),
    "flops": ScenarioKind("flops", False, run_flops, "fvcore count of the prefill vs the analytic model"),
    "latency": ScenarioKind(
        "latency", False, run_latency, "prefill/decode percentiles, speed-up, conversion"
    ),
}
