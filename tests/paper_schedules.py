"""The papers' own per-method FLOPs schedules, restated for the tests, independently of the
plans: seebench derives every schedule from a method's plan (``harness.flops.model.plan_schedule``);
these hand-written ones are what the plans must reproduce (tests/test_schedule.py) and what the
published numbers are checked against (tests/test_flops_analytic.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

from harness.baselines.yopo import SHIPPED_HEAD_COUNTS
from harness.flops.model import LayerWork, Schedule, in_llm
from harness.models.geometry import Geometry


def _t(g: Geometry, t: int | None) -> int:
    return g.t if t is None else t


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

# The shipped masks' kept-head counts are data read from YOPO's files, not a rule: the restatement
# takes them from the method that holds them.
HEADMASK_KEPT = SHIPPED_HEAD_COUNTS

# seebench PDrop defaults for 192 / 128 / 64 layer-averaged tokens (docs/baselines.md §2.2).
PDROP_DEFAULTS: dict[int, tuple[tuple[int, ...], float]] = {
    192: ((8, 16, 24), 0.25),
    128: ((2, 8, 16), 0.42),
    64: ((2, 8, 16), 0.195),
}


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
