"""DivPrune: greedy max-min diversity on the projected visual tokens (cosine distance).

First pick: the token whose nearest neighbour is farthest; then repeatedly the token maximising its
minimum distance to the kept set.  No text, no merging; kept tokens in ascending order.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from harness.models.plan import ReducedVisual

from .clip_attention import visual_embeds
from .prellm import PreLLM


class DivPrune(PreLLM):
    name: ClassVar[str] = "divprune"
    description: ClassVar[str] = "greedy max-min diversity of projected visual tokens"
    reference: ClassVar[dict[str, str]] = {
        "repository": "vbdi/divprune",
        "commit": "799e2d950aa01ba7860907f5a6d86061f885dca6",
        "file": "LLaVA/llava/model/llava_arch.py",
        "rule": "DivPrune",
    }

    def reduce_one(self, bb, batch, i, k):
        x = visual_embeds(batch, i)
        n = x.shape[0]
        z = F.normalize(x.float(), dim=-1)
        dist = 1 - z @ z.T
        # indices stay tensors so the selection is part of the traced data flow (FLOPs counting); each
        # pick is a 1-element index (a 0-dim one would be read on the host by Python indexing)
        nn_dist = dist + torch.eye(n, dtype=dist.dtype, device=dist.device) * 1e9
        first = torch.argmax(nn_dist.min(1).values).view(1)
        chosen = [first]
        taken = torch.zeros(n, dtype=torch.bool, device=x.device)
        taken[first] = True
        min_d = dist[first][0].masked_fill(taken, -1.0)
        for _ in range(k - 1):
            j = torch.argmax(min_d).view(1)
            chosen.append(j)
            taken[j] = True
            min_d = torch.minimum(min_d, dist[j][0]).masked_fill(taken, -1.0)
        keep = torch.sort(torch.cat(chosen)).values
        return ReducedVisual(x[keep], keep), float(n * n * x.shape[1])
