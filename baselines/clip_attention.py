"""The ViT's own attention for pre-LLM methods: one CLS row and the keys of one CLIP layer.

Computed from the states the backbone kept (``batch.extras["clip"]``) with that layer's weights via
``F.linear`` (only the needed rows: docs/methods.md §2.5), so the vision tower is not re-run and the
model is never switched to eager attention.  Every function reports the MACs it spent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from harness.models.method import MethodError


def clip_state(batch: Any, i: int, method: str) -> dict:
    clip = batch.extras.get("clip")
    if not clip or clip[i] is None:
        why = batch.extras.get("no_clip")  # the backbone's reason, where it gives one (InternVL)
        raise MethodError(
            f"method '{method}' reads CLIP attention: it needs a LLaVA-1.5 backbone with a CLIP tower"
            + (f"; {why}" if why else "")
        )
    return clip[i]


def _layer(bb: Any, index: int):
    return bb.model.model.vision_tower.encoder.layers[index]


def cls_attention(
    bb: Any, state: dict, *, last_layer: bool = False
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CLS attention over the patches and the layer's keys.

    Default: the feature layer (-2), per head then mean over heads; keys averaged over heads
    [n, d_head].  ``last_layer``: PruMerge+'s variant on the last ViT layer with all dims as one
    head; keys [n, d].  Returns (attention [n], keys, MACs).

    Both read q_proj / k_proj of layer_norm1 of the layer's INPUT, as the official hooks on
    ``q_proj`` / ``k_proj`` see it.  For the last layer that input is ``h_in`` when the feature layer
    is the last one (feature layer -1), ``h_out`` when it is the one before (-2, LLaVA-1.5); for a
    shallower feature layer the missing encoder layers are run here (their MACs are overhead)."""
    vt = bb.model.model.vision_tower
    macs = 0.0
    if last_layer:
        index = len(vt.encoder.layers) - 1
        h, macs = _input_of(bb, state, index)
    else:
        index, h = state["layer"], state["h_in"]
    layer = _layer(bb, index)
    attn = layer.self_attn
    x = layer.layer_norm1(h)
    n, d = x.shape
    q = F.linear(x[:1], attn.q_proj.weight, attn.q_proj.bias)
    k = F.linear(x, attn.k_proj.weight, attn.k_proj.bias)
    heads = 1 if last_layer else attn.num_heads
    dh = d // heads
    qh = q.view(1, heads, dh).transpose(0, 1)  # [H, 1, dh]
    kh = k.view(n, heads, dh).transpose(0, 1)  # [H, n, dh]
    probs = torch.softmax((qh @ kh.transpose(1, 2)) * dh**-0.5, -1)[:, 0]  # [H, n]
    keys = k[1:] if last_layer else kh.mean(0)[1:]
    macs += d * d + n * d * d + n * d
    return probs.mean(0)[1:], keys, float(macs)


def _input_of(bb: Any, state: dict, index: int) -> tuple[torch.Tensor, float]:
    """The hidden state entering encoder layer ``index`` (at or after the feature layer) and the MACs
    of the encoder layers run to get it (none when the backbone kept it)."""
    w = state["layer"]
    if index == w:
        return state["h_in"], 0.0
    if index < w:
        raise MethodError(f"CLIP layer {index} lies before the kept feature layer {w}")
    h, macs = state["h_out"], 0.0
    for j in range(w + 1, index):
        layer = _layer(bb, j)
        out = layer(h[None], None)
        h = (out[0] if isinstance(out, tuple) else out)[0]
        n, d = h.shape
        ff = layer.mlp.fc1.out_features
        macs += float(4 * n * d * d + 2 * n * n * d + 2 * n * d * ff)
    return h, macs


def project(bb: Any, feats: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The LLaVA projector on reduced features (functional calls on its weights)."""
    pj = bb.model.model.multi_modal_projector
    x = F.linear(feats, pj.linear_1.weight, pj.linear_1.bias)
    x = pj.act(x)
    x = F.linear(x, pj.linear_2.weight, pj.linear_2.bias)
    macs = feats.shape[0] * (pj.linear_1.in_features * pj.linear_1.out_features
                             + pj.linear_2.in_features * pj.linear_2.out_features)  # fmt: skip
    return x, float(macs)


def visual_embeds(batch: Any, i: int) -> torch.Tensor:
    """Sample i's visual tokens [n, h]: a slice at the span the host layout gives (no device read)."""
    start, end = batch.layout.visual_spans()[i]
    return batch.embeds[i, start:end]


def rows_of_type(batch: Any, i: int, kind: int) -> torch.Tensor:
    """Sample i's rows of one token type [m, h], in row order, located on the host layout: a slice
    when they are contiguous (the usual case), else an index uploaded from the host."""
    hits = np.flatnonzero(batch.layout.ttype[i] == kind)
    if hits.size == 0 or hits[-1] - hits[0] + 1 == hits.size:
        start = int(hits[0]) if hits.size else 0
        return batch.embeds[i, start : start + int(hits.size)]
    return batch.embeds[i, torch.from_numpy(hits.astype(np.int64)).to(batch.embeds.device)]
