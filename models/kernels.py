"""Kernels the executors call with the HF modules' own weights.

HF's Llama-family RMSNorm is written as six elementwise ops (cast, square, mean, add, rsqrt, two
multiplies): six kernel launches on a GPU and, on the CPU, about ten times the time of one fused
``torch.nn.functional.rms_norm`` over the same tensor.  For the norm classes whose forward is
exactly ``weight * x / sqrt(mean(x^2) + eps)`` the executor calls the fused op with the module's
``weight`` and ``variance_epsilon``; the result is identical in float32 (tests/test_kernels.py) and
within one rounding step in half precision.  Any other norm module is called as it is.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F

#: HF norm classes computing weight * x * rsqrt(mean(x^2) + eps) (checked in tests/test_kernels.py)
RMS_NORMS = frozenset({"LlamaRMSNorm", "Qwen2RMSNorm", "Qwen2VLRMSNorm", "MistralRMSNorm"})


def norm(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, as one fused kernel when the module is a plain RMSNorm."""
    if type(module).__name__ in RMS_NORMS:
        w, eps = cast(torch.Tensor, module.weight), cast(float, module.variance_epsilon)
        return F.rms_norm(x, (w.shape[-1],), w, eps)
    return module(x)


def expand_kv(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, Hkv, N, d] -> [B, H, N, d] (grouped-query attention)."""
    rep = heads // int(t.shape[1])
    return t if rep == 1 else t.repeat_interleave(rep, dim=1)


def sliced_mlp(mlp, x: torch.Tensor, width: int) -> torch.Tensor:
    """The gated MLP restricted to its first ``width`` intermediate channels (YOPO)."""

    def lin(mod, inp, rows=None, cols=None):
        w = mod.weight
        w = w[:rows] if rows is not None else w[:, :cols]
        bias = None if mod.bias is None else (mod.bias[:rows] if rows is not None else mod.bias)
        return F.linear(inp, w, bias)

    act = mlp.act_fn(lin(mlp.gate_proj, x, rows=width)) * lin(mlp.up_proj, x, rows=width)
    return lin(mlp.down_proj, act, cols=width)
