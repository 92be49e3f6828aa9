"""Analytic FLOPs model: per layer, per token class (docs/flops.md).

Units. Every count is held as MACs (multiply-accumulates) in a `Compute`; FLOPs = 2 x MACs
(docs/flops.md §1). FastV / PDrop / SparseVLM / DivPrune formulas count MACs and call them FLOPs; ShortV,
YOPO and ViCA count FLOPs; fvcore reports MACs; `torch.utils.flop_counter` reports FLOPs.

Token classes. A layer processes ``t`` non-visual tokens (system prefix S + text T; ShortV fixes
t = 64) and some visual tokens, described by a `LayerWork`. A schedule is one `LayerWork` per
decoder layer; a method's comes from its plan (`schedule`: each layer's `LayerPlan.roles` applied
to the visual tokens present there; `plan_schedule` at a published geometry), never from a
hand-written per-method formula.

Conventions (`CONVENTIONS`), all evaluated with the same per-class terms (docs/flops.md §2.5):

=========  ===========  ======  =========  ==========================================================
name       FFN matrices  K/V    t          meaning
=========  ===========  ======  =========  ==========================================================
fastv      2            h       actual     FastV F2(n) = 4nh² + 2n²h + 2nhm (MACs) on dense layers
swiglu     3            h_kv    actual     F3(n) = 4nh² + 2n²h + 3nhm (MACs), GQA-aware
shortv     3            h       64         ShortV D(t, v) / S(t, v) (FLOPs), MHA formula
exact      3            h_kv    actual     seebench per-class terms, GQA-aware; uses
                                           `LayerWork.attn_calls` (rectangles actually computed)
=========  ===========  ======  =========  ==========================================================

Attention area: the papers' rectangle — every non-visual query row sees all keys of the layer
(t + visual keys), every visual query row sees all keys unless `LayerWork.vrow_keys` restricts it
(YOPO window) — causal masking is not halved (docs/flops.md §1). ``exact`` replaces the rectangle by the
attention calls a drop-mode executor issues when the schedule lists them; SDPA computes (and
FlopCounterMode / fvcore count) the full n_q x n_k rectangle of each call.

Visual side (docs/flops.md §2.4): YOPO = visual rows only (projections, FFN, attention of visual rows over
visual keys, or over their restricted key set); ViCA = YOPO + non-visual queries over visual keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from harness.models.batch import TokenType
from harness.models.geometry import Geometry, get_geometry
from harness.models.plan import VisualPlan
from harness.models.selection import SampleCounts

# --------------------------------------------------------------------------------------------------
# Units and conventions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Compute:
    """An amount of compute. Stored in MACs; FLOPs = 2 x MACs (docs/flops.md §1)."""

    macs: float = 0.0

    @property
    def flops(self) -> float:
        return 2.0 * self.macs

    @property
    def tflops(self) -> float:
        """FLOPs in units of 10^12."""
        return self.flops / 1e12

    @property
    def tmacs(self) -> float:
        """MACs in units of 10^12."""
        return self.macs / 1e12

    def __add__(self, other: Compute) -> Compute:
        return Compute(self.macs + other.macs)

    def __mul__(self, k: float) -> Compute:
        return Compute(self.macs * k)

    __rmul__ = __mul__

    def as_dict(self) -> dict[str, float]:
        """Both units, named by their keys."""
        return {"macs": self.macs, "flops": self.flops}


def total(items: Sequence[Compute]) -> Compute:
    return Compute(sum(c.macs for c in items))


@dataclass(frozen=True)
class Convention:
    """How a paper counts (docs/flops.md §2). See the module docstring table."""

    name: str
    ffn_matrices: int  # 2 (FastV F2) or 3 (gate, up, down)
    gqa: bool  # K/V projections at n_kv_heads x head_dim (else at h, the MHA formulas)
    fixed_t: int | None  # non-visual tokens forced to this value (ShortV/ViCA: 64)
    computed_attention: bool  # use LayerWork.attn_calls when given
    paper_unit: Literal["MACs", "FLOPs"]  # the unit the source reports under the name "FLOPs"


CONVENTIONS: dict[str, Convention] = {
    "fastv": Convention("fastv", 2, False, None, False, "MACs"),
    "swiglu": Convention("swiglu", 3, True, None, False, "MACs"),
    "shortv": Convention("shortv", 3, False, 64, False, "FLOPs"),
    "exact": Convention("exact", 3, True, None, True, "FLOPs"),
}


#: the two visual-side conventions (docs/flops.md §2.4), named after the papers that defined them:
#: visual rows only, and visual rows plus the text rows' attention over visual keys
VISUAL_CONVENTIONS = ("yopo", "vica")


def get_convention(c: str | Convention) -> Convention:
    if isinstance(c, Convention):
        return c
    try:
        return CONVENTIONS[c]
    except KeyError:
        raise KeyError(f"unknown convention {c!r}; known: {sorted(CONVENTIONS)}") from None


# --------------------------------------------------------------------------------------------------
# Per-layer work
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttnCall:
    """One attention call as a drop-mode executor issues it: ``rows`` queries x ``keys`` keys."""

    rows: int
    keys: int
    head_frac: float = 1.0


@dataclass(frozen=True)
class LayerWork:
    """What one decoder layer computes, per token class (docs/flops.md §2.5).

    Non-visual tokens (S + T) always get Q/K/V/O projections and the FFN. Visual tokens are split into
    attention query rows (``v_q``: Q and O projections, attention rows), FFN rows (``v_ffn``) and
    key/value rows (``v_k``: K and V projections; they are the visual keys non-visual queries see).
    """

    t: int  # non-visual tokens in the layer (K/V, FFN)
    v_q: int = 0  # visual attention query rows
    v_k: int = 0  # visual tokens whose K/V are computed (visible to non-visual queries)
    v_ffn: int | None = None  # visual FFN rows (None: = v_q)
    f: float = 1.0  # kept-head fraction of visual query rows (Q, O, attention rows); YOPO f_l
    f_k: float = 1.0  # head fraction of visual K projections
    f_v: float = 1.0  # head fraction of visual V projections
    f_tv: float = 1.0  # head fraction in which non-visual rows attend visual keys
    m_v: int | None = None  # FFN width for visual rows (YOPO: m / r); None: full width
    vrow_keys: float | None = None  # keys per visual query row if restricted (YOPO: w² + s)
    t_q: int | None = None  # non-visual attention query rows (None: = t); ViCA-7B: T only
    proj: tuple[tuple[int, int], ...] = ()  # per-layer projector matrices (SAISA), (in, out)
    proj_rows: int = 0
    attn_calls: tuple[AttnCall, ...] | None = None  # `exact`: rectangles actually computed

    @property
    def ffn_rows(self) -> int:
        return self.v_q if self.v_ffn is None else self.v_ffn

    @property
    def visual_present(self) -> int:
        """Visual tokens this layer touches at all."""
        return max(self.v_q, self.v_k, self.ffn_rows)


Schedule = list[LayerWork]


@dataclass(frozen=True)
class LayerCount:
    """MACs of one layer, by term (docs/flops.md §2.5)."""

    qo: float
    kv: float
    attn_nonvisual: float
    attn_visual: float
    ffn: float
    projectors: float
    visual_yopo: float
    visual_vica: float

    @property
    def decoder(self) -> Compute:
        return Compute(self.qo + self.kv + self.attn_nonvisual + self.attn_visual + self.ffn)


def layer_count(g: Geometry, w: LayerWork, convention: str | Convention = "exact") -> LayerCount:
    """MACs of one layer under a convention (docs/flops.md §2.5; FLOPs = 2 x these)."""
    c = get_convention(convention)
    h, qw = g.hidden, g.q_width
    kvw = g.kv_width if c.gqa else g.hidden
    m, mv = g.intermediate, (g.intermediate if w.m_v is None else w.m_v)
    t = w.t if c.fixed_t is None else c.fixed_t
    t_q = t if (c.fixed_t is not None or w.t_q is None) else w.t_q
    vrow_all = t + w.v_k if w.vrow_keys is None else w.vrow_keys  # keys per visual row (totals)
    vrow_vis = w.v_k if w.vrow_keys is None else w.vrow_keys  # ... in the YOPO convention

    qo = 2 * h * qw * (t_q + w.f * w.v_q)
    kv = h * kvw * (2 * t + (w.f_k + w.f_v) * w.v_k)
    cross = 2 * qw * w.f_tv * t_q * w.v_k  # non-visual queries x visual keys (QKᵀ and A·V)
    if c.computed_attention and w.attn_calls is not None:
        attn_nv = sum(2 * qw * a.rows * a.keys * a.head_frac for a in w.attn_calls)
        attn_v = 0.0
    else:
        attn_nv = 2 * qw * t_q * t + cross
        attn_v = 2 * qw * w.f * w.v_q * vrow_all
    ffn = c.ffn_matrices * h * (m * t + mv * w.ffn_rows)
    proj = float(sum(w.proj_rows * a * b for a, b in w.proj))

    yopo = (
        2 * h * qw * w.f * w.v_q
        + h * kvw * (w.f_k + w.f_v) * w.v_k
        + c.ffn_matrices * h * mv * w.ffn_rows
        + 2 * qw * w.f * w.v_q * vrow_vis
    )
    return LayerCount(qo, kv, attn_nv, attn_v, ffn, proj, yopo, yopo + cross)


# --------------------------------------------------------------------------------------------------
# Vision tower, projector, LM head
# --------------------------------------------------------------------------------------------------


def vision_tower_compute(
    g: Geometry, layers: int | None = None, tokens: Sequence[tuple[int, int]] | None = None
) -> Compute:
    """ViT MACs for all crops: patch embedding + ``layers`` encoder blocks (default: all executed).

    Per block and token: Q/K/V/O 4·D², MLP 2·D·mlp (SwiGLU: 3·D·mlp); attention 2·N²·D per crop
    (full, non-causal), or the sum over its windows of 2·n_w²·D in a windowed block (Qwen2.5-VL).
    LLaVA uses the output of layer 22 (select layer -2), so ``g.vision.layers_needed`` = 23 blocks
    suffice; HF and the LLaVA reference execute all 24.  ``tokens``: (attention tokens, MLP tokens)
    per block for a tower that merges tokens as it goes (ToMe); later blocks keep the last count.
    """
    vg = g.vision
    n_layers = vg.layers if layers is None else layers
    n, d = vg.tokens, vg.width
    embed = vg.patches * d * vg.channels * vg.temporal_patch * vg.patch**2
    per = list(tokens or [])
    per += [(per[-1][1] if per else n,) * 2] * max(0, n_layers - len(per))
    mm = vg.mlp_matrices

    def area(i: int, na: int) -> int:  # a merging tower (ToMe) attends fully over its tokens
        return na * na if tokens else vg.attention_area(i)

    blocks = sum(
        4 * na * d * d + mm * nm * d * vg.mlp + 2 * area(i, na) * d
        for i, (na, nm) in enumerate(per[:n_layers])
    )
    return Compute(vg.crops * (embed + blocks))


def projector_compute(g: Geometry, rows: int | None = None) -> Compute:
    """MACs of the vision->LLM projector (LLaVA ``mlp2x_gelu``; Qwen2-VL patch merger)."""
    r = g.projector_rows if rows is None else rows
    return Compute(float(sum(r * a * b for a, b in g.projector)))


def lm_head_compute(g: Geometry, rows: int) -> Compute:
    """MACs of the LM head over ``rows`` positions (prefill: 1 = last token only, as in generate())."""
    return Compute(float(rows * g.hidden * g.vocab))


def attention_score_overhead(g: Geometry, rows: int, keys: int, *, recompute_keys: bool = False) -> Compute:
    """MACs of computing score rows outside the layer (docs/methods.md §2.5): q for ``rows``, qKᵀ over ``keys``.

    ``recompute_keys``: the method also projects K for all keys itself (PDrop ranks before the layer).
    """
    macs = rows * g.hidden * g.q_width + rows * keys * g.q_width
    if recompute_keys:
        macs += keys * g.hidden * g.kv_width
    return Compute(float(macs))


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """Per-layer visual token vectors (docs/methods.md §2.2)."""

    kv: tuple[int, ...]  # visual keys visible to non-visual queries
    attn_q: tuple[int, ...]  # visual attention query rows
    ffn: tuple[int, ...]  # visual FFN rows
    head_frac: tuple[float, ...]
    ffn_width_frac: tuple[float, ...]

    @property
    def layer_avg(self) -> float:
        """T̄ = mean of ``kv`` (the SparseVLM / PDrop "equivalent tokens")."""
        return sum(self.kv) / len(self.kv)

    @property
    def layer_avg_attn_q(self) -> float:
        return sum(self.attn_q) / len(self.attn_q)

    @property
    def layer_avg_ffn(self) -> float:
        return sum(self.ffn) / len(self.ffn)


def budget(g: Geometry, schedule: Sequence[LayerWork]) -> Budget:
    m = g.intermediate
    return Budget(
        kv=tuple(w.v_k if w.f_tv > 0 else 0 for w in schedule),
        attn_q=tuple(w.v_q for w in schedule),
        ffn=tuple(w.ffn_rows for w in schedule),
        head_frac=tuple(w.f for w in schedule),
        ffn_width_frac=tuple((m if w.m_v is None else w.m_v) / m for w in schedule),
    )


def layer_average(schedule: Sequence[LayerWork]) -> float:
    """Layer-averaged visual tokens T̄ = (1/L)·Σ_l n_l, n_l = visual keys text sees (docs/methods.md §2.2)."""
    return sum(w.v_k if w.f_tv > 0 else 0 for w in schedule) / len(schedule)


@dataclass(frozen=True)
class FlopsReport:
    """One prefill, split into lines (docs/flops.md §1, §2.6). Every line is a `Compute` (MACs and FLOPs)."""

    geometry: str
    convention: str
    paper_unit: str
    t: int
    vision_tower: Compute  # as executed (all encoder blocks)
    vision_tower_needed: Compute  # blocks up to the select layer
    projector: Compute
    decoder: Compute  # decoder layers, matmul-class ops
    decoder_projectors: Compute  # SAISA per-layer projectors
    decoder_visual_yopo: Compute
    decoder_visual_vica: Compute
    lm_head: Compute
    lm_head_rows: int
    overhead: Compute
    per_layer: tuple[LayerCount, ...]
    budget: Budget

    @property
    def decoder_total(self) -> Compute:
        return self.decoder + self.decoder_projectors

    @property
    def total(self) -> Compute:
        return self.vision_tower + self.projector + self.decoder_total + self.lm_head + self.overhead

    def as_dict(self) -> dict[str, Any]:
        lines = (
            "vision_tower",
            "vision_tower_needed",
            "projector",
            "decoder",
            "decoder_projectors",
            "decoder_total",
            "decoder_visual_yopo",
            "decoder_visual_vica",
            "lm_head",
            "overhead",
            "total",
        )
        out: dict[str, Any] = {
            "geometry": self.geometry,
            "convention": self.convention,
            "paper_unit": self.paper_unit,
            "t": self.t,
            "lm_head_rows": self.lm_head_rows,
        }
        out.update({k: getattr(self, k).as_dict() for k in lines})
        out["budget"] = {
            "kv": list(self.budget.kv),
            "attn_q": list(self.budget.attn_q),
            "ffn": list(self.budget.ffn),
            "layer_avg": self.budget.layer_avg,
        }
        return out


def analyze(
    g: Geometry | str,
    schedule: Sequence[LayerWork],
    convention: str | Convention = "exact",
    *,
    lm_head: Literal["last", "all"] | int = "last",
    vision_crops: int | None = None,
    projector_rows: int | None = None,
    vision_tokens: Sequence[tuple[int, int]] | None = None,
    overhead: Compute = Compute(),
) -> FlopsReport:
    """Evaluate a schedule on a geometry: vision tower, projector, decoder, visual side, LM head.

    ``lm_head``: ``"last"`` = one row (prefill inside ``generate``), ``"all"`` = every prompt row
    (a plain forward), or an explicit row count. ``projector_rows`` / ``vision_crops`` override the
    geometry for pre-LLM methods that shrink what goes through the projector / tower;
    ``vision_tokens`` gives a merging tower's tokens per block (``vision_tower_compute``).
    """
    g = get_geometry(g) if isinstance(g, str) else g
    if len(schedule) != g.layers:
        raise ValueError(f"schedule has {len(schedule)} layers, {g.name} has {g.layers}")
    c = get_convention(convention)
    counts = tuple(layer_count(g, w, c) for w in schedule)
    t = c.fixed_t if c.fixed_t is not None else schedule[0].t
    if lm_head == "last":
        rows = 1
    elif lm_head == "all":
        rows = t + schedule[-1].visual_present
    else:
        rows = int(lm_head)
    gv = g if vision_crops is None else replace(g, vision=replace(g.vision, crops=vision_crops))
    return FlopsReport(
        geometry=g.name,
        convention=c.name,
        paper_unit=c.paper_unit,
        t=t,
        vision_tower=vision_tower_compute(gv, tokens=vision_tokens),
        vision_tower_needed=vision_tower_compute(gv, gv.vision.layers_needed, vision_tokens),
        projector=projector_compute(g, projector_rows),
        decoder=total([k.decoder for k in counts]),
        decoder_projectors=Compute(sum(k.projectors for k in counts)),
        decoder_visual_yopo=Compute(sum(k.visual_yopo for k in counts)),
        decoder_visual_vica=Compute(sum(k.visual_vica for k in counts)),
        lm_head=lm_head_compute(g, rows),
        lm_head_rows=rows,
        overhead=overhead,
        per_layer=counts,
        budget=budget(g, schedule),
    )


def decode_step(g: Geometry, schedule: Sequence[LayerWork], generated: int = 0) -> Compute:
    """MACs of one decode step after prefill (docs/flops.md §1: reported separately, per token).

    The new token is an ordinary query; layer l's cache holds t + visual K/V of that layer
    (docs/flops.md §4) + ``generated`` earlier tokens. LM head on the one row included.
    """
    h, qw, kvw, m = g.hidden, g.q_width, g.kv_width, g.intermediate
    macs = 0.0
    for w in schedule:
        cache = w.t + w.v_k + generated + 1
        macs += 2 * h * qw + 2 * h * kvw + 2 * qw * cache + 3 * h * m
    return Compute(macs) + lm_head_compute(g, 1)


# --------------------------------------------------------------------------------------------------
# Schedules from plans: the visual tokens each layer holds, and what each class computes there
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptCounts:
    """One prompt's tokens by class: the system prefix, the text after the image, the visual tokens."""

    system: int
    text: int
    visual: int

    @classmethod
    def of(cls, batch: Any) -> PromptCounts:
        """Sample 0's counts (FLOPs cells are batch 1), from the host-side layout."""
        s, t, v = (batch.layout.count(k)[0] for k in (TokenType.SYSTEM, TokenType.TEXT, TokenType.VISUAL))
        return cls(int(s), int(t), int(v))

    @classmethod
    def of_geometry(cls, g: Geometry) -> PromptCounts:
        return cls(g.s, g.t - g.s, g.v)


