"""Pre-LLM reducers read no device value on the host: ``reduce()`` under ``harness.opcount.counting``
has zero host reads (PruMerge+: none while its uniform grid fills k-1, at most its declared
``host_reads`` when the kept count depends on the data), and keeps the count its rule gives."""

import pytest
import torch

from harness.baselines.clip_attention import clip_state, cls_attention
from harness.baselines.prumerge_plus import PruMergePlus, grid_indices
from harness.baselines.registry import build_stack
from harness.models.backbones.base import collate
from harness.models.backbones.random import build_random, ragged_samples
from harness.models.backbones.synthetic import synthetic_backbone, synthetic_batch
from harness.opcount import counting

METHODS = ["fastervlm", "visionzip", "vispruner", "prumerge_plus", "divprune", "cdpruner", "tome"]
# (backbone and batch, budget of 576): the random model has 36 patches (6 x 6), the synthetic
# LLaVA-1.5 geometry the real 576 (24 x 24) at the published budgets
CASES = [
    ("random-b1", 64),
    ("random-b1", 192),
    ("random-ragged4", 64),
    ("random-ragged4", 192),
    ("synthetic576", 64),
    ("synthetic576", 192),
]


@pytest.fixture(scope="module")
def batches():
    with torch.no_grad():
        bb = build_random("llava-1.5")
        sb = synthetic_backbone("llava-1.5", layers=2, hidden=256, heads=8)
        return {
            "random-b1": (bb, bb.encode(ragged_samples(bb, 1)[0])),
            "random-ragged4": (bb, bb.encode(collate(bb, ragged_samples(bb, 4)))),
            "synthetic576": (sb, synthetic_batch(sb, "llava-1.5", 2)),  # two samples: one read for both
        }


def prumerge_count(bb, batch, i, k):
    """PruMerge+'s kept count by its rule: min(k-1, |IQR outliers + grid|) merged tokens + 1 summary."""
    attn, _, _ = cls_attention(bb, clip_state(batch, i, "prumerge_plus"), last_layer=True)
    q1, q3 = torch.quantile(attn.float(), torch.tensor([0.25, 0.75]))
    chosen = set(torch.nonzero(attn > q3 + 1.5 * (q3 - q1)).flatten().tolist())
    budget = max(1, k - 1)
    chosen |= set(grid_indices(attn.numel(), budget))
    return 1 if k == 1 else min(budget, len(chosen)) + 1


def test_the_counter_sees_a_host_read():
    x = torch.arange(6.0)
    with counting() as c:
        x[x > 2].sum()
    assert c.host_reads == 1


@pytest.mark.parametrize(("case", "budget"), CASES)
@pytest.mark.parametrize("method", METHODS)
def test_reduce_reads_nothing_on_the_host(batches, method, case, budget):
    bb, batch = batches[case]
    m = build_stack(method, {method: {"budget": budget}}).methods[0]
    with torch.inference_mode(), counting() as c:
        reduced = m.reduce(bb, batch)
    counts = [r.embeds.shape[0] for r in reduced]
    ks = [m.kept(n) for n in batch.layout.count(2)]
    assert len(reduced) == batch.batch_size
    assert all(r.anchors.shape == (r.embeds.shape[0],) for r in reduced)
    if method != "prumerge_plus":
        assert c.host_reads == 0, dict(c.reads)
        assert counts == ks
        return
    n = batch.layout.count(2)
    static = all(len(grid_indices(v, max(1, k - 1))) >= max(1, k - 1) for v, k in zip(n, ks, strict=True))
    assert c.host_reads <= (0 if static else PruMergePlus.host_reads), dict(c.reads)
    if budget == 64:
        assert static and c.host_reads == 0
    if case == "synthetic576" and budget == 192:
        assert not static  # a 144-patch grid for 191 merged tokens: the data-dependent regime
    want = [prumerge_count(bb, batch, i, k) for i, k in enumerate(ks)]
    assert counts == want
    assert all(got <= k for got, k in zip(counts, ks, strict=True))
