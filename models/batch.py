"""The embedded batch the executor runs: embeddings plus a token-type map and original positions.

Ragged batches are normal: samples are left-padded to a common length ``N``; ``token_type`` is
``PAD`` there.  Visual token counts may differ per sample (LLaVA-NeXT anyres, Qwen2-VL dynamic
resolution, pre-LLM pruning).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any

import torch


class TokenType(IntEnum):
    PAD = 0
    SYSTEM = 1  # tokens before the first image token (BOS, system prompt, "USER:")
    VISUAL = 2  # image tokens (projector output)
    TEXT = 3  # everything after the image: question, "ASSISTANT:", generated tokens


@dataclass
class Batch:
    """An embedded, left-padded batch.

    Shapes: ``embeds`` [B, N, h]; ``token_type`` [B, N] (:class:`TokenType`); ``positions``
    [P, B, N] with P = 1 (1-D RoPE) or 3 (Qwen2-VL M-RoPE: temporal, height, width);
    ``next_position`` [B] = the position of the first generated token (full multimodal length);
    ``visual_index`` [B, N] = k for the k-th image token of its sample, -1 elsewhere;
    ``visual_coords`` [B, N, 3] = (grid id, row, col) of each image token on its feature grid,
    -1 elsewhere (LLaVA-NeXT: grid 0 = base image, 1 = high-resolution tiles; newline tokens -1).
    ``vision_features``: per sample, the raw vision features the projector consumed
    [n_visual, d_vision] (SAISA's per-layer projectors and pre-LLM methods read them).
    """

    embeds: torch.Tensor
    token_type: torch.Tensor
    positions: torch.Tensor
    next_position: torch.Tensor
    visual_index: torch.Tensor
    visual_coords: torch.Tensor
    sample_ids: list[str]
    vision_features: list[torch.Tensor] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.embeds.shape[0]

    @property
    def seq_len(self) -> int:
        return self.embeds.shape[1]

    @property
    def valid(self) -> torch.Tensor:
        return self.token_type != TokenType.PAD

    def visual_counts(self) -> list[int]:
        return (self.token_type == TokenType.VISUAL).sum(1).tolist()

    def lengths(self) -> list[int]:
        return self.valid.sum(1).tolist()

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        """The batch on ``device``: every tensor field, ``vision_features`` and the tensors inside
        ``extras`` (nested lists / dicts, e.g. the per-sample CLIP states) are moved; floating
        tensors are cast to ``dtype`` when given, integer tensors are only moved."""
        return Batch(**{f.name: _to(getattr(self, f.name), device, dtype) for f in fields(self)})

    def select(self, rows: list[int]) -> Batch:
        """The sub-batch of the given samples, re-padded to their own longest length."""
        lengths = self.valid[rows].sum(1)
        n = int(lengths.max())
        sl = slice(self.seq_len - n, self.seq_len)
        feats = None if self.vision_features is None else [self.vision_features[r] for r in rows]
        extras = dict(self.extras)
        if isinstance(extras.get("clip"), list):
            extras["clip"] = [extras["clip"][r] for r in rows]
        return Batch(
            embeds=self.embeds[rows, sl],
            token_type=self.token_type[rows, sl],
            positions=self.positions[:, rows, sl],
            next_position=self.next_position[rows],
            visual_index=self.visual_index[rows, sl],
            visual_coords=self.visual_coords[rows, sl],
            sample_ids=[self.sample_ids[r] for r in rows],
            vision_features=feats,
            extras=extras,
        )


def _to(obj: Any, device: torch.device | str, dtype: torch.dtype | None) -> Any:
    """Move a tensor (or the tensors inside lists, tuples and dicts) to ``device``; floating
    tensors are cast to ``dtype`` when one is given."""
    if isinstance(obj, torch.Tensor):
        if dtype is not None and obj.is_floating_point():
            return obj.to(device=device, dtype=dtype)
        return obj.to(device=device)
    if isinstance(obj, dict):
        return {k: _to(v, device, dtype) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to(v, device, dtype) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to(v, device, dtype) for v in obj)
    return obj


def token_types_from_ids(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int
) -> torch.Tensor:
    """System = before the first image token, visual = image tokens, text = after, pad = masked.

    A sample without image tokens is all text.
    """
    is_img = input_ids == image_token_id
    valid = attention_mask.bool()
    seen_img = torch.cumsum(is_img.int(), dim=1) > 0
    has_img = is_img.any(dim=1, keepdim=True)
    tt = torch.full_like(input_ids, int(TokenType.TEXT))
    tt[has_img & ~seen_img] = int(TokenType.SYSTEM)
    tt[is_img] = int(TokenType.VISUAL)
    tt[~valid] = int(TokenType.PAD)
    return tt


def visual_index_from_types(token_type: torch.Tensor) -> torch.Tensor:
    is_vis = token_type == TokenType.VISUAL
    idx = torch.cumsum(is_vis.long(), dim=1) - 1
    return torch.where(is_vis, idx, torch.full_like(idx, -1))


def left_pad_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """1-D positions that start at 0 on the first real token of each left-padded sample [1,B,N]."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)[None]


def apply_reduction(batch: Batch, reduced: list, mode: str = "drop") -> Batch:
    """Replace each sample's visual tokens by a pre-LLM reducer's output (``ReducedVisual``).

    Drop mode: the sequence shrinks to [system][k visual][text], left-padded again.  Mask mode: the
    full length stays; the k tokens fill the first visual slots and the freed slots become padding
    (masked everywhere).  1-D positions are renumbered 0..n-1 over the real tokens (README 2.3);
    M-RoPE ids keep the original 3-D ids of each token's anchor (the spec's recorded deviation).
    """
    rows = []
    for i, red in enumerate(reduced):
        tt = batch.token_type[i]
        real = (tt != TokenType.PAD).nonzero().flatten()
        vis = (tt == TokenType.VISUAL).nonzero().flatten()
        pre = real[real < vis[0]] if vis.numel() else real
        post = real[real > vis[-1]] if vis.numel() else real[:0]
        k = red.embeds.shape[0]
        vrows = vis[red.anchors.to(vis.device).long()] if k else vis[:0]
        rows.append((pre, vrows, post, red, int(vis.numel())))
    b, h = batch.batch_size, batch.embeds.shape[-1]
    full = mode == "mask"
    lengths = [len(p) + (nv if full else len(v)) + len(q) for p, v, q, _, nv in rows]
    n = max(lengths)
    P = batch.positions.shape[0]
    dev = batch.embeds.device
    emb = batch.embeds.new_zeros(b, n, h)
    tt = torch.zeros(b, n, dtype=batch.token_type.dtype, device=dev)
    pos = torch.zeros(P, b, n, dtype=torch.long, device=dev)
    vidx = torch.full((b, n), -1, dtype=torch.long, device=dev)
    coords = torch.full((b, n, 3), -1, dtype=torch.long, device=dev)
    next_pos = batch.next_position.clone()
    for i, (pre, vrows, post, red, nv) in enumerate(rows):
        start = n - lengths[i]
        # fill: system rows, k visual rows (+ masked slots in mask mode), text rows
        idx = start
        for seg in (pre, vrows, post):
            count = len(seg)
            if seg is vrows:
                emb[i, idx : idx + count] = red.embeds.to(device=dev, dtype=emb.dtype)
                tt[i, idx : idx + count] = int(TokenType.VISUAL)
                vidx[i, idx : idx + count] = torch.arange(count, device=dev)
                coords[i, idx : idx + count] = batch.visual_coords[i, vrows]
                pos[:, i, idx : idx + count] = batch.positions[:, i, vrows]
                idx += count + ((nv - count) if full else 0)
            else:
                emb[i, idx : idx + count] = batch.embeds[i, seg]
                tt[i, idx : idx + count] = batch.token_type[i, seg]
                pos[:, i, idx : idx + count] = batch.positions[:, i, seg]
                idx += count
        if P == 1:
            real = tt[i] != TokenType.PAD
            pos[0, i, real] = torch.arange(int(real.sum()), device=dev)
            next_pos[i] = int(real.sum())
    return Batch(
        embeds=emb, token_type=tt, positions=pos, next_position=next_pos, visual_index=vidx, visual_coords=coords,
        sample_ids=batch.sample_ids, vision_features=None, extras=dict(batch.extras, reduced=True),
    )  # fmt: skip
