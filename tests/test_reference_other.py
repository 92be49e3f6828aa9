"""Reference tests for VTW, random, DivPrune and CDPruner: each method against a plain per-sample
restatement of its official rule, written from the official code (batch 1, as the references run),
independent of seebench's implementation (nothing is imported from ``harness.baselines`` except the
registry that builds a method stack).

Sources the references restate:

- DivPrune: ``vbdi/divprune`` @ 799e2d950aa01ba7860907f5a6d86061f885dca6,
  ``LLaVA/llava/model/llava_arch.py``: ``LlavaMetaForCausalLM.pairwise_cosine_similarity`` and
  ``DivPrune`` (called from ``prepare_inputs_labels_for_multimodal`` on ``new_input_embeds[0]``, the
  projected visual tokens, kept indices sorted).
- CDPruner: ``Theia-4869/CDPruner`` @ 9541616c40fcd5625de1cdb8ea6c33c129eb7864 (rule unchanged since
  ed9c12da9e85c747e76b61bfe8845081d6964372), ``llava/model/llava_arch.py``:
  ``LlavaMetaForCausalLM.encode_images`` (similarity, relevance, kernel, fast greedy DPP MAP) and
  ``llava/model/multimodal_encoder/clip_encoder.py``: ``CLIPVisionTower.forward`` (77-token text
  chunks -> one text embedding per chunk; image embeds = post_layernorm + visual_projection).
- VTW: the paper's rule (arXiv 2405.05803; docs/baselines.md §2.5): visual tokens take part in layers
  0..K-1 only (no queries, no K/V, no FFN, no KV-cache entries from layer K on).
- random: seebench's own control (docs/baselines.md §3.8 and the method's docstring): k of the visual
  tokens drawn uniformly without replacement from a generator seeded by hash(seed, sample id);
  layer 0 = pre-LLM style (positions renumbered), a later layer = in-LLM (positions kept).
"""

from __future__ import annotations

import zlib

import pytest
import torch
from conftest import kept_after, of_576, tiny_inputs

from harness.baselines.registry import build_stack
from harness.models.backbones.base import collate
from harness.models.backbones.random import ragged_samples
from harness.models.executor import Executor
from harness.models.plan import VisualPlan

BUDGETS = (192, 128, 64)  # "of 576"
TEXT = 3  # TokenType.TEXT
VISUAL = 2  # TokenType.VISUAL
ATOL = 1e-5


# ----------------------------------------------------------------------------- official rules


def official_divprune(visual: torch.Tensor, k: int) -> list[int]:
    """DivPrune on one sample's projected visual tokens [n, h] -> kept visual indices, ascending.

    ``pairwise_cosine_similarity``: rows divided by their L2 norm, ``mm`` with the transpose;
    distance = 1 - cosine.  ``DivPrune``: step 0 scores every column by its second-smallest
    distance (``topk(.., 2, dim=0, largest=False).values[1]``: the smallest is the token's own
    distance); later steps score each column by its minimum distance over the rows already
    selected (selected columns are not masked); each step takes ``argmax`` (first maximum).
    The caller sorts the kept indices (``keep_indexs.sort()``)."""
    with torch.no_grad():
        norm = visual / visual.norm(dim=1, keepdim=True)
        dist = 1.0 - torch.mm(norm, norm.t())
        picks: list[int] = []
        for i in range(k):
            if i == 0:
                scores = torch.topk(dist, 2, dim=0, largest=False).values[1, :]
            else:
                scores = torch.min(dist[torch.tensor(picks)], dim=0).values
            picks.append(int(torch.argmax(scores)))
    return sorted(picks)


def official_cdpruner_picks(
    image_feats: torch.Tensor, text_feats: torch.Tensor, visual_feats_for_similarity: torch.Tensor, k: int
) -> tuple[list[int], list[float]]:
    """The official greedy picks in pick order and the marginal gain d_j^2 each was picked with
    (see :func:`official_cdpruner`)."""
    x = visual_feats_for_similarity
    x = (x / x.norm(dim=-1, keepdim=True)).float()
    similarity = x @ x.t()
    img = image_feats / image_feats.norm(dim=-1, keepdim=True)
    txt = text_feats / text_feats.norm(dim=-1, keepdim=True)
    relevance = (-(img @ txt.t())).mean(dim=-1)
    relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())
    kernel = relevance[:, None] * similarity * relevance[None, :]
    n = kernel.shape[0]
    cis = torch.zeros(k, n)
    di2s = torch.diagonal(kernel).clone()
    picks: list[int] = []
    gains: list[float] = []
    for i in range(k):
        j = int(torch.argmax(di2s))
        picks.append(j)
        gains.append(float(di2s[j]))
        eis = (kernel[j] - cis[:i, j] @ cis[:i]) / torch.sqrt(di2s[j])
        cis[i] = eis
        di2s -= eis * eis
        di2s[j] = -float("inf")
    return picks, gains


