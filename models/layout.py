"""The host side of a batch: what every row of every sample is, known without reading the device.

The processor (or the synthetic builder) makes a batch's token types on the CPU, and every count a
plan needs follows from them: which rows are queries, keys and FFN rows in a layer, how many visual
tokens a selector keeps, where the kept ones go.  :class:`Layout` holds that token-type map as a
numpy array, so the executor plans each prefill on the host and never reads a device tensor in its
layer loop.

:class:`RowSet` is a set of rows per sample, in row order, the way the layer loop uses it: all rows,
one contiguous slice, one index shared by every sample (``index_select``), or a per-sample index
``[B, K]`` (``gather``) whose padding slots point to a padding row of the same sample.  Which form
it takes is decided on the host, and the device index is made once when a plan is compiled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import cast

import numpy as np
import torch

from .errors import SeebenchError

PAD, SYS, VIS, TXT = 0, 1, 2, 3  # TokenType values (batch.py)


class LayoutError(SeebenchError):
    """A batch whose token layout the executor cannot plan; one line naming the fix."""


@dataclass(frozen=True, eq=False)
class Layout:
    """Token types [B, M] (int8): PAD, SYSTEM, VISUAL or TEXT per row."""

    ttype: np.ndarray

    @classmethod
    def of(cls, token_type: torch.Tensor | np.ndarray) -> Layout:
        """From a token-type tensor made on the CPU (the processor's or the synthetic builder's)."""
        arr = token_type if isinstance(token_type, np.ndarray) else token_type.detach().cpu().numpy()
        return cls(np.ascontiguousarray(arr, dtype=np.int8))

    @property
    def batch_size(self) -> int:
        return int(self.ttype.shape[0])

    @property
    def rows(self) -> int:
        return int(self.ttype.shape[1])

    @cached_property
    def key(self) -> tuple:
        return (self.ttype.shape, self.ttype.tobytes())

    @cached_property
    def alive(self) -> np.ndarray:
        return self.ttype != PAD

    @cached_property
    def uniform(self) -> bool:
        """Every sample has the same row types and no row is padding: row sets become slices."""
        return bool(self.alive.all()) and bool((self.ttype == self.ttype[:1]).all())

    def count(self, kind: int) -> list[int]:
        return [int(c) for c in (self.ttype == kind).sum(1)]

    def lengths(self) -> list[int]:
        return [int(c) for c in self.alive.sum(1)]

    def last_rows(self) -> np.ndarray:
        """Row of each sample's last real token [B]."""
        idx = np.arange(self.rows)[None].repeat(self.batch_size, 0)
        return np.where(self.alive, idx, -1).max(1)

    def with_scratch(self) -> Layout:
        """The layout plus one padding row at the end: every sample then has a padding row that
        padding slots of per-sample index sets can point to."""
        pad = np.full((self.batch_size, 1), PAD, dtype=np.int8)
        return Layout(np.concatenate([self.ttype, pad], 1))

    def pad_row(self) -> np.ndarray:
        """A padding row of each sample [B] (-1 where a sample has none)."""
        idx = np.arange(self.rows)[None].repeat(self.batch_size, 0)
        return np.where(~self.alive, idx, -1).max(1)

    def visual_spans(self) -> list[tuple[int, int]]:
        """(first, end) row of each sample's visual tokens (an empty span when it has none);
        visual rows must be contiguous (one image per prompt)."""
        out = []
        for row in self.ttype == VIS:
            hits = np.flatnonzero(row)
            if hits.size and hits[-1] - hits[0] + 1 != hits.size:
                raise LayoutError(
                    "a sample's visual tokens are not contiguous (several images in one prompt?); "
                    "seebench runs one image per prompt"
                )
            out.append((int(hits[0]), int(hits[-1]) + 1) if hits.size else (0, 0))
        return out


