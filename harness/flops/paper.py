"""The papers' FLOPs: their closed forms (FastV's F2, ShortV's dense and frozen layers, YOPO's and
ViCA's visual sides, FLOPs-equivalent tokens) and the published table, every row from a method's
plan (docs/flops.md §2-3)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from harness.models.geometry import PAPER_GEOMETRIES, Geometry

from .model import VISUAL_CONVENTIONS, Schedule, analyze, dense, plan_schedule, prune

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
# Paper table
# --------------------------------------------------------------------------------------------------

PAPER_BACKBONES = (
    "llava-1.5-7b",
    "llava-1.5-13b",
    "llava-next-7b",
    "llava-next-13b",
    "mobilellama-2.7b",
    "qwen2-vl-7b",
    "qwen2.5-vl-7b",
    "qwen3-vl-8b",
    "llava-onevision-7b",
    "internvl3-8b",
    "internvl3.5-8b",
)

# Published values (TFLOPs) that the analytic model must reproduce (docs/flops.md §3; LLaVA-1.5-7B only).
#: published values of the rows no method owns: the dense model and a pre-LLM reduction to k tokens
_PUBLISHED: dict[tuple[str, str], tuple[dict[str, float], str]] = {
    ("llava-1.5-7b", "576 tokens"): (
        {"tflops": 8.5, "tflops_visual_yopo": 7.63, "tflops_visual_vica": 7.65},
        "ShortV Table 1; YOPO Table 2; ViCA Table 1",
    ),
    ("llava-1.5-7b", "64 tokens"): ({"tflops_visual_vica": 0.83}, "ViCA Table 1"),
    ("llava-1.5-7b", "32 tokens"): ({"tflops_visual_vica": 0.42}, "ViCA Table 1"),
}
#: visual tokens a generic pre-LLM reduction keeps, per family (InternVL: 1280 at 896 x 896, reduced
#: by 80 / 90 / 95%)
_PRUNE_TOKENS = {
    "llava": (192, 128, 64, 32), "llava_next": (640, 320, 160),
    "qwen2_vl": (128, 64), "qwen2_5_vl": (128, 64), "qwen3_vl": (128, 64), "internvl": (256, 128, 64),
}  # fmt: skip


def _row(
    g: Geometry,
    method: str,
    setting: str,
    schedule: Schedule | None,
    dense_tflops: float,
    *,
    visual_convention: str = VISUAL_CONVENTIONS[1],
    visual_override: tuple[float, float] | None = None,
    published: dict[str, float] | None = None,
    source: str = "",
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
        tflops_visual=vy if visual_convention == VISUAL_CONVENTIONS[0] else vc,
        equiv_tokens=equiv_tokens(g, vc * 1e12),
    )
    row.update(published=published or {}, source=source, note=note)
    return row


def paper_table(backbones: Sequence[str] = PAPER_BACKBONES) -> list[dict[str, Any]]:
    """Published backbones x the settings the papers report, at t = 64 (ShortV convention for
    totals, TFLOPs = 10^12 FLOPs).  Each registered method states its rows (``Method.paper_rows``:
    knobs and printed values); a row's schedule is the one its plan gives (:func:`plan_schedule`).

    Keys: backbone, method, setting, convention ("shortv": MHA formula, t = 64), tflops (decoder prefill,
    incl. SAISA projectors), ratio (to the dense row), tflops_exact (GQA-aware, t = 64),
    visual_convention, tflops_visual (in that convention), tflops_visual_yopo, tflops_visual_vica,
    equiv_tokens (k*), layer_avg (T̄), published (values as printed), source, note.
    """
    from harness.baselines.registry import get, names
    from harness.models.geometry import GeometryBackbone

    rows: list[dict[str, Any]] = []
    for name in backbones:
        g = PAPER_GEOMETRIES[name].with_tokens(t=64)
        stand_in = GeometryBackbone(g)
        dense_t = analyze(g, dense(g), "shortv").decoder_total.tflops
        published, source = _PUBLISHED.get((name, f"{g.v} tokens"), ({}, ""))
        rows.append(_row(g, "dense", f"{g.v} tokens", dense(g), dense_t, published=published, source=source))
        for method in names()[1:]:
            for r in get(method).paper_rows(stand_in):
                stack = r.stack or method
                tokens = r.visual_tokens_label
                sched = None if tokens is not None else plan_schedule(g, stack, r.knobs)
                override = None
                if tokens is not None:
                    override = (yopo_visual_flops(g, tokens) / 1e12, vica_visual_flops(g, tokens) / 1e12)
                rows.append(
                    _row(g, r.label or method, r.setting, sched, dense_t, visual_convention=r.visual_convention,
                         visual_override=override, published=r.published, source=r.source, note=r.note)
                )  # fmt: skip
        for k in _PRUNE_TOKENS.get(g.family, ()):
            published, source = _PUBLISHED.get((name, f"{k} tokens"), ({}, ""))
            rows.append(
                _row(g, "prune", f"{k} tokens", prune(g, k), dense_t, published=published, source=source)
            )
    return rows
