"""Leaderboard tables from records: accuracy per task with retention (paired bootstrap CI) and
agreement vs the same-run dense baseline, FLOPs, latency and conversion; best and second best marked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib import resources
from typing import Any

import pandas as pd

from ..records import Record
from ..tables import method_label, multi_setting_methods, reference_backbones
from .stats import agreement, retention_ci

#: lmms-eval task -> benchmark id of paper_numbers.csv
BENCHMARKS = {
    "gqa": "gqa", "pope": "pope", "mme": "mme_p", "mmbench_en_dev": "mmbench_en", "mmbench_cn_dev": "mmbench_cn",
    "textvqa_val": "textvqa", "scienceqa_img": "sqa_img", "vqav2_val": "vqav2", "seedbench": "seed_img",
    "mmmu_val": "mmmu", "mmstar": "mmstar",
}  # fmt: skip
HIGHER_BETTER = {"mean", "retention", "agreement", "speedup", "conversion"}
LOWER_BETTER = {"TFLOPs", "visual TFLOPs", "prefill ms", "decode ms"}


def _key(r: Record) -> tuple[str, str, str]:
    import json

    return r.backbone, r.method, json.dumps(r.params, sort_keys=True)


def leaderboard(recs: Sequence[Record]) -> pd.DataFrame:
    """One row per (backbone, method + params); accuracy per task, mean, retention, efficiency."""
    ok = [r for r in recs if r.status == "ok"]
    multi = multi_setting_methods(ok)
    rows: dict[tuple, dict[str, Any]] = {}
    acc: dict[tuple, dict[str, Record]] = {}
    for r in ok:
        k = _key(r)
        row = rows.setdefault(k, {"backbone": r.backbone, "method": method_label(r, multi)})
        if r.scenario == "accuracy":
            row[r.task.removeprefix("shapes_")] = r.metrics["accuracy"]
            acc.setdefault(k, {})[r.task] = r
        elif r.scenario == "flops":
            row["TFLOPs"] = r.metrics.get("flops_total_prefill", math.nan) / 1e12
            row["visual TFLOPs"] = r.metrics.get("flops_visual_side_vica", math.nan) / 1e12
        elif r.scenario == "latency":
            row["prefill ms"] = r.metrics.get("prefill_p50_s", math.nan) * 1e3
            if "decode_p50_s" in r.metrics:
                row["decode ms"] = r.metrics["decode_p50_s"] * 1e3
            for m in ("speedup", "conversion"):
                if m in r.metrics:
                    row[m] = r.metrics[m]
    if not rows:
        return pd.DataFrame()
    # retention and agreement vs the dense row of the same backbone, paired on sample ids
    # (a variant trained with its own structure: vs the dense rows of its 'reference' backbone)
    dense_keys = {k[0]: k for k in rows if k[1] == "dense"}
    ref = reference_backbones(ok)
    for k, row in rows.items():
        tasks = acc.get(k, {})
        if not tasks:
            continue
        row["mean"] = sum(t.metrics["accuracy"] for t in tasks.values()) / len(tasks)
        dk = dense_keys.get(ref.get(k[0], k[0]))
        if dk is None or dk not in acc:
            continue
        d_all, m_all, dp, mp = {}, {}, {}, {}
        for task, r in tasks.items():
            d = acc[dk].get(task)
            if d is None:
                continue
            d_all.update({f"{task}/{s}": v for s, v in d.details.get("per_sample", {}).items()})
            m_all.update({f"{task}/{s}": v for s, v in r.details.get("per_sample", {}).items()})
            dp.update({f"{task}/{s}": v for s, v in d.details.get("predictions", {}).items()})
            mp.update({f"{task}/{s}": v for s, v in r.details.get("predictions", {}).items()})
        ret, lo, hi = retention_ci(d_all, m_all)
        row["retention"], row["retention_lo"], row["retention_hi"] = ret, lo, hi
        row["agreement"] = agreement(dp, mp)
    df = pd.DataFrame(list(rows.values()))
    order = ["backbone", "method"]
    task_cols = sorted(c for c in df.columns if c not in order and c not in HIGHER_BETTER | LOWER_BETTER
                       and not c.startswith("retention_"))  # fmt: skip
    rest = [c for c in ["mean", "retention", "retention_lo", "retention_hi", "agreement", "TFLOPs", "visual TFLOPs",
                        "prefill ms", "decode ms", "speedup", "conversion"] if c in df.columns]  # fmt: skip
    return df[order + task_cols + rest].sort_values(order, key=lambda s: s.map(lambda x: (x != "dense", x)))


def paper_numbers() -> pd.DataFrame:
    with resources.files("harness.data").joinpath("paper_numbers.csv").open() as fh:
        return pd.read_csv(fh)


def with_paper(df: pd.DataFrame, recs: Sequence[Record]) -> pd.DataFrame:
    """Add "paper" columns beside measured accuracy where a published value exists for the cell."""
    papers = paper_numbers()
    papers["b"] = papers["backbone"].str.lower()
    out = df.copy()
    for r in recs:
        bench = BENCHMARKS.get(r.task)
        if r.scenario != "accuracy" or bench is None:
            continue
        hit = papers[(papers["b"] == r.backbone.lower()) & (papers["method"] == ("vanilla" if r.method == "dense" else r.method))
                     & (papers["benchmark"] == bench)]  # fmt: skip
        if len(hit):
            mask = (out["backbone"] == r.backbone) & (out["method"].str.split(" ").str[0] == r.method)
            out.loc[mask, f"{r.task} (paper)"] = float(hit["value"].iloc[0])
    return out


def marks(df: pd.DataFrame) -> dict[tuple[int, str], str]:
    """(row, column) -> 'best' / 'second' per column, per backbone."""
    out: dict[tuple[int, str], str] = {}
    for _, group in df.groupby("backbone"):
        for col in df.columns:
            if col in ("backbone", "method") or col.startswith("retention_") or "(paper)" in col:
                continue
            vals = group[col].dropna()
            if len(vals) < 2:
                continue
            lower = col in LOWER_BETTER
            ranked = vals.sort_values(ascending=lower)
            uniq = ranked.drop_duplicates()
            for i, label in zip(range(min(2, len(uniq))), ("best", "second"), strict=False):
                for idx in ranked[ranked == uniq.iloc[i]].index:
                    out[(idx, col)] = label
    return out


def formatted(df: pd.DataFrame, style: str) -> pd.DataFrame:
    """Numbers as text with best / second marked in the given style (markdown, latex, html)."""
    m = marks(df)
    wrap = {
        "markdown": {"best": "**{}**", "second": "_{}_"},
        "latex": {"best": "\\textbf{{{}}}", "second": "\\underline{{{}}}"},
        "html": {"best": '<span class="best">{}</span>', "second": '<span class="second">{}</span>'},
    }[style]
    out = df.drop(columns=[c for c in df.columns if c.startswith("retention_")]).copy().astype(object)
    for idx, row in df.iterrows():
        for col in out.columns:
            v = row[col]
            if col in ("backbone", "method"):
                continue
            if isinstance(v, float) and math.isnan(v):
                out.at[idx, col] = ""
                continue
            text = _fmt(col, v)
            if col == "retention" and not math.isnan(row.get("retention_lo", math.nan)):
                text += f" [{row['retention_lo']:.3f}, {row['retention_hi']:.3f}]"
            if (idx, col) in m:
                text = wrap[m[(idx, col)]].format(text)
            out.at[idx, col] = text
    return out


def _fmt(col: str, v: float) -> str:
    if col in ("TFLOPs", "visual TFLOPs"):
        return f"{v:.4g}"
    if col.endswith("ms"):
        return f"{v:.2f}"
    if col in ("speedup",):
        return f"{v:.2f}x"
    return f"{v:.3f}"
