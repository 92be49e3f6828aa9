"""Analytic FLOPs model: per layer, per token class (docs/flops.md).

Units. Every count is held as MACs (multiply-accumulates) in a `Compute`; FLOPs = 2 x MACs
(docs/flops.md §1). FastV / PDrop / SparseVLM / DivPrune formulas count MACs and call them FLOPs; ShortV,
YOPO and ViCA count FLOPs; fvcore reports MACs; `torch.utils.flop_counter` reports FLOPs.

Token classes. A layer processes ``t`` non-visual tokens (system prefix S + text T; ShortV fixes
t = 64) and some visual tokens, described by a `LayerWork`. A method is a *schedule*: one
`LayerWork` per decoder layer (`dense`, `shortv`, `vica`, `yopo`, ...).

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

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from harness.models.geometry import PAPER_GEOMETRIES, Geometry, get_geometry, hf_config, hf_visual_tokens

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

    Per block and token: Q/K/V/O 4·D², MLP 2·D·mlp; attention 2·N²·D per crop (full, non-causal).
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
    blocks = sum(4 * na * d * d + 2 * nm * d * vg.mlp + 2 * na * na * d for na, nm in per[:n_layers])
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
# Closed forms used by the papers (for identities and tests)
# --------------------------------------------------------------------------------------------------


def f2_macs(n: float, h: int, m: int) -> float:
    """FastV per-layer F2(n) = 4nh² + 2n²h + 2nhm (MACs; docs/flops.md §2.1)."""
    return 4 * n * h * h + 2 * n * n * h + 2 * n * h * m


def f3_macs(n: float, h: int, m: int) -> float:
    """Three-matrix F3(n) = 4nh² + 2n²h + 3nhm (MACs; docs/flops.md §2.2)."""
    return 4 * n * h * h + 2 * n * n * h + 3 * n * h * m


def shortv_dense_flops(t: float, v: float, h: int, m: int) -> float:
    """ShortV D(t, v) = 2(t+v)(4h+3m)h + 4(t+v)²h (FLOPs; docs/flops.md §2.3)."""
    return 2 * (t + v) * (4 * h + 3 * m) * h + 4 * (t + v) ** 2 * h


def shortv_frozen_flops(t: float, v: float, h: int, m: int) -> float:
    """ShortV S(t, v) = 2t(4h+3m)h + 4vh² + 4t(t+v)h (FLOPs; docs/flops.md §2.3)."""
    return 2 * t * (4 * h + 3 * m) * h + 4 * v * h * h + 4 * t * (t + v) * h


def vica_visual_flops(g: Geometry, k: float, t: int = 64) -> float:
    """V_C(k) = L·[2k(4h+3m)h + 4k²h + 4·t·k·h] (FLOPs; docs/flops.md §2.4)."""
    h, m = g.hidden, g.intermediate
    return g.layers * (2 * k * (4 * h + 3 * m) * h + 4 * k * k * h + 4 * t * k * h)


def yopo_visual_flops(g: Geometry, v: float) -> float:
    """V_Y(v) = L·[2v(4h+3m)h + 4v²h] (FLOPs; docs/flops.md §2.4)."""
    h, m = g.hidden, g.intermediate
    return g.layers * (2 * v * (4 * h + 3 * m) * h + 4 * v * v * h)


def equiv_tokens(g: Geometry, visual_flops: float, t: int = 64) -> float:
    """FLOPs-equivalent visual tokens k* with V_C(k*) = ``visual_flops`` (docs/flops.md §2.4).

    V_C is quadratic in k: 4Lh·k² + L·(2(4h+3m)h + 4th)·k - F = 0; the positive root.
    """
    h, m, L = g.hidden, g.intermediate, g.layers
    a = 4 * L * h
    b = L * (2 * (4 * h + 3 * m) * h + 4 * t * h)
    return (-b + math.sqrt(b * b + 4 * a * visual_flops)) / (2 * a)


def fastv_reduction(g: Geometry, k: int, n: int, n_hat: int) -> float:
    """FastV's saving 1 - [K·F2(n) + (L-K)·F2(n̂)] / [L·F2(n)] (docs/flops.md §2.1)."""
    h, m, L = g.hidden, g.intermediate, g.layers
    return 1 - (k * f2_macs(n, h, m) + (L - k) * f2_macs(n_hat, h, m)) / (L * f2_macs(n, h, m))


