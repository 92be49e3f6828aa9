"""ToMe inside the CLIP ViT: the merge schedule, bipartite matching and size-weighted merges computed
by hand, the whole tower recomputed with the HF layer modules, batched == batch 1, one-line errors."""

import pytest
import torch
import torch.nn.functional as F

from harness.baselines.registry import build_stack
from harness.baselines.tome import bipartite_merge, schedule
from harness.models.backbones.base import collate
from harness.models.backbones.random import ragged_samples
from harness.models.method import MethodError
from harness.models.verify import TOLERANCE, verify_plan


def reducer(bb, budget):
    return build_stack("tome", {"tome": {"budget": budget}}).plan(bb).reducer


def test_schedule_spreads_merges_over_the_layers_llava_uses():
    # LLaVA-1.5: 576 patches, CLIP layers 0..22 -> 23 merging layers; earlier layers take the remainder
    assert schedule(576 - 192, 23) == [17] * 16 + [16] * 7
    assert schedule(576 - 128, 23) == [20] * 11 + [19] * 12
    assert schedule(576 - 64, 23) == [23] * 6 + [22] * 17
    assert [sum(schedule(576 - k, 23)) for k in (192, 128, 64)] == [384, 448, 512]
    assert schedule(0, 3) == [0, 0, 0]


def test_bipartite_merge_by_hand():
    # five tokens in order of their first original index: CLS, p0, p1, p2, p3
    # A = positions 0, 2, 4 (CLS, p1, p3); B = positions 1, 3 (p0, p2)
    metric = torch.tensor(
        [
            [1.0, 0.0],  # CLS: identical to p0, but protected
            [1.0, 0.0],  # p0
            [0.0, 1.0],  # p1: cos(p1, p0) = 0, cos(p1, p2) = 0.8 -> best p2 at 0.8
            [0.6, 0.8],  # p2
            [1.0, 0.1],  # p3: cos(p3, p0) = 0.995, cos(p3, p2) = 0.677 -> best p0 at 0.995
        ]
    )
    x = torch.arange(10.0).view(5, 2)
    size = torch.tensor([1.0, 2.0, 1.0, 3.0, 4.0])
    first = torch.tensor([-1, 0, 1, 2, 3])
    # r = 1: the strongest edge is p3 -> p0; merged = (2 x_p0 + 4 x_p3) / 6, size 6, first index 0;
    # the official order follows: unmerged A (CLS, p1), then B (p0 merged, p2)
    x1, s1, _, f1 = bipartite_merge(x, size, metric, first, 1)
    assert f1.tolist() == [-1, 1, 0, 2]
    assert s1.tolist() == [1.0, 1.0, 6.0, 3.0]
    assert torch.allclose(x1[2], (2 * x[1] + 4 * x[4]) / 6)
    assert torch.equal(x1[[0, 1, 3]], x[[0, 2, 3]])
    # r = 2: also p1 -> p2 (0.8); the group {p1, p2} has size 4 and is anchored at p1
    x2, s2, m2, f2 = bipartite_merge(x, size, metric, first, 2)
    assert f2.tolist() == [-1, 0, 1]
    assert s2.tolist() == [1.0, 6.0, 4.0]
    assert torch.allclose(x2[2], (1 * x[2] + 3 * x[3]) / 4)
    assert torch.allclose(m2[2], (1 * metric[2] + 3 * metric[3]) / 4)  # keys merge like states


def tome_by_hand(bb, h_embed, quotas):
    """The rule with Python lists of groups and the HF CLIP layer modules (attention with a
    log-size additive mask, keys from k_proj), one bipartite round per layer."""
    layers = bb.model.model.vision_tower.encoder.layers
    x = h_embed.detach().clone()
    groups = [[-1]] + [[j] for j in range(x.shape[0] - 1)]
    with torch.no_grad():
        for layer, r in zip(layers, quotas, strict=False):
            t, d = x.shape
            attn = layer.self_attn
            sizes = torch.tensor([float(len(g)) for g in groups])
            h = layer.layer_norm1(x)[None]
            x = x + attn(h, attention_mask=sizes.log().view(1, 1, 1, t))[0][0]
            keys = F.normalize(attn.k_proj(h[0]).view(t, attn.num_heads, -1).mean(1), dim=-1)
            a_pos, b_pos = list(range(0, t, 2)), list(range(1, t, 2))
            edges = []
            for a in a_pos[1:]:  # CLS never merges
                sims = [float(keys[a] @ keys[b]) for b in b_pos]
                j = sims.index(max(sims))
                edges.append((-sims[j], a, b_pos[j]))
            into = {a: b for _, a, b in sorted(edges)[:r]}
            tokens = []  # the official order: unmerged A tokens in A order, then the B tokens
            for p in [a for a in a_pos if a not in into] + b_pos:
                members = [p] + [a for a, b in into.items() if b == p]
                weight = torch.tensor([float(len(groups[m])) for m in members])
                vec = (weight[:, None] * x[members]).sum(0) / weight.sum()
                tokens.append(
                    (min(min(groups[m]) for m in members), vec, sum((groups[m] for m in members), []))
                )
            x = torch.stack([tok[1] for tok in tokens])
            groups = [tok[2] for tok in tokens]
            x = x + layer.mlp(layer.layer_norm2(x))
    order = [0] + sorted(range(1, len(groups)), key=lambda j: min(groups[j]))  # output in patch order
    return x[order], [groups[j] for j in order]


