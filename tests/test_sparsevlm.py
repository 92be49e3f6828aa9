"""SparseVLM (v1.0): raters, kept indices and recycled tokens re-derived by hand from the rule
(docs/baselines.md §2.3) on the random LLaVA-1.5 model; schedules, positions, batching and knob errors."""

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from harness.baselines.registry import build_stack
from harness.baselines.sparsevlm import SparseVLM, TextRaters, dpc_knn
from harness.models.backbones.base import collate
from harness.models.backbones.random import build_random, ragged_samples
from harness.models.executor import Executor
from harness.models.method import MethodError
from harness.models.plan import KeepVisual, VisualPlan
from harness.models.verify import TOLERANCE, verify_plan

VISUAL, TEXT = 2, 3


def plan_of(bb, **params):
    return build_stack("sparsevlm", {"sparsevlm": params}).plan(bb)


def entering(bb, batch, plan, layer, mode="drop"):
    """(original visual indices, hidden states) of the visual tokens entering ``layer``."""
    seen = {}

    class Spy(KeepVisual):
        def select(self, ctx):
            seen["index"] = [v[ok].tolist() for v, ok in zip(ctx.visual_index, ctx.valid, strict=True)]
            seen["hidden"] = [h[ok] for h, ok in zip(ctx.hidden, ctx.valid, strict=True)]
            return super().select(ctx)

    spy = Spy(count=10_000, needs=frozenset({"hidden_in"}))
    Executor(bb, mode).prefill(batch, plan.with_layer(layer, replace(plan.layers[layer], drop_before=spy)))
    return seen["index"], seen["hidden"]


def hand_raters(batch, i=0):
    tt = batch.token_type[i]
    hv, ht = batch.embeds[i, tt == VISUAL], batch.embeds[i, tt == TEXT]
    rel = torch.softmax(hv @ ht.T, dim=-1).mean(0)  # each text token's relevance
    return [j for j in range(len(rel)) if rel[j] > rel.mean()]


def hand_dpc(x, m):
    """DPC-kNN written from its definition, one token at a time."""
    n, h = x.shape
    d = torch.cdist(x.double(), x.double()) / math.sqrt(h)
    rho = [math.exp(-sum(v * v for v in sorted(d[i].tolist())[:m]) / m) for i in range(n)]
    delta = []
    for i in range(n):
        denser = [
            d[i, j].item()
            for j in range(n)
            if rho[j] > rho[i] + 1e-9 or (abs(rho[j] - rho[i]) <= 1e-9 and j < i)
        ]
        delta.append(min(denser) if denser else d.max().item())
    centres = sorted(range(n), key=lambda i: (-rho[i] * delta[i], i))[:m]
    member = [min(range(m), key=lambda c: (d[i, centres[c]].item(), c)) for i in range(n)]
    for c, i in enumerate(centres):
        member[i] = c
    return centres, member


@pytest.fixture(scope="module")
def llava(random_backbones):
    bb = random_backbones["llava-1.5"]
    sample = ragged_samples(bb, 1)[0]
    eager = build_random("llava-1.5")  # same seed, same weights: the HF model's own attention maps
    eager.model.set_attn_implementation("eager")
    with torch.inference_mode():
        ref = eager.model(**sample, output_attentions=True, output_hidden_states=True)
    return bb, sample, bb.encode(sample), ref


def test_raters_are_text_tokens_above_mean_relevance(llava):
    bb, _, batch, _ = llava
    raters = hand_raters(batch)
    assert 0 < len(raters) < int((batch.token_type[0] == TEXT).sum())
    chosen = TextRaters().choose(batch)[0]  # a mask over the text tokens, made without host reads
    assert torch.nonzero(chosen).flatten().tolist() == raters


def test_kept_and_recycled_tokens_follow_the_rule(llava):
    """One stage after layer 1 keeping 96/576 x 36 = 6 tokens: 30 deleted, int(0.3 x 30) + 1 = 10
    recycled into 10 // 10 + 1 = 2 clusters; all re-derived from the HF model's eager attention and
    hidden states."""
    bb, _, batch, ref = llava
    plan = plan_of(bb, keep=[96], layers=[1])
    index, hidden = entering(bb, batch, plan, 2)
    tt = batch.token_type[0]
    vis = (tt == VISUAL).nonzero().flatten()
    txt = (tt == TEXT).nonzero().flatten()
    attn = ref.attentions[1][0].mean(0)  # layer 1, mean over heads: [N, N]
    score = attn[txt[hand_raters(batch)]][:, vis].mean(0)  # mean over raters
    order = torch.sort(score, descending=True, stable=True).indices.tolist()
    kept, deleted = order[:6], order[6:]
    assert index[0][:6] == sorted(kept)  # kept tokens first, in their original order
    # recycling: the 10 best-scored deleted tokens, two DPC-kNN clusters, each averaged
    recycled = deleted[:10]
    states = ref.hidden_states[2][0, vis[recycled]]  # output of layer 1
    centres, member = hand_dpc(states, 2)
    assert index[0][6:] == [recycled[c] for c in centres]  # merged tokens follow, named by their centre
    for c in range(2):
        mean = states[[j for j in range(10) if member[j] == c]].mean(0)
        assert torch.allclose(hidden[0][6 + c], mean, atol=1e-5)
    assert len(index[0]) == 8