@dataclass(eq=False)
class RowSet:
    """Rows per sample [B, K] (ascending; ``valid`` False on padding slots).

    ``kind``: ``all`` (every row of a source of ``size`` rows), ``slice`` (rows start..stop in
    every sample), ``select`` (one index shared by all samples) or ``gather`` (per sample).
    :meth:`materialize` makes the device index once; ``take``, ``add`` and ``put`` then launch at
    most one kernel each and read nothing on the host.
    """

    rows: np.ndarray
    valid: np.ndarray
    size: int  # rows of the source tensor the set indexes
    kind: str = field(init=False)
    start: int = field(init=False, default=0)
    stop: int = field(init=False, default=0)
    index: torch.Tensor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        r = self.rows
        b, k = r.shape
        # the kind follows the rows alone: padding slots are told apart by ``valid``, not by how
        # the rows are taken
        shared = b == 1 or bool((r == r[:1]).all())
        if shared and k and bool((np.diff(r[0]) == 1).all()):
            self.start, self.stop = int(r[0, 0]), int(r[0, -1]) + 1
            self.kind = "all" if (self.start, self.stop) == (0, self.size) else "slice"
        elif shared:
            self.kind = "select" if k else "slice"
        else:
            self.kind = "gather"

    @property
    def width(self) -> int:
        return int(self.rows.shape[1])

    def counts(self) -> list[int]:
        return [int(c) for c in self.valid.sum(1)]

    def same_rows(self, other: RowSet) -> bool:
        return self.rows.shape == other.rows.shape and bool((self.rows == other.rows).all())

    def materialize(self, device: torch.device) -> RowSet:
        if self.kind == "select":
            self.index = torch.from_numpy(self.rows[0].astype(np.int64)).to(device)
        elif self.kind == "gather":
            self.index = torch.from_numpy(self.rows.astype(np.int64)).to(device)
        return self

    @property
    def _index(self) -> torch.Tensor:
        """The device index (``select`` / ``gather``), made by :meth:`materialize` before any op."""
        return cast(torch.Tensor, self.index)

    # ---- device ops on a source [B, size, ...] along dim ``dim``
    def take(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        if self.kind == "all":
            return x
        if self.kind == "slice":
            return x.narrow(dim, self.start, self.stop - self.start)
        if self.kind == "select":
            return x.index_select(dim, self._index)
        return _gather(x, self._index, dim)

    def take_heads(self, t: torch.Tensor) -> torch.Tensor:
        """Rows of a per-head tensor [B, H, N, d] along N."""
        if self.kind == "gather":
            idx = self._index[:, None, :, None].expand(t.shape[0], t.shape[1], -1, t.shape[3])
            return torch.gather(t, 2, idx)
        return self.take(t, 2)

    def add(self, x: torch.Tensor, upd: torch.Tensor) -> torch.Tensor:
        """x with ``upd`` added at these rows (dim 1); in place unless the set is every row."""
        if self.kind == "all":
            return x + upd
        if self.kind == "slice":
            x[:, self.start : self.stop] += upd
        elif self.kind == "select":
            x.index_add_(1, self._index, upd)
        else:
            x.scatter_add_(1, self._index[..., None].expand(-1, -1, upd.shape[-1]), upd)
        return x

    def put(self, x: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        """x with these rows (dim 1) replaced by ``vals``; in place unless the set is every row."""
        if self.kind == "all":
            return vals
        if self.kind == "slice":
            x[:, self.start : self.stop] = vals
        elif self.kind == "select":
            x.index_copy_(1, self._index, vals)
        else:
            idx = self._index
            x.scatter_(1, idx.view(*idx.shape, *[1] * (vals.dim() - 2)).expand_as(vals), vals)
        return x


def _gather(x: torch.Tensor, idx: torch.Tensor, dim: int) -> torch.Tensor:
    """x gathered at per-sample rows idx [B, K] along ``dim`` (the batch is the dimension before)."""
    if dim == x.dim() - 1:
        return torch.gather(x, dim, idx.expand(*x.shape[: dim - 1], *idx.shape))
    shape = list(x.shape)
    shape[dim] = idx.shape[-1]
    view = idx.view(*([1] * (dim - 1)), *idx.shape, *([1] * (x.dim() - dim - 1)))
    return torch.gather(x, dim, view.expand(shape))


def rowset(select: np.ndarray, pad: np.ndarray, size: int | None = None) -> RowSet:
    """The rows where ``select`` [B, M] is True, per sample in row order; padding slots (samples
    with fewer rows) hold that sample's ``pad`` row."""
    b, m = select.shape
    counts = select.sum(1)
    k = int(counts.max()) if b else 0
    rows = np.empty((b, k), dtype=np.int64)
    valid = np.zeros((b, k), dtype=bool)
    for i in range(b):
        hit = np.flatnonzero(select[i])
        rows[i, : hit.size] = hit
        rows[i, hit.size :] = pad[i]
        valid[i, : hit.size] = True
    if k and (rows < 0).any():
        raise LayoutError("a ragged row set needs a padding row in every sample (Layout.with_scratch)")
    return RowSet(rows, valid, m if size is None else size)


def relative(sub: RowSet, sup: RowSet) -> RowSet:
    """``sub``'s rows as positions inside ``sup``'s rows (every valid row of ``sub`` must be in
    ``sup``).  A row that appears several times (padding slots) takes its occurrences in ``sup`` in
    order, so a set relative to an equal set is the identity (kind ``all``: no gather)."""
    b, k = sub.rows.shape
    rows = np.empty((b, k), dtype=np.int64)
    for i in range(b):
        slots: dict[int, list[int]] = {}
        for j, r in enumerate(sup.rows[i]):
            slots.setdefault(int(r), []).append(j)
        used: dict[int, int] = {}
        for j, r in enumerate(sub.rows[i]):
            where = slots.get(int(r))
            if where is None:
                raise LayoutError(f"row {int(r)} of sample {i} is not in the enclosing row set")
            n = used.get(int(r), 0)
            rows[i, j] = where[min(n, len(where) - 1)]
            used[int(r)] = n + 1
    return RowSet(rows, sub.valid.copy(), sup.width)