# --------------------------------------------------------------------------------------------------
# Method schedules (docs/seed-methods.md §2-6, docs/baselines.md §2)
# --------------------------------------------------------------------------------------------------

# ShortV App. B Table 8: frozen layers in replacement order (ascending LC); N = prefix length.
SHORTV_LAYERS: dict[str, tuple[int, ...]] = {
    "llava-1.5-7b": (31, 29, 30, 28, 0, 26, 27, 25, 24, 22, 23, 21, 2, 3, 20, 18, 17, 12, 19),
    "llava-1.5-13b": (
        39, 32, 28, 36, 27, 37, 29, 30, 1, 38, 25, 31, 2, 26, 23, 34, 0, 33, 35, 22, 24, 21, 20, 17,
    ),
    "llava-next-7b": (31, 29, 30, 28, 26, 27, 22, 24, 21, 23, 25, 20, 19, 17, 18, 15, 12, 0, 2),
    "llava-next-13b": (
        39, 32, 29, 36, 27, 30, 37, 23, 25, 31, 26, 2, 28, 22, 33, 35, 34, 24, 38, 21, 20, 18, 1, 17,
    ),
}  # fmt: skip

# ViCA T2V layers (docs/seed-methods.md §2.2).
VICA_T2V: dict[str, tuple[int, ...]] = {
    "mobilellama-2.7b": (0, 1, 14, 15, 18, 19, 21, 22, 23),
    "llava-1.5-7b": (0, 1, 7, 8, 9, 10, 11, 14),
    "llava-1.5-13b": (0, 6, 8, 9, 10, 13, 14, 16),
}

# ViCA's 7B checkpoint never queries the system prefix in prefill (docs/seed-methods.md §2.6).
VICA_SYSTEM_QUERIES: dict[str, bool] = {"llava-1.5-7b": False}

# Kept heads per layer of YOPO's shipped head masks (`LLaVA/headmask/headmask_*.npy` in
# ZhangAIPI/YOPO_MLLM_Pruning @ f0783f4; row sums of the boolean [L, H] arrays). The 7B rows equal
# docs/seed-methods.md §3.2; the 13B rows were read from the same files.
HEADMASK_KEPT: dict[str, tuple[int, ...]] = {
    "headmask_7b_8": (
        32, 32, 0, 0, 1, 0, 1, 0, 4, 3, 5, 5, 10, 8, 18, 11, 9, 10, 9, 11, 15, 11, 11, 6, 11, 7, 10, 1,
        4, 6, 2, 7,
    ),
    "headmask_7b_16": (
        32, 32, 9, 5, 10, 4, 5, 15, 18, 13, 15, 20, 23, 24, 27, 23, 27, 17, 14, 18, 18, 16, 15, 8, 14,
        10, 15, 5, 7, 11, 5, 24,
    ),
    "headmask_7b_24": (
        32, 32, 32, 19, 24, 17, 21, 27, 26, 23, 27, 24, 28, 31, 31, 27, 29, 27, 23, 28, 25, 21, 20, 19,
        18, 21, 20, 13, 18, 22, 16, 32,
    ),
    "headmask_13b_5": (
        40, 40, 0, 0, 0, 0, 0, 0, 2, 0, 3, 2, 1, 3, 3, 7, 6, 7, 4, 6, 5, 2, 4, 5, 5, 6, 5, 3, 4, 1, 4, 2,
        4, 0, 3, 1, 5, 4, 4, 9,
    ),
    "headmask_13b_10": (
        40, 40, 4, 3, 0, 5, 2, 7, 13, 8, 10, 8, 12, 20, 9, 14, 14, 16, 17, 12, 14, 16, 9, 9, 9, 9, 8, 5,
        5, 2, 4, 2, 6, 2, 4, 6, 7, 6, 9, 21,
    ),
    "headmask_13b_20": (
        40, 40, 29, 24, 7, 21, 16, 11, 21, 21, 19, 20, 23, 28, 24, 25, 32, 26, 26, 25, 21, 26, 20, 12,
        17, 12, 14, 11, 11, 9, 15, 10, 15, 10, 16, 16, 18, 18, 17, 32,
    ),
    "headmask_13b_30": (
        40, 40, 40, 38, 31, 32, 29, 27, 33, 29, 33, 28, 33, 32, 32, 34, 39, 33, 32, 35, 30, 31, 31, 23,
        23, 23, 22, 23, 16, 24, 28, 29, 28, 25, 30, 27, 24, 29, 26, 35,
    ),
}  # fmt: skip

