"""CDPruner: keep the visual tokens of maximal conditional diversity, chosen by a DPP (baselines.md 3.6).

Kernel L = diag(r) . S . diag(r) over the visual tokens of one sample:
- S: cosine similarity of the projected visual tokens (LLM input space).
- r: instruction relevance, r_j = mean over instruction rows of (-cos(visual_j, row)), min-max
  normalised per sample as (r - min + 1e-6) / (max - min + 1e-6).  The minus sign is the authors'
  (CDPruner #9, #14, #19, #22); the 1e-6 keeps the least relevant token's kernel row non-zero, as
  in the released code.  No instruction rows: r = 1 (plain DPP on S).
Greedy MAP inference (Chen et al., 2018): keep every candidate's marginal gain d_i^2 (initially
L_ii) and one incremental Cholesky row per pick; pick argmax d_i^2 (ties: lower index), then
d_i^2 -= e_i^2 with e = (L_j - c_j . C) / d_j.  Exactly k picks, no early stop (d_j^2 is clamped
at 1e-12 once the kernel's rank is used up); the optional theta scaling exp(alpha r) is off, as
in the released code.

Relevance source (seebench deviation, recorded here): the reference embeds the instruction with the
CLIP text tower and the patches with CLIP's post-layernorm + visual projection.  HF LLaVA
checkpoints ship neither (vision tower only), so relevance is taken in the LLM input space: the
projected visual tokens against the LLM input embeddings of the instruction (the T segment of the
token-type map).  This needs no extra weights and works on every backbone (Qwen2-VL included).

Published defaults: k = 192 / 128 / 64 of 576 (the ``budget`` knob).  Kept tokens in ascending
order; positions renumbered (pre-LLM policy, README 2.3).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from harness.models.plan import ReducedVisual

from .clip_attention import rows_of_type, visual_embeds
from .prellm import PreLLM

EPS = 1e-6
TEXT = 3  # TokenType.TEXT


def relevance(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Min-max normalised mean negative cosine of each visual token [n, h] to the text rows [m, h]."""
    if text.shape[0] == 0:
        return visual.new_ones(visual.shape[0])
    rel = -(F.normalize(visual, dim=-1) @ F.normalize(text, dim=-1).T).mean(-1)
    return (rel - rel.min() + EPS) / (rel.max() - rel.min() + EPS)


def dpp_greedy(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy MAP picks of a DPP with kernel [n, n], in pick order."""
    gain = kernel.diagonal().clone()
    rows = kernel.new_zeros(k, kernel.shape[0])
    picks = []
    for t in range(k):
        # first maximum: ties toward the lower index; a 1-element index, never read on the host
        j = torch.argmax(gain).view(1)
        picks.append(j)
        if t == k - 1:  # the last update would serve no further pick
            break
        e = (kernel[j][0] - rows[:t, j][:, 0] @ rows[:t]) / torch.sqrt(gain[j].clamp_min(EPS * EPS))
        rows[t] = e
        gain = gain - e * e
        gain[j] = -float("inf")
    return torch.cat(picks)


class CDPruner(PreLLM):
    name: ClassVar[str] = "cdpruner"
    description: ClassVar[str] = "DPP over projected visual tokens, conditioned on instruction relevance"

    def reduce_one(self, bb, batch, i, k):
        x = visual_embeds(batch, i)
        text = rows_of_type(batch, i, TEXT).float()  # located on the host layout
        z = F.normalize(x.float(), dim=-1)
        rel = relevance(x.float(), text)
        kernel = rel[:, None] * (z @ z.T) * rel[None, :]
        keep = torch.sort(dpp_greedy(kernel, k)).values
        n, h = x.shape
        macs = n * n * h + n * text.shape[0] * h + n * (k - 1) * (k - 2) // 2  # S, relevance, DPP
        return ReducedVisual(x[keep], keep), float(macs)
