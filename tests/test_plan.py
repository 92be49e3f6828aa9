"""Plan validation and selectors."""

from dataclasses import replace

import pytest
import torch

from harness.baselines.common import top_k
from harness.models.plan import (
    DENSE_LAYER,
    KV_ONLY,
    KeepVisual,
    PlanError,
    VisualPlan,
)
from harness.models.selection import SampleCounts, slots_of, top_k_slots


def test_dense_plan_describes_itself():
    plan = VisualPlan.dense(3).with_layer(1, KV_ONLY)
    assert plan.describe() == ["dense", "kv", "dense"]
    assert not plan.is_dense and VisualPlan.dense(3).is_dense


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (replace(DENSE_LAYER, visual_attn="window", window=4), "window must be odd and >= 1, got 4"),
        (replace(DENSE_LAYER, visual_attn="window", window=0), "window must be odd and >= 1, got 0"),
        (replace(DENSE_LAYER, visual_ffn=999), r"visual_ffn must be in \[0, 176\], got 999"),
        (replace(DENSE_LAYER, visual_heads=(0, 7)), r"visual_heads \[7\] out of range"),
        (replace(DENSE_LAYER, kv_source="cache"), "unknown kv_source 'cache'"),
        (replace(DENSE_LAYER, drop_before=object()), "drop_before must be a Selector"),
    ],
)
def test_invalid_layer_plans_are_rejected_with_one_line(layer, message):
    plan = VisualPlan.dense(4).with_layer(2, layer)
    with pytest.raises(PlanError, match=message) as err:
        plan.validate(4, 4, 176)
    assert "layer 2" in str(err.value) and "\n" not in str(err.value)


def test_plan_layer_count_must_match():
    with pytest.raises(PlanError, match="has 3 layers but the backbone has 4"):
        VisualPlan.dense(3).validate(4, 4, 176)


def test_keep_visual_counts_on_the_host():
    with pytest.raises(PlanError, match="count must be >= 0"):
        KeepVisual(count=-1)
    sel = KeepVisual(count=8)
    assert sel.kept(SampleCounts(present=5, n_visual=36, n_text=4)) == 5
    assert sel.kept(SampleCounts(present=20, n_visual=36, n_text=4)) == 8


def test_batched_top_k_breaks_ties_toward_lower_slot_and_puts_padding_last():
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.2, 0.5], [0.3, 0.3, float("-inf"), float("-inf"), 0.9]])
    assert top_k_slots(scores, 3).tolist() == [[1, 2, 4], [4, 0, 1]]
    mask = torch.tensor([[False, True, False, True, True], [True, False, False, False, False]])
    assert slots_of(mask, 3).tolist() == [[1, 3, 4], [0, 1, 2]]


def test_top_k_breaks_ties_toward_lower_index():
    scores = torch.tensor([0.1, 0.5, 0.5, 0.2, 0.5])
    assert top_k(scores, 2).tolist() == [1, 2]
    assert top_k(scores, 9).tolist() == [1, 2, 4, 3, 0]