# seebench PDrop defaults for 192 / 128 / 64 layer-averaged tokens (docs/baselines.md §2.2).
PDROP_DEFAULTS: dict[int, tuple[tuple[int, ...], float]] = {
    192: ((8, 16, 24), 0.25),
    128: ((2, 8, 16), 0.42),
    64: ((2, 8, 16), 0.195),
}


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


def fastv(
    g: Geometry, k: int = 2, keep: int | None = None, ratio: float | None = 0.5, t: int | None = None
) -> Schedule:
    """FastV: all tokens in layers < K, then ``keep`` visual tokens (or R = ``ratio`` dropped)."""
    x = keep if keep is not None else round(g.v * (1 - (ratio or 0.0)))
    return in_llm(g, [g.v] * k + [x] * (g.layers - k), t)


def fastv_keep_for_layer_avg(g: Geometry, target: float, k: int = 2) -> int:
    """Kept count x with (K·v + (L-K)·x) / L = target (docs/methods.md §2.2: 192/128/64 -> 166/98/30)."""
    return round((target * g.layers - k * g.v) / (g.layers - k))


def vtw(g: Geometry, k: int, t: int | None = None) -> Schedule:
    """VTW: visual tokens withdrawn from layer K on (v = 0 there)."""
    return in_llm(g, [g.v] * k + [0] * (g.layers - k), t)


def pdrop_counts(g: Geometry, layer_list: Sequence[int], lam: float) -> list[int]:
    """Per-layer visual counts of PDrop: stage s keeps int(v·λ^s), drops before each listed layer."""
    stage_counts = [int(g.v * lam**s) for s in range(len(layer_list) + 1)]
    counts, stage = [], 0
    for layer in range(g.layers):
        while stage < len(layer_list) and layer >= layer_list[stage]:
            stage += 1
        counts.append(stage_counts[stage])
    return counts


def pdrop(
    g: Geometry, layer_list: Sequence[int] = (8, 16, 24), lam: float = 0.5, t: int | None = None
) -> Schedule:
    """PDrop (docs/baselines.md §2.2); defaults λ = 0.5 at [8, 16, 24] (layer average 270)."""
    return in_llm(g, pdrop_counts(g, layer_list, lam), t)


def shortv(
    g: Geometry,
    n: int | None = None,
    layers: Sequence[int] | None = None,
    t: int | None = None,
    extend: bool = False,
) -> Schedule:
    """ShortV: visual tokens frozen in N layers (v_q = 0, v_k = v there; docs/seed-methods.md §4.2).

    ``layers`` explicit, else the first ``n`` of the backbone's published list (all of it if None).
    The published lists stop at the paper's N (19 / 24); ``extend=True`` allows a larger ``n`` by
    appending the remaining layers from the top down. Their true LC order is unknown, so use this for
    FLOPs only (which depend on N alone), never to run the method.
    """
    if layers is None:
        published = SHORTV_LAYERS[g.name]
        n = len(published) if n is None else n
        if n > len(published):
            if not extend:
                raise ValueError(f"published ShortV list for {g.name} has {len(published)} layers; n={n}")
            rest = [i for i in reversed(range(g.layers)) if i not in published]
            published = published + tuple(rest)
        layers = published[:n]
    frozen = set(layers)
    t, v = _t(g, t), g.v
    return [
        LayerWork(t=t, v_q=0, v_k=v) if i in frozen else LayerWork(t=t, v_q=v, v_k=v) for i in range(g.layers)
    ]