def visual_present(plan: VisualPlan, counts: PromptCounts) -> list[int]:
    """Visual tokens present in each layer, from the plan alone: the reducer's and each selector's
    ``kept`` (and ``recycled``) on host counts, as the executor compiles them."""
    n0 = counts.visual if plan.reducer is None else plan.reducer.kept(counts.visual)
    v, out = n0, []

    def after(sel: Any, present: int) -> int:
        c = SampleCounts(present, n0, counts.text, counts.system)
        k = int(sel.kept(c))
        return k + (int(sel.recycled(c, k)) if hasattr(sel, "recycle") else 0)

    for lp in plan.layers:
        if lp.drop_before is not None:
            v = after(lp.drop_before, v)
        out.append(v)
        if lp.drop_after is not None:
            v = after(lp.drop_after, v)
    return out


def schedule(
    plan: VisualPlan,
    counts: PromptCounts,
    present: list[int] | None = None,
    mode: str = "drop",
    projector_shapes: tuple = (),
    work: Literal["executor", "rule"] = "executor",
    num_heads: int | None = None,
) -> list[LayerWork]:
    """LayerWork per layer of one prompt under ``plan``: each layer's roles (``LayerPlan.roles``)
    applied to the visual tokens present there (``present``: measured by the executor, else
    derived with :func:`visual_present`).  The one schedule behind counted cells and paper
    geometries.

    ``work="executor"``: what the drop-mode executor computes, with the attention rectangles it
    issues (counted cells; every head, full key rows).  ``work="rule"``: what the method's rule needs,
    as the papers count it (paper geometries): heads outside ``visual_heads`` do no visual work
    (``num_heads`` gives the fraction), window queries see w x w neighbours plus the system prefix,
    and attention areas follow the convention's formula.  Mask mode computes every row of the full
    sequence in every layer (the plan applied by masks saves nothing)."""
    present = visual_present(plan, counts) if present is None else present
    s, txt, v0 = counts.system, counts.text, counts.visual
    n_nv = s + txt
    out: list[LayerWork] = []
    for lp, v in zip(plan.layers, present, strict=True):
        if mode == "mask":
            n = n_nv + v0
            out.append(LayerWork(t=n_nv, v_q=v0, v_k=v0, v_ffn=v0, attn_calls=(AttnCall(n, n),)))
            continue
        r = lp.roles
        nq_nv = n_nv if r.system_query else txt
        v_q = v if r.visual_query else 0
        v_k = v if r.visual_key else 0
        proj = projector_shapes if lp.kv_source == "projector" else ()
        heads = {}
        if work == "rule":
            heads = _rule_heads(lp, num_heads)
            if lp.visual_attn == "window":
                heads["vrow_keys"] = float(lp.window * lp.window + s)
        out.append(
            LayerWork(
                t=n_nv,
                t_q=nq_nv,
                v_q=v_q,
                v_k=v_k,
                v_ffn=0 if r.visual_ffn == "none" else v,
                m_v=lp.visual_ffn if r.visual_ffn == "partial" else None,
                attn_calls=(AttnCall(nq_nv + v_q, n_nv + v_k),) if work == "executor" else None,
                proj=proj,
                proj_rows=v if proj else 0,
                **heads,
            )
        )
    return out