def official_cdpruner(
    image_feats: torch.Tensor, text_feats: torch.Tensor, visual_feats_for_similarity: torch.Tensor, k: int
) -> list[int]:
    """CDPruner on one image -> kept visual indices, ascending (the official ``index_masks``).

    - ``image_feats`` [n, c]: the embeddings relevance is measured with (official: CLIP image
      embeds, i.e. layer -2 patch features -> ``post_layernorm`` -> ``visual_projection``);
    - ``text_feats`` [m, c]: one embedding per instruction chunk (official: CLIP text-tower
      ``text_embeds`` of the instruction split into 77-token chunks);
    - ``visual_feats_for_similarity`` [n, h]: the projected visual tokens (LLM input space).

    ``encode_images``: S = cosine of the projected tokens (normalised, then fp32); relevance =
    mean over the m text embeddings of (-cos(image_j, text)); min-max normalised as
    ``(r - r.min() + 1e-6) / (r.max() - r.min())`` (the epsilon in the numerator only); kernel
    L = r_i S_ij r_j; fast greedy MAP: d^2 = diag(L); per step j = argmax d^2, e = (L_j - c_j . C) /
    sqrt(d_j^2), d^2 -= e^2, d_j^2 = -inf; exactly k steps, no clamp, no early stop; theta scaling
    commented out.  The kept set is a boolean mask (``scatter_``), so a repeated pick counts once.
    Runs without autograd (the official forward is ``no_grad``)."""
    with torch.no_grad():
        picks, _ = official_cdpruner_picks(image_feats, text_feats, visual_feats_for_similarity, k)
    return sorted(set(picks))