def vica(
    g: Geometry,
    t2v_layers: Sequence[int] | None = None,
    t: int | None = None,
    system_queries: bool | None = None,
) -> Schedule:
    """ViCA: visual tokens never queried nor through the FFN; K/V only in T2V layers (docs/seed-methods.md §2.3).

    ``system_queries`` False = the 7B checkpoint's quirk (S rows are never attention queries; their
    Q/O and attention rows vanish, FFN kept). Default per checkpoint (`VICA_SYSTEM_QUERIES`).
    """
    layers = set(VICA_T2V[g.name] if t2v_layers is None else t2v_layers)
    sq = VICA_SYSTEM_QUERIES.get(g.name, True) if system_queries is None else system_queries
    t = _t(g, t)
    t_q = None if sq else t - g.s
    return [LayerWork(t=t, v_q=0, v_k=g.v if i in layers else 0, t_q=t_q) for i in range(g.layers)]


def vica_pdrop(
    g: Geometry,
    layer_list: Sequence[int],
    lam: float,
    t2v_layers: Sequence[int] | None = None,
    t: int | None = None,
) -> Schedule:
    """ViCA + PDrop: T2V layers see only the visual tokens PDrop keeps at that depth (docs/seed-methods.md §2.8).

    The published combination's schedule is unknown; this takes an explicit PDrop schedule.
    """
    counts = pdrop_counts(g, layer_list, lam)
    return [replace(w, v_k=counts[i] if w.v_k else 0) for i, w in enumerate(vica(g, t2v_layers, t))]


def yopo(
    g: Geometry,
    head_mask: str | Sequence[int] = "headmask_7b_16",
    k_cut: int = 16,
    w: int = 5,
    s: int | None = None,
    r: int = 2,
    semantics: Literal["paper", "reference"] = "paper",
    t: int | None = None,
    window_borders: bool = False,
    grid: int = 24,
) -> Schedule:
    """YOPO (docs/seed-methods.md §3; docs/flops.md §2.4).

    ``paper`` (= the derived model of docs/flops.md §2.4, also `yopo_textonly`): for l < K_cut visual rows use
    kept heads only (Q, K, V, O x f_l), see w² window keys + s system keys, FFN width m/r; non-visual rows
    see visual keys in kept heads; from K_cut on no visual computation at all.
    ``reference``: the released simulation's drop-mode cost: visual K in all heads, V only in kept
    heads, text rows attend visual keys in all heads, and after K_cut visual K and the m/r FFN still run.
    ``window_borders``: clip the window at the ``grid`` borders (the paper model ignores them).
    """
    kept = HEADMASK_KEPT[head_mask] if isinstance(head_mask, str) else tuple(head_mask)
    if len(kept) != g.layers:
        raise ValueError(f"head mask has {len(kept)} layers, {g.name} has {g.layers}")
    t, v = _t(g, t), g.v
    s = g.s if s is None else s
    mv = g.intermediate // r
    if window_borders:
        rad = (w - 1) // 2
        per_axis = sum(min(i + rad, grid - 1) - max(i - rad, 0) + 1 for i in range(grid))
        win = per_axis**2 / (grid * grid)
    else:
        win = float(w * w)
    out: Schedule = []
    for layer in range(g.layers):
        f = kept[layer] / g.heads
        if semantics == "paper":
            if layer < k_cut:
                out.append(LayerWork(t=t, v_q=v, v_k=v, f=f, f_k=f, f_v=f, f_tv=f, m_v=mv, vrow_keys=win + s))
            else:
                out.append(LayerWork(t=t))
        elif semantics == "reference":
            if layer < k_cut:
                out.append(LayerWork(t=t, v_q=v, v_k=v, f=f, f_v=f, m_v=mv, vrow_keys=win + s))
            else:
                out.append(LayerWork(t=t, v_q=0, v_k=v, v_ffn=v, f_v=0.0, m_v=mv))
        else:
            raise ValueError(f"unknown YOPO semantics {semantics!r}")
    return out


