"""What a token selector sees and returns: whole-batch tensors with static sizes.

A selector (``drop_before`` / ``drop_after`` in a :class:`~.plan.LayerPlan`) is asked twice.  On the
host, when a plan is compiled against a batch layout, :meth:`kept` says how many visual tokens each
sample keeps (from counts alone: present tokens, the sample's visual tokens at layer 0, its text
tokens).  On the device, :meth:`select` gets a :class:`SelectContext` whose tensors are padded to the
largest sample (``valid`` marks real slots) and returns slots ``[B, k]``, ``k = max(kept)``: row i's
first ``kept[i]`` entries are the slots it keeps, in any order.  Nothing in between reads the
device, so a selection is ``sort`` / ``topk`` with a static k plus gathers.

A selector with ``recycle`` also merges dropped tokens (SparseVLM): :meth:`recycled` gives the count
per sample on the host, ``recycle(ctx, chosen)`` the merged states ``[B, R, h]`` and, per merged
token, the slot of the present token whose identity (position, grid coordinate) it takes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class SampleCounts:
    """Host-side counts of one sample at a selection."""

    present: int  # visual tokens present when the selector runs
    n_visual: int  # visual tokens the sample entered layer 0 with (the budget's reference)
    n_text: int  # text tokens after the image
    n_system: int = 0  # tokens before the image (the image's start position in the prompt)


@dataclass
class SelectContext:
    """One selection over the whole batch; tensors are [B, V, ...] over the present visual tokens
    in row order (``valid`` False on padding slots), [B, T, ...] over the text tokens.

    ``scores`` (``attn_last`` / ``attn_rows`` needs): fp32 attention mass on each present visual
    token (mean over heads, then over the scored rows), ``-inf`` on padding slots.  ``keys``:
    post-RoPE keys [B, V, Hkv*d] and ``text_keys``; ``hidden`` / ``text_hidden``: the states the
    selector asked for (leaving the layer for ``hidden_out``, entering it for ``hidden_in``).
    ``visual_index``: original visual index of each present token (-1 on padding), made on first
    use.
    """

    layer: int
    counts: list[SampleCounts]
    kept: list[int]
    valid: torch.Tensor
    sample_ids: list[str]
    scores: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    text_keys: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    text_hidden: torch.Tensor | None = None
    text_valid: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    index_fn: Callable[[], torch.Tensor] | None = None
    _index: torch.Tensor | None = None

    @property
    def k(self) -> int:
        return max(self.kept, default=0)

    @property
    def batch_size(self) -> int:
        return len(self.counts)

    @property
    def visual_index(self) -> torch.Tensor:
        if self._index is None:
            assert self.index_fn is not None
            self._index = self.index_fn()
        return self._index

    def kept_index(self, chosen: torch.Tensor) -> list[list[int]]:
        """Per sample, the original visual indices ``chosen`` keeps (for tests and logs: reads the
        device)."""
        vi = self.visual_index
        return [sorted(vi[i, chosen[i, : self.kept[i]]].tolist()) for i in range(self.batch_size)]


def top_k_slots(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[B, k] slots of the k largest scores per row; equal scores prefer the lower slot (a stable
    sort, so results do not depend on the kernel).  Padding slots scored ``-inf`` come last."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def slots_of(mask: torch.Tensor, k: int) -> torch.Tensor:
    """[B, k] slots where ``mask`` [B, V] is True, ascending, then the False ones."""
    return torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices[..., :k]


def masked_scores(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(~valid, float("-inf"))