@pytest.mark.parametrize(("budget", "quotas"), [(576, [0, 0]), (560, [1, 0]), (512, [2, 2]), (464, [4, 3])])
def test_tower_merges_exactly_the_rule(random_backbones, budget, quotas):
    bb = random_backbones["llava-1.5"]  # CLIP with 3 layers, feature layer -2: layers 0 and 1 merge
    batch = bb.encode(ragged_samples(bb, 1)[0])
    red = reducer(bb, budget).reduce(bb, batch)[0]
    x, groups = tome_by_hand(bb, batch.extras["clip"][0]["h_embed"], quotas)
    assert red.anchors.tolist() == [min(g) for g in groups[1:]]
    with torch.no_grad():
        assert torch.allclose(red.embeds, bb.project(x[1:]), atol=1e-5)
    if budget == 576:  # no merges: exactly the features the dense model feeds its LLM
        assert torch.allclose(red.embeds, batch.embeds[0, batch.token_type[0] == 2], atol=1e-5)


def test_batched_equals_batch1_on_a_ragged_batch(random_backbones):
    bb = random_backbones["llava-1.5"]
    samples = ragged_samples(bb, 4)  # prompt lengths 7, 12, 4, 9
    batch = bb.encode(collate(bb, samples))
    red = reducer(bb, 128)
    together = red.reduce(bb, batch)
    for i in range(4):
        alone = red.reduce(bb, batch.select([i]))[0]
        assert torch.equal(together[i].anchors, alone.anchors)
        assert torch.allclose(together[i].embeds, alone.embeds, atol=1e-6)
    assert all(len(r.anchors) == round(128 / 576 * 36) for r in together)
    rep = verify_plan(bb, collate(bb, samples), build_stack("tome").plan(bb), max_new_tokens=3)
    assert rep.max_abs_diff_drop_mask <= TOLERANCE
    assert rep.greedy_equal_drop_mask and rep.greedy_equal_batched_batch1


def test_quota_beyond_one_round_reaches_the_budget_and_flops_match():
    """The tiny model's ViT (3 layers, 144 patches) cannot reach 16 tokens with one round per
    layer: extra rounds in a layer make up the quota; the FLOPs count still equals the model."""
    from harness.flops.counted import flops_cell
    from harness.models.backbones.loading import wrap
    from harness.models.tiny.model import TinyConfig, build_model
    from harness.models.tiny.shapes import make_sample
    from harness.models.tiny.tokenizer import build_processor, build_prompt

    bb = wrap(build_model(TinyConfig(layers=2)), processor=build_processor(), source="tiny-arch",
              weights="random-init")  # fmt: skip
    s = make_sample("shapes_mc", "ci", 3)
    inputs = bb.build_inputs([build_prompt(s.question)], [s.pil()])
    red = reducer(bb, 64).reduce(bb, bb.encode(inputs))[0]
    assert len(red.anchors) == 16 and red.anchors[0] == 0
    assert red.anchors.tolist() == sorted(set(red.anchors.tolist()))
    cell = flops_cell(bb, inputs, build_stack("tome", {"tome": {"budget": 64}}).plan(bb))
    assert max(cell.rel_diff().values()) <= 0.01 and cell.counted.ok


@pytest.mark.parametrize("family", ["qwen2-vl", "llava-next"])
def test_needs_the_llava_clip_tower(random_backbones, family):
    bb = random_backbones[family]
    with pytest.raises(MethodError, match="method 'tome' reads CLIP attention: it needs a LLaVA-1.5") as err:
        reducer(bb, 128).reduce(bb, bb.encode(ragged_samples(bb, 1)[0]))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"budget": 0}, "method 'tome': parameter 'budget': Input should be greater than 0"),
        ({"r": 16}, "method 'tome': unknown parameter 'r'; known parameters: budget"),
    ],
)
def test_bad_knobs_one_line(params, message):
    with pytest.raises(MethodError, match=message) as err:
        build_stack("tome", {"tome": params})
    assert "\n" not in str(err.value)


def test_one_tower_pass_merges_inside_the_towers_forward(llava576):
    """ToMe's FLOPs record one tower pass, with merging, in place of the dense one: the tower line
    counts the merged token counts per block (fvcore == analytic), k rows go through the projector,
    and the method's overhead is the matching alone."""
    from harness.flops.counted import flops_cell
    from harness.models.plan import VisualPlan

    bb = llava576
    sample = ragged_samples(bb, 1)[0]
    dense = flops_cell(bb, sample, VisualPlan.dense(bb.num_layers))
    cell = flops_cell(bb, sample, build_stack("tome", {"tome": {"budget": 128}}).plan(bb))
    assert max(cell.rel_diff().values()) <= 0.01, cell.rel_diff()
    # CLIP: 577 tokens, width 48, MLP 96, feature layer -2 of 3 -> 2 blocks; 448 merges, 224 a block
    d, m = 48, 96

    def block(na, nm):
        return 4 * na * d * d + 2 * nm * d * m + 2 * na * na * d

    embed = 576 * d * 3 * 14 * 14
    assert cell.analytic.vision_tower.macs == embed + block(577, 353) + block(353, 129)
    assert dense.analytic.vision_tower.macs == embed + 2 * block(577, 577)
    assert cell.counted.vision_tower < 0.75 * dense.counted.vision_tower
    assert cell.analytic.projector.macs == 128 / 576 * dense.analytic.projector.macs
    # |A| x |B| x d_head per matching round; block 1's 224 merges exceed one round (176 + 48)
    matching = (289 * 288 + 177 * 176 + 89 * 88) * 12
    assert cell.analytic.overhead.macs == matching