def saisa(g: Geometry, vision_width: int | None = None, t: int | None = None) -> Schedule:
    """SAISA: visual-frozen attention in every layer, visual K/V from a per-layer projector P_l(f).

    P_l = Linear(D_v -> h), GELU, Linear(h -> h) on the v raw patch features (docs/seed-methods.md §5.2),
    counted as the separate line ``decoder_projectors`` (docs/flops.md §1). The global LLaVA projector is
    dead computation in SAISA (layer 0 overwrites its output): report with ``analyze(...,
    projector_rows=0)``.
    """
    t, v, h = _t(g, t), g.v, g.hidden
    dv = g.vision.width if vision_width is None else vision_width
    proj = ((dv, h), (h, h))
    return [LayerWork(t=t, v_q=0, v_k=v, v_ffn=0, proj=proj, proj_rows=v) for _ in range(g.layers)]


def naavit(g: Geometry, t: int | None = None) -> Schedule:
    """NAAViT: visual tokens never queried, FFN kept, K/V from the current state (docs/seed-methods.md §6)."""
    t, v = _t(g, t), g.v
    return [LayerWork(t=t, v_q=0, v_k=v, v_ffn=v) for _ in range(g.layers)]


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "dense": dense,
    "prune": prune,
    "in_llm": in_llm,
    "fastv": fastv,
    "vtw": vtw,
    "pdrop": pdrop,
    "shortv": shortv,
    "vica": vica,
    "vica_pdrop": vica_pdrop,
    "yopo": yopo,
    "saisa": saisa,
    "naavit": naavit,
}


# --------------------------------------------------------------------------------------------------
# Paper table
# --------------------------------------------------------------------------------------------------

PAPER_BACKBONES = (
    "llava-1.5-7b",
    "llava-1.5-13b",
    "llava-next-7b",
    "llava-next-13b",
    "mobilellama-2.7b",
    "qwen2-vl-7b",
)

# Published values (TFLOPs) that the analytic model must reproduce (docs/flops.md §3; LLaVA-1.5-7B only).
_PUBLISHED: dict[tuple[str, str, str], tuple[dict[str, float], str]] = {
    ("llava-1.5-7b", "dense", "576 tokens"): (
        {"tflops": 8.5, "tflops_visual_yopo": 7.63, "tflops_visual_vica": 7.65},
        "ShortV Table 1; YOPO Table 2; ViCA Table 1",
    ),
    ("llava-1.5-7b", "shortv", "N=19"): ({"tflops": 4.7, "ratio": 0.55}, "ShortV Table 1"),
    ("llava-1.5-7b", "vtw", "K=16"): ({"tflops": 4.7, "ratio": 0.55}, "ShortV Table 1"),
    ("llava-1.5-7b", "vica", "8 T2V layers"): (
        {"tflops_visual_vica": 0.31, "equiv_tokens": 24},
        "ViCA Table 1",
    ),
    ("llava-1.5-7b", "prune", "64 tokens"): ({"tflops_visual_vica": 0.83}, "ViCA Table 1"),
    ("llava-1.5-7b", "prune", "32 tokens"): ({"tflops_visual_vica": 0.42}, "ViCA Table 1"),
    ("llava-1.5-7b", "vica+pdrop", "12 tokens (FLOPs-equivalent)"): (
        {"tflops_visual_vica": 0.16},
        "ViCA Table 1",
    ),
    ("llava-1.5-7b", "yopo", "25% (headmask_7b_16, K_cut=16, w=5, s=35, r=2)"): (
        {"tflops_visual_yopo": 1.91},
        "YOPO Table 2",
    ),
}
for _n, _v in {4: 7.7, 8: 6.9, 12: 6.1, 16: 5.3, 20: 4.5, 24: 3.7, 28: 2.9}.items():
    _PUBLISHED[("llava-1.5-7b", "shortv", f"N={_n}")] = ({"tflops": _v}, "ShortV Table 11")

