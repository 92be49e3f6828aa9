"""The executor's own KV cache: one buffer per layer, each with its own token set.

Layers can hold different token sets (ViCA caches visual K/V only in its T2V layers; pruning
drops visual entries from its drop layer on; VTW has none after layer K), so every layer keeps
its keys, values, a validity mask (which entries a generated token may read), a visual flag per
entry and the position the next generated token takes in that layer (PDrop renumbers per stage).
Buffers are preallocated for the whole generation so that decode appends in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LayerKV:
    k: torch.Tensor  # [B, Hkv, capacity, d]
    v: torch.Tensor  # [B, Hkv, capacity, d]
    valid: torch.Tensor  # [B, capacity] bool: entry may be read by generated tokens
    is_visual: torch.Tensor  # [B, capacity] bool
    next_pos: torch.Tensor  # [B] long: position of the first generated token in this layer
    length: int  # entries written so far (prefill + generated)

    @classmethod
    def from_prefill(
        cls,
        k: torch.Tensor,
        v: torch.Tensor,
        valid: torch.Tensor,
        is_visual: torch.Tensor,
        next_pos: torch.Tensor,
        extra: int,
    ) -> LayerKV:
        b, hk, n, d = k.shape
        kk = k.new_zeros(b, hk, n + extra, d)
        vv = v.new_zeros(b, hk, n + extra, d)
        kk[:, :, :n] = k
        vv[:, :, :n] = v
        val = valid.new_zeros(b, n + extra)
        val[:, :n] = valid
        vis = is_visual.new_zeros(b, n + extra)
        vis[:, :n] = is_visual & valid
        return cls(kk, vv, val, vis, next_pos.clone(), n)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write one generated token's K/V [B, Hkv, 1, d] (grows the buffer if needed)."""
        if self.length >= self.k.shape[2]:
            grow = max(16, self.k.shape[2] // 2)
            self.k = torch.cat([self.k, self.k.new_zeros(*self.k.shape[:2], grow, self.k.shape[3])], 2)
            self.v = torch.cat([self.v, self.v.new_zeros(*self.v.shape[:2], grow, self.v.shape[3])], 2)
            self.valid = torch.cat([self.valid, self.valid.new_zeros(self.valid.shape[0], grow)], 1)
            self.is_visual = torch.cat(
                [self.is_visual, self.is_visual.new_zeros(self.valid.shape[0], grow)], 1
            )
        i = self.length
        self.k[:, :, i : i + 1] = k
        self.v[:, :, i : i + 1] = v
        self.valid[:, i] = True
        self.length += 1

    def view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n = self.length
        return self.k[:, :, :n], self.v[:, :, :n], self.valid[:, :n], self.is_visual[:, :n]

    def entries(self) -> torch.Tensor:
        """Readable entries per sample [B]."""
        return self.valid[:, : self.length].sum(1)


@dataclass
class KVCache:
    layers: list[LayerKV]
    steps: int = 0  # generated tokens appended so far

    def bytes_per_sample(self) -> list[int]:
        """KV bytes a real per-sample cache needs: readable entries x 2 (K and V) x Hkv x d x size."""
        total = None
        for lk in self.layers:
            per_entry = 2 * lk.k.shape[1] * lk.k.shape[3] * lk.k.element_size()
            t = lk.entries() * per_entry
            total = t if total is None else total + t
        return [int(x) for x in total.tolist()] if total is not None else []

    def visual_bytes_per_sample(self) -> list[int]:
        """The visual share of :meth:`bytes_per_sample`."""
        total = None
        for lk in self.layers:
            per_entry = 2 * lk.k.shape[1] * lk.k.shape[3] * lk.k.element_size()
            n = (lk.valid[:, : lk.length] & lk.is_visual[:, : lk.length]).sum(1) * per_entry
            total = n if total is None else total + n
        return [int(x) for x in total.tolist()] if total is not None else []

    def visual_entries(self) -> list[int]:
        """Readable visual entries per layer, summed over the batch."""
        return [int((lk.valid[:, : lk.length] & lk.is_visual[:, : lk.length]).sum()) for lk in self.layers]
