"""VisionZip: dominant tokens (CLS + top patches by CLS attention) and merged contextual tokens.

Dominant (docs/baselines.md §3.2): the top-(D-1) patches by CLS attention of CLIP layer -2, plus the CLS
token's own state.  Contextual: on the remaining r patches (ascending), keys of that layer averaged
over heads and L2-normalised; the C targets are the remaining patches at positions 0, s, 2s, ...,
(C-1)s with the integer stride s = max(1, r // C), as the official code indexes them
(``torch.arange(0, r, step)[:C]`` in dvlab-research/VisionZip visionzip/clip_encoder.py
``CLIPVisionTower_VisionZip.forward``); every other remaining patch joins its most similar target
(argmax cosine); a contextual token = target feature + mean of its members (an empty target adds 0).
D : C follows the published splits (54 + 10 for 64 tokens, 108 + 20, 162 + 30).  Output: dominant in
original order (CLS first), then contextual in target order; positions renumbered; the tokens go
through the projector.  The official code hard-codes ``hidden_states[-2]`` / layer -2; seebench reads
the layer LLaVA takes its features from (the same on LLaVA-1.5).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from harness.models.plan import ReducedVisual

from .clip_attention import clip_state, cls_attention, project
from .common import top_k
from .prellm import PreLLM


class VisionZip(PreLLM):
    name: ClassVar[str] = "visionzip"
    description: ClassVar[str] = "dominant tokens by CLIP [CLS] attention + merged contextual tokens"
    reference: ClassVar[dict[str, str]] = {
        "repository": "dvlab-research/VisionZip",
        "commit": "3151f6df4fca36a4cd1c985e5956e725b1f9ad02",
        "file": "visionzip/clip_encoder.py",
        "rule": "CLIPVisionTower_VisionZip.forward",
    }

    def reduce_one(self, bb, batch, i, k):
        state = clip_state(batch, i, self.name)
        attn, keys, macs = cls_attention(bb, state)
        feats = state["h_out"][1:]  # patch features LLaVA projects
        cls = state["h_out"][:1]
        n = int(feats.shape[0])
        dominant = max(1, round(k * 54 / 64))
        contextual = k - dominant
        dom = torch.sort(top_k(attn, dominant - 1)).values
        dev = feats.device
        # the other patches in ascending order: a stable sort of the dominant mask puts them first,
        # and there are exactly n - |dom| of them (static size, nothing read on the host)
        is_dom = torch.zeros(n, dtype=torch.int8, device=dev)
        is_dom[dom] = 1
        rest = torch.sort(is_dom, stable=True).indices[: n - min(dominant - 1, n)]
        tokens, anchors = [cls, feats[dom]], [torch.zeros(1, dtype=torch.long, device=dev), dom]
        r = rest.numel()
        if contextual > 0 and r:
            c = min(contextual, r)
            step = max(1, r // c)  # the official integer stride: arange(0, r, r // C)[:C]
            # target and member positions in ``rest`` follow from the counts alone: one upload
            tgt = [j * step for j in range(c)]
            is_tgt = set(tgt)
            pos = torch.tensor(tgt + [p for p in range(r) if p not in is_tgt], dtype=torch.long, device=dev)
            split = rest[pos]
            targets, others = split[:c], split[c:]
            kn = F.normalize(keys.float(), dim=-1)
            sim = kn[others] @ kn[targets].T
            macs += float(others.numel() * targets.numel() * keys.shape[1])
            owner = sim.argmax(1)
            # per-target mean of its members: sums and counts by scatter_add (an empty target adds 0)
            # (accumulated in float32, as ``mean`` accumulates, then back to the features' dtype)
            d = feats.shape[1]
            member = feats[others].float()
            sums = member.new_zeros(c, d).scatter_add(0, owner[:, None].expand(-1, d), member)
            ones = torch.ones(others.numel(), dtype=member.dtype, device=dev)
            count = member.new_zeros(c).scatter_add(0, owner, ones)
            tokens.append(feats[targets] + (sums / count.clamp_min(1)[:, None]).to(feats.dtype))
            anchors.append(targets)
        x, pmacs = project(bb, torch.cat(tokens))
        return ReducedVisual(x, torch.cat(anchors)), macs + pmacs
