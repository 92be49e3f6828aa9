"""The reference executor: the row-gathering ``drop`` path and the ``mask`` path of seebench's first
executor, kept as the oracle the compiled executor (``executor.py``) must equal.

``Executor(mode="mask")`` runs here: every token stays in every matmul and the plan is applied with
boolean masks and zeroed updates, as the reference implementations of the methods do.  ``drop``
here decides row sets by reading the device in every layer; it is slow on a GPU and exists only so
that tests can compare the compiled path against it.

Follow one visual token: the batch (``batch.py``) gives it a type, an original position and a
grid coordinate.  Before each layer the plan may replace its state (``kv_source``) or drop it
(``drop_before``).  Inside the layer the plan decides whether it is a query (``visual_query``),
which keys it sees (``visual_attn``), whether text sees it (``visual_kv``), which heads serve it
(``visual_heads``) and how wide its FFN is (``visual_ffn``).  After the layer it may be dropped by
a score computed inside the layer (``drop_after``), or merged with other dropped tokens into a
recycled token placed right after the kept ones (the selector's ``recycle``, SparseVLM).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F

from .batch import Batch, TokenType, apply_reduction
from .kernels import expand_kv, sliced_mlp
from .outputs import LayerStats, PrefillOutput
from .plan import LayerPlan, PlanError, VisualPlan
from .selection import SampleCounts, SelectContext

Mode = Literal["drop", "mask"]
VIS = int(TokenType.VISUAL)
SYS = int(TokenType.SYSTEM)
PAD = int(TokenType.PAD)


@dataclass
class _Geometry:
    """What a layer's roles make of the token state (see ``Executor._geometry``)."""

    q_rows: torch.Tensor
    kv_rows: torch.Tensor
    ffn_rows: torch.Tensor
    text_visible: torch.Tensor
    q_idx: torch.Tensor | None
    kv_idx: torch.Tensor | None
    q_meta: dict[str, torch.Tensor]
    k_meta: dict[str, torch.Tensor]
    mask: torch.Tensor  # [B, 1, nq, nk] allowed (query, key) pairs
    mask_filled: torch.Tensor  # the same with empty rows opened (SDPA needs a key per row)
    empty: torch.Tensor  # [B, 1, nq, 1] rows with no allowed key
    present: list[int]
    attn_q: list[int]
    kv: list[int]
    ffn: list[int]
    rope: tuple[torch.Tensor, ...] | None = None  # cos_q, sin_q, cos_k, sin_k (set on first use)
    ffn_idx: dict = field(default_factory=dict)  # _ffn's gathered rows, per kind


@dataclass
class _State:
    """Per-sample token state, row-aligned; the last row of every tensor is a scratch row."""

    x: torch.Tensor  # [B, M, h]
    ttype: torch.Tensor  # [B, M]
    pos: torch.Tensor  # [P, B, M]
    order: torch.Tensor  # [B, M] original sequence slot (causality follows it)
    vidx: torch.Tensor  # [B, M]
    coords: torch.Tensor  # [B, M, 3]
    alive: torch.Tensor  # [B, M] real token still taking part (mask mode marks drops here)
    next_pos: torch.Tensor  # [B] position of the first generated token (changes on renumber)
    renumbered: bool = False
    log: list[str] = field(default_factory=list)
    chosen_rows: dict = field(default_factory=dict)  # selector.rows -> its rows, once per prefill
    version: int = 0  # bumped whenever the layout (rows, types, positions) changes
    geometry: dict = field(default_factory=dict)  # (version, roles) -> _Geometry

    @property
    def m(self) -> int:
        return self.x.shape[1]


def _gather_rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t [B, M, ...] gathered at idx [B, K] along dim 1."""
    if t.dim() == 2:
        return torch.gather(t, 1, idx)
    shape = idx.shape + t.shape[2:]
    return torch.gather(t, 1, idx.reshape(*idx.shape, *([1] * (t.dim() - 2))).expand(shape))


def _select_index(sel: torch.Tensor, scratch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of the True entries of sel [B, M], per sample in row order, padded with the
    scratch row; returns (idx [B, K], real [B, K])."""
    counts = sel.sum(1)
    k = int(counts.max()) if sel.numel() else 0
    perm = torch.sort((~sel).to(torch.int8), dim=1, stable=True).indices[:, :k]
    real = torch.arange(k, device=sel.device)[None] < counts[:, None]
    idx = torch.where(real, perm, torch.full_like(perm, scratch))
    return idx, real


@dataclass
class LayerKV:
    """A growing per-layer cache with a validity mask (compacted after each layer in drop mode)."""

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