# ShortV Table 11 N sweeps (the published N first).
_SHORTV_SWEEP: dict[str, tuple[int, ...]] = {
    "llava-1.5-7b": (19, 4, 8, 12, 16, 20, 24, 28),
    "llava-1.5-13b": (24, 8, 16, 28, 32, 36),
    "llava-next-7b": (19, 8, 16, 24),
    "llava-next-13b": (24, 8, 16, 32),
}
_VTW_K = {"llava-1.5-7b": 16, "llava-1.5-13b": 20, "llava-next-7b": 16, "llava-next-13b": 20}
# YOPO settings with a computable per-layer head count (the released checkpoints' settings are unknown,
# docs/seed-methods.md §3.5): 7B 25% = the derived candidate of docs/flops.md §3; 13B = the flags of
# `finetune_yopo.sh` (headcut 30, layercut 20), a candidate only.
_YOPO: dict[str, tuple[str, str, int, str]] = {
    "llava-1.5-7b": (
        "25% (headmask_7b_16, K_cut=16, w=5, s=35, r=2)",
        "headmask_7b_16",
        16,
        "derived candidate",
    ),
    "llava-1.5-13b": (
        "finetune flags (headmask_13b_30, K_cut=20, w=5, s=35, r=2)",
        "headmask_13b_30",
        20,
        "candidate: training flags of finetune_yopo.sh (30% of V_Y(576), neither 25% nor 12%); checkpoint settings unknown",
    ),
}