def official_random(n: int, k: int, sample_id: str, seed: int = 0) -> list[int]:
    """seebench's control: k of n drawn without replacement by a CPU generator seeded with
    crc32("{seed}:{sample id}") (a uniformly random permutation's first k), ascending."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{sample_id}".encode()))
    return sorted(torch.randperm(n, generator=g)[:k].tolist())


# ----------------------------------------------------------------------------- inputs


def _batch(request, which: str, n: int = 3):
    """(backbone, ragged batch of n samples) for one of the three test backbones."""
    if which == "llava576":
        bb = request.getfixturevalue("llava576")
        return bb, bb.encode(collate(bb, ragged_samples(bb, n)))
    if which == "qwen2-vl":
        bb = request.getfixturevalue("random_backbones")["qwen2-vl"]
        return bb, bb.encode(collate(bb, ragged_samples(bb, n)))
    bb = request.getfixturevalue("tiny_llava")
    return bb, bb.encode(collate(bb, tiny_inputs(bb, indices=tuple(range(1, n + 1)))))


BACKBONES = ["llava576", "tiny", "qwen2-vl"]


def _visual(batch, i):
    start, end = batch.layout.visual_spans()[i]
    return batch.embeds[i, start:end]


def _text_rows(batch, i):
    rows = torch.from_numpy((batch.layout.ttype[i] == TEXT).nonzero()[0])
    return batch.embeds[i, rows]


def _reduce(bb, batch, name, budget):
    params = {"budget": budget}
    if name == "cdpruner":
        params["relevance"] = "llm"  # the LLM-input-space fallback these tests compare
    return build_stack(name, {name: params}).plan(bb).reducer.reduce(bb, batch)


def _check_prellm(bb, batch, name, budget, reference):
    reduced = _reduce(bb, batch, name, budget)
    assert len(reduced) == batch.embeds.shape[0]
    for i, red in enumerate(reduced):
        x = _visual(batch, i)
        want = reference(i, x, of_576(budget, x.shape[0]))
        assert red.anchors.tolist() == want, f"sample {i}"
        torch.testing.assert_close(red.embeds, x[torch.tensor(want)], atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- DivPrune


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("which", BACKBONES)
def test_divprune_matches_official(request, which, budget):
    bb, batch = _batch(request, which)
    _check_prellm(bb, batch, "divprune", budget, lambda i, x, k: official_divprune(x, k))
    # batch 1 gives the same tokens as the ragged batch
    one = batch.select([1])
    _check_prellm(bb, one, "divprune", budget, lambda i, x, k: official_divprune(x, k))


# ----------------------------------------------------------------------------- CDPruner


def _cdpruner_fallback_reference(batch):
    """The fallback's inputs to the official rule: relevance between the projected visual tokens and
    the LLM input embeddings of the instruction rows (token type TEXT); S on the projected tokens."""

    def ref(i, x, k):
        return official_cdpruner(x, _text_rows(batch, i), x, k)

    return ref


# The official DPP is only defined while every pick's marginal gain is positive: once k exceeds
# the kernel's rank (at most the hidden width; 64 on the random LLaVA-576 model, so budgets 192 and
# 128 there) the gains fall to fp32 noise, then sqrt of a negative gives NaN.  Exact comparisons are
# made where every pick's gain stands well above that noise (checked, not assumed); the other cases
# get the checks that still hold there (next test).
WELL_POSED = [(w, b) for w in BACKBONES for b in BUDGETS if not (w == "llava576" and b in (192, 128))]
RANK_DEFICIENT = [("llava576", 192), ("llava576", 128)]
GAIN_FLOOR = 1e-5  # relative to the largest initial gain; fp32 noise sits near 1e-7


def _official_gains(batch, budget):
    out = []
    for i in range(batch.embeds.shape[0]):
        x = _visual(batch, i)
        with torch.no_grad():
            picks, gains = official_cdpruner_picks(x, _text_rows(batch, i), x, of_576(budget, x.shape[0]))
        out.append((picks, gains))
    return out


@pytest.mark.parametrize(("which", "budget"), WELL_POSED)
def test_cdpruner_matches_official_on_llm_space_inputs(request, which, budget):
    bb, batch = _batch(request, which)
    for i, (_, gains) in enumerate(_official_gains(batch, budget)):
        assert _text_rows(batch, i).shape[0] > 0  # the official rule always has an instruction
        assert all(g > GAIN_FLOOR * gains[0] for g in gains), f"sample {i}: k exceeds the kernel's rank"
    _check_prellm(bb, batch, "cdpruner", budget, _cdpruner_fallback_reference(batch))
    one = batch.select([2])
    _check_prellm(bb, one, "cdpruner", budget, _cdpruner_fallback_reference(one))


@pytest.mark.parametrize(("which", "budget"), RANK_DEFICIENT)
def test_cdpruner_past_the_kernel_rank(request, which, budget):
    """k > rank(L): the official code's well-defined picks (gain above the noise floor) are all kept,
    and seebench still keeps k distinct visual tokens (its docstring: exactly k picks; the official
    boolean mask can never hold a token twice)."""
    bb, batch = _batch(request, which)
    reduced = _reduce(bb, batch, "cdpruner", budget)
    for i, ((picks, gains), red) in enumerate(zip(_official_gains(batch, budget), reduced, strict=True)):
        k = of_576(budget, _visual(batch, i).shape[0])
        # the case this test is about: some pick's gain is at the noise floor (or NaN)
        well_defined = next((t for t, g in enumerate(gains) if not g > GAIN_FLOOR * gains[0]), None)
        assert well_defined is not None
        sure = picks[:well_defined]
        kept = red.anchors.tolist()
        assert set(sure) <= set(kept), f"sample {i}"
        assert len(kept) == k and len(set(kept)) == k, (
            f"sample {i}: {len(set(kept))} distinct of {len(kept)} kept; index 0 kept {kept.count(0)} times"
        )


def test_official_cdpruner_is_conditional():
    """The reference itself: the instruction changes the pick (not a plain DPP on S)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 16, generator=g)
    t1, t2 = torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g)
    a, b = official_cdpruner(x, t1, x, 8), official_cdpruner(x, t2, x, 8)
    assert len(a) == len(b) == 8 and a != b