class ReferenceExecutor:
    """Runs prefill, decode and greedy generation of a backbone under a visual plan (reference)."""

    def __init__(self, backbone, mode: Mode = "drop", observer=None) -> None:
        """``observer(layer, q, k, v, mask, q_meta, k_meta)``, if given, sees every layer's attention
        inputs during prefill (post-RoPE q/k, boolean mask): calibration reads head statistics
        from it without eager attention."""
        if mode not in ("drop", "mask"):
            raise ValueError(f"unknown executor mode '{mode}': use 'drop' or 'mask'")
        self.bb = backbone
        self.mode: Mode = mode
        self.observer = observer

    # ------------------------------------------------------------------ prefill
    @torch.inference_mode()
    def prefill(
        self,
        batch: Batch,
        plan: VisualPlan | None = None,
        *,
        all_logits: bool = False,
        cache_extra: int | None = 0,
    ) -> PrefillOutput:
        """Run the prompt through every layer.  ``cache_extra``: generated tokens to reserve in
        the KV cache (``None`` = build no cache, e.g. for FLOPs and prefill-only timing)."""
        bb = self.bb
        plan = plan or VisualPlan.dense(bb.num_layers)
        plan.validate(bb.num_layers, bb.num_heads, bb.intermediate_size)
        if plan.reducer is not None:
            batch = apply_reduction(batch, plan.reducer.reduce(bb, batch), self.mode)
        st = self._initial_state(batch)
        layers_kv: list[LayerKV] = []
        stats: list[LayerStats] = []
        for li, lp in enumerate(plan.layers):
            if lp.kv_source != "state":
                self._overwrite_visual(st, batch, li, lp)
            if lp.drop_before is not None:
                self._apply_selector(st, li, lp, lp.drop_before, batch, when="before")
            kv = self._layer(st, li, lp, stats, batch, cache_extra)
            if kv is not None:
                layers_kv.append(kv)
        hidden_last, last_rows = self._last_rows(st)
        logits = bb.lm_head(bb.norm(hidden_last))[:, 0]
        out = PrefillOutput(
            logits=logits.float(),
            cache=KVCache(layers_kv) if cache_extra is not None else None,
            stats=stats,
        )
        if all_logits:
            n = batch.seq_len
            dev = st.x.device
            full = torch.full((batch.batch_size, n, logits.shape[-1]), float("nan"), device=dev)
            have = st.alive[:, :-1] & (st.ttype[:, :-1] != PAD)
            lg = bb.lm_head(bb.norm(st.x[:, :-1])).float()
            b_idx, r_idx = torch.nonzero(have, as_tuple=True)
            full[b_idx, st.order[b_idx, r_idx]] = lg[b_idx, r_idx]
            mask = torch.zeros(batch.batch_size, n, dtype=torch.bool, device=dev)
            mask[b_idx, st.order[b_idx, r_idx]] = True
            out.all_logits, out.text_logits_mask = full, mask
        return out

    def _initial_state(self, batch: Batch) -> _State:
        b, n, h = batch.embeds.shape
        dev = batch.embeds.device

        def pad1(t: torch.Tensor, value) -> torch.Tensor:
            extra = torch.full((*t.shape[:-1], 1), value, dtype=t.dtype, device=dev)
            return torch.cat([t, extra], dim=-1)

        x = torch.cat([batch.embeds, batch.embeds.new_zeros(b, 1, h)], 1)
        coords = torch.cat([batch.visual_coords, batch.visual_coords.new_full((b, 1, 3), -1)], 1)
        ttype = pad1(batch.token_type.long(), PAD)
        return _State(
            x=x,
            ttype=ttype,
            pos=pad1(batch.positions.long(), 0),
            order=pad1(torch.arange(n, device=dev).expand(b, n), n),
            vidx=pad1(batch.visual_index.long(), -1),
            coords=coords,
            alive=ttype != PAD,
            next_pos=batch.next_position.clone().long(),
        )

    # ------------------------------------------------------------------ one layer
    def _roles(self, st: _State, lp: LayerPlan) -> tuple[torch.Tensor, ...]:
        """Row masks [B, M]: attention queries, key/value rows, FFN rows, keys text may read."""
        valid = st.alive
        is_vis = st.ttype == VIS
        non_vis = valid & ~is_vis
        vis = valid & is_vis
        none = torch.zeros_like(valid)
        r = lp.roles
        q_rows = non_vis if r.system_query else (non_vis & (st.ttype != SYS))
        if r.visual_query:
            q_rows = q_rows | vis
        kv_rows = non_vis | (vis if r.visual_key else none)
        ffn_rows = non_vis | (vis if r.visual_ffn != "none" else none)
        text_visible = non_vis | (vis if r.text_reads_visual else none)
        return q_rows, kv_rows, ffn_rows, text_visible

    def _layer(
        self,
        st: _State,
        li: int,
        lp: LayerPlan,
        stats: list[LayerStats],
        batch: Batch,
        cache_extra: int | None,
    ) -> LayerKV | None:
        bb = self.bb
        layer = bb.layers[li]
        attn = layer.self_attn
        g = self._geometry(st, lp)
        q_rows, text_visible = g.q_rows, g.text_visible
        q_idx, kv_idx, q_meta, k_meta = g.q_idx, g.kv_idx, g.q_meta, g.k_meta
        stats.append(
            LayerStats(present=list(g.present), attn_q=list(g.attn_q), kv=list(g.kv), ffn=list(g.ffn))
        )
        scratch = st.m - 1

        # idx None = every row but the scratch row (nothing gathered); else the gathered rows, and
        # only those are normalised (rows a layer does not use cost nothing)
        norm = layer.input_layernorm
        hn = norm(st.x) if q_idx is None or kv_idx is None else None
        hq = cast(torch.Tensor, hn)[:, :-1] if q_idx is None else norm(_gather_rows(st.x, q_idx))
        if kv_idx is q_idx:
            hk = hq
        else:
            hk = cast(torch.Tensor, hn)[:, :-1] if kv_idx is None else norm(_gather_rows(st.x, kv_idx))
        b, nq, _ = hq.shape
        nk = hk.shape[1]
        H, Hkv, d = bb.num_heads, bb.num_kv_heads, bb.head_dim
        q = _heads(attn, "q", hq, nq, H, d).transpose(1, 2)
        k = _heads(attn, "k", hk, nk, Hkv, d).transpose(1, 2)
        v = attn.v_proj(hk).view(b, nk, Hkv, d).transpose(1, 2)
        if g.rope is None:
            cos_q, sin_q = bb.rope(hq, q_meta["pos"])
            g.rope = (cos_q, sin_q, *((cos_q, sin_q) if kv_idx is q_idx else bb.rope(hk, k_meta["pos"])))
        cos_q, sin_q, cos_k, sin_k = g.rope
        q = bb.rotate(q, cos_q, sin_q)
        k = bb.rotate(k, cos_k, sin_k)

        # which (query, key) pairs are allowed, and per-head rules
        mask = g.mask  # [B, 1, nq, nk]
        v_used = v
        head_zero_q = None
        if lp.visual_heads is not None:
            mask, v_used, head_zero_q = self._head_rules(lp, mask, v, q_meta, k_meta, H, Hkv)
        if self.observer is not None:
            self.observer(li, q, k, v, mask, q_meta, k_meta)
        if lp.visual_heads is None:  # the layer's own mask: its empty rows are known
            mask, empty = g.mask_filled, g.empty
        else:
            empty = ~mask.any(-1, keepdim=True)  # rows with no allowed key (e.g. padding)
            mask = mask | empty
        gqa = int(v_used.shape[1]) != H
        k_used = k if int(v_used.shape[1]) == int(k.shape[1]) else expand_kv(k, H)
        out = F.scaled_dot_product_attention(
            q, k_used, v_used, attn_mask=mask, scale=attn.scaling, enable_gqa=gqa
        )
        out = out.masked_fill(empty, 0.0)
        if head_zero_q is not None:
            out = out.masked_fill(head_zero_q, 0.0)
        out = out.transpose(1, 2).reshape(b, nq, H * d)
        upd = attn.o_proj(out)

        scores = None
        if lp.drop_after is not None and "attn_last" in lp.drop_after.needs:
            scores = self._last_row_scores(q, k, mask, q_meta, attn.scaling)
            stats[-1].score_rows = [1] * b
        elif lp.drop_after is not None and "attn_rows" in lp.drop_after.needs:
            scores, rows = self._text_row_scores(st, lp.drop_after, batch, q, k, mask, q_idx, attn.scaling)
            stats[-1].score_rows = rows

        # residual update of the query rows
        if q_idx is None:
            st.x[:, :-1] += upd * q_rows[:, :-1, None].to(upd.dtype)
        else:
            st.x.scatter_add_(1, q_idx[..., None].expand(-1, -1, upd.shape[-1]), upd)
        self._ffn(st, layer, lp, g, scratch)
        st.x[:, -1] = 0

        s = stats[-1]
        s.rows_q, s.rows_kv = b * nq, b * nk

        kv = None
        if cache_extra is not None:
            tv = text_visible[:, :-1] if kv_idx is None else _gather_rows(text_visible, kv_idx)
            kvis = k_meta["ttype"] == VIS
            kv = LayerKV.from_prefill(k, v, tv, kvis, st.next_pos, cache_extra)
            if self.mode == "drop":
                kv = _compact_kv(kv)  # a real per-layer cache holds only readable entries
        if batch.deepstack is not None and li < batch.deepstack.shape[0]:
            self._deepstack(st, batch, li)  # after the layer, before a selector that acts after it
        if lp.drop_after is not None:
            self._apply_selector(
                st, li, lp, lp.drop_after, batch, when="after", scores=scores, keys=(k, k_meta)
            )
        return kv

    def _deepstack(self, st: _State, batch: Batch, li: int) -> None:
        """Qwen3-VL's DeepStack: add layer li's feature to every row holding a visual token, looked up
        by the token's visual index (a merged token carries its anchor's); docs/methods.md §2.9."""
        assert batch.deepstack is not None
        feats = batch.deepstack[li]  # [B, N, h], by input slot
        b, n, h = feats.shape
        vmax = max(batch.visual_counts(), default=0)
        slot_idx = torch.where(batch.visual_index >= 0, batch.visual_index, vmax)  # [B, N]
        by_vidx = feats.new_zeros(b, vmax + 1, h)
        by_vidx.scatter_add_(1, slot_idx[..., None].expand(-1, -1, h), feats)
        by_vidx[:, vmax] = 0
        is_vis = (st.ttype == VIS) & (st.vidx >= 0)
        rows = torch.where(is_vis, st.vidx, vmax)  # [B, M]
        add = torch.gather(by_vidx, 1, rows[..., None].expand(-1, -1, h))
        st.x = st.x + add.to(st.x.dtype)

    def _geometry(self, st: _State, lp: LayerPlan) -> _Geometry:
        """Roles, gathered rows, metadata, attention mask and RoPE of a layer.  They depend only on
        the token state's layout and on the plan fields that set roles, so layers with the same
        roles on an unchanged state (every dense layer; ViCA's layers outside T2V) share one."""
        key = (st.version, lp.visual_query, lp.visual_kv, lp.visual_attn, lp.window, lp.visual_ffn == 0,
               lp.system_query)  # fmt: skip
        if key in st.geometry:
            return st.geometry[key]
        q_rows, kv_rows, ffn_rows, text_visible = self._roles(st, lp)
        is_vis = st.ttype == VIS
        scratch = st.m - 1
        if self.mode == "mask":
            q_idx = kv_idx = None
        else:
            q_idx = None if bool((q_rows == st.alive).all()) else _select_index(q_rows, scratch)[0]
            same = bool((kv_rows == q_rows).all())  # e.g. text-only layers: one gather, one RoPE
            kv_idx = (
                q_idx
                if same
                else (None if bool((kv_rows == st.alive).all()) else _select_index(kv_rows, scratch)[0])
            )
        q_meta = self._meta(st, q_idx)
        k_meta = q_meta if kv_idx is q_idx else self._meta(st, kv_idx)
        q_ok = q_rows[:, :-1] if q_idx is None else _gather_rows(q_rows, q_idx)
        k_ok = kv_rows[:, :-1] if kv_idx is None else _gather_rows(kv_rows, kv_idx)
        mask = self._attn_mask(lp, q_meta, k_meta, q_ok, k_ok)
        empty = ~mask.any(-1, keepdim=True)
        g = _Geometry(
            q_rows=q_rows, kv_rows=kv_rows, ffn_rows=ffn_rows, text_visible=text_visible,
            q_idx=q_idx, kv_idx=kv_idx, q_meta=q_meta, k_meta=k_meta, mask=mask, mask_filled=mask | empty,
            empty=empty, present=(st.alive & is_vis).sum(1).tolist(), attn_q=(q_rows & is_vis).sum(1).tolist(),
            kv=(text_visible & is_vis).sum(1).tolist(), ffn=(ffn_rows & is_vis).sum(1).tolist(),
        )  # fmt: skip
        st.geometry[key] = g
        return g

    def _meta(self, st: _State, idx: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if idx is None:
            return {"ttype": st.ttype[:, :-1], "order": st.order[:, :-1], "coords": st.coords[:, :-1],
                    "pos": st.pos[:, :, :-1]}  # fmt: skip
        pos = torch.stack([_gather_rows(p, idx) for p in st.pos])
        return {
            "ttype": _gather_rows(st.ttype, idx),
            "order": _gather_rows(st.order, idx),
            "coords": _gather_rows(st.coords, idx),
            "pos": pos,
        }

    def _attn_mask(self, lp: LayerPlan, qm, km, q_ok: torch.Tensor, k_ok: torch.Tensor) -> torch.Tensor:
        causal = km["order"][:, None, :] <= qm["order"][:, :, None]
        allowed = causal & k_ok[:, None, :] & q_ok[:, :, None]
        q_vis = (qm["ttype"] == VIS)[:, :, None]
        k_vis = (km["ttype"] == VIS)[:, None, :]
        if not lp.visual_kv:
            allowed = allowed & ~(~q_vis & k_vis)
        if lp.visual_attn == "none":
            allowed = allowed & ~(q_vis & k_vis)
        elif lp.visual_attn == "window":
            r = (lp.window - 1) // 2
            qc, kc = qm["coords"][:, :, None, :], km["coords"][:, None, :, :]
            diff = (qc[..., 1:] - kc[..., 1:]).abs()
            in_win = (qc[..., 0] == kc[..., 0]) & (diff[..., 0] <= r) & (diff[..., 1] <= r)
            vv = q_vis & k_vis
            allowed = torch.where(vv, in_win & k_ok[:, None, :] & q_ok[:, :, None], allowed)
        return allowed[:, None]

    def _head_rules(self, lp: LayerPlan, mask, v, qm, km, H: int, Hkv: int):
        """Heads outside ``visual_heads``: visual queries get no output; non-visual queries see
        no visual keys (``drop_keys``) or see them with zeroed values (``zero_values``)."""
        dev = mask.device
        served = torch.zeros(H, dtype=torch.bool, device=dev)
        assert lp.visual_heads is not None  # called for a layer with head rules
        served[list(lp.visual_heads)] = True
        pruned = ~served[None, :, None, None]  # [1, H, 1, 1]
        q_vis = (qm["ttype"] == VIS)[:, None, :, None]  # [B, 1, nq, 1]
        k_vis = (km["ttype"] == VIS)[:, None, None, :]  # [B, 1, 1, nk]
        head_zero_q = pruned & q_vis  # [B, H, nq, 1]
        mask = mask.expand(-1, H, -1, -1)
        v_used = v
        if lp.head_mode == "drop_keys":
            mask = mask & ~(pruned & ~q_vis & k_vis)
        else:  # zero_values: softmax over all keys, visual values zeroed for pruned heads
            v_used = expand_kv(v, H).clone()
            kv_vis = (km["ttype"] == VIS)[:, None, :, None]  # [B, 1, nk, 1]
            v_used = v_used.masked_fill(pruned & kv_vis, 0.0)
        return mask, v_used, head_zero_q

    def _ffn(self, st: _State, layer, lp: LayerPlan, g: _Geometry, scratch: int) -> None:
        mlp = layer.mlp
        ffn_rows = g.ffn_rows
        width = lp.visual_ffn
        if self.mode == "mask":
            hn = layer.post_attention_layernorm(st.x[:, :-1])
            if width is None or width == 0:
                upd = mlp(hn)
            else:
                act = mlp.act_fn(mlp.gate_proj(hn)) * mlp.up_proj(hn)
                ch = torch.arange(act.shape[-1], device=act.device)
                keep = (st.ttype[:, :-1, None] != VIS) | (ch < width)
                upd = mlp.down_proj(act * keep.to(act.dtype))
            st.x[:, :-1] += upd * ffn_rows[:, :-1, None].to(upd.dtype)
            return
        partial = width is not None and width != 0
        if partial not in g.ffn_idx:  # (rows with the full FFN, rows with the sliced one)
            is_vis = st.ttype == VIS
            full_rows = ffn_rows & ~is_vis if partial else ffn_rows
            part_rows = ffn_rows & is_vis if partial else torch.zeros_like(ffn_rows)
            full = "all" if bool((full_rows == st.alive).all()) else None
            if full is None and bool(full_rows.any()):
                full = _select_index(full_rows, scratch)[0]
            part = _select_index(part_rows, scratch)[0] if bool(part_rows.any()) else None
            g.ffn_idx[partial] = (full, part)
        full, part = g.ffn_idx[partial]
        if isinstance(full, str):
            st.x[:, :-1] += mlp(layer.post_attention_layernorm(st.x[:, :-1]))
        elif full is not None:
            hn = layer.post_attention_layernorm(_gather_rows(st.x, full))
            st.x.scatter_add_(1, full[..., None].expand(-1, -1, hn.shape[-1]), mlp(hn))
        if part is not None:
            hn = layer.post_attention_layernorm(_gather_rows(st.x, part))
            assert width is not None  # part rows exist for a partial FFN only
            upd = sliced_mlp(mlp, hn, width)
            st.x.scatter_add_(1, part[..., None].expand(-1, -1, upd.shape[-1]), upd)

    # ------------------------------------------------------------------ token selection
    def _last_rows(self, st: _State) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden state of each sample's last real token, and its row index."""
        key = torch.where(st.alive, st.order, torch.full_like(st.order, -1))
        rows = key.argmax(1)
        return st.x[torch.arange(st.x.shape[0], device=st.x.device), rows][:, None], rows

    def _last_row_scores(self, q, k, mask, q_meta, scaling: float) -> torch.Tensor:
        """Attention probabilities of the last prompt token over this layer's keys, mean over
        heads, fp32: [B, nk].  One row per sample, not the whole map."""
        order = torch.where(q_meta["ttype"] != PAD, q_meta["order"], torch.full_like(q_meta["order"], -1))
        rows = order.argmax(1)
        bi = torch.arange(q.shape[0], device=q.device)
        q_last = q[bi, :, rows][:, :, None]  # [B, H, 1, d]
        H = q.shape[1]
        kk = expand_kv(k, H)
        logits = (q_last.float() @ kk.float().transpose(-1, -2)) * scaling
        m = mask.expand(-1, H, -1, -1)[bi, :, rows][:, :, None]
        logits = logits.masked_fill(~m, float("-inf"))
        return torch.softmax(logits, -1).mean(1)[:, 0]

    def _text_row_scores(self, st: _State, sel, batch: Batch, q, k, mask, q_idx, scaling: float):
        """Attention probabilities of the selector's score rows over this layer's keys: fp32 softmax
        per head, mean over heads, then over the rows: [B, nk], and the row count per sample.  The
        rows (per sample: indices into its text tokens T) come from ``sel.rows.choose(batch)``, once
        per prefill; only these rows are computed, not the whole map."""
        if sel.rows not in st.chosen_rows:
            st.chosen_rows[sel.rows] = sel.rows.choose(batch)
        b, H, nq, _ = q.shape
        dev = q.device
        text = st.alive & (st.ttype == int(TokenType.TEXT))
        chosen = st.chosen_rows[sel.rows]  # [B, T] bool over each sample's text tokens
        rows = []
        for i in range(b):
            t = torch.nonzero(text[i]).flatten()
            rows.append(t[chosen[i, : t.numel()].to(dev)])
        counts = [int(r.numel()) for r in rows]
        if max(counts, default=0) == 0:
            return q.new_zeros(b, k.shape[2], dtype=torch.float32), counts
        qpos = torch.zeros(b, max(counts), dtype=torch.long, device=dev)  # each row's place in q
        real = torch.zeros(b, max(counts), dtype=torch.bool, device=dev)
        for i, r in enumerate(rows):
            if q_idx is None:
                qpos[i, : len(r)] = r
            else:
                look = torch.full((st.m,), -1, dtype=torch.long, device=dev)
                look[q_idx[i]] = torch.arange(nq, device=dev)
                qpos[i, : len(r)] = look[r]
            real[i, : len(r)] = True
        bi = torch.arange(b, device=dev)[:, None]
        qr = q[bi, :, qpos].transpose(1, 2)  # [B, H, R, d]
        logits = (qr.float() @ expand_kv(k, H).float().transpose(-1, -2)) * scaling
        allowed = mask.expand(-1, H, -1, -1)[bi, :, qpos].transpose(1, 2) | ~real[:, None, :, None]
        probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1).mean(1)  # [B, R, nk]
        weight = real.float() / real.sum(1, keepdim=True).clamp(min=1)
        return (probs * weight[..., None]).sum(1), counts

    def _apply_selector(self, st: _State, li: int, lp: LayerPlan, sel, batch: Batch, *, when: str,
                        scores=None, keys=None) -> None:  # fmt: skip
        vis_rows = st.alive & (st.ttype == VIS)
        idx, real = _select_index(vis_rows, st.m - 1)  # [B, V] rows of the present visual tokens
        b = idx.shape[0]
        present = [idx[i][real[i]] for i in range(b)]
        txt_rows = st.alive & (st.ttype == int(TokenType.TEXT))
        tidx, treal = _select_index(txt_rows, st.m - 1)
        n_sys = (st.alive & (st.ttype == int(TokenType.SYSTEM))).sum(1).tolist()
        counts = [
            SampleCounts(
                int(real[i].sum()),
                int((batch.visual_index[i] >= 0).sum()),
                int(treal[i].sum()),
                int(n_sys[i]),
            )  # fmt: skip
            for i in range(b)
        ]
        kept = [int(sel.kept(c)) for c in counts]
        ctx = SelectContext(
            layer=li, counts=counts, kept=kept, valid=real, sample_ids=batch.sample_ids,
            index_fn=lambda: torch.where(real, _gather_rows(st.vidx, idx), -1), text_valid=treal,
        )  # fmt: skip
        needs = sel.needs
        if "attn_last" in needs or "attn_rows" in needs:
            if when == "after":
                assert scores is not None  # the layer computed them for this selector
                row_scores = scores  # [B, nk] over this layer's key rows
                key_rows = self._key_rows(st, lp)
            else:
                row_scores, key_rows = self._scores_before(st, li, lp)
            out = torch.full(idx.shape, float("-inf"), device=idx.device)
            for i in range(b):
                out[i, : present[i].numel()] = _scores_for_rows(row_scores[i], key_rows[i], present[i])
            ctx.scores = out
        if "keys" in needs and keys is not None:
            k, km = keys
            kflat = k.transpose(1, 2).flatten(2)  # [B, nk, Hkv*d]
            key_rows = self._key_rows(st, lp)
            ctx.keys = vkeys = kflat.new_zeros(b, idx.shape[1], kflat.shape[-1])
            ctx.text_keys = tkeys = kflat.new_zeros(b, tidx.shape[1], kflat.shape[-1])
            for i in range(b):
                vkeys[i, : present[i].numel()] = _rows_lookup(kflat[i], key_rows[i], present[i])
                t = tidx[i][treal[i]]
                tkeys[i, : t.numel()] = _rows_lookup(kflat[i], key_rows[i], t)
        if "hidden_out" in needs or "hidden_in" in needs:
            ctx.hidden = _gather_rows(st.x, idx)
            ctx.text_hidden = _gather_rows(st.x, tidx)
            ctx.extra["final_norm"] = self.bb.norm
        chosen = sel.select(ctx)
        merged = None
        made = [0] * b
        if hasattr(sel, "recycle"):
            made = [int(sel.recycled(c, k)) for c, k in zip(counts, kept, strict=True)]
            if any(made):
                merged = sel.recycle(ctx, chosen)
        keep = st.alive & (st.ttype != VIS)
        for i in range(b):
            c = chosen[i, : kept[i]]
            rows = present[i][torch.sort(c.to(present[i].device).long()).values]
            if made[i]:
                assert merged is not None  # recycled when any sample merges
                emb, anchors = merged[0][i, : made[i]], merged[1][i, : made[i]]
                rows = self._place_merged(st, i, present[i], rows, emb, present[i][anchors.long()])
            keep[i, rows] = True
        st.log.append(f"layer {li} drop_{when}: kept {kept} visual, merged {made}")
        self._drop(st, keep, sel.positions)

    def _place_merged(
        self, st: _State, i: int, present: torch.Tensor, kept: torch.Tensor, embeds, anchor_rows
    ) -> torch.Tensor:
        """Lay sample i's visual tokens out as [kept tokens, in order][merged tokens] in the first rows
        of its present visual span (the rows keep their causal order, so the merged tokens come right
        after the kept ones); each merged token takes its anchor's identity (original visual index,
        grid coordinate, position ids).  Returns the rows now holding visual tokens."""
        src = torch.cat([kept, anchor_rows])
        host = present[: src.shape[0]]
        x = torch.cat([st.x[i, kept], embeds.to(device=st.x.device, dtype=st.x.dtype)])
        st.version += 1
        st.vidx[i, host] = st.vidx[i, src]
        st.coords[i, host] = st.coords[i, src]
        st.pos[:, i, host] = st.pos[:, i, src]
        st.x[i, host] = x
        return host

    def _key_rows(self, st: _State, lp: LayerPlan) -> torch.Tensor:
        """Row index (into the state) of each key column used in this layer [B, nk]."""
        _, kv_rows, _, _ = self._roles(st, lp)
        if self.mode == "mask" or bool((kv_rows == st.alive).all()):
            return torch.arange(st.m - 1, device=st.x.device).expand(st.x.shape[0], -1)
        return _select_index(kv_rows, st.m - 1)[0]

    def _scores_before(self, st: _State, li: int, lp: LayerPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """Score the incoming states with layer li's own norm, q/k projections and RoPE
        (PDrop's rank layer): the last prompt token's attention over all present keys."""
        bb = self.bb
        attn = bb.layers[li].self_attn
        hn = bb.layers[li].input_layernorm(st.x[:, :-1])  # every row but the scratch row
        b, m, _ = hn.shape
        H, Hkv, d = bb.num_heads, bb.num_kv_heads, bb.head_dim
        _, last = self._last_rows(st)
        bi = torch.arange(b, device=hn.device)
        hq = hn[bi, last][:, None]
        pos_q = st.pos[:, bi, last][..., None]
        q = _heads(attn, "q", hq, 1, H, d).transpose(1, 2)
        k = _heads(attn, "k", hn, m, Hkv, d).transpose(1, 2)
        cq, sq = bb.rope(hq, pos_q)
        ck, sk = bb.rope(hn, st.pos[:, :, :-1])
        q, k = bb.rotate(q, cq, sq), bb.rotate(k, ck, sk)
        logits = (q.float() @ expand_kv(k, H).float().transpose(-1, -2)) * attn.scaling
        ok = (st.alive & (st.order <= st.order[bi, last][:, None]))[:, :-1]
        logits = logits.masked_fill(~ok[:, None, None, :], float("-inf"))
        probs = torch.softmax(logits, -1).mean(1)[:, 0]
        rows = torch.arange(m, device=hn.device).expand(b, -1)
        return probs, rows

    def _drop(self, st: _State, keep: torch.Tensor, policy: str) -> None:
        """Remove (drop mode) or mask (mask mode) every real token not in ``keep``."""
        st.version += 1
        renumber = policy == "renumber" and st.pos.shape[0] == 1
        if policy == "renumber" and st.pos.shape[0] != 1:
            st.log.append("renumber requested on M-RoPE positions: original 3-D ids kept (README 2.3)")
        if self.mode == "mask":
            st.alive = st.alive & keep
            if renumber:
                newpos = (st.alive.long().cumsum(1) - 1).clamp(min=0)
                st.pos = torch.where(st.alive[None], newpos[None], st.pos)
        else:
            idx, real = _select_index(keep, st.m - 1)
            # append a fresh scratch row
            b = idx.shape[0]
            scratch = torch.full((b, 1), st.m - 1, dtype=idx.dtype, device=idx.device)
            idx = torch.cat([idx, scratch], 1)
            st.x = _gather_rows(st.x, idx)
            st.x[:, -1] = 0
            st.ttype = _gather_rows(st.ttype, idx)
            st.ttype[:, -1] = PAD
            st.ttype = torch.where(torch.cat([real, real.new_zeros(b, 1)], 1), st.ttype, PAD)
            st.pos = torch.stack([_gather_rows(p, idx) for p in st.pos])
            st.order = _gather_rows(st.order, idx)
            st.vidx = _gather_rows(st.vidx, idx)
            st.coords = _gather_rows(st.coords, idx)
            st.alive = st.ttype != PAD
            if renumber:
                newpos = (st.alive.long().cumsum(1) - 1).clamp(min=0)
                st.pos = torch.where(st.alive[None], newpos[None], st.pos)
        if renumber:
            st.next_pos = st.alive.sum(1)
            st.renumbered = True

    def _overwrite_visual(self, st: _State, batch: Batch, li: int, lp: LayerPlan) -> None:
        """kv_source 'fixed' (ViCA: the layer-0 input) or 'projector' (SAISA: P_l(f))."""
        is_vis = st.alive & (st.ttype == VIS)
        if lp.kv_source == "fixed":
            src = torch.cat(
                [batch.embeds, batch.embeds.new_zeros(batch.batch_size, 1, batch.embeds.shape[-1])], 1
            )
            order = torch.where(st.order < batch.seq_len, st.order, batch.seq_len)
            vals = _gather_rows(src, order)
        else:
            vals = st.x.clone()
            assert batch.vision_features is not None  # kv_source 'projector' reads them
            for i, f in enumerate(batch.vision_features):
                rows = (is_vis[i] & (st.vidx[i] >= 0)).nonzero().flatten()
                if rows.numel():
                    vals[i, rows] = self.bb.layer_projection(li, f[st.vidx[i, rows]]).to(st.x.dtype)
        st.x = torch.where(is_vis[..., None], vals, st.x)

    # ------------------------------------------------------------------ decode
    @torch.inference_mode()
    def decode_step(
        self, tokens: torch.Tensor, cache: KVCache, plan: VisualPlan | None = None
    ) -> torch.Tensor:
        """One generated token per sample [B] -> next-token logits [B, V]."""
        bb = self.bb
        plan = plan or VisualPlan.dense(bb.num_layers)
        x = bb.embed_tokens(tokens[:, None])
        b = x.shape[0]
        H, Hkv, d = bb.num_heads, bb.num_kv_heads, bb.head_dim
        step = cache.steps
        for layer, lkv, lp in zip(bb.layers, cache.layers, plan.layers, strict=True):
            attn = layer.self_attn
            hn = layer.input_layernorm(x)
            q = _heads(attn, "q", hn, 1, H, d).transpose(1, 2)
            k = _heads(attn, "k", hn, 1, Hkv, d).transpose(1, 2)
            v = attn.v_proj(hn).view(b, 1, Hkv, d).transpose(1, 2)
            pos = (lkv.next_pos + step)[None, :, None].expand(bb.position_dims, -1, -1)
            cos, sin = bb.rope(hn, pos)
            q, k = bb.rotate(q, cos, sin), bb.rotate(k, cos, sin)
            lkv.append(k, v)
            kk, vv, valid, is_vis = lkv.view()
            mask = valid[:, None, None, :]
            if lp.visual_heads is not None:
                served = torch.zeros(H, dtype=torch.bool, device=x.device)
                served[list(lp.visual_heads)] = True
                pruned = ~served[None, :, None, None]
                if lp.head_mode == "drop_keys":
                    mask = mask & ~(pruned & is_vis[:, None, None, :])
                else:
                    vv = expand_kv(vv, H).masked_fill(pruned & is_vis[:, None, :, None], 0.0)
                    kk = expand_kv(kk, H)
            out = F.scaled_dot_product_attention(
                q, kk, vv, attn_mask=mask, scale=attn.scaling, enable_gqa=int(kk.shape[1]) != H
            )
            x = x + attn.o_proj(out.transpose(1, 2).reshape(b, 1, H * d))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        cache.steps += 1
        return bb.lm_head(bb.norm(x))[:, 0].float()

    @torch.inference_mode()
    def generate(
        self,
        batch: Batch,
        plan: VisualPlan | None = None,
        max_new_tokens: int = 16,
        eos_token_id: int | None = None,
    ) -> torch.Tensor:
        """Batched greedy decoding [B, T]; with ``eos_token_id`` a finished sample is padded with
        EOS and the loop stops when all have finished (EOS-bounded), else exactly T tokens."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        out = self.prefill(batch, plan, cache_extra=max_new_tokens)
        tok = out.logits.argmax(-1)
        toks = [tok]
        done = tok == eos_token_id if eos_token_id is not None else torch.zeros_like(tok, dtype=torch.bool)
        for _ in range(max_new_tokens - 1):
            if bool(done.all()):
                break
            logits = self.decode_step(tok, out.cache, plan)
            tok = logits.argmax(-1)
            if eos_token_id is not None:
                tok = torch.where(done, torch.full_like(tok, eos_token_id), tok)
                done = done | (tok == eos_token_id)
            toks.append(tok)
        return torch.stack(toks, 1)


def _compact_kv(kv: LayerKV) -> LayerKV:
    """Drop mode with a full-row layer: keep only readable prefill entries in the cache."""
    n = kv.length
    idx, real = _select_index(kv.valid[:, :n], n)
    extra = kv.k.shape[2] - n

    def g(t):  # [B, Hkv, n, d] gather along 2
        tt = torch.cat([t[:, :, :n], t.new_zeros(*t.shape[:2], 1, t.shape[3])], 2)
        return torch.gather(tt, 2, idx[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3]))

    vis = torch.cat([kv.is_visual[:, :n], kv.is_visual.new_zeros(kv.is_visual.shape[0], 1)], 1)
    return LayerKV.from_prefill(g(kv.k), g(kv.v), real, torch.gather(vis, 1, idx), kv.next_pos, extra)


def _scores_for_rows(row_scores: torch.Tensor, key_rows: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Pick, for each present visual row, its score from a per-key-column vector."""
    lookup = torch.zeros(int(key_rows.max()) + 2, dtype=row_scores.dtype, device=row_scores.device)
    lookup[key_rows] = row_scores
    return lookup[present]


def _rows_lookup(values: torch.Tensor, key_rows: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    size = int(max(key_rows.max(), rows.max() if rows.numel() else 0)) + 2
    pos = torch.full((size,), -1, dtype=torch.long, device=key_rows.device)
    pos[key_rows] = torch.arange(key_rows.numel(), device=key_rows.device)
    found = pos[rows]
    if bool((found < 0).any()):
        raise PlanError("a selector asked for keys of tokens that are not keys in this layer")
    return values[found]


def _heads(attn: Any, which: str, x: torch.Tensor, n: int, heads: int, d: int) -> torch.Tensor:
    """q or k of rows x as [b, n, heads, d]: the projection, then the decoder's per-head RMSNorm
    (``q_norm`` / ``k_norm``, Qwen3 decoders) when the layer has one, before RoPE as in HF."""
    out = getattr(attn, f"{which}_proj")(x).view(x.shape[0], n, heads, d)
    norm = getattr(attn, f"{which}_norm", None)
    return norm(out) if norm is not None else out
