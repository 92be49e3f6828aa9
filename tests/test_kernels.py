"""The fused RMSNorm the executor calls with the HF modules' weights equals each module's forward."""

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.mistral.modeling_mistral import MistralRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRMSNorm

from harness.models.kernels import RMS_NORMS, norm
from harness.opcount import count_call

CLASSES = [LlamaRMSNorm, Qwen2RMSNorm, Qwen2VLRMSNorm, MistralRMSNorm]


def test_every_listed_class_is_tested():
    assert {c.__name__ for c in CLASSES} == RMS_NORMS


@pytest.mark.parametrize("cls", CLASSES)
def test_fused_norm_equals_the_module(cls):
    g = torch.Generator().manual_seed(0)
    m = cls(64, eps=1e-5)
    with torch.no_grad():
        m.weight.copy_(torch.randn(64, generator=g) * 0.7 + 1.0)  # random, non-unit weights
    x = torch.randn(3, 17, 64, generator=g) * 3
    with torch.inference_mode():
        assert torch.equal(norm(m, x), m(x))
        assert count_call(lambda: norm(m, x)).ops == 1 < count_call(lambda: m(x)).ops
        half = m.to(torch.bfloat16)
        xb = x.to(torch.bfloat16)
        torch.testing.assert_close(norm(half, xb).float(), half(xb).float(), atol=0.05, rtol=0.02)


def test_other_norms_are_called_as_they_are():
    ln = torch.nn.LayerNorm(8)
    x = torch.randn(2, 8)
    assert torch.equal(norm(ln, x), ln(x))
