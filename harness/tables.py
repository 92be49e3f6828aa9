"""Plain-text tables of a run (pandas + tabulate), shown after ``harness run``."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pandas as pd
from tabulate import tabulate

from .records import Record


def method_label(r: Record, multi: set[str]) -> str:
    """The method's name, with its parameters when the same method runs with several settings."""
    if r.method not in multi:
        return r.method
    flat = [f"{k}={v}" for p in r.params.values() for k, v in p.items() if v is not None]
    return f"{r.method} [{', '.join(flat)}]" if flat else r.method


def multi_setting_methods(recs: Sequence[Record]) -> set[str]:
    seen: dict[str, set[str]] = {}
    for r in recs:
        seen.setdefault(r.method, set()).add(json.dumps(r.params, sort_keys=True))
    return {m for m, ps in seen.items() if len(ps) > 1}


def accuracy_frame(recs: Sequence[Record]) -> pd.DataFrame:
    ok = [r for r in recs if r.scenario == "accuracy" and r.status == "ok"]
    multi = multi_setting_methods(ok)  # e.g. ShortV's calibrated list and a random one: two rows
    rows = [
        {
            "backbone": r.backbone,
            "method": method_label(r, multi),
            "task": r.task,
            "accuracy": r.metrics.get("accuracy"),
        }
        for r in ok
    ]
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows).pivot_table(index=["backbone", "method"], columns="task", values="accuracy")
    df["mean"] = df.mean(axis=1)
    dense = {
        b: df.loc[(b, "dense"), "mean"] for b in df.index.get_level_values(0) if (b, "dense") in df.index
    }
    ref = reference_backbones(recs)
    df["retention"] = [
        df.loc[(b, m), "mean"] / dense[ref.get(b, b)] if ref.get(b, b) in dense else float("nan")
        for b, m in df.index
    ]
    return df


def reference_backbones(recs: Sequence[Record]) -> dict[str, str]:
    """Backbone label -> the label whose dense rows are its retention reference (suite key
    ``reference``: a variant trained with its own structure against the dense model)."""
    out = {}
    for r in recs:
        ref = ((r.cell or {}).get("backbone") or {}).get("reference")
        if ref:
            out[r.backbone] = ref
    return out


def run_summary(recs: Sequence[Record]) -> str:
    parts = []
    acc = accuracy_frame(recs)
    if not acc.empty:
        shown = acc.copy()
        shown.columns = [c.removeprefix("shapes_") for c in shown.columns]
        parts.append(
            "accuracy (exact match) and retention vs dense of the same run (of the reference backbone for trained variants)"
        )
        parts.append(tabulate(shown.reset_index(), headers="keys", showindex=False, floatfmt=".3f"))
    other = [r for r in recs if r.scenario != "accuracy"]
    if other:
        rows = []
        for r in other:
            keys = {
                "flops": [
                    "flops_total_prefill",
                    "flops_decoder",
                    "flops_visual_side_vica",
                    "fvcore_vs_analytic_rel",
                ],
                "latency": ["prefill_p50_s", "speedup", "flops_bound", "conversion", "kv_ratio"],
            }.get(r.scenario, list(r.metrics)[:5])
            shown = ", ".join(f"{k}={r.metrics[k]:.4g}" for k in keys if k in r.metrics)
            rows.append([r.backbone, r.method, r.task, r.scenario, r.status, shown or (r.error or "")])
        parts.append(tabulate(rows, headers=["backbone", "method", "task", "scenario", "status", "metrics"]))
    return "\n\n".join(parts)