def _row(
    g: Geometry,
    method: str,
    setting: str,
    schedule: Schedule | None,
    dense_tflops: float,
    *,
    visual_convention: str = "vica",
    visual_override: tuple[float, float] | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One table row at t = 64: totals in the ShortV convention (+ exact), visual sides, budgets."""
    row: dict[str, Any] = {"backbone": g.name, "method": method, "setting": setting, "convention": "shortv"}
    vy = vc = 0.0
    if schedule is not None:
        rep = analyze(g, schedule, "shortv")
        exact = analyze(g, schedule, "exact")
        vy, vc = rep.decoder_visual_yopo.tflops, rep.decoder_visual_vica.tflops
        row.update(
            tflops=rep.decoder_total.tflops,
            ratio=rep.decoder_total.tflops / dense_tflops,
            tflops_exact=exact.decoder_total.tflops,
            tflops_projectors=rep.decoder_projectors.tflops,
            layer_avg=rep.budget.layer_avg,
        )
    else:
        row.update(tflops=None, ratio=None, tflops_exact=None, tflops_projectors=None, layer_avg=None)
    if visual_override is not None:
        vy, vc = visual_override
    row.update(
        visual_convention=visual_convention,
        tflops_visual_yopo=vy,
        tflops_visual_vica=vc,
        tflops_visual=vy if visual_convention == "yopo" else vc,
        equiv_tokens=equiv_tokens(g, vc * 1e12),
    )
    published, source = _PUBLISHED.get((g.name, method, setting), ({}, ""))
    row.update(published=published, source=source, note=note)
    return row


def paper_table(backbones: Sequence[str] = PAPER_BACKBONES) -> list[dict[str, Any]]:
    """Published backbones x methods at t = 64 (ShortV convention for totals, TFLOPs = 10^12 FLOPs).

    Keys: backbone, method, setting, convention ("shortv": MHA formula, t = 64), tflops (decoder prefill,
    incl. SAISA projectors), ratio (to the dense row), tflops_exact (GQA-aware, t = 64),
    visual_convention, tflops_visual (in that convention), tflops_visual_yopo, tflops_visual_vica,
    equiv_tokens (k*), layer_avg (T̄), published (values as printed), source, note.
    """
    rows: list[dict[str, Any]] = []
    for name in backbones:
        g = PAPER_GEOMETRIES[name].with_tokens(t=64)
        dense_t = analyze(g, dense(g), "shortv").decoder_total.tflops
        rows.append(_row(g, "dense", f"{g.v} tokens", dense(g), dense_t))
        for n in _SHORTV_SWEEP.get(name, ()):
            rows.append(_row(g, "shortv", f"N={n}", shortv(g, n, extend=True), dense_t))
        if name in _VTW_K:
            k = _VTW_K[name]
            rows.append(_row(g, "vtw", f"K={k}", vtw(g, k), dense_t))
        if g.family != "qwen2_vl":
            rows.append(_row(g, "fastv", "K=2 R=50%", fastv(g, 2, ratio=0.5), dense_t))
        if name in VICA_T2V:
            n_t2v = len(VICA_T2V[name])
            rows.append(_row(g, "vica", f"{n_t2v} T2V layers", vica(g), dense_t))
        if name == "llava-1.5-7b":
            vc12 = vica_visual_flops(g, 12) / 1e12
            rows.append(
                _row(
                    g,
                    "vica+pdrop",
                    "12 tokens (FLOPs-equivalent)",
                    None,
                    dense_t,
                    visual_override=(yopo_visual_flops(g, 12) / 1e12, vc12),
                    note="schedule unknown; visual side = V_C(12) from the Token label",
                )
            )
        if name in _YOPO:
            setting, mask, k_cut, note = _YOPO[name]
            sched = yopo(g, mask, k_cut=k_cut, w=5, s=35, r=2)
            rows.append(_row(g, "yopo", setting, sched, dense_t, visual_convention="yopo", note=note))
        if g.family in ("llava", "llava_next"):
            rows.append(_row(g, "saisa", "per-layer projectors 1024->h->h", saisa(g), dense_t))
            rows.append(_row(g, "naavit", "all layers", naavit(g), dense_t))
        if g.family == "llava":
            for target, (layer_list, lam) in PDROP_DEFAULTS.items():
                rows.append(
                    _row(
                        g,
                        "pdrop",
                        f"{target} layer-avg ({list(layer_list)}, λ={lam})",
                        pdrop(g, layer_list, lam),
                        dense_t,
                    )
                )
            for target in (192, 128, 64):
                x = fastv_keep_for_layer_avg(g, target)
                rows.append(
                    _row(g, "fastv", f"{target} layer-avg (K=2 keep {x})", fastv(g, 2, keep=x), dense_t)
                )
        budgets = {"llava": (192, 128, 64, 32), "llava_next": (640, 320, 160), "qwen2_vl": (128, 64)}[
            g.family
        ]
        for k in budgets:
            rows.append(_row(g, "prune", f"{k} tokens", prune(g, k), dense_t))
    return rows


# --------------------------------------------------------------------------------------------------
# Independent cross-check: FlopCounterMode on the HF model under FakeTensorMode
# --------------------------------------------------------------------------------------------------


def _sdpa_flops(
    query_shape: Sequence[int],
    key_shape: Sequence[int],
    value_shape: Sequence[int],
    *args: Any,
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """FLOPs of one SDPA call: QKᵀ and A·V over the full rectangle, query heads (GQA-safe)."""
    b, heads, sq, d = query_shape
    sk, dv = key_shape[-2], value_shape[-1]
    return 2 * b * heads * sq * sk * d + 2 * b * heads * sq * sk * dv


def fake_count_dense(
    g: Geometry | str, t: int | None = None, lm_head: Literal["last", "all"] = "last"
) -> dict[str, Any]:
    """Count the dense HF model's prefill FLOPs with ``torch.utils.flop_counter.FlopCounterMode``.

    The model is built at full size inside ``FakeTensorMode`` (parameters are fake: nothing is
    allocated) and run *outside* the mode with small real index tensors (input ids, image sizes,
    grid), so HF's data-dependent bookkeeping (placeholder counts, M-RoPE indices, Qwen2-VL
    ``cu_seqlens``) runs on real values while every op touching a parameter is faked.
    ``aten._scaled_dot_product_flash_attention_for_cpu`` (counted as 0 by default) gets a formula via
    ``custom_mapping``. Returns FLOPs per module group, the visual tokens used and the time taken.
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    g = get_geometry(g) if isinstance(g, str) else g
    t = g.t if t is None else t
    v = hf_visual_tokens(g)
    start = time.perf_counter()
    cfg = hf_config(g)
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = _hf_model_class(g)(cfg)
    model.eval()
    built = time.perf_counter()

    n = t + v
    ids = torch.zeros(1, n, dtype=torch.long)
    ids[0, g.s : g.s + v] = g.image_token_id
    kwargs: dict[str, Any] = {"input_ids": ids}
    vg = g.vision
    if g.family == "llava":
        kwargs["pixel_values"] = torch.zeros(1, vg.channels, vg.image_size, vg.image_size)
    elif g.family == "llava_next":
        h_px, w_px = g.extra.get("hf_image_size", (672, 672))
        kwargs["pixel_values"] = torch.zeros(1, vg.crops, vg.channels, vg.image_size, vg.image_size)
        kwargs["image_sizes"] = torch.tensor([[h_px, w_px]])
    else:  # qwen2_vl
        side = vg.image_size // vg.patch
        ids[0, g.s - 1] = g.extra["vision_start_token_id"]
        ids[0, g.s + v] = g.extra["vision_end_token_id"]
        kwargs["pixel_values"] = torch.zeros(side * side, vg.channels * vg.temporal_patch * vg.patch**2)
        kwargs["image_grid_thw"] = torch.tensor([[1, side, side]])
        kwargs["mm_token_type_ids"] = (ids == g.image_token_id).long()
    kwargs["logits_to_keep"] = 1 if lm_head == "last" else 0

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    counter = FlopCounterMode(display=False, depth=None, custom_mapping=mapping)
    with counter, torch.no_grad():
        model(**kwargs)
    done = time.perf_counter()

    per_module = {k: sum(c.values()) for k, c in counter.get_flop_counts().items()}

    def module(suffix: str) -> int:
        hits = [val for key, val in per_module.items() if key.endswith(suffix)]
        return hits[0] if hits else 0

    if g.family == "qwen2_vl":
        projector = module(".model.visual.merger")
        vision = module(".model.visual") - projector
    else:
        projector = module(".model.multi_modal_projector")
        vision = module(".model.vision_tower")
    return {
        "unit": "FLOPs",
        "geometry": g.name,
        "t": t,
        "visual_tokens": v,
        "vision_tower": vision,
        "projector": projector,
        "decoder": module(".model.language_model"),
        "lm_head": module(".lm_head"),
        "total": per_module.get("Global", 0),
        "build_s": built - start,
        "count_s": done - built,
    }


