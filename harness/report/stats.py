"""Paired statistics on per-sample correctness: retention vs dense with a bootstrap CI, agreement."""

from __future__ import annotations

import math

import numpy as np


def paired(base: dict[str, float], new: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    keys = sorted(set(base) & set(new))
    return np.array([base[k] for k in keys], float), np.array([new[k] for k in keys], float)


def retention_ci(dense: dict[str, float], method: dict[str, float], reps: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:  # fmt: skip
    """Retention = acc(method) / acc(dense) on the paired samples, with a paired bootstrap CI."""
    d, m = paired(dense, method)
    if len(d) == 0 or d.sum() == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(reps, len(d)))
    ds, ms = d[idx].sum(1), m[idx].sum(1)
    ratios = ms[ds > 0] / ds[ds > 0]
    lo, hi = np.quantile(ratios, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(m.sum() / d.sum()), float(lo), float(hi)


def paired_se(base: dict[str, float], new: dict[str, float]) -> float:
    """Standard error of the paired accuracy difference (McNemar's discordant pairs)."""
    b, n = paired(base, new)
    if len(b) < 2:
        return 0.0
    diff = n - b
    return float(diff.std(ddof=1) / math.sqrt(len(diff)))


def mcnemar_p(base: dict[str, float], new: dict[str, float]) -> float:
    """Exact two-sided McNemar p-value on the discordant pairs."""
    b, n = paired(base, new)
    worse, better = int(((b == 1) & (n == 0)).sum()), int(((b == 0) & (n == 1)).sum())
    k, total = min(worse, better), worse + better
    if total == 0:
        return 1.0
    tail = sum(math.comb(total, i) for i in range(k + 1)) / 2**total
    return min(1.0, 2 * tail)


def agreement(dense_preds: dict[str, str], method_preds: dict[str, str]) -> float:
    keys = sorted(set(dense_preds) & set(method_preds))
    if not keys:
        return float("nan")
    return sum(dense_preds[k] == method_preds[k] for k in keys) / len(keys)
