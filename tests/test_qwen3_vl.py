"""Qwen3-VL: a Qwen3 decoder (per-head q/k norms before RoPE) and DeepStack (features of tower
blocks added to the visual tokens after the first decoder layers).  tests/test_executor_dense.py
holds the executor to the HF forward on every random family; here, each of the two features is
shown to be needed for that match, and DeepStack's features follow the tokens they belong to."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from harness.models.backbones.base import collate
from harness.models.backbones.random import ragged_samples
from harness.models.batch import TokenType, apply_reduction
from harness.models.executor import Executor
from harness.models.plan import ReducedVisual


@pytest.fixture(scope="module")
def bb(random_backbones):
    return random_backbones["qwen3-vl"]


def _last_logits(bb, batch, mode="drop"):
    return Executor(bb, mode).prefill(batch, all_logits=True).all_logits


@pytest.mark.parametrize("mode", ["drop", "mask"])
def test_each_feature_is_needed_to_match_hf(bb, mode):
    sample = ragged_samples(bb, 1)[0]
    ref = bb.hf_logits(sample)[0]
    batch = bb.encode(sample)
    assert batch.deepstack is not None and batch.deepstack.shape[0] == 3  # blocks 0, 1, 2 feed layers 0-2
    assert (ref - _last_logits(bb, batch, mode)[0]).abs().max() <= 1e-4
    without_deepstack = replace(batch, deepstack=None)
    assert (ref - _last_logits(bb, without_deepstack, mode)[0]).abs().max() > 1e-2
    attns = [layer.self_attn for layer in bb.layers]
    norms = [(a.q_norm, a.k_norm) for a in attns]
    try:  # the same model without its per-head norms (each executor applies the ones present)
        for a in attns:
            a.q_norm, a.k_norm = torch.nn.Identity(), torch.nn.Identity()
        assert (ref - _last_logits(bb, batch, mode)[0]).abs().max() > 1e-2
    finally:
        for a, (qn, kn) in zip(attns, norms, strict=True):
            a.q_norm, a.k_norm = qn, kn


def test_deepstack_sits_on_the_image_tokens(bb):
    samples = ragged_samples(bb, 3)
    batch = bb.encode(collate(bb, samples))
    ds = batch.deepstack
    assert ds is not None and ds.shape[1:3] == batch.embeds.shape[:2]
    visual = batch.token_type == TokenType.VISUAL
    assert bool((ds[:, ~visual] == 0).all())
    assert bool((ds[:, visual].abs().sum(-1) > 0).all())
    # each sample's rows are its own image's features, in token order
    for i, s in enumerate(samples):
        out = bb.model.model.visual(s["pixel_values"], grid_thw=s["image_grid_thw"])
        for layer, feats in enumerate(out.deepstack_features):
            torch.testing.assert_close(ds[layer, i][visual[i]], feats)


@pytest.mark.parametrize("mode", ["drop", "mask"])
def test_a_reduced_token_carries_its_anchors_features(bb, mode):
    batch = bb.encode(collate(bb, ragged_samples(bb, 2)))
    assert batch.deepstack is not None
    counts = batch.visual_counts()
    h = batch.embeds.shape[-1]
    anchors = [torch.tensor([n - 1, 0, n // 2]) for n in counts]  # any order, any subset
    reduced = [ReducedVisual(embeds=torch.randn(3, h), anchors=a) for a in anchors]
    out = apply_reduction(batch, reduced, mode)
    assert out.deepstack is not None
    for i, a in enumerate(anchors):
        src = batch.deepstack[:, i, batch.token_type[i] == TokenType.VISUAL][:, a]
        got = out.deepstack[:, i, out.token_type[i] == TokenType.VISUAL]
        torch.testing.assert_close(got, src)
        assert bool((out.deepstack[:, i, out.token_type[i] != TokenType.VISUAL] == 0).all())


def test_every_method_states_what_it_does_to_deepstack():
    from harness.baselines import registry

    effects = {name: registry.get(name).deepstack_effect() for name in registry.names()[1:]}
    assert all(effects.values())
    assert "never reach" in effects["vica"] and "never reach" in effects["saisa"]
    assert "anchor" in effects["divprune"] and "dropped" in effects["fastv"]
