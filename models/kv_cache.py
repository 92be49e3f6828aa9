"""The executor's KV cache: one preallocated buffer per layer, each with its own token set.

Layers can hold different token sets (ViCA caches visual K/V only in its T2V layers; pruning
drops visual entries from its drop layer on; VTW has none after layer K), so a layer's buffer is
allocated at the capacity the compiled plan gives that layer: the keys its prefill computed
(``prefill`` slots, some of them unreadable padding in a ragged batch) plus the tokens to generate.
The prefill writes its keys in place; decode step t writes slot ``prefill + t`` through a device
index and attends over the whole buffer under a valid-length mask, so no step reallocates,
compacts or reads the device.  What each slot is (readable, visual) is known on the host from the
plan, so the memory figures below are host arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .plan import VisualPlan


@dataclass(eq=False)
class LayerKV:
    k: torch.Tensor  # [B, Hkv, capacity, d]
    v: torch.Tensor
    prefill: int  # slots written by the prefill
    prefill_valid: torch.Tensor  # [B, prefill] bool: slot readable by generated tokens
    is_visual: torch.Tensor  # [B, capacity] bool (generated slots False)
    next_pos: torch.Tensor  # [B] long: position of the first generated token in this layer
    readable: list[int]  # readable prefill entries per sample (host)
    visual: list[int]  # readable visual entries per sample (host)
    geometry: tuple = ()  # layers with equal geometry share one decode mask per step

    @property
    def capacity(self) -> int:
        return int(self.k.shape[2])

    @classmethod
    def allocate(cls, k: torch.Tensor, v: torch.Tensor, extra: int, **kw) -> LayerKV:
        """Buffers for ``k``/``v`` [B, Hkv, n, d] plus ``extra`` generated slots, the prefill keys
        written in place."""
        b, hk, n, d = k.shape
        kk = k.new_empty(b, hk, n + extra, d)
        vv = v.new_empty(b, hk, n + extra, d)
        kk[:, :, :n].copy_(k)
        vv[:, :, :n].copy_(v)
        if extra:  # never read before written, but keep them finite for masked attention
            kk[:, :, n:].zero_()
            vv[:, :, n:].zero_()
        return cls(kk, vv, n, **kw)

    def grow(self, extra: int) -> None:
        """More generated slots (decoding past the reserved length; eager only)."""
        z = self.k.new_zeros(*self.k.shape[:2], extra, self.k.shape[3])
        self.k = torch.cat([self.k, z], 2)
        self.v = torch.cat([self.v, z], 2)
        self.is_visual = torch.cat(
            [self.is_visual, self.is_visual.new_zeros(self.is_visual.shape[0], extra)], 1
        )


@dataclass(eq=False)
class KVCache:
    layers: list[LayerKV]
    steps: int = 0  # generated tokens written so far (host counter)
    step: torch.Tensor | None = None  # the same count on the device [1] (decode indexes with it)
    plan: VisualPlan | None = None  # the plan that filled the cache
    extra: int = 0  # generated slots reserved per layer
    scratch: dict = field(default_factory=dict)

    def entries(self) -> list[list[int]]:
        """Readable entries per layer and sample (prefill + generated)."""
        return [[r + self.steps for r in lk.readable] for lk in self.layers]

    def bytes_per_sample(self) -> list[int]:
        """KV bytes a real per-sample cache needs: readable entries x 2 (K and V) x Hkv x d x size."""
        if not self.layers:
            return []
        total = [0] * len(self.layers[0].readable)
        for lk, ent in zip(self.layers, self.entries(), strict=True):
            per_entry = 2 * lk.k.shape[1] * lk.k.shape[3] * lk.k.element_size()
            total = [t + e * per_entry for t, e in zip(total, ent, strict=True)]
        return total

    def visual_bytes_per_sample(self) -> list[int]:
        """The visual share of :meth:`bytes_per_sample`."""
        if not self.layers:
            return []
        total = [0] * len(self.layers[0].visual)
        for lk in self.layers:
            per_entry = 2 * lk.k.shape[1] * lk.k.shape[3] * lk.k.element_size()
            total = [t + e * per_entry for t, e in zip(total, lk.visual, strict=True)]
        return total

    def visual_entries(self) -> list[int]:
        """Readable visual entries per layer, summed over the batch."""
        return [sum(lk.visual) for lk in self.layers]
