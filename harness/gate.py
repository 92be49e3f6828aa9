"""``harness compare BASE NEW``: the CI gate over two record folders.

Fails (exit 1, naming the cell) when
* accuracy drops by more than the paired tolerance: max(``--acc-floor``, 1.96 x the standard error of
  the paired per-sample difference), McNemar's exact p reported beside it;
* any FLOPs figure changes (every ``flops_*`` / ``fvcore_*`` metric must be identical);
* a latency ratio (method / dense prefill p50 of the same run) gets worse by more than
  ``--latency-tol``;
* a cell of BASE is missing from NEW.
Absolute times are compared only when both records come from the same machine fingerprint;
otherwise they are reported as not comparable (never a failure).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .records import Record, load_dir
from .report.stats import mcnemar_p, paired_se


@dataclass
class Finding:
    cell: str
    check: str
    base: str
    new: str
    verdict: str  # ok / FAIL / not comparable / info

    @property
    def failed(self) -> bool:
        return self.verdict == "FAIL"


def cell_key(r: Record) -> str:
    sc = dict(r.cell.get("scenario", {}))
    return json.dumps([r.backbone, r.method, r.params, r.task, r.scenario, sc], sort_keys=True)


def cell_name(r: Record) -> str:
    return f"{r.backbone} | {r.method} | {r.task} | {r.scenario}"


def compare(base: list[Record], new: list[Record], *, acc_floor: float = 0.01, latency_tol: float = 0.15,
            abs_latency_tol: float = 0.5) -> list[Finding]:  # fmt: skip
    out: list[Finding] = []
    new_by = {cell_key(r): r for r in new if r.status == "ok"}
    for b in (r for r in base if r.status == "ok"):
        name = cell_name(b)
        n = new_by.get(cell_key(b))
        if n is None:
            out.append(Finding(name, "cell present", "yes", "missing", "FAIL"))
            continue
        if "accuracy" in b.metrics:
            out.append(_accuracy(name, b, n, acc_floor))
        for k in sorted(b.metrics):
            if k.startswith(("flops_", "fvcore_macs", "fvcore_flops")):
                bv, nv = b.metrics[k], n.metrics.get(k)
                same = nv is not None and abs(bv - nv) <= 1e-9 * max(abs(bv), 1.0)
                out.append(Finding(name, k, f"{bv:.6g}", "missing" if nv is None else f"{nv:.6g}",
                                   "ok" if same else "FAIL"))  # fmt: skip
        if "prefill_p50_s" in b.metrics and "dense_prefill_p50_s" in b.metrics:
            out.extend(_latency(name, b, n, latency_tol, abs_latency_tol))
    return out


def _accuracy(name: str, b: Record, n: Record, floor: float) -> Finding:
    ba, na = b.metrics["accuracy"], n.metrics.get("accuracy", float("nan"))
    bs, ns = b.details.get("per_sample", {}), n.details.get("per_sample", {})
    tol = max(floor, 1.96 * paired_se(bs, ns)) if bs and ns else floor
    p = mcnemar_p(bs, ns) if bs and ns else float("nan")
    verdict = "FAIL" if not ba - na <= tol else "ok"
    return Finding(name, f"accuracy (tol {tol:.3f}, McNemar p={p:.3g})", f"{ba:.4f}", f"{na:.4f}", verdict)


def _latency(name: str, b: Record, n: Record, tol: float, abs_tol: float) -> list[Finding]:
    out = []
    br = b.metrics["prefill_p50_s"] / b.metrics["dense_prefill_p50_s"]
    if "prefill_p50_s" not in n.metrics or "dense_prefill_p50_s" not in n.metrics:
        return [Finding(name, "latency ratio", f"{br:.4f}", "missing", "FAIL")]
    nr = n.metrics["prefill_p50_s"] / n.metrics["dense_prefill_p50_s"]
    out.append(Finding(name, f"latency ratio method/dense (tol {tol:.0%})", f"{br:.4f}", f"{nr:.4f}",
                       "FAIL" if nr > br * (1 + tol) else "ok"))  # fmt: skip
    bm, nm = b.environment.get("machine"), n.environment.get("machine")
    bt, nt = b.metrics["prefill_p50_s"], n.metrics["prefill_p50_s"]
    if bm and bm == nm:
        out.append(Finding(name, f"prefill p50 s (same machine, tol {abs_tol:.0%})", f"{bt:.4g}", f"{nt:.4g}",
                           "FAIL" if nt > bt * (1 + abs_tol) else "ok"))  # fmt: skip
    else:
        out.append(Finding(name, "prefill p50 s", f"{bt:.4g}", f"{nt:.4g}",
                           f"not comparable (machine {bm} vs {nm})"))  # fmt: skip
    return out


def compare_dirs(base: Path, new: Path, **kw) -> list[Finding]:
    from .errors import HarnessError

    b, n = load_dir(base), load_dir(new)
    if not b:
        raise HarnessError(f"no records under BASE '{base}'")
    if not n:
        raise HarnessError(f"no records under NEW '{new}'")
    return compare(b, n, **kw)
