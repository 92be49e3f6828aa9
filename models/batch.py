"""The embedded batch the executor runs: embeddings plus a token-type map and original positions.

Ragged batches are normal: samples are left-padded to a common length ``N``; ``token_type`` is
``PAD`` there.  Visual token counts may differ per sample (LLaVA-NeXT anyres, Qwen2-VL dynamic
resolution, pre-LLM pruning).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any

import numpy as np
import torch

from .layout import Layout


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
    ``layout``: the token types on the host (:class:`~.layout.Layout`), made from ``token_type``
    when the batch is built on the CPU and carried by :meth:`to`, so that the executor plans every
    layer without reading the device.
    ``deepstack`` [D, B, N, h] (Qwen3-VL): the features the decoder adds to each visual token's
    hidden state after layers 0..D-1, zero on every other row; None for other families.
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
    deepstack: torch.Tensor | None = None
    # None (the default) is only a constructor argument: __post_init__ replaces it
    layout: Layout = None  # pyright: ignore[reportAssignmentType]

    def __post_init__(self) -> None:
        if self.layout is None:  # built on the CPU by encode / the synthetic builder: no device read
            self.layout = Layout.of(self.token_type)

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
        return self.layout.count(int(TokenType.VISUAL))

    def lengths(self) -> list[int]:
        return self.layout.lengths()

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        """The batch on ``device``: every tensor field, ``vision_features`` and the tensors inside
        ``extras`` (nested lists / dicts, e.g. the per-sample CLIP states) are moved; floating
        tensors are cast to ``dtype`` when given, integer tensors are only moved."""
        return Batch(**{f.name: _to(getattr(self, f.name), device, dtype) for f in fields(self)})

    def select(self, rows: list[int]) -> Batch:
        """The sub-batch of the given samples, re-padded to their own longest length."""
        n = max(self.layout.lengths()[r] for r in rows)
        sl = slice(self.seq_len - n, self.seq_len)
        feats = None if self.vision_features is None else [self.vision_features[r] for r in rows]
        extras = dict(self.extras)
        for key in PER_SAMPLE_EXTRAS:
            if isinstance(extras.get(key), list):
                extras[key] = [extras[key][r] for r in rows]
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
            deepstack=None if self.deepstack is None else self.deepstack[:, rows, sl],
            layout=Layout(self.layout.ttype[rows, sl]),
        )


#: ``extras`` entries that hold one item per sample (``select`` slices them)
PER_SAMPLE_EXTRAS = ("clip", "tower", "tower_macs", "text_ids")


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


def upload(arrays: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """Host integer arrays -> device int64 tensors in one copy (their shapes kept)."""
    flat = np.concatenate([np.asarray(a, dtype=np.int64).ravel() for a in arrays])
    dev = torch.from_numpy(flat).to(device)
    out, at = [], 0
    for a in arrays:
        n = int(np.asarray(a).size)
        out.append(dev[at : at + n].view(np.asarray(a).shape))
        at += n
    return out


def apply_reduction(batch: Batch, reduced: list, mode: str = "drop") -> Batch:
    """Replace each sample's visual tokens by a pre-LLM reducer's output (``ReducedVisual``).

    Drop mode: the sequence shrinks to [system][k visual][text], left-padded again.  Mask mode: the
    full length stays; the k tokens fill the first visual slots and the freed slots become padding
    (masked everywhere).  1-D positions are renumbered 0..n-1 over the real tokens (docs/methods.md §2.3);
    M-RoPE ids keep the original 3-D ids of each token's anchor (the spec's recorded deviation), and
    so do DeepStack features (a merged token receives its anchor's, docs/methods.md §2.9).
    The new layout is worked out on the host from the old one and each reducer output's shape; the
    device only gathers and concatenates (no device value is read).
    """
    lay = batch.layout
    full = mode == "mask"
    spans = lay.visual_spans()
    parts = []
    for i, red in enumerate(reduced):
        real = np.flatnonzero(lay.alive[i])
        first = int(real[0]) if real.size else lay.rows
        vs, ve = spans[i]
        if ve == vs:  # no image: everything is "before"
            vs = ve = int(real[-1]) + 1 if real.size else lay.rows
        k = int(red.embeds.shape[0]) if ve > vs else 0
        parts.append((first, vs, ve, int(real[-1]) + 1 if real.size else first, k))
    lengths = [(vs - f) + ((ve - vs) if full else k) + (e - ve) for f, vs, ve, e, k in parts]
    n = max(lengths)
    b, h = batch.batch_size, batch.embeds.shape[-1]
    P = batch.positions.shape[0]
    dev = batch.embeds.device
    tt = np.zeros((b, n), dtype=np.int64)
    vidx = np.full((b, n), -1, dtype=np.int64)
    pos1 = np.zeros((b, n), dtype=np.int64)
    embeds, coords, pos3, stacks = [], [], [], []
    for i, ((f, vs, ve, e, k), red) in enumerate(zip(parts, reduced, strict=True)):
        start = n - lengths[i]
        nv = (ve - vs) if full else k
        tt[i, start : start + (vs - f)] = lay.ttype[i, f:vs]
        tt[i, start + (vs - f) : start + (vs - f) + k] = int(TokenType.VISUAL)
        tt[i, start + (vs - f) + nv :] = lay.ttype[i, ve:e]
        vidx[i, start + (vs - f) : start + (vs - f) + k] = np.arange(k)
        real = tt[i] != int(TokenType.PAD)
        pos1[i, real] = np.arange(int(real.sum()))
        gap = nv - k
        z = batch.embeds.new_zeros
        segs = [z(start, h), batch.embeds[i, f:vs]]
        segs += [red.embeds.to(device=dev, dtype=batch.embeds.dtype)] if k else []
        segs += [z(gap, h)] if gap else []
        segs.append(batch.embeds[i, ve:e])
        embeds.append(torch.cat(segs))
        anchors = red.anchors.to(dev).long() + vs if k else None
        cz = batch.visual_coords.new_full
        vis_c = [batch.visual_coords[i].index_select(0, anchors)] if anchors is not None else []
        coords.append(torch.cat([cz((start + vs - f, 3), -1), *vis_c, cz((gap + e - ve, 3), -1)]))
        if P != 1:
            p = batch.positions[:, i]
            vis_p = [p.index_select(1, anchors)] if anchors is not None else []
            pz = p.new_zeros
            pos3.append(torch.cat([pz(P, start), p[:, f:vs], *vis_p, pz(P, gap), p[:, ve:e]], 1))
        if batch.deepstack is not None:
            ds = batch.deepstack[:, i]
            vis_d = [ds.index_select(1, anchors)] if anchors is not None else []
            dz = ds.new_zeros
            stacks.append(
                torch.cat([dz(ds.shape[0], start + vs - f, h), *vis_d, dz(ds.shape[0], gap + e - ve, h)], 1)
            )
    next1 = (tt != int(TokenType.PAD)).sum(1)
    d_tt, d_vidx, d_pos1, d_next = upload([tt, vidx, pos1, next1], dev)
    positions = d_pos1[None] if P == 1 else torch.stack(pos3, 1)
    return Batch(
        embeds=torch.stack(embeds), token_type=d_tt.to(batch.token_type.dtype), positions=positions,
        next_position=d_next if P == 1 else batch.next_position, visual_index=d_vidx,
        visual_coords=torch.stack(coords), sample_ids=batch.sample_ids, vision_features=None,
        extras=dict(batch.extras, reduced=True), layout=Layout(tt.astype(np.int8)),
        deepstack=torch.stack(stacks, 1) if stacks else None,
    )  # fmt: skip
