"""VisionZip: dominant tokens (CLS + top patches by CLS attention) and merged contextual tokens.

Dominant (baselines.md 3.2): the top-(D-1) patches by CLS attention of CLIP layer -2, plus the CLS
token's own state.  Contextual: on the remaining patches, keys of that layer averaged over heads and
L2-normalised; C targets by uniform stride; every other remaining patch joins its most similar
target; a contextual token = target feature + mean of its members.  D : C follows the published
splits (54 + 10 for 64 tokens, 108 + 20, 162 + 30).  Output: dominant in original order (CLS first),
then contextual in target order; positions renumbered; the tokens go through the projector.
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
        is_dom = torch.zeros(n, dtype=torch.bool, device=dev)
        is_dom[dom] = True
        rest = torch.arange(n, device=dev)[~is_dom]  # stays in the traced data flow (FLOPs counting)
        tokens, anchors = [cls, feats[dom]], [torch.zeros(1, dtype=torch.long, device=dev), dom]
        if contextual > 0 and rest.numel():
            c = min(contextual, rest.numel())
            step = rest.numel() / c
            tgt_pos = torch.tensor([int(j * step) for j in range(c)], device=dev)
            targets = rest[tgt_pos]
            is_tgt = torch.zeros(rest.numel(), dtype=torch.bool, device=dev)
            is_tgt[tgt_pos] = True
            others = rest[~is_tgt]
            kn = F.normalize(keys.float(), dim=-1)
            sim = kn[others] @ kn[targets].T
            macs += float(others.numel() * targets.numel() * keys.shape[1])
            owner = sim.argmax(1)
            merged = []
            for t in range(targets.numel()):
                members = others[owner == t]
                extra = feats[members].mean(0) if members.numel() else torch.zeros_like(feats[0])
                merged.append(feats[targets[t]] + extra)
            tokens.append(torch.stack(merged))
            anchors.append(targets)
        x, pmacs = project(bb, torch.cat(tokens))
        return ReducedVisual(x, torch.cat(anchors)), macs + pmacs
