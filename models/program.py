"""Compile a visual plan against a batch layout, on the host, into the steps the executor runs.

Everything the layer loop needs to know is decided here, once per (plan, layout, device), from the
token-type map the processor made on the CPU (:class:`~.layout.Layout`) and the selectors' host-side
counts: per layer the query, key/value and FFN rows (:class:`~.layout.RowSet`: a slice, a shared
index or a per-sample index), the working set of rows it touches (consecutive layers with the same
working set keep it gathered: ViCA's text-only layers run on a ``[B, 64, h]`` tensor), how it
attends (SDPA ``is_causal``; bottom-right causal when the queries are the last rows of the keys;
two calls when a prefix of the queries must not see later keys; else one boolean mask built here,
shared by every layer with the same roles), the head rule (served and pruned heads), what its KV
cache holds, and the per-layer statistics the records report.  A selector's kept count is known
here too (``Selector.kept``), so the layout after a drop is known before any token is scored.

The result holds every index tensor, mask and multiplier on the device already; running it reads
nothing on the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .layout import PAD, SYS, TXT, VIS, Layout, LayoutError, RowSet, relative, rowset
from .outputs import LayerStats
from .plan import LayerPlan, PlanError, VisualPlan
from .selection import SampleCounts


@dataclass(frozen=True)
class CompileOptions:
    device: torch.device
    dtype: torch.dtype
    heads: int
    kv_heads: int
    cache_extra: int | None = None  # generated tokens to reserve (None: no cache)
    explicit_masks: bool = False  # every layer gets its boolean mask (an observer reads it)
    prefer_split: bool = False  # two SDPA calls instead of a mask where a query prefix allows it
    lower_right_bias: bool = False  # bottom-right causal via torch's CausalBias (no mask tensor)
    deepstack: int = 0  # layers after which the batch's DeepStack features are added (Qwen3-VL)


@dataclass(eq=False)
class Window:
    """YOPO's k x k grid window among visual tokens, evaluated per call from grid coordinates."""

    radius: int
    q_rows: RowSet  # absolute rows of the queries / keys (their original slots give coordinates)
    k_rows: RowSet
    vv: torch.Tensor  # [B|1, 1, nq, nk] bool: both visual and real (only these pairs use the window)


@dataclass(eq=False)
class HeadRule:
    """Heads outside ``visual_heads``: visual queries get no output; non-visual queries see visual
    keys with zeroed values (``zero_values``, one SDPA call with value multipliers) or not at all
    (``drop_keys``, a second SDPA call on the pruned heads with a restricted mask)."""

    mode: str
    served: torch.Tensor | None = None  # q-head indices (drop_keys)
    pruned: torch.Tensor | None = None
    served_kv: torch.Tensor | None = None  # kv head of each served / pruned q head
    pruned_kv: torch.Tensor | None = None
    inverse: torch.Tensor | None = None  # cat(served, pruned) -> head order
    vkeep: torch.Tensor | None = None  # [B|1, H, nk, 1] (zero_values)
    qkeep: torch.Tensor | None = None  # [B|1, H|Hp, nq, 1] zero for pruned heads' visual queries
    restrict: torch.Tensor | None = None  # [B|1, 1, nq, nk] bool: pairs pruned heads may not use


@dataclass(eq=False)
class Attention:
    kind: str  # causal | suffix | split | mask
    nq: int
    nk: int
    mask: torch.Tensor | None = None  # [B|1, 1, nq, nk] bool (mask; suffix on CPU; split's second part)
    split: int = 0  # split: query rows of the first, causal call
    window: Window | None = None
    heads: HeadRule | None = None
    qzero: torch.Tensor | None = None  # [B|1, 1, nq, 1] multiplier: real rows with no allowed key
    key: int = 0  # equal keys share per-call device work (window masks)