# ----------------------------------------------------------------------------- random


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("layer", [0, 2])
@pytest.mark.parametrize("which", BACKBONES)
def test_random_matches_its_rule(request, which, layer, budget):
    bb, batch = _batch(request, which)
    seed = 7
    plan = build_stack("random", {"random": {"budget": budget, "layer": layer, "seed": seed}}).plan(bb)
    counts = batch.layout.count(VISUAL)
    want = [
        official_random(n, of_576(budget, n), sid, seed)
        for n, sid in zip(counts, batch.sample_ids, strict=True)
    ]
    assert kept_after(bb, batch, plan, layer + 1) == want
    assert kept_after(bb, batch.select([1]), plan, layer + 1) == [want[1]]
    # nothing is dropped before the chosen layer
    if layer > 0:
        assert kept_after(bb, batch, plan, layer) == [list(range(n)) for n in counts]
    # positions (docs/methods.md §2.3): renumbered when dropped before layer 0, kept in-LLM; Qwen2-VL keeps its
    # 3-D M-RoPE ids for every method
    out = Executor(bb).prefill(batch, plan, cache_extra=1)
    dense = Executor(bb).prefill(batch, VisualPlan.dense(bb.num_layers), cache_extra=1)
    last = bb.num_layers - 1
    ends = [int(p) for p in out.cache.layers[last].next_pos]
    dense_ends = [int(p) for p in dense.cache.layers[last].next_pos]
    renumber = layer == 0 and bb.family != "qwen2_vl"
    for i, (n, ln) in enumerate(zip(counts, batch.lengths(), strict=True)):
        dropped = n - len(want[i])
        if bb.family != "qwen2_vl":
            assert dense_ends[i] == ln
        assert ends[i] == (dense_ends[i] - dropped if renumber else dense_ends[i]), f"sample {i}"
        assert out.stats[layer].present[i] == len(want[i])


def test_random_is_uniform_and_seeded(llava576):
    """Uniform without replacement over sample ids, and the seed changes the draw: checks that do not
    use the generator formula."""
    bb = llava576
    samples = ragged_samples(bb, 2)
    batch = bb.encode(collate(bb, samples))
    n = batch.layout.count(VISUAL)[0]
    k = of_576(192, n)
    plan = build_stack("random", {"random": {"budget": 192, "layer": 0, "seed": 3}}).plan(bb)
    hits = torch.zeros(n)
    draws = 0
    for j in range(20):
        b = bb.encode(collate(bb, samples), sample_ids=[f"q{2 * j}", f"q{2 * j + 1}"])
        for kept in kept_after(bb, b, plan, 1):
            assert len(set(kept)) == k == len(kept)
            hits[kept] += 1
            draws += 1
    # each index kept with probability p = k/n in each draw
    p = k / n
    mean, sd = draws * p, (draws * p * (1 - p)) ** 0.5
    assert hits.max().item() <= mean + 6 * sd and hits.min().item() >= 1  # P(never kept) ~ 1e-7
    assert abs(hits[: n // 2].sum().item() / (draws * k) - 0.5) < 0.05  # no bias toward either half
    other = build_stack("random", {"random": {"budget": 192, "layer": 0, "seed": 4}}).plan(bb)
    assert kept_after(bb, batch, plan, 1) != kept_after(bb, batch, other, 1)


# ----------------------------------------------------------------------------- VTW


@pytest.mark.parametrize("which", BACKBONES)
def test_vtw_withdraws_visual_tokens_from_layer_k(request, which):
    bb, batch = _batch(request, which)
    depth = bb.num_layers
    counts = batch.layout.count(VISUAL)
    for k in sorted({0, 1, 2, depth // 2, depth - 1, depth, None}, key=lambda v: -1 if v is None else v):
        params = {} if k is None else {"k": k}
        kk = depth // 2 if k is None else k  # default: half the depth
        out = Executor(bb).prefill(batch, build_stack("vtw", {"vtw": params}).plan(bb), cache_extra=1)
        want = [[n if layer < kk else 0 for n in counts] for layer in range(depth)]
        assert [list(lk.visual) for lk in out.cache.layers] == want, f"K={k}: KV-cache visual entries"
        assert out.cache.visual_entries() == [sum(w) for w in want]
        assert [list(s.attn_q) for s in out.stats] == want, f"K={k}: visual queries"
        assert [list(s.kv) for s in out.stats] == want, f"K={k}: visual keys"
        assert [list(s.ffn) for s in out.stats] == want, f"K={k}: visual FFN rows"
