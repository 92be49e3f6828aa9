"""Every registered method: drop == mask, batched == batch 1, fvcore == analytic; kept-index rules
built from each method's definition; parameter and stack validation."""

import pytest
import torch
from conftest import kept_after
from method_params import CLIP_METHODS, PARAMS

from harness.baselines.registry import build_stack, names
from harness.flops.counted import flops_cell
from harness.models.backbones.base import collate
from harness.models.backbones.random import ragged_samples
from harness.models.executor import Executor
from harness.models.method import MethodError
from harness.models.plan import DENSE_LAYER, KeepVisual, VisualPlan
from harness.models.verify import TOLERANCE, verify_plan

METHODS = [n for n in names()[1:] if n != "saisa"]  # saisa needs its own weights: tests/test_convert.py


def stack(name):
    return build_stack(name, {name: PARAMS[name]} if name in PARAMS else {})


def test_at_least_ten_methods_registered():
    assert {
        "vica",
        "shortv",
        "yopo",
        "yopo_textonly",
        "naavit",
        "fastv",
        "pdrop",
        "vtw",
        "dart",
        "random",
    } <= set(METHODS)


@pytest.mark.parametrize(
    "family",
    ["llava-1.5", "llava-onevision", "qwen2-vl", "qwen2.5-vl", "qwen3-vl", "internvl3", "internvl3.5"],
)
@pytest.mark.parametrize("name", METHODS)
def test_drop_equals_mask_and_batched_equals_batch1(random_backbones, family, name):
    bb = random_backbones[family]
    if name in CLIP_METHODS and family != "llava-1.5":  # no CLIP tower: one line
        with pytest.raises(MethodError, match="needs a LLaVA-1.5 backbone with a CLIP tower"):
            verify_plan(bb, collate(bb, ragged_samples(bb, 2)), stack(name).plan(bb), max_new_tokens=2)
        return
    plan = stack(name).plan(bb)
    assert not plan.is_dense
    rep = verify_plan(bb, collate(bb, ragged_samples(bb, 4)), plan, max_new_tokens=5)
    assert rep.max_abs_diff_drop_mask <= TOLERANCE
    assert rep.greedy_equal_drop_mask and rep.greedy_equal_batched_batch1


@pytest.mark.parametrize("name", METHODS)
def test_fvcore_equals_analytic(random_backbones, name):
    bb = random_backbones["llava-1.5"]
    cell = flops_cell(bb, ragged_samples(bb, 1)[0], stack(name).plan(bb), "drop")
    assert max(cell.rel_diff().values()) <= 0.01, cell.rel_diff()
    assert cell.counted.ok


def _eager_attention(bb, sample, layer):
    from harness.models.backbones.random import build_random

    eager = build_random(bb.source.split(":")[1])
    eager.model.set_attn_implementation("eager")
    with torch.inference_mode():
        return eager.model(**sample, output_attentions=True).attentions[layer][0].mean(0)


def test_fastv_keeps_top_k_of_last_token_attention_at_layer_k_minus_1(random_backbones):
    bb = random_backbones["llava-1.5"]
    sample = ragged_samples(bb, 1)[0]
    batch = bb.encode(sample)
    plan = build_stack("fastv", {"fastv": {"k": 2, "budget": 128}}).plan(bb)
    kept = kept_after(bb, batch, plan, 2)[0]
    attn = _eager_attention(bb, sample, 1)[-1]  # layer K-1 = 1, last prompt token, mean over heads
    vis = (batch.token_type[0] == 2).nonzero().flatten()
    k = round(128 / 576 * 36)
    assert len(kept) == k
    assert kept == sorted(torch.topk(attn[vis], k).indices.tolist())


def test_pdrop_ranks_with_the_rank_layers_own_qk_and_renumbers(random_backbones):
    bb = random_backbones["llava-1.5"]
    sample = ragged_samples(bb, 1)[0]
    batch = bb.encode(sample)
    plan = build_stack("pdrop", {"pdrop": {"layer_list": [16], "lam": 0.5}}).plan(bb)  # 16/32 -> layer 2
    assert plan.layers[2].drop_before is not None
    out = Executor(bb).prefill(batch, plan, cache_extra=1)
    # the kept set is the top-k of layer 2's attention row computed on the states entering layer 2,
    # which is exactly the dense model's layer-2 attention map (nothing dropped before it)
    attn = _eager_attention(bb, sample, 2)[-1]
    vis = (batch.token_type[0] == 2).nonzero().flatten()
    k = min(36, int(576 * 0.5 * 36 / 576) or 1)
    kept = kept_after(bb, batch, plan, 3)[0]
    assert kept == sorted(torch.topk(attn[vis], k).indices.tolist())
    n = batch.lengths()[0]
    assert int(out.cache.layers[2].next_pos[0]) == n - (36 - k)  # renumbered: compacted length


