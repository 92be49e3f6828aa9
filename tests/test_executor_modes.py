"""Hand-made non-dense plans: drop mode == mask mode, batched == batch 1, real savings."""

from dataclasses import replace

import pytest
import torch

from harness.models.backbones.base import collate
from harness.models.backbones.random import RANDOM_FAMILIES, ragged_samples
from harness.models.executor import Executor
from harness.models.plan import (
    DENSE_LAYER,
    INVISIBLE,
    KV_ONLY,
    KeepVisual,
    TopKByLastAttention,
    VisualPlan,
)
from harness.models.verify import TOLERANCE, verify_plan


def hand_made_plans(n_layers: int) -> dict[str, VisualPlan]:
    dense = VisualPlan.dense(n_layers)
    return {
        "freeze_layer1": dense.with_layer(1, KV_ONLY),
        "vica_like": VisualPlan.from_layers(
            [replace(KV_ONLY, kv_source="fixed") if i in (0, 2) else INVISIBLE for i in range(n_layers)]
        ),
        "keep8_from_layer2_renumber": dense.with_layer(
            2, replace(DENSE_LAYER, drop_before=KeepVisual(count=8, positions="renumber"))
        ),
        "fastv_like_top6_after_layer1": dense.with_layer(
            1, replace(DENSE_LAYER, drop_after=TopKByLastAttention(6))
        ),
        "pdrop_like_rank_before_layer2": dense.with_layer(
            2, replace(DENSE_LAYER, drop_before=TopKByLastAttention(6, positions="renumber"))
        ),
        "window_heads_halfffn": VisualPlan.from_layers(
            [
                replace(
                    DENSE_LAYER,
                    visual_attn="window",
                    window=3,
                    visual_heads=(0, 2),
                    head_mode=m,
                    visual_ffn=40,
                )
                for m in ("zero_values", "drop_keys") * (n_layers // 2)
            ]
        ),
        "naavit_like": VisualPlan.from_layers([replace(DENSE_LAYER, visual_query=False)] * n_layers),
        "system_not_queried": VisualPlan.from_layers([replace(KV_ONLY, system_query=False)] * n_layers),
    }


@pytest.mark.parametrize("family", list(RANDOM_FAMILIES))
@pytest.mark.parametrize("plan_name", list(hand_made_plans(4)))
def test_drop_equals_mask(random_backbones, family, plan_name):
    bb = random_backbones[family]
    plan = hand_made_plans(bb.num_layers)[plan_name]
    inputs = collate(bb, ragged_samples(bb, 4))
    rep = verify_plan(bb, inputs, plan, max_new_tokens=6)
    assert rep.max_abs_diff_drop_mask <= TOLERANCE
    assert rep.greedy_equal_drop_mask
    assert rep.greedy_equal_batched_batch1
    # the plan changed something: it is not the dense model
    batch = bb.encode(inputs)
    dense = Executor(bb).prefill(batch).logits
    changed = Executor(bb).prefill(batch, plan).logits
    assert (dense - changed).abs().max() > 1e-3


def _batch(bb):
    return bb.encode(collate(bb, ragged_samples(bb, 4)))


def test_drop_mode_computes_fewer_rows(random_backbones):
    bb = random_backbones["llava-1.5"]
    batch = _batch(bb)
    plan = hand_made_plans(bb.num_layers)["freeze_layer1"]
    drop = Executor(bb, "drop").prefill(batch, plan).stats
    mask = Executor(bb, "mask").prefill(batch, plan).stats
    assert drop[1].rows_q < mask[1].rows_q
    assert drop[0].rows_q == drop[2].rows_q  # only layer 1 changes
    assert drop[1].attn_q == [0, 0, 0, 0] and drop[1].kv == [36] * 4 and drop[1].ffn == [0] * 4


def test_dropped_tokens_leave_the_sequence_and_cache(random_backbones):
    bb = random_backbones["llava-1.5"]
    batch = _batch(bb)
    plan = hand_made_plans(bb.num_layers)["keep8_from_layer2_renumber"]
    out = Executor(bb, "drop").prefill(batch, plan, cache_extra=4)
    assert [s.present[0] for s in out.stats] == [36, 36, 8, 8]
    assert out.cache.visual_entries() == [144, 144, 32, 32]
    dense = Executor(bb, "drop").prefill(batch, cache_extra=4)
    assert all(
        a < b for a, b in zip(out.cache.bytes_per_sample(), dense.cache.bytes_per_sample(), strict=True)
    )
    # renumbered: decode continues at the compacted length in layers >= 2
    lengths = torch.tensor(batch.lengths())
    assert torch.equal(out.cache.layers[1].next_pos, lengths)
    assert torch.equal(out.cache.layers[2].next_pos, lengths - 28)


def test_vica_like_plan_caches_visual_kv_only_in_listed_layers(random_backbones):
    bb = random_backbones["llava-1.5"]
    batch = _batch(bb)
    plan = hand_made_plans(bb.num_layers)["vica_like"]
    out = Executor(bb, "drop").prefill(batch, plan, cache_extra=1)
    assert out.cache.visual_entries() == [144, 0, 144, 0]
    assert all(s.attn_q == [0] * 4 and s.ffn == [0] * 4 for s in out.stats)


def test_topk_selector_keeps_the_highest_scoring_tokens(random_backbones):
    """FastV-like rule: the kept visual tokens are the top-k of the last token's attention at the
    scoring layer, checked against the HF model's own eager attention map."""
    from harness.models.backbones.random import build_random

    bb = random_backbones["llava-1.5"]
    sample = ragged_samples(bb, 1)[0]
    batch = bb.encode(sample)
    seen = {}

    class Spy(TopKByLastAttention):
        def select(self, ctx):
            seen["scores"] = ctx.scores[0].clone()
            return super().select(ctx)

    class Kept(KeepVisual):
        def select(self, ctx):
            seen["kept"] = ctx.visual_index[0].tolist()
            return super().select(ctx)

    plan = VisualPlan.dense(bb.num_layers).with_layer(1, replace(DENSE_LAYER, drop_after=Spy(5)))
    plan = plan.with_layer(2, replace(DENSE_LAYER, drop_before=Kept(count=100)))
    Executor(bb).prefill(batch, plan)
    scores = seen["scores"]
    assert scores.shape == (36,)
    eager = build_random("llava-1.5")  # same seed, same weights
    eager.model.set_attn_implementation("eager")
    with torch.inference_mode():
        out = eager.model(**sample, output_attentions=True)
    attn = out.attentions[1][0].mean(0)[-1]  # layer 1, heads averaged, last prompt token
    vis = (batch.token_type[0] == 2).nonzero().flatten()
    assert torch.allclose(attn[vis], scores, atol=1e-5)
    assert seen["kept"] == sorted(torch.topk(attn[vis], 5).indices.tolist())