def projector_shapes_of(bb: Any) -> tuple:
    """(in, out) of each matrix of the per-layer projectors a backbone carries (SAISA's modules,
    or the shapes a weightless stand-in declares), else ()."""
    if bb is None or not hasattr(bb, "projectors"):
        return getattr(bb, "layer_projector_shapes", ())
    first, last = bb.projectors[0][0], bb.projectors[0][2]
    return ((first.in_features, first.out_features), (last.in_features, last.out_features))


def plan_schedule(
    g: Geometry, stack: str, params: dict[str, dict[str, Any]] | None = None
) -> Schedule | None:
    """The schedule of a method stack at a geometry: the stack's plan built on a weightless
    stand-in of the checkpoint (with what the methods bring, e.g. per-layer projectors), its
    rule's work (``schedule(work="rule")``) on the geometry's prompt.  None when the stack cannot
    be built there."""
    from harness.baselines.registry import build_stack
    from harness.models.geometry import GeometryBackbone
    from harness.models.method import MethodError

    try:
        built = build_stack(stack, params)
        bb = built.prepare_backbone(GeometryBackbone(g))
        plan = built.plan(bb)
    except MethodError:
        return None
    return schedule(
        plan,
        PromptCounts.of_geometry(g),
        projector_shapes=projector_shapes_of(bb),
        work="rule",
        num_heads=g.heads,
    )


