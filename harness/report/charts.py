"""Charts from records (matplotlib, Agg): accuracy vs FLOPs with the Pareto frontier, accuracy vs
latency, latency vs batch size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..records import Record  # noqa: E402


def _finish(fig, ax, path: Path) -> Path:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated points for (cost lower is better, accuracy higher is better), by cost."""
    front, best = [], -float("inf")
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((cost, acc))
            best = acc
    return front


def _scatter(df: pd.DataFrame, xcol: str, xlabel: str, path: Path, frontier: bool) -> Path | None:
    data = df.dropna(subset=[xcol, "mean"]) if xcol in df and "mean" in df else pd.DataFrame()
    if data.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for backbone, g in data.groupby("backbone"):
        ax.scatter(g[xcol], g["mean"], label=backbone, s=36)
        for _, r in g.iterrows():
            ax.annotate(
                r["method"], (r[xcol], r["mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        if frontier:
            front = pareto(list(zip(g[xcol], g["mean"], strict=True)))
            ax.plot(
                [p[0] for p in front], [p[1] for p in front], "--", lw=1, label=f"{backbone} Pareto frontier"
            )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean accuracy")
    return _finish(fig, ax, path)


def latency_vs_batch(recs: Sequence[Record], path: Path) -> Path | None:
    rows = [(r.backbone, r.method, int(r.metrics["batch_size"]), r.metrics["prefill_p50_s"])
            for r in recs if r.scenario == "latency" and r.status == "ok" and "batch_size" in r.metrics]  # fmt: skip
    if not rows:
        return None
    df = pd.DataFrame(rows, columns=["backbone", "method", "batch", "p50"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for (b, m), g in df.groupby(["backbone", "method"]):
        g = g.sort_values("batch")
        ax.plot(g["batch"], g["batch"] / g["p50"], marker="o", label=f"{b} {m}")
    ax.set_xlabel("batch size")
    ax.set_ylabel("prefill samples / s")
    ax.set_xscale("log", base=2)
    return _finish(fig, ax, path)


def all_charts(df: pd.DataFrame, recs: Sequence[Record], out: Path) -> list[Path]:
    made = [
        _scatter(
            df, "TFLOPs", "prefill TFLOPs (analytic, exact convention)", out / "accuracy_vs_flops.png", True
        ),
        _scatter(df, "prefill ms", "prefill p50 (ms)", out / "accuracy_vs_latency.png", True),
        latency_vs_batch(recs, out / "latency_vs_batch.png"),
    ]
    return [p for p in made if p is not None]