def test_vtw_withdraws_visual_tokens_from_layer_k(random_backbones):
    bb = random_backbones["llava-1.5"]
    batch = bb.encode(ragged_samples(bb, 1)[0])
    out = Executor(bb).prefill(batch, stack("vtw").plan(bb), cache_extra=1)
    assert out.cache.visual_entries() == [36, 36, 0, 0]
    assert [s.attn_q[0] for s in out.stats] == [36, 36, 0, 0]


def test_dart_keeps_pivots_and_least_similar_tokens(random_backbones):
    """Re-derive DART's rule from layer K-1's keys and outputs computed independently."""
    import torch.nn.functional as F

    bb = random_backbones["llava-1.5"]
    batch = bb.encode(ragged_samples(bb, 1)[0])
    budget = 300
    plan = build_stack("dart", {"dart": {"budget": budget}}).plan(bb)
    kept = kept_after(bb, batch, plan, 2)[0]
    b = round(budget / 576 * 36)
    assert len(kept) == 4 + 8 * (b // 8)  # official: floor(B/8) per pivot, plus the 4 visual pivots
    # independent recomputation: dense states after layer 1 and layer-1 keys
    ex = Executor(bb)
    states = {}

    class Grab(KeepVisual):
        def select(self, ctx):
            states.update(
                keys=ctx.keys[0], tkeys=ctx.text_keys[0], hid=ctx.hidden[0], thid=ctx.text_hidden[0]
            )
            return super().select(ctx)

    from dataclasses import replace

    ex.prefill(
        batch,
        VisualPlan.dense(4).with_layer(
            1, replace(DENSE_LAYER, drop_after=Grab(count=100, needs=frozenset({"keys", "hidden_out"})))
        ),
    )
    v_piv = torch.topk(states["keys"].abs().sum(-1), 4).indices
    assert set(v_piv.tolist()) <= set(kept)
    hv = F.normalize(bb.norm(states["hid"]), dim=-1)
    ht = F.normalize(bb.norm(states["thid"]), dim=-1)
    t_piv = torch.topk(states["tkeys"].abs().sum(-1), 4).indices
    taken = set(v_piv.tolist())
    per = b // 8
    # the official pivots iterate in Python set order of their absolute positions (by default the
    # image starts where the sample's does; text follows the 36 visual tokens)
    start = int((batch.token_type[0] == 1).sum())
    pos = {start + i: hv[i] for i in v_piv.tolist()} | {start + 36 + i: ht[i] for i in t_piv.tolist()}
    for key in list(set(list(pos))):  # built from the list, in top-k order, as the official code does
        order = [i for i in torch.argsort(hv @ pos[key], stable=True).tolist() if i not in taken]
        taken.update(order[:per])
    assert sorted(taken) == kept


def test_random_is_seeded_per_sample(random_backbones):
    bb = random_backbones["llava-1.5"]
    batch = bb.encode(collate(bb, ragged_samples(bb, 3)))
    plan = stack("random").plan(bb)
    together = kept_after(bb, batch, plan, 2)
    alone = [kept_after(bb, batch.select([i]), plan, 2)[0] for i in range(3)]
    assert together == alone and together[0] != together[1]


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("vica", {"t2v_layers": [0, 9]}, r"t2v_layers \[9\] out of range for a 4-layer decoder"),
        ("shortv", {"layers": [0, 1, 2, 3, 0], "n": 5}, "n=5 exceeds the backbone's 4 layers"),
        ("yopo", {"window": 4}, "window must be odd and >= 1, got 4"),
        ("yopo", {"window": 0}, "window must be odd and >= 1, got 0"),
        ("yopo_textonly", {"window": -3}, "window must be odd and >= 1, got -3"),
        ("fastv", {"k": 9}, "k=9 must be < the 4 layers"),
        ("fastv", {"kk": 1}, "unknown parameter 'kk'; known parameters: k, budget, ratio"),
    ],
)
def test_bad_parameters_one_line(random_backbones, name, params, message):
    bb = random_backbones["llava-1.5"]
    with pytest.raises(MethodError, match=message) as err:
        build_stack(name, {name: params}).plan(bb)
    assert "\n" not in str(err.value)


def test_stacks(random_backbones):
    bb = random_backbones["llava-1.5"]
    for spec, params in [
        ("vica+pdrop", {"pdrop": PARAMS["pdrop"]}),
        ("shortv+fastv", {"shortv": PARAMS["shortv"]}),
    ]:
        plan = build_stack(spec, params).plan(bb)
        rep = verify_plan(bb, collate(bb, ragged_samples(bb, 2)), plan, max_new_tokens=3)
        assert rep.ok, spec
    with pytest.raises(MethodError, match="out of order"):
        build_stack("fastv+shortv")
    with pytest.raises(MethodError, match="combines structural methods"):
        build_stack("vica+shortv")