@dataclass(eq=False)
class CacheSpec:
    rows: RowSet | None  # key slots to cache (None: all of them)
    prefill_valid: torch.Tensor  # [B, n] bool
    is_visual_dev: torch.Tensor  # [B, n + extra] bool (generated slots False)
    readable: list[int]
    visual: list[int]
    key: int
    extra: int


@dataclass(eq=False)
class LayerStep:
    index: int
    plan: LayerPlan
    work: RowSet  # absolute rows the layer touches
    work_key: int  # equal keys: the gathered working tensor is reused
    norm_rows: RowSet  # relative to work
    q: RowSet  # relative to norm_rows
    k: RowSet
    q_in_work: RowSet
    ffn_full: RowSet | None  # relative to work
    ffn_part: RowSet | None
    attn: Attention
    rope_u: tuple  # keys of the per-call cos/sin cache (norm rows, query rows, key rows)
    rope_q: tuple
    rope_k: tuple
    pos_rows: RowSet  # absolute rows of norm_rows (their positions)
    norm_is_q: bool
    norm_is_k: bool
    overwrite: Overwrite | None
    cache: CacheSpec | None
    stats: LayerStats
    version: int
    score_last: tuple | None = None  # (q slot of the last row [B,1] rel q, allowed [B,H|1,1,nk])
    score_rows: tuple | None = None  # (text rows rel q, allowed [B,H|1,T,nk], text_valid)
    vis_in_k: RowSet | None = None  # present visual tokens as key slots (scores, keys)
    txt_in_k: RowSet | None = None
    observer_meta: tuple | None = None  # (q ttype, k ttype) for an observer
    pos_version: int = 0  # layers with equal values continue decoding from the same positions
    inject: bool = False  # add the DeepStack features to the present visual rows after the layer


@dataclass(eq=False)
class Overwrite:
    kind: str  # fixed | projector
    rows: RowSet  # absolute visual rows


@dataclass(eq=False)
class SelectStep:
    index: int
    when: str
    selector: Any
    counts: list[SampleCounts]
    kept: list[int]
    recycled: list[int]
    visual: RowSet  # absolute rows of the present visual tokens [B, V]
    text: RowSet  # absolute rows of the text tokens [B, T]
    visual_rows: torch.Tensor  # [B, V] the same rows as a device tensor
    visual_valid: torch.Tensor  # [B, V] bool
    text_valid: torch.Tensor  # [B, T] bool
    kept_valid: torch.Tensor  # [B, K] bool
    # compaction into the new layout (device constants [B|1, M'])
    src_other: torch.Tensor
    vis_rank: torch.Tensor
    is_kept: torch.Tensor
    merged_rows: torch.Tensor | None  # [B, R] rows of the merged tokens in the new layout
    renumber: bool
    new_pos: torch.Tensor | None  # [1, B, M'] renumbered positions
    new_next: torch.Tensor | None  # [B]
    version: int
    before_scores: tuple | None = None  # (all rows, last rows [B,1], allowed [B, M]) for drop_before
    layer_step: LayerStep | None = None  # drop_after: the layer whose internals it reads
    log: str = ""


@dataclass(eq=False)
class Program:
    steps: list
    stats: list[LayerStats]
    init_orig: torch.Tensor  # [B, M] original slot of every row (padding: N)
    scratch: bool  # a padding row is appended to the input
    clone_input: bool  # some step writes the state in place
    last_rows: RowSet  # absolute, final layout [B, 1]
    final_alive: torch.Tensor  # [B, M_final] bool
    log: list[str] = field(default_factory=list)  # what each selection keeps (for people reading it)
    has_cache: bool = False
    extra: int = 0
    plan: VisualPlan | None = None
    last_in_work: RowSet | None = None  # the last rows inside the final working set


# ---------------------------------------------------------------------------------- helpers
def _up(a: np.ndarray, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)


def _shared(a: np.ndarray) -> np.ndarray:
    """[B, ...] -> [1, ...] when every sample is equal (a broadcastable constant)."""
    return a[:1] if a.shape[0] > 1 and bool((a == a[:1]).all()) else a


