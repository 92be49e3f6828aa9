"""Verification on random models sees a misplaced norm: the random models draw their norm weights
(and biases) at random, as HF's unit initialisation makes an RMSNorm nearly idempotent, and an
RMSNorm applied twice in the executor fails ``verify``."""

import pytest

from harness.models import executor
from harness.models.backbones.random import RANDOM_FAMILIES, ragged_samples
from harness.models.verify import TOLERANCE, verify_dense


def _doubled(monkeypatch):
    once = executor.norm
    monkeypatch.setattr(executor, "norm", lambda module, x: once(module, once(module, x)))


def _norm_weights(bb):
    return [
        m.weight for m in bb.model.modules() if "norm" in type(m).__name__.lower() and hasattr(m, "weight")
    ]


@pytest.mark.parametrize("family", list(RANDOM_FAMILIES))
def test_random_models_draw_norm_weights(random_backbones, family):
    weights = _norm_weights(random_backbones[family])
    assert weights
    for w in weights:
        assert float((w - 1).abs().max()) > 0.05  # not HF's unit initialisation


@pytest.mark.parametrize("family", ["llava-1.5", "qwen2-vl"])
def test_a_doubled_norm_fails_verify(random_backbones, monkeypatch, family):
    bb = random_backbones[family]
    samples = ragged_samples(bb, 2)
    assert verify_dense(bb, samples, max_new_tokens=3).ok
    _doubled(monkeypatch)
    rep = verify_dense(bb, samples, max_new_tokens=3)
    assert not rep.ok
    assert rep.max_abs_diff_batch1 > 100 * TOLERANCE