def _hf_model_class(g: Geometry) -> Any:
    if g.family == "llava":
        from transformers import LlavaForConditionalGeneration as cls
    elif g.family == "llava_next":
        from transformers import LlavaNextForConditionalGeneration as cls
    else:
        from transformers import Qwen2VLForConditionalGeneration as cls
    return cls


def cross_check_dense(
    g: Geometry | str, t: int | None = None, lm_head: Literal["last", "all"] = "last"
) -> dict[str, Any]:
    """Analytic (``exact``) vs FlopCounterMode per line for the dense model; relative differences.

    The analytic side uses the visual count HF produces for the reference image (`hf_visual_tokens`).
    """
    g = get_geometry(g) if isinstance(g, str) else g
    fake = fake_count_dense(g, t, lm_head)
    ga = g.with_tokens(v=fake["visual_tokens"], t=fake["t"])
    rep = analyze(ga, dense(ga), "exact", lm_head=lm_head)
    analytic = {
        "vision_tower": rep.vision_tower.flops,
        "projector": rep.projector.flops,
        "decoder": rep.decoder.flops,
        "lm_head": rep.lm_head.flops,
        "total": rep.total.flops,
    }
    rel = {k: (fake[k] - a) / a for k, a in analytic.items()}
    return {"geometry": g.name, "unit": "FLOPs", "analytic": analytic, "fake": fake, "rel_diff": rel}
