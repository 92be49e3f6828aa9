"""The executor: runs a backbone's decoder layers itself, carrying out a :class:`VisualPlan`.

A prefill has two halves.  On the host, the plan is compiled against the batch's token layout
(``program.py``): which rows every layer computes, how it attends, what its cache keeps, how many
tokens each selector keeps and where the survivors go.  On the device, :meth:`Executor.run_prefill`
walks the compiled steps; it reads nothing back on the host, so a GPU never stalls in the layer
loop and a fixed layout traces into one graph.  One layer, top to bottom, is :meth:`_layer`:

1. the visual states may be replaced (``kv_source``: ViCA's layer-0 input, SAISA's projector);
2. the layer's working rows are gathered, unless the previous layer left the same ones (ViCA's
   text-only layers run on the system and text rows alone);
3. the input norm, q/k/v projections and RoPE run on the rows that are queries or keys;
4. attention: SDPA with ``is_causal`` when queries and keys are the same rows, bottom-right
   causal when the queries are the last rows of the keys, two calls when a query prefix may only
   see the keys before it, else one boolean mask compiled for the layout (YOPO's window is added
   per call from grid coordinates); pruned heads get value multipliers or a second call;
5. the residual update of the query rows, then the FFN of its rows (YOPO's visual FFN sliced);
6. keys and values go to the layer's preallocated cache slots.

Selectors (``drop_before`` / ``drop_after``) score the present visual tokens with ``sort`` / ``topk``
at the static count the compiler fixed, and a gather moves the survivors into the new layout.

No transformers internals are patched: the executor calls the HF submodules (``q_proj``, ``k_proj``,
``v_proj``, ``o_proj``, the norms, ``mlp`` and its projections, the rotary embedding, ``lm_head``)
and PyTorch SDPA.  Attention scores are computed only for the rows a selector needs, never by
switching the model to eager attention.  ``mode="mask"`` runs the reference executor
(``reference_executor.py``), where every token stays in every matmul and the plan is applied by
masks, as the methods' reference implementations do.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from .batch import Batch, apply_reduction
from .kernels import expand_kv, norm, sliced_mlp
from .kv_cache import KVCache, LayerKV
from .outputs import LayerStats, PrefillOutput
from .plan import VisualPlan
from .program import Attention, CompileOptions, HeadRule, LayerStep, Program, SelectStep, compile_plan
from .reference_executor import ReferenceExecutor
from .selection import SelectContext

Mode = Literal["drop", "mask"]
__all__ = ["Executor", "LayerStats", "PrefillOutput"]


class _Run:
    """The device state of one prefill: the token states, their positions and original slots, the
    working rows of the current layer, and per-call caches (RoPE tables, window masks)."""

    def __init__(self, x, pos, orig, next_pos, batch) -> None:
        self.x = x  # [B, M, h] every row
        self.pos = pos  # [P, B, M]
        self.orig = orig  # [B, M] slot in the (reduced) input batch; padding rows: N
        self.next_pos = next_pos  # [B]
        self.batch = batch
        self.work = None  # RowSet of the rows held in ``xw`` (None: none gathered)
        self.work_key = -1
        self.xw = x
        self.rope: dict = {}
        self.masks: dict = {}
        self.raters: dict = {}
        self.pending: dict = {}
        # grid coordinates and raw vision features, padded once per call
        self.coords: torch.Tensor | None = None
        self.features: torch.Tensor | None = None
        self.deepstack: torch.Tensor | None = None  # the batch's DeepStack features, zero row N added

    def enter(self, work, key: int) -> None:
        if key == self.work_key:
            return
        self.flush()
        self.xw = work.take(self.x)
        self.work, self.work_key = work, key

    def flush(self) -> None:
        """Write the working rows back into the full state."""
        if self.work is not None:
            self.x = self.work.put(self.x, self.xw)
            if self.work.kind == "all":
                self.xw = self.x
        self.work, self.work_key = None, -1


class _Step:
    def __init__(self) -> None:
        self.masks: dict = {}


class Executor:
    """Runs prefill, decode and greedy generation of a backbone under a visual plan."""

    def __init__(self, backbone, mode: Mode = "drop", observer=None, *, prefer_split: bool | None = None,
                 lower_right_bias: bool | None = None, programs: int = 32) -> None:  # fmt: skip
        """``observer(layer, q, k, v, mask, q_meta, k_meta)``, if given, sees every layer's attention
        inputs during prefill (post-RoPE q/k, boolean mask [B, 1, nq, nk], ``{"ttype": ...}`` of the
        query and key rows): calibration reads head statistics from it without eager attention.
        ``prefer_split`` / ``lower_right_bias`` choose two SDPA calls and torch's bottom-right
        causal bias over compiled masks (default: on CUDA)."""
        if mode not in ("drop", "mask"):
            raise ValueError(f"unknown executor mode '{mode}': use 'drop' or 'mask'")
        self.bb = backbone
        self.mode: Mode = mode
        self.observer = observer
        self.prefer_split = prefer_split
        self.lower_right_bias = lower_right_bias
        self._reference = ReferenceExecutor(backbone, "mask", observer) if mode == "mask" else None
        self._programs: OrderedDict = OrderedDict()
        self._validated: set = set()  # plans checked already (validation walks every layer)
        self._max_programs = programs

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
        if self._reference is not None:
            return self._reference.prefill(batch, plan, all_logits=all_logits, cache_extra=cache_extra)
        batch, program = self.prepare(batch, plan, cache_extra)
        return self.run_prefill(program, batch, all_logits=all_logits)

    def prepare(self, batch: Batch, plan: VisualPlan | None, cache_extra: int | None = None):
        """Apply the plan's pre-LLM reducer, then compile (or reuse) the plan for the batch's
        layout.  Returns (the batch the layers run on, its program)."""
        bb = self.bb
        plan = plan or VisualPlan.dense(bb.num_layers)
        if plan not in self._validated:
            plan.validate(bb.num_layers, bb.num_heads, bb.intermediate_size)
            self._validated.add(plan)
        if plan.reducer is not None:
            batch = apply_reduction(batch, plan.reducer.reduce(bb, batch), "drop")
        return batch, self.compile(batch, plan, cache_extra)

    def compile(self, batch: Batch, plan: VisualPlan, cache_extra: int | None) -> Program:
        dev, dtype = batch.embeds.device, batch.embeds.dtype
        stack = 0 if batch.deepstack is None else int(batch.deepstack.shape[0])
        key = (plan, batch.layout.key, dev, dtype, cache_extra, self.observer is not None, stack)
        prog = self._programs.get(key)
        if prog is not None:
            self._programs.move_to_end(key)
            return prog
        cuda = dev.type == "cuda"
        opts = CompileOptions(
            device=dev, dtype=dtype, heads=self.bb.num_heads, kv_heads=self.bb.num_kv_heads,
            cache_extra=cache_extra, explicit_masks=self.observer is not None,
            prefer_split=cuda if self.prefer_split is None else self.prefer_split,
            lower_right_bias=cuda if self.lower_right_bias is None else self.lower_right_bias,
            deepstack=stack,
        )  # fmt: skip
        prog = compile_plan(plan, batch.layout, opts, batch.layout.count(2), self.bb.position_dims)
        prog.plan = plan
        self._programs[key] = prog
        while len(self._programs) > self._max_programs:
            self._programs.popitem(last=False)
        return prog

    def run_prefill(self, program: Program, batch: Batch, *, all_logits: bool = False) -> PrefillOutput:
        """The device half of a prefill: no host reads, so a fixed layout traces into one graph."""
        bb = self.bb
        x, pos = batch.embeds, batch.positions
        b = x.shape[0]
        if program.scratch:
            x = torch.cat([x, x.new_zeros(b, 1, x.shape[-1])], 1)
            pos = torch.cat([pos, pos.new_zeros(pos.shape[0], b, 1)], 2)
        elif program.clone_input:
            x = x.clone()
        st = _Run(x, pos, program.init_orig, batch.next_position, batch)
        caches: list[LayerKV] = []
        for step in program.steps:
            if isinstance(step, LayerStep):
                kv = self._layer(st, step)
                if kv is not None:
                    caches.append(kv)
            else:
                self._select(st, step)
        if program.last_in_work is not None and st.work is not None:
            h_last = program.last_in_work.take(st.xw)
        else:
            st.flush()
            h_last = program.last_rows.take(st.x)
        logits = bb.lm_head(norm(bb.norm, h_last))[:, 0]
        cache = None
        if program.has_cache:
            cache = KVCache(caches, step=torch.zeros(1, dtype=torch.long, device=x.device), plan=program.plan,
                            extra=program.extra)  # fmt: skip
        out = PrefillOutput(logits=logits.float(), cache=cache, stats=program.stats)
        if all_logits:
            st.flush()
            n = batch.seq_len
            lg = bb.lm_head(norm(bb.norm, st.x)).float()
            full = lg.new_full((b, n + 1, lg.shape[-1]), float("nan"))
            full.scatter_(1, st.orig[..., None].expand(-1, -1, lg.shape[-1]), lg)
            have = torch.zeros(b, n + 1, dtype=torch.bool, device=x.device)
            have.scatter_(1, st.orig, program.final_alive.expand(b, -1))
            out.all_logits, out.text_logits_mask = full[:, :n], have[:, :n]
        return out

    # ------------------------------------------------------------------ one layer
    def _layer(self, st: _Run, s: LayerStep) -> LayerKV | None:
        bb = self.bb
        layer = bb.layers[s.index]
        attn = layer.self_attn
        if s.overwrite is not None:
            self._overwrite(st, s)
        st.enter(s.work, s.work_key)
        xw = st.xw
        hn = norm(layer.input_layernorm, s.norm_rows.take(xw))
        hq = hn if s.norm_is_q else s.q.take(hn)
        hk = hn if s.norm_is_k else s.k.take(hn)
        b, nq, nk = hq.shape[0], hq.shape[1], hk.shape[1]
        H, Hkv, d = bb.num_heads, bb.num_kv_heads, bb.head_dim
        cos_q, sin_q, cos_k, sin_k = self._rope(st, s, hn)
        q = bb.rotate_rows(bb.queries(attn, hq), cos_q, sin_q).transpose(1, 2)
        k = bb.rotate_rows(bb.keys(attn, hk), cos_k, sin_k).transpose(1, 2)
        v = attn.v_proj(hk).view(b, nk, Hkv, d).transpose(1, 2)
        if self.observer is not None:
            assert s.observer_meta is not None  # compiled with explicit masks for an observer
            q_tt, k_tt = s.observer_meta
            mask = self._mask(st, s.attn).expand(b, -1, -1, -1)
            self.observer(s.index, q, k, v, mask, {"ttype": q_tt}, {"ttype": k_tt})
        out = self._attend(st, s.attn, q, k, v, attn.scaling)
        upd = attn.o_proj(out.transpose(1, 2).reshape(b, nq, H * d))
        if s.score_last is not None or s.score_rows is not None or s.txt_in_k is not None:
            self._layer_scores(st, s, q, k, attn.scaling)
        xw = s.q_in_work.add(xw, upd)
        mlp, norm2 = layer.mlp, layer.post_attention_layernorm
        if s.ffn_full is not None:
            xw = s.ffn_full.add(xw, mlp(norm(norm2, s.ffn_full.take(xw))))
        if s.ffn_part is not None:
            width = s.plan.visual_ffn
            assert width is not None  # a partial visual FFN has its width
            xw = s.ffn_part.add(xw, sliced_mlp(mlp, norm(norm2, s.ffn_part.take(xw)), width))
        st.xw = xw
        if s.work.kind == "all":
            st.x = xw
        if s.inject:
            self._inject(st, s)
        if s.cache is None:
            return None
        c = s.cache
        kk, vv = (k, v) if c.rows is None else (c.rows.take_heads(k), c.rows.take_heads(v))
        return LayerKV.allocate(
            kk, vv, c.extra, prefill_valid=c.prefill_valid, is_visual=c.is_visual_dev, next_pos=st.next_pos,
            readable=c.readable, visual=c.visual, geometry=(c.key, s.pos_version),
        )  # fmt: skip

    def _inject(self, st: _Run, s: LayerStep) -> None:
        """DeepStack (Qwen3-VL): layer i's feature added to every row that holds a visual token, by
        the row's original slot; other rows (and dropped tokens, which have no row) get nothing
        (docs/methods.md §2.9)."""
        st.flush()
        if st.deepstack is None:
            ds = st.batch.deepstack
            assert ds is not None  # compiled with DeepStack layers for this batch
            st.deepstack = torch.cat([ds, ds.new_zeros(*ds.shape[:2], 1, ds.shape[-1])], 2)  # slot N: zero
        feats = st.deepstack[s.index]  # [B, N + 1, h]
        orig = st.orig.expand(feats.shape[0], -1)
        st.x = st.x + torch.gather(feats, 1, orig[..., None].expand(-1, -1, feats.shape[-1])).to(st.x.dtype)
        st.xw = st.x

    def _rope(self, st: _Run, s: LayerStep, hn: torch.Tensor):
        """cos/sin (sign-folded, ``Backbone.signed_sin``) of the norm rows, and of their query and key
        rows; computed once per layout and row set (every dense layer shares one table, as in the HF
        forward)."""
        if s.rope_u not in st.rope:
            cos, sin = self.bb.rope(hn, s.pos_rows.take(st.pos, 2))
            st.rope[s.rope_u] = (cos, self.bb.signed_sin(sin))
        cu, su = st.rope[s.rope_u]
        out = []
        for rows, is_all, key in ((s.q, s.norm_is_q, s.rope_q), (s.k, s.norm_is_k, s.rope_k)):
            if is_all:
                out += [cu, su]
                continue
            if key not in st.rope:
                st.rope[key] = (rows.take(cu), rows.take(su))
            out += list(st.rope[key])
        return out

    def _overwrite(self, st: _Run, s: LayerStep) -> None:
        """kv_source 'fixed' (ViCA: the layer-0 input) or 'projector' (SAISA: P_l(f))."""
        st.flush()
        assert s.overwrite is not None
        rows = s.overwrite.rows
        batch = st.batch
        src = rows.take(st.orig).clamp(max=batch.seq_len - 1)  # [B, V] slots in the input batch
        if s.overwrite.kind == "fixed":
            vals = torch.gather(batch.embeds, 1, src[..., None].expand(-1, -1, batch.embeds.shape[-1]))
        else:
            vidx = torch.gather(batch.visual_index, 1, src).clamp(min=0)
            feats = _padded_features(st)
            f = torch.gather(feats, 1, vidx[..., None].expand(-1, -1, feats.shape[-1]))
            vals = self.bb.layer_projection(s.index, f).to(st.x.dtype)
        st.x = rows.put(st.x, vals)

    # ------------------------------------------------------------------ attention
    def _attend(self, st, a: Attention, q, k, v, scale: float) -> torch.Tensor:
        """One head rule for prefill and decode: served heads attend as the layer does; pruned
        heads see visual keys with zeroed values (``zero_values``) or not at all (``drop_keys``),
        and give visual queries no output."""
        h: HeadRule | None = a.heads
        if h is None:
            out = self._sdpa(st, a, q, k, v, scale)
        elif h.mode == "zero_values":
            assert h.vkeep is not None
            H = q.shape[1]
            out = self._sdpa(st, a, q, expand_kv(k, H), expand_kv(v, H) * h.vkeep, scale)
            if h.qkeep is not None:
                out = out * h.qkeep
        else:  # drop_keys
            assert h.served is not None and h.served_kv is not None and h.pruned is not None
            assert h.pruned_kv is not None and h.inverse is not None
            served = self._sdpa(st, a, q.index_select(1, h.served), k.index_select(1, h.served_kv),
                                v.index_select(1, h.served_kv), scale)  # fmt: skip
            pruned = self._sdpa(st, a, q.index_select(1, h.pruned), k.index_select(1, h.pruned_kv),
                                v.index_select(1, h.pruned_kv), scale, restrict=h.restrict)  # fmt: skip
            if h.qkeep is not None:
                pruned = pruned * h.qkeep
            out = torch.cat([served, pruned], 1).index_select(1, h.inverse)
        if a.qzero is not None:
            out = out * a.qzero
        return out

    def _sdpa(self, st, a: Attention, q, k, v, scale: float, restrict=None) -> torch.Tensor:
        gqa = int(k.shape[1]) != int(q.shape[1])  # python ints also under jit tracing (fvcore)
        if a.kind == "causal":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        if a.kind == "suffix":
            mask = a.mask if a.mask is not None else causal_lower_right(a.nq, a.nk)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
        if a.kind == "split":
            p = a.split
            first = F.scaled_dot_product_attention(
                q[:, :, :p], k[:, :, :p], v[:, :, :p], is_causal=True, scale=scale, enable_gqa=gqa
            )
            mask = a.mask if a.mask is not None else causal_lower_right(a.nq - p, a.nk)
            rest = F.scaled_dot_product_attention(
                q[:, :, p:], k, v, attn_mask=mask, scale=scale, enable_gqa=gqa
            )
            return torch.cat([first, rest], 2)
        mask = self._mask(st, a)
        if restrict is not None:
            key = ("restrict", a.key, id(restrict))
            if key not in st.masks:
                st.masks[key] = mask & ~restrict
            mask = st.masks[key]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)

    def _mask(self, st, a: Attention) -> torch.Tensor:
        """The layer's boolean mask; with YOPO's window, completed once per call from the grid
        coordinates of the query and key rows (they follow the tokens through drops)."""
        w = a.window
        assert a.mask is not None  # an attention that reads its mask has one (program.py)
        if w is None:
            return a.mask
        key = ("window", a.key)
        if key not in st.masks:
            coords = _padded_coords(st)
            qc = torch.gather(coords, 1, w.q_rows.take(st.orig)[..., None].expand(-1, -1, 3))
            kc = torch.gather(coords, 1, w.k_rows.take(st.orig)[..., None].expand(-1, -1, 3))
            diff = (qc[:, :, None, 1:] - kc[:, None, :, 1:]).abs()
            inside = (
                (qc[:, :, None, 0] == kc[:, None, :, 0])
                & (diff[..., 0] <= w.radius)
                & (diff[..., 1] <= w.radius)
            )
            st.masks[key] = a.mask | (w.vv & inside[:, None])
        return st.masks[key]

    # ------------------------------------------------------------------ selection
    def _layer_scores(self, st: _Run, s: LayerStep, q, k, scale: float) -> None:
        """What a drop_after selector reads from inside the layer: the last prompt token's (or the
        text raters') attention on the present visual tokens, and post-RoPE keys."""
        H = q.shape[1]
        kk = expand_kv(k, H).float()
        assert s.vis_in_k is not None  # compiled beside the layer's scores and keys
        scores = None
        if s.score_last is not None:
            last, allowed = s.score_last
            logits = (last.take_heads(q).float() @ kk.transpose(-1, -2)) * scale  # [B, H, 1, nk]
            probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1).mean(1)[:, 0]
            scores = s.vis_in_k.take(probs)
        elif s.score_rows is not None:
            rows, allowed, valid = s.score_rows
            logits = (rows.take_heads(q).float() @ kk.transpose(-1, -2)) * scale  # [B, H, T, nk]
            probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1).mean(1)  # [B, T, nk]
            sel = s.plan.drop_after
            raters = self._raters(st, sel.rows) & valid
            weight = raters.float() / raters.sum(1, keepdim=True).clamp(min=1)
            scores = s.vis_in_k.take((probs * weight[..., None]).sum(1))
        st.pending = {"scores": scores}
        if s.txt_in_k is not None:
            kflat = k.transpose(1, 2).flatten(2)  # [B, nk, Hkv*d]
            st.pending["keys"] = (s.vis_in_k.take(kflat), s.txt_in_k.take(kflat))

    def _raters(self, st: _Run, rows) -> torch.Tensor:
        if rows not in st.raters:
            st.raters[rows] = rows.choose(st.batch)
        return st.raters[rows]

    def _scores_before(self, st: _Run, s: SelectStep) -> torch.Tensor:
        """Score the incoming states with layer l's own norm, q/k projections and RoPE (PDrop's
        rank layer): the last prompt token's attention over every present key."""
        bb = self.bb
        attn = bb.layers[s.index].self_attn
        assert s.before_scores is not None  # compiled for a drop_before selector
        rows, last, alive, vis = s.before_scores
        hn = norm(bb.layers[s.index].input_layernorm, st.x)
        b, m, _ = hn.shape
        H = bb.num_heads
        hq = last.take(hn)
        cq, sq = bb.rope(hq, last.take(st.pos, 2))
        ck, sk = bb.rope(hn, st.pos)
        q = bb.rotate_rows(bb.queries(attn, hq), cq, bb.signed_sin(sq)).transpose(1, 2)
        k = bb.rotate_rows(bb.keys(attn, hn), ck, bb.signed_sin(sk)).transpose(1, 2)
        logits = (q.float() @ expand_kv(k, H).float().transpose(-1, -2)) * attn.scaling
        logits = logits.masked_fill(~alive[:, None, None, :], float("-inf"))
        return vis.take(torch.softmax(logits, -1).mean(1)[:, 0])

    def _select(self, st: _Run, s: SelectStep) -> None:
        sel = s.selector
        st.flush()
        pending, st.pending = st.pending, {}
        batch = st.batch
        ctx = SelectContext(
            layer=s.index, counts=s.counts, kept=s.kept, valid=s.visual_valid, sample_ids=batch.sample_ids,
            text_valid=s.text_valid,
            index_fn=lambda: torch.where(
                s.visual_valid,
                torch.gather(batch.visual_index, 1, s.visual.take(st.orig).clamp(max=batch.seq_len - 1)), -1),
        )  # fmt: skip
        needs = sel.needs
        if {"attn_last", "attn_rows"} & set(needs):
            scores = self._scores_before(st, s) if s.when == "before" else pending["scores"]
            ctx.scores = scores.masked_fill(~s.visual_valid, float("-inf"))
        if "keys" in needs and "keys" in pending:
            ctx.keys, ctx.text_keys = pending["keys"]
        if "hidden_out" in needs or "hidden_in" in needs:
            ctx.hidden = s.visual.take(st.x)
            ctx.text_hidden = s.text.take(st.x)
            ctx.extra["final_norm"] = self.bb.norm
        chosen = sel.select(ctx) if ctx.k else s.visual_rows[:, :0]
        # the kept slots in row order (padding slots last), then their rows in the state
        big = torch.full_like(chosen, s.visual_rows.shape[1])
        slots = torch.sort(torch.where(s.kept_valid, chosen, big), dim=1).values
        slots = slots.clamp(max=max(s.visual_rows.shape[1] - 1, 0))
        vrows = s.visual_rows.expand(st.x.shape[0], -1)
        kept_rows = torch.gather(vrows, 1, slots)
        b = st.x.shape[0]
        picked = (
            torch.gather(kept_rows, 1, s.vis_rank.expand(b, -1))
            if kept_rows.shape[1]
            else s.vis_rank.expand(b, -1)
        )
        src = torch.where(s.is_kept, picked, s.src_other)
        h = st.x.shape[-1]
        x = torch.gather(st.x, 1, src[..., None].expand(-1, -1, h))
        orig = torch.gather(st.orig.expand(b, -1), 1, src)
        P = st.pos.shape[0]
        if s.renumber:
            assert s.new_pos is not None  # compiled with the renumbered positions
            pos = s.new_pos
        else:
            pos = torch.gather(st.pos, 2, src[None].expand(P, -1, -1))
        if s.merged_rows is not None:
            embeds, anchors = sel.recycle(ctx, chosen)
            anchor_rows = torch.gather(vrows, 1, anchors.long())
            mr = s.merged_rows
            x.scatter_(1, mr[..., None].expand(-1, -1, h), embeds.to(x.dtype))
            orig.scatter_(1, mr, torch.gather(st.orig.expand(b, -1), 1, anchor_rows))
            if not s.renumber:
                pos.scatter_(2, mr[None].expand(P, -1, -1),
                             torch.gather(st.pos, 2, anchor_rows[None].expand(P, -1, -1)))  # fmt: skip
        st.x, st.xw, st.orig, st.pos = x, x, orig, pos
        if s.renumber:
            st.next_pos = s.new_next
        st.rope, st.masks = {}, {}

    # ------------------------------------------------------------------ decode
    @torch.inference_mode()
    def decode_step(self, tokens: torch.Tensor, cache, plan: VisualPlan | None = None) -> torch.Tensor:
        """One generated token per sample [B] -> next-token logits [B, V]."""
        if self._reference is not None:
            return self._reference.decode_step(tokens, cache, plan)
        if plan is not None and cache.plan is not None and plan is not cache.plan and plan != cache.plan:
            raise ValueError("decode_step: the cache was filled under another plan; pass that plan")
        if cache.steps >= cache.extra or "decode" not in cache.scratch:
            self._prepare_decode(cache)
        return self.run_decode(tokens, cache)

    def run_decode(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The device half of a decode step: slots, masks and positions advance in place."""
        bb = self.bb
        geoms, attns = cache.scratch["decode"]
        assert cache.step is not None  # the executor's caches count their steps on the device
        x = bb.embed_tokens(tokens[:, None])
        b = x.shape[0]
        H, Hkv, d = bb.num_heads, bb.num_kv_heads, bb.head_dim
        for mask, slot in geoms.values():
            mask.index_fill_(-1, slot, True)
        step = _Step()  # per-step derived masks (pruned heads' restricted ones)
        ropes: dict = {}
        for layer, lkv, a in zip(bb.layers, cache.layers, attns, strict=True):
            attn = layer.self_attn
            hn = norm(layer.input_layernorm, x)
            pkey = lkv.geometry[1]
            if pkey not in ropes:
                pos = (lkv.next_pos + cache.step)[None, :, None].expand(bb.position_dims, -1, -1)
                cos, sin = bb.rope(hn, pos)
                ropes[pkey] = (cos, bb.signed_sin(sin))
            cos, sin = ropes[pkey]
            q = bb.rotate_rows(bb.queries(attn, hn), cos, sin).transpose(1, 2)
            k = bb.rotate_rows(bb.keys(attn, hn), cos, sin).transpose(1, 2)
            v = attn.v_proj(hn).view(b, 1, Hkv, d).transpose(1, 2)
            slot = geoms[lkv.geometry[0]][1]
            lkv.k.index_copy_(2, slot, k)
            lkv.v.index_copy_(2, slot, v)
            out = self._attend(step, a, q, lkv.k, lkv.v, attn.scaling)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(b, 1, H * d))
            x = x + layer.mlp(norm(layer.post_attention_layernorm, x))
        for _, slot in geoms.values():
            slot.add_(1)
        cache.step.add_(1)
        cache.steps += 1
        return bb.lm_head(norm(bb.norm, x))[:, 0].float()

    def _prepare_decode(self, cache: KVCache) -> None:
        """Per cache geometry a persistent mask and write slot; per layer the head rule over the
        cache's slots.  Built on the first step (and again if decoding outgrows the buffers)."""
        if cache.steps >= cache.extra:
            grow = max(16, cache.layers[0].capacity // 2)
            for lk in cache.layers:
                lk.grow(grow)
            cache.extra += grow
        assert cache.step is not None and cache.plan is not None  # filled by this executor's prefill
        dev = cache.step.device
        geoms: dict = {}
        attns = []
        plan = cache.plan
        H = self.bb.num_heads
        for lkv, lp in zip(cache.layers, plan.layers, strict=True):
            gk = lkv.geometry[0]
            if gk not in geoms:
                b = lkv.prefill_valid.shape[0]
                mask = torch.zeros(b, 1, 1, lkv.capacity, dtype=torch.bool, device=dev)
                mask[:, 0, 0, : lkv.prefill] = lkv.prefill_valid
                mask[:, 0, 0, lkv.prefill : lkv.prefill + cache.steps] = True
                slot = torch.full((1,), lkv.prefill + cache.steps, dtype=torch.long, device=dev)
                geoms[gk] = (mask, slot)
            heads = None
            if lp.visual_heads is not None and len(set(lp.visual_heads)) < H:
                heads = _decode_heads(lp, lkv, H, self.bb.num_kv_heads, lkv.k.dtype)
            attns.append(Attention("mask", 1, lkv.capacity, geoms[gk][0], heads=heads, key=gk))
        cache.scratch["decode"] = (geoms, attns)

    @torch.inference_mode()
    def generate(
        self,
        batch: Batch,
        plan: VisualPlan | None = None,
        max_new_tokens: int = 16,
        eos_token_id: int | None = None,
    ) -> torch.Tensor:
        """Batched greedy decoding [B, T]; with ``eos_token_id`` a finished sample is padded with
        EOS and the loop stops when all have finished (EOS-bounded: one host read per step), else
        exactly T tokens."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        out = self.prefill(batch, plan, cache_extra=max_new_tokens)
        tok = out.logits.argmax(-1)
        toks = [tok]
        done = tok == eos_token_id if eos_token_id is not None else None
        for _ in range(max_new_tokens - 1):
            if done is not None and bool(done.all()):
                break
            logits = self.decode_step(tok, out.cache, plan)
            tok = logits.argmax(-1)
            if done is not None and eos_token_id is not None:
                tok = torch.where(done, torch.full_like(tok, eos_token_id), tok)
                done = done | (tok == eos_token_id)
            toks.append(tok)
        return torch.stack(toks, 1)


# ---------------------------------------------------------------------------------- helpers
def _decode_heads(lp, lkv: LayerKV, H: int, Hkv: int, dtype) -> HeadRule:
    served = sorted(set(lp.visual_heads))
    pruned = [h for h in range(H) if h not in served]
    dev = lkv.k.device
    is_pruned = torch.zeros(H, dtype=torch.bool, device=dev)
    is_pruned[pruned] = True
    vis = lkv.is_visual  # [B, capacity]
    if lp.head_mode == "zero_values":
        keep = ~(is_pruned[None, :, None] & vis[:, None, :])
        return HeadRule("zero_values", vkeep=keep[..., None].to(dtype))
    rep = H // Hkv
    s = torch.tensor(served, dtype=torch.long, device=dev)
    p = torch.tensor(pruned, dtype=torch.long, device=dev)
    return HeadRule(
        "drop_keys", served=s, pruned=p, served_kv=s // rep, pruned_kv=p // rep,
        inverse=torch.argsort(torch.cat([s, p])), restrict=vis[:, None, None, :],
    )  # fmt: skip


def _padded_coords(st: _Run) -> torch.Tensor:
    if st.coords is None:
        c = st.batch.visual_coords
        st.coords = torch.cat([c, c.new_full((c.shape[0], 1, 3), -1)], 1)
    return st.coords


def _padded_features(st: _Run) -> torch.Tensor:
    """The raw vision features of every sample as one [B, Nv, d] tensor (shapes are host facts)."""
    if st.features is None:
        feats = st.batch.vision_features
        n = max(int(f.shape[0]) for f in feats)
        d = max(int(f.shape[-1]) for f in feats if f.dim() == 2)
        ref = next(f for f in feats if f.dim() == 2)
        rows = [
            torch.cat([f, ref.new_zeros(n - int(f.shape[0]), d)]) if f.dim() == 2 else ref.new_zeros(n, d)
            for f in feats
        ]
        st.features = torch.stack(rows)
    return st.features
