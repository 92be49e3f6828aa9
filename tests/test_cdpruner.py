"""CDPruner: the DPP greedy picks recomputed from the rule (determinants), relevance sign and
normalisation, batched == batch 1 on ragged batches, one-line errors for bad knobs."""

import pytest
import torch
import torch.nn.functional as F

from harness.baselines.cdpruner import dpp_greedy, relevance
from harness.baselines.registry import build_stack
from harness.models.backbones.base import collate
from harness.models.backbones.random import ragged_samples
from harness.models.method import MethodError
from harness.models.verify import TOLERANCE, verify_plan


def greedy_by_determinants(kernel, k):
    """The greedy MAP rule itself: each step adds the token that maximises det(L[S + i, S + i])."""
    chosen = []
    for _ in range(k):
        best, best_det = None, -float("inf")
        for i in range(kernel.shape[0]):
            if i in chosen:
                continue
            idx = torch.tensor([*chosen, i])
            det = float(torch.linalg.det(kernel[idx][:, idx].double()))
            if det > best_det + 1e-12:  # strictly larger: ties keep the lower index
                best, best_det = i, det
        chosen.append(best)
    return chosen


def test_dpp_picks_a_small_kernel_by_hand():
    # relevance r = (1, 0.9, 0.5); tokens 0 and 1 are near duplicates (cos 0.99), token 2 is orthogonal
    r = torch.tensor([1.0, 0.9, 0.5])
    s = torch.tensor([[1.0, 0.99, 0.0], [0.99, 1.0, 0.0], [0.0, 0.0, 1.0]])
    kernel = r[:, None] * s * r[None, :]
    # step 1: det of 1x1 = L_ii = r_i^2 -> token 0 (1.0 > 0.81 > 0.25)
    # step 2: det{0,1} = 0.81 - (0.99 * 0.9)^2 = 0.0161; det{0,2} = 0.25 -> token 2, not the duplicate
    assert dpp_greedy(kernel, 1).tolist() == [0]
    assert dpp_greedy(kernel, 2).tolist() == [0, 2]
    assert dpp_greedy(kernel, 3).tolist() == [0, 2, 1]


def test_dpp_greedy_equals_the_determinant_rule():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(12, 5, generator=g)
    z = F.normalize(feats, dim=-1)
    rel = torch.rand(12, generator=g)
    kernel = rel[:, None] * (z @ z.T) * rel[None, :]
    assert dpp_greedy(kernel, 5).tolist() == greedy_by_determinants(kernel, 5)


def test_relevance_is_min_max_of_negative_cosine():
    visual = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    text = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    # cos with both text rows: 1, 0, -1 -> -cos = -1, 0, 1 -> (v - min + eps) / (max - min + eps)
    eps = 1e-6
    want = torch.tensor([eps / (2 + eps), (1 + eps) / (2 + eps), 1.0])
    assert torch.allclose(relevance(visual, text), want)
    # the token most similar to the instruction gets the lowest relevance: the authors' sign
    assert relevance(visual, text).argmin() == 0
    assert torch.equal(relevance(visual, text[:0]), torch.ones(3))  # no instruction rows


@pytest.mark.parametrize("family", ["llava-1.5", "qwen2-vl"])
def test_keeps_the_greedy_picks_of_the_conditional_kernel(random_backbones, family):
    bb = random_backbones[family]
    batch = bb.encode(collate(bb, ragged_samples(bb, 2)))
    budget = 200
    reduced = build_stack("cdpruner", {"cdpruner": {"budget": budget}}).plan(bb).reducer.reduce(bb, batch)
    for i, red in enumerate(reduced):
        tt = batch.token_type[i]
        x = batch.embeds[i, tt == 2].detach().float()
        t = batch.embeds[i, tt == 3].detach().float()
        # the rule, written out: S = cosine of the projected tokens, r = min-max of mean(-cos to text)
        xs, ts = F.normalize(x, dim=-1), F.normalize(t, dim=-1)
        neg = -(xs @ ts.T).mean(1)
        r = (neg - neg.min() + 1e-6) / (neg.max() - neg.min() + 1e-6)
        kernel = r[:, None] * (xs @ xs.T) * r[None, :]
        k = round(budget / 576 * x.shape[0])
        assert red.anchors.tolist() == sorted(greedy_by_determinants(kernel, k))
        assert torch.equal(red.embeds, batch.embeds[i, tt == 2][red.anchors])