def test_default_schedule_counts_and_renumbered_positions(llava):
    """192 on a 4-layer decoder: layers [2, 6, 15] map to [0, 1, 2]; keep 300/200/110 of 576 ->
    19/12/7 of 36, plus one merged token per stage; decode continues at the compacted length."""
    bb, _, batch, _ = llava
    plan = plan_of(bb, budget=192)
    assert [i for i, lp in enumerate(plan.layers) if lp.drop_after is not None] == [0, 1, 2]
    out = Executor(bb).prefill(batch, plan, cache_extra=1)
    assert [s.present[0] for s in out.stats] == [36, 20, 13, 8]
    n = batch.lengths()[0]
    assert [int(kv.next_pos[0]) for kv in out.cache.layers] == [n, n - 16, n - 23, n - 28]
    # every text row is scored (a static count) and the raters are weighted in; the kept sets above
    # check that only the raters' attention decides
    assert out.stats[0].score_rows == [int((batch.token_type[0] == TEXT).sum())]


def test_published_layers_on_deep_decoders_and_scaled_on_shallow_ones():
    m = SparseVLM(budget=64)
    assert m.schedule(32) == ([2, 6, 15], [66, 30, 17])
    assert m.schedule(40)[0] == [2, 6, 15]  # the code uses the same layers for 13B
    assert m.schedule(8)[0] == [1, 2, 4]
    plan = m.apply(VisualPlan.dense(32), SimpleNamespace(num_layers=32))
    assert [i for i, lp in enumerate(plan.layers) if lp.drop_after is not None] == [2, 6, 15]


def test_dpc_knn_separates_two_blobs():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(6, 4, generator=g) * 0.1, 5 + torch.randn(5, 4, generator=g) * 0.1])
    centres, member = dpc_knn(x, 2)
    assert sorted(member[:6].tolist()) == [member[0].item()] * 6
    assert sorted(member[6:].tolist()) == [member[6].item()] * 5 and member[0] != member[6]
    hc, hm = hand_dpc(x, 2)
    assert centres.tolist() == hc and member.tolist() == hm


@pytest.mark.parametrize("budget", [192, 128, 64])
def test_batched_equals_batch1_and_drop_equals_mask(llava, budget):
    bb = llava[0]
    inputs = collate(bb, ragged_samples(bb, 4))
    plan = plan_of(bb, budget=budget)
    rep = verify_plan(bb, inputs, plan, max_new_tokens=4)
    assert rep.max_abs_diff_drop_mask <= TOLERANCE
    assert rep.greedy_equal_drop_mask and rep.greedy_equal_batched_batch1
    batch = bb.encode(inputs)
    together, states = entering(bb, batch, plan, 3)
    masked, _ = entering(bb, batch, plan, 3, mode="mask")
    assert masked == together
    for i in range(4):
        alone, alone_states = entering(bb, batch.select([i]), plan, 3)
        assert alone[0] == together[i]
        assert torch.allclose(alone_states[0], states[i], atol=1e-5)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"budget": 100}, "budget 100 has no published schedule; use 192, 128, 96 or 64 or give keep"),
        ({"keep": [100, 50]}, r"keep has 2 values for layers \[0, 1, 2\]"),
        ({"keep": [100, 0, 5]}, r"keep values must be >= 1"),
        ({"layers": [0, 9, 2]}, r"layers \[9\] out of range for a 4-layer decoder"),
        ({"layers": [2, 1, 0]}, r"layers \[2, 1, 0\] must be strictly increasing"),
        ({"ratio": 0.5}, "unknown parameter 'ratio'; known parameters: budget, keep, layers"),
    ],
)
def test_bad_knobs_one_line(params, message):
    bb = SimpleNamespace(num_layers=4)
    with pytest.raises(MethodError, match=message) as err:
        plan_of(bb, **params)
    assert "\n" not in str(err.value)