def _take_rows(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per sample, a[b, rows[b]] for a [B, M] (or [B, M, ...])."""
    return np.take_along_axis(a, rows.reshape(*rows.shape, *[1] * (a.ndim - 2)), 1)


class _Keys:
    """Small integer ids for equal host objects (masks, working sets) within one program."""

    def __init__(self) -> None:
        self._ids: dict = {}

    def __call__(self, key) -> int:
        return self._ids.setdefault(key, len(self._ids))


# ---------------------------------------------------------------------------------- compile
class Compiler:
    def __init__(self, plan: VisualPlan, opts: CompileOptions, n_visual: list[int]):
        self.plan = plan
        self.opts = opts
        self.n_visual = n_visual
        self.keys = _Keys()
        self.geom: dict = {}  # (version, roles) -> shared device objects

    def compile(self, layout: Layout) -> Program:
        try:
            return self._compile(layout, scratch=not layout.uniform)
        except _NeedsScratch:
            return self._compile(layout, scratch=True)

    def _compile(self, layout: Layout, scratch: bool) -> Program:
        o = self.opts
        lay = layout.with_scratch() if scratch else layout
        n_in = layout.rows
        orig = np.where(lay.alive, np.arange(lay.rows)[None], n_in).astype(np.int64)
        steps: list = []
        stats: list[LayerStats] = []
        version = 0
        pristine = True  # visual states still equal the input embeddings
        pos_version = 0  # the version whose next-token positions the layer continues from
        log: list[str] = []
        self.geom = {}
        for li, lp in enumerate(self.plan.layers):
            if lp.drop_before is not None:
                sel, lay, version = self._select(lay, lp.drop_before, li, "before", None, version, scratch)
                steps.append(sel)
                log.append(sel.log)
                pos_version = version if sel.renumber else pos_version
            step = self._layer(lay, li, lp, version, pristine)
            step.pos_version = pos_version
            if li < o.deepstack and bool((lay.ttype == VIS).any()):
                step.inject, pristine = True, False  # docs/methods.md §2.9
            steps.append(step)
            stats.append(step.stats)
            if lp.visual_query or lp.visual_ffn != 0 or lp.kv_source == "projector":
                pristine = pristine and not bool((lay.ttype == VIS).any())
            if lp.drop_after is not None:
                sel, lay, version = self._select(lay, lp.drop_after, li, "after", step, version, scratch)
                steps.append(sel)
                log.append(sel.log)
                pos_version = version if sel.renumber else pos_version
                if sel.recycled and any(sel.recycled):
                    pristine = False
        last = lay.last_rows()
        last_rs = RowSet(last[:, None].astype(np.int64), np.ones((lay.batch_size, 1), bool), lay.rows)
        last_in_work = None
        if steps and isinstance(steps[-1], LayerStep):
            last_in_work = relative(last_rs, steps[-1].work).materialize(o.device)
        in_place = any(
            isinstance(s, SelectStep)
            or s.work.kind != "all"
            or s.q_in_work.kind != "all"
            or (s.ffn_full is not None and s.ffn_full.kind != "all")
            or s.ffn_part is not None
            or s.overwrite is not None
            for s in steps
        )
        return Program(
            steps=steps, stats=stats, init_orig=_up(orig, o.device), scratch=scratch,
            clone_input=in_place and not scratch, last_rows=last_rs.materialize(o.device),
            final_alive=_up(lay.alive, o.device), log=log, has_cache=o.cache_extra is not None, last_in_work=last_in_work,
            extra=o.cache_extra or 0, plan=self.plan,
        )  # fmt: skip

    # ------------------------------------------------------------------ roles
    @staticmethod
    def _roles(lay: Layout, lp: LayerPlan) -> dict[str, np.ndarray]:
        tt = lay.ttype
        alive = tt != PAD
        vis = alive & (tt == VIS)
        nonvis = alive & ~vis
        none = np.zeros_like(alive)
        r = lp.roles
        q = nonvis if r.system_query else nonvis & (tt != SYS)
        if r.visual_query:
            q = q | vis
        return {
            "alive": alive,
            "vis": vis,
            "q": q,
            "k": nonvis | (vis if r.visual_key else none),
            "f_full": nonvis | (vis if r.visual_ffn == "full" else none),
            "f_part": vis if r.visual_ffn == "partial" else none,
            "tv": nonvis | (vis if r.text_reads_visual else none),
        }

    def _layer(self, lay: Layout, li: int, lp: LayerPlan, version: int, pristine: bool) -> LayerStep:
        o = self.opts
        dev = o.device
        r = self._roles(lay, lp)
        pads = ~r["alive"]
        pad = lay.pad_row()
        qs, ks, ff, fp = r["q"] | pads, r["k"] | pads, r["f_full"] | pads, r["f_part"]
        work_sel = qs | ks | ff | fp | pads
        W = rowset(work_sel, pad)
        U_abs = rowset(qs | ks, pad)
        Q_abs = rowset(qs, pad)
        K_abs = rowset(ks, pad)
        wkey = self.keys(("work", version, W.rows.tobytes(), W.rows.shape))
        U = relative(U_abs, W)
        Q = relative(Q_abs, U_abs)
        K = relative(K_abs, U_abs)
        Qw = relative(Q_abs, W)
        F_full = relative(rowset(ff, pad), W) if ff.any() else None
        F_part = relative(rowset(fp, pad), W) if fp.any() else None
        for rs in (W, U, Q, K, Qw, U_abs, F_full, F_part):
            if rs is not None:
                rs.materialize(dev)
        attn, allowed = self._attention(lay, lp, Q_abs, K_abs, version)
        ukey = self.keys(("rows", U_abs.rows.tobytes(), U_abs.rows.shape))
        tt = lay.ttype
        vis = r["vis"]
        # statistics: the layer's visual budget, per sample (host arithmetic)
        stats = LayerStats(
            present=[int(c) for c in vis.sum(1)],
            attn_q=[int(c) for c in (r["q"] & vis).sum(1)],
            kv=[int(c) for c in (r["tv"] & vis).sum(1)],
            ffn=[int(c) for c in ((r["f_full"] | r["f_part"]) & vis).sum(1)],
            rows_q=lay.batch_size * Q.width,
            rows_kv=lay.batch_size * K.width,
        )
        overwrite = None
        if lp.kv_source == "fixed" and not pristine and vis.any():
            overwrite = Overwrite("fixed", rowset(vis, pad).materialize(dev))
        elif lp.kv_source == "projector" and vis.any():
            overwrite = Overwrite("projector", rowset(vis, pad).materialize(dev))
        cache = None
        if o.cache_extra is not None:
            cache = self._cache_spec(lay, r, K_abs, version)
        step = LayerStep(
            index=li, plan=lp, work=W, work_key=wkey, norm_rows=U, q=Q, k=K, q_in_work=Qw,
            ffn_full=F_full, ffn_part=F_part, attn=attn,
            rope_u=(version, ukey),
            rope_q=(version, ukey, self.keys(("rows", Q_abs.rows.tobytes(), Q_abs.rows.shape))),
            rope_k=(version, ukey, self.keys(("rows", K_abs.rows.tobytes(), K_abs.rows.shape))),
            pos_rows=U_abs, norm_is_q=Q.kind == "all", norm_is_k=K.kind == "all",
            overwrite=overwrite, cache=cache, stats=stats, version=version,
        )  # fmt: skip
        sel = lp.drop_after
        if sel is not None:
            V_abs = rowset(vis, pad)
            T_abs = rowset(r["alive"] & (tt == TXT), pad)
            if {"attn_last", "attn_rows", "keys"} & set(sel.needs):
                bad = vis & ~r["k"]
                if bad.any():
                    raise PlanError(
                        f"plan '{self.plan.name}' layer {li}: drop_after scores visual tokens that are not "
                        "keys in this layer; let them be keys (visual_kv) or drop before the layer"
                    )
                step.vis_in_k = relative(V_abs, K_abs).materialize(dev)
                step.txt_in_k = relative(T_abs, K_abs).materialize(dev) if "keys" in sel.needs else None
            allowed_h = self._allowed_per_head(lp, allowed, Q_abs, K_abs, tt)
            if "attn_last" in sel.needs:
                last = lay.last_rows()
                L = RowSet(last[:, None].astype(np.int64), np.ones((lay.batch_size, 1), bool), lay.rows)
                Lq = relative(L, Q_abs)
                row = np.take_along_axis(allowed_h, Lq.rows[:, None, :, None], 2)  # [B, Hm, 1, nk]
                step.score_last = (Lq.materialize(dev), _up(row, dev))
                stats.score_rows = [1] * lay.batch_size
            elif "attn_rows" in sel.needs:
                Tq = relative(T_abs, Q_abs)
                rows = np.take_along_axis(allowed_h, Tq.rows[:, None, :, None], 2)  # [B, Hm, T, nk]
                rows = rows | ~Tq.valid[:, None, :, None]  # padding rows: any key (weighted 0)
                step.score_rows = (Tq.materialize(dev), _up(rows, dev), _up(Tq.valid, dev))
                stats.score_rows = Tq.counts()
        if self.opts.explicit_masks:
            step.observer_meta = (
                _up(np.where(Q_abs.valid, _take_rows(tt, Q_abs.rows), PAD).astype(np.int64), dev),
                _up(np.where(K_abs.valid, _take_rows(tt, K_abs.rows), PAD).astype(np.int64), dev),
            )
        return step

    def _allowed_per_head(self, lp, allowed, Q_abs, K_abs, tt) -> np.ndarray:
        """[B, H|1, nq, nk]: the layer's allowed pairs per head (pruned heads of a drop_keys rule
        see no visual keys from non-visual queries)."""
        a = allowed[:, None]
        heads = self._head_sets(lp)
        if heads is None or lp.head_mode != "drop_keys":
            return a
        _, pruned = heads
        qv = _take_rows(tt, Q_abs.rows) == VIS
        kv = _take_rows(tt, K_abs.rows) == VIS
        restrict = (~qv)[:, :, None] & kv[:, None, :]
        per = np.repeat(a, self.opts.heads, 1)
        per[:, list(pruned)] &= ~restrict[:, None]
        return per

    # ------------------------------------------------------------------ attention
    def _head_sets(self, lp: LayerPlan) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        if lp.visual_heads is None:
            return None
        served = tuple(sorted(set(lp.visual_heads)))
        pruned = tuple(h for h in range(self.opts.heads) if h not in served)
        return None if not pruned else (served, pruned)

    def _attention(self, lay: Layout, lp: LayerPlan, Q_abs: RowSet, K_abs: RowSet, version: int):
        """How the layer attends, and the host matrix of allowed (query, key) pairs [B, nq, nk]."""
        o = self.opts
        dev = o.device
        tt = lay.ttype
        qr, kr = Q_abs.rows, K_abs.rows
        q_tt, k_tt = _take_rows(tt, qr), _take_rows(tt, kr)
        qv = Q_abs.valid & (q_tt != PAD)
        kv = K_abs.valid & (k_tt != PAD)
        q_vis, k_vis = q_tt == VIS, k_tt == VIS
        causal = kr[:, None, :] <= qr[:, :, None]
        allowed = causal & qv[:, :, None] & kv[:, None, :]
        if not lp.visual_kv:
            allowed &= ~((~q_vis)[:, :, None] & k_vis[:, None, :])
        vv = q_vis[:, :, None] & k_vis[:, None, :] & qv[:, :, None] & kv[:, None, :]
        window = None
        if lp.visual_attn == "none":
            allowed &= ~vv
        elif lp.visual_attn == "window":
            allowed &= ~vv  # visual pairs: the window decides, per call, from grid coordinates
            if vv.any():
                window = Window((lp.window - 1) // 2, Q_abs.materialize(dev), K_abs.materialize(dev),
                                _up(_shared(vv)[:, None], dev))  # fmt: skip
        nq, nk = Q_abs.width, K_abs.width
        # rows without an allowed key: padding (any key: their output is never read) or real rows
        # whose output must be zero
        empty = ~allowed.any(-1)
        if window is not None:
            empty &= ~vv.any(-1)
        real_empty = empty & qv
        opened = allowed | (empty & ~qv)[:, :, None]
        qzero = None
        if real_empty.any():
            opened = opened | real_empty[:, :, None]
            qzero = _up(_shared(~real_empty)[:, None, :, None], dev, o.dtype)
        heads = self._head_rule(lp, q_tt, k_tt, qv, kv, allowed, dev)
        key = self.keys(("attn", version, opened.tobytes(), opened.shape, lp.visual_attn, lp.window,
                         heads.mode if heads is not None else None))  # fmt: skip
        if key in self.geom:
            shared = self.geom[key]
            return Attention(shared.kind, nq, nk, shared.mask, shared.split, shared.window, heads,
                             shared.qzero, key), allowed  # fmt: skip
        kind, split, mask = "mask", 0, None
        plain_heads = heads is None or heads.mode == "zero_values"  # drop_keys restricts a mask
        uniform = lay.uniform and window is None and qzero is None and plain_heads and not o.explicit_masks
        pure_causal = uniform and bool((allowed == (causal & True)).all())
        if pure_causal and Q_abs.same_rows(K_abs):
            kind = "causal"
        elif pure_causal and nq <= nk and bool((qr[0] == kr[0, nk - nq :]).all()):
            kind = "suffix"
            if not o.lower_right_bias:
                mask = _up(allowed[:1, None], dev)
        elif pure_causal and o.prefer_split:
            p = 0
            while p < nq and p < nk and qr[0, p] == kr[0, p]:
                p += 1
            if 0 < p < nq and bool((qr[0, p:] == kr[0, nk - (nq - p) :]).all()):
                kind, split = "split", p
                if not o.lower_right_bias:
                    mask = _up(allowed[:1, None, p:], dev)
        if kind == "mask":
            mask = _up(_shared(opened)[:, None], dev)
        att = Attention(kind, nq, nk, mask, split, window, heads, qzero, key)
        self.geom[key] = att
        return att, allowed

    def _head_rule(self, lp, q_tt, k_tt, qv, kv, allowed, dev) -> HeadRule | None:
        sets = self._head_sets(lp)
        if sets is None:
            return None
        o = self.opts
        served, pruned = sets
        H, Hkv = o.heads, o.kv_heads
        is_pruned = np.zeros(H, bool)
        is_pruned[list(pruned)] = True
        q_vis = (q_tt == VIS) & qv
        k_vis = (k_tt == VIS) & kv
        qkeep = None
        if lp.head_mode == "zero_values":
            vkeep = ~(is_pruned[None, :, None] & k_vis[:, None, :])  # [B, H, nk]
            if q_vis.any():
                qkeep = _up(_shared(~(is_pruned[None, :, None] & q_vis[:, None, :]))[..., None], dev, o.dtype)
            return HeadRule("zero_values", vkeep=_up(_shared(vkeep)[..., None], dev, o.dtype), qkeep=qkeep)
        rep = H // Hkv
        s, p = np.array(served, np.int64), np.array(pruned, np.int64)
        order = np.concatenate([s, p])
        inverse = np.argsort(order)
        restrict = (~q_vis)[:, :, None] & k_vis[:, None, :]
        if q_vis.any():
            qkeep = _up(_shared(~q_vis)[:, None, :, None], dev, o.dtype)
        return HeadRule(
            "drop_keys", served=_up(s, dev), pruned=_up(p, dev), served_kv=_up(s // rep, dev),
            pruned_kv=_up(p // rep, dev), inverse=_up(inverse, dev), qkeep=qkeep,
            restrict=_up(_shared(restrict)[:, None], dev),
        )  # fmt: skip

    # ------------------------------------------------------------------ cache
    def _cache_spec(self, lay: Layout, r, K_abs: RowSet, version: int) -> CacheSpec:
        kt = _take_rows(lay.ttype, K_abs.rows)
        readable = K_abs.valid & (kt != PAD) & _take_rows(r["tv"], K_abs.rows)
        rows = None
        real = K_abs.valid & (kt != PAD)
        if (real & ~readable).any():  # keys text may not read are not cached
            pad_slot = np.argmax(~real, 1)  # a padding slot of each sample (exists when counts differ)
            cnt = readable.sum(1)
            rr = np.zeros((readable.shape[0], int(cnt.max())), np.int64)
            val = np.zeros(rr.shape, bool)
            for i in range(readable.shape[0]):
                hit = np.flatnonzero(readable[i])
                rr[i, : hit.size] = hit
                rr[i, hit.size :] = pad_slot[i]
                val[i, : hit.size] = True
            rows = RowSet(rr, val, K_abs.width).materialize(self.opts.device)
            readable_slots = val
            vis_slots = val & (np.take_along_axis(kt, rr, 1) == VIS)
        else:
            readable_slots = readable
            vis_slots = readable & (kt == VIS)
        key = self.keys(("cache", version, readable_slots.tobytes(), readable_slots.shape))
        extra = int(self.opts.cache_extra or 0)  # only called with a cache
        vis_all = np.concatenate([vis_slots, np.zeros((vis_slots.shape[0], extra), bool)], 1)
        return CacheSpec(
            rows=rows, prefill_valid=_up(readable_slots, self.opts.device), is_visual_dev=_up(vis_all, self.opts.device),
            readable=[int(c) for c in readable_slots.sum(1)], visual=[int(c) for c in vis_slots.sum(1)],
            key=key, extra=extra,
        )  # fmt: skip

    # ------------------------------------------------------------------ selection
    def _select(self, lay: Layout, sel, li: int, when: str, step: LayerStep | None, version: int,
                scratch: bool):  # fmt: skip
        o = self.opts
        dev = o.device
        tt = lay.ttype
        alive = tt != PAD
        vis = alive & (tt == VIS)
        txt = alive & (tt == TXT)
        pad = lay.pad_row()
        V = rowset(vis, pad).materialize(dev)
        T = rowset(txt, pad).materialize(dev)
        b = lay.batch_size
        sys_ = alive & (tt == SYS)
        counts = [
            SampleCounts(int(vis[i].sum()), int(self.n_visual[i]), int(txt[i].sum()), int(sys_[i].sum()))
            for i in range(b)
        ]
        kept = [int(sel.kept(c)) for c in counts]
        for c, k in zip(counts, kept, strict=True):
            if not 0 <= k <= c.present:
                raise PlanError(f"layer {li}: selector {type(sel).__name__} keeps {k} of {c.present} tokens")
        recycled = [int(sel.recycled(c, k)) for c, k in zip(counts, kept, strict=True)] if hasattr(
            sel, "recycle") else [0] * b  # fmt: skip
        K = max(kept, default=0)
        kept_valid = np.arange(K)[None] < np.array(kept)[:, None]
        # the new layout: the first kept + recycled visual rows of each sample hold the survivors
        new_rows, new_tt, ranks, kinds = [], [], [], []
        for i in range(b):
            rows_i = np.flatnonzero(alive[i])
            take = kept[i] + recycled[i]
            seen = 0
            nr, nt, rk, kd = [], [], [], []
            for row in rows_i:
                if tt[i, row] == VIS:
                    if seen >= take:
                        continue
                    nr.append(-1)
                    nt.append(VIS)
                    rk.append(seen)
                    kd.append(1 if seen < kept[i] else 2)
                    seen += 1
                else:
                    nr.append(int(row))
                    nt.append(int(tt[i, row]))
                    rk.append(0)
                    kd.append(0)
            new_rows.append(nr)
            new_tt.append(nt)
            ranks.append(rk)
            kinds.append(kd)
        n = max(len(r) for r in new_rows)
        lengths = {len(r) for r in new_rows}
        same = len({tuple(t) for t in new_tt}) == 1 and len(lengths) == 1
        if not same and not scratch:
            raise _NeedsScratch
        m = n + (1 if scratch else 0)
        ttn = np.full((b, m), PAD, np.int8)
        src = np.empty((b, m), np.int64)
        src[:] = pad[:, None] if scratch else 0
        rank = np.zeros((b, m), np.int64)
        kind = np.zeros((b, m), np.int8)
        for i in range(b):
            start = n - len(new_rows[i])
            ttn[i, start : start + len(new_rows[i])] = new_tt[i]
            for j, (row, rk, kd) in enumerate(zip(new_rows[i], ranks[i], kinds[i], strict=True)):
                if kd == 0:
                    src[i, start + j] = row
                rank[i, start + j] = rk if kd == 1 else 0
                kind[i, start + j] = kd
        new = Layout(ttn)
        R = max(recycled, default=0)
        merged_rows = None
        if R:
            mr = np.zeros((b, R), np.int64)
            npad = new.pad_row()
            for i in range(b):
                hit = np.flatnonzero(kind[i] == 2)
                mr[i, : hit.size] = hit
                mr[i, hit.size :] = npad[i]
            merged_rows = _up(mr, dev)
        renumber = sel.positions == "renumber" and self._position_dims == 1
        new_pos = new_next = None
        if renumber:
            na = new.alive
            newpos = np.clip(np.cumsum(na, 1) - 1, 0, None) * na
            new_pos = _up(newpos[None], dev)
            new_next = _up(na.sum(1).astype(np.int64), dev)
        before = None
        if when == "before" and {"attn_last", "attn_rows"} & set(sel.needs):
            if "attn_rows" in sel.needs:
                raise PlanError(f"layer {li}: 'attn_rows' scores are computed inside a layer: use drop_after")
            A = RowSet(np.arange(lay.rows)[None].repeat(b, 0), np.ones((b, lay.rows), bool), lay.rows)
            last = lay.last_rows()
            L = RowSet(last[:, None].astype(np.int64), np.ones((b, 1), bool), lay.rows).materialize(dev)
            before = (A, L, _up(alive, dev), relative(V, A).materialize(dev))
        version += 1
        msg = f"layer {li} drop_{when}: kept {kept} visual, merged {recycled}"
        if sel.positions == "renumber" and not renumber:
            msg += "; renumber requested on M-RoPE positions: original 3-D ids kept (README 2.3)"
        out = SelectStep(
            index=li, when=when, selector=sel, counts=counts, kept=kept, recycled=recycled, visual=V, text=T,
            visual_rows=_up(V.rows, dev), visual_valid=_up(V.valid, dev), text_valid=_up(T.valid, dev),
            kept_valid=_up(kept_valid, dev), src_other=_up(_shared(src), dev), vis_rank=_up(_shared(rank), dev),
            is_kept=_up(_shared(kind == 1), dev), merged_rows=merged_rows, renumber=renumber, new_pos=new_pos,
            new_next=new_next, version=version, before_scores=before, layer_step=step, log=msg,
        )  # fmt: skip
        return out, new, version

    _position_dims = 1


class _NeedsScratch(Exception):
    """A layout became ragged mid-plan: compile again with a padding row from the start."""


def compile_plan(plan: VisualPlan, layout: Layout, opts: CompileOptions, n_visual: list[int],
                 position_dims: int = 1) -> Program:  # fmt: skip
    c = Compiler(plan, opts, n_visual)
    c._position_dims = position_dims
    try:
        return c.compile(layout)
    except LayoutError as exc:
        raise PlanError(str(exc)) from None