def test_batched_equals_batch1_on_a_ragged_batch(random_backbones):
    bb = random_backbones["llava-1.5"]
    batch = bb.encode(collate(bb, ragged_samples(bb, 4)))  # prompt lengths 7, 12, 4, 9
    reducer = build_stack("cdpruner").plan(bb).reducer
    together = reducer.reduce(bb, batch)
    for i in range(4):
        alone = reducer.reduce(bb, batch.select([i]))[0]
        assert torch.equal(together[i].anchors, alone.anchors)
        assert torch.equal(together[i].embeds, alone.embeds)
    assert len({tuple(r.anchors.tolist()) for r in together}) > 1  # the instruction matters


def test_ragged_visual_counts_drop_equals_mask(random_backbones):
    bb = random_backbones["llava-next"]  # anyres: a different visual count per sample
    plan = build_stack("cdpruner").plan(bb)
    rep = verify_plan(bb, collate(bb, ragged_samples(bb, 3)), plan, max_new_tokens=3)
    assert rep.max_abs_diff_drop_mask <= TOLERANCE
    assert rep.greedy_equal_drop_mask and rep.greedy_equal_batched_batch1


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"budget": 0}, "method 'cdpruner': parameter 'budget': Input should be greater than 0"),
        ({"budget": -64}, "method 'cdpruner': parameter 'budget': Input should be greater than 0"),
        ({"k": 64}, "method 'cdpruner': unknown parameter 'k'; known parameters: budget"),
    ],
)
def test_bad_knobs_one_line(params, message):
    with pytest.raises(MethodError, match=message) as err:
        build_stack("cdpruner", {"cdpruner": params})
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def tiny_clip(tiny_llava, tmp_path_factory):
    """A local CLIP checkpoint with a random text tower around the tiny model's vision tower."""
    from harness.models.backbones.random import save_random_clip

    return str(save_random_clip(tiny_llava, tmp_path_factory.mktemp("clip") / "clip"))


def _clip_space_reference(bb, clip_dir, inputs, k):
    """The released code's relevance, restated from the CLIP model itself: patch features of the
    feature layer (recomputed with the HF tower) -> post_layernorm -> visual_projection, against
    ``get_text_features`` of the instruction in 77-token chunks; kept set by the official rule."""
    import transformers
    from conftest import tiny_prompt_text
    from test_reference_other import official_cdpruner

    clip = transformers.CLIPModel.from_pretrained(clip_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(clip_dir)
    with torch.no_grad():
        hs = bb.model.model.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states
        patches = hs[bb.config.vision_feature_layer][0, 1:]
        img = clip.visual_projection(clip.vision_model.post_layernorm(patches))
        ids = tok(tiny_prompt_text(bb, inputs), add_special_tokens=False)["input_ids"]
        chunks = [ids[i : i + 75] for i in range(0, len(ids), 75)]
        txt = torch.cat(
            [
                clip.get_text_features(torch.tensor([[tok.bos_token_id, *c, tok.eos_token_id]])).pooler_output
                for c in chunks
            ]
        )
        batch = bb.encode(inputs)
        s, e = batch.layout.visual_spans()[0]
        return official_cdpruner(img, txt, batch.embeds[0, s:e], k)


@pytest.mark.parametrize("budget", [192, 128, 64])
def test_clip_space_relevance_matches_the_released_rule(tiny_llava, tiny_clip, budget):
    from conftest import tiny_inputs

    bb = tiny_llava
    stack = build_stack("cdpruner", {"cdpruner": {"budget": budget, "clip": tiny_clip}})
    plan = stack.plan(bb)
    assert stack.params()["cdpruner"]["relevance"] == "clip"  # recorded in the record's params
    k = round(budget / 576 * 144)
    for inputs in tiny_inputs(bb, (1, 2)):
        got = plan.reducer.reduce(bb, bb.encode(inputs))[0].anchors.tolist()
        assert got == _clip_space_reference(bb, tiny_clip, inputs, k)
    # and it is not the LLM-space fallback's choice
    llm = build_stack("cdpruner", {"cdpruner": {"budget": budget, "relevance": "llm"}}).plan(bb)
    batch = bb.encode(tiny_inputs(bb, (1,))[0])
    assert (
        llm.reducer.reduce(bb, batch)[0].anchors.tolist()
        != plan.reducer.reduce(bb, batch)[0].anchors.tolist()
    )


def test_clip_relevance_without_a_checkpoint_is_one_line(tiny_llava, tmp_path):
    with pytest.raises(MethodError, match="relevance='clip' needs a CLIP checkpoint"):
        build_stack("cdpruner", {"cdpruner": {"relevance": "clip"}}).plan(tiny_llava)
    with pytest.raises(MethodError, match="no CLIP checkpoint at"):
        plan = build_stack("cdpruner", {"cdpruner": {"clip": str(tmp_path)}}).plan(tiny_llava)
        from conftest import tiny_inputs

        plan.reducer.reduce(tiny_llava, tiny_llava.encode(tiny_inputs(tiny_llava)[0]))