def _rule_heads(lp: Any, num_heads: int | None) -> dict[str, float]:
    """Head fractions of the visual work when only ``visual_heads`` serve visual tokens: their Q/O
    and attention rows, and, when the others see no visual keys (``drop_keys``), the visual K/V and
    the text rows' attention over visual keys too; with ``zero_values`` only the V projection."""
    if lp.visual_heads is None:
        return {}
    if not num_heads:
        raise ValueError("a plan with visual_heads needs num_heads for its rule's FLOPs")
    f = len(lp.visual_heads) / num_heads
    if lp.head_mode == "drop_keys":
        return {"f": f, "f_k": f, "f_v": f, "f_tv": f}
    return {"f": f, "f_v": f}


# --------------------------------------------------------------------------------------------------
# Generic schedules (no method): dense, a pre-LLM reduction to k tokens, explicit per-layer counts
# --------------------------------------------------------------------------------------------------


def _t(g: Geometry, t: int | None) -> int:
    return g.t if t is None else t


def dense(g: Geometry, t: int | None = None) -> Schedule:
    """Every token in every layer (v_q = v_k = v)."""
    t, v = _t(g, t), g.v
    return [LayerWork(t=t, v_q=v, v_k=v) for _ in range(g.layers)]


def prune(g: Geometry, k: int, t: int | None = None) -> Schedule:
    """Generic pre-LLM reduction: ``k`` visual tokens enter layer 0 and stay (v_q = v_k = k)."""
    t = _t(g, t)
    return [LayerWork(t=t, v_q=k, v_k=k) for _ in range(g.layers)]


def in_llm(g: Geometry, counts: Sequence[int], t: int | None = None) -> Schedule:
    """In-LLM pruning with an explicit visual count per layer (v_q = v_k = n_l)."""
    if len(counts) != g.layers:
        raise ValueError(f"need {g.layers} counts, got {len(counts)}")
    t = _t(g, t)
    return [LayerWork(t=t, v_q=n, v_k=n) for n in counts]
