"""Latency and memory: prefill (TTFT) and decode (TPOT) timed like a benchmark, not a stopwatch.

Timers: on GPU (``harness latency --device cuda``), CUDA events around the call and
``torch.cuda.synchronize()``, peak memory from ``torch.cuda.max_memory_allocated`` reset before the
first timed call; on CPU, ``time.perf_counter`` with a fixed, recorded torch thread count.  The
device and dtype are the batch's: move the backbone (``Backbone.to``) and the batch (``Batch.to``)
together.  Every measurement runs warm-up calls first, then repeats until both a minimum count
and a minimum duration are reached (capped by a maximum count), and reports p50 / p90 / p99, mean
and standard deviation of the samples.

Scenarios: single-stream (batch 1: TTFT = prefill latency, TPOT = per-token decode latency over a
fixed forced decode length) and batch (prefill samples/s, decode tokens/s) at any batch size, on
real suite samples (ragged) or on a synthetic token geometry with random weights (recorded as such).
The dense baseline is measured in the same run, so speed-up, FLOPs bound and conversion efficiency
(speed-up / FLOPs bound) are ratios of one run with one thread setting.  Method and dense prefill
calls are interleaved (``time_interleaved``): a machine that drifts between speed phases slows both
alike instead of skewing their ratio.  Accuracy and timing are separate passes; nothing is cached
inside a timed pass (each call re-runs the vision tower when the inputs carry images, and every
layer).
"""

from __future__ import annotations

import math
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from harness.models.backbones.base import Backbone
from harness.models.batch import Batch
from harness.models.cuda_graphs import GraphedDecode, GraphedPrefill, GraphError, require_cuda
from harness.models.executor import Executor
from harness.models.plan import VisualPlan

from . import roofline
from .flops.counted import analytic_prefill
from .opcount import count_call
from .reference import HFReference, attention_implementation, using_attention


@dataclass
class TimingConfig:
    warmup: int = 2
    min_repeats: int = 5
    min_time_s: float = 2.0
    max_repeats: int = 200

    def __post_init__(self) -> None:
        if (
            self.warmup < 0
            or self.min_repeats < 1
            or self.max_repeats < self.min_repeats
            or self.min_time_s < 0
        ):
            raise ValueError("timing needs warmup >= 0, 1 <= min_repeats <= max_repeats, min_time_s >= 0")


@dataclass
class Timing:
    samples_s: list[float]
    warmup: int
    device: str

    def q(self, p: float) -> float:
        """Percentile with linear interpolation between order statistics."""
        xs = sorted(self.samples_s)
        if len(xs) == 1:
            return xs[0]
        pos = p / 100 * (len(xs) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    def summary(self, prefix: str) -> dict[str, float]:
        xs = self.samples_s
        return {
            f"{prefix}_p50_s": self.q(50),
            f"{prefix}_p90_s": self.q(90),
            f"{prefix}_p99_s": self.q(99),
            f"{prefix}_mean_s": statistics.fmean(xs),
            f"{prefix}_stdev_s": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            f"{prefix}_repeats": float(len(xs)),
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":  # pragma: no cover - needs a GPU
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_call(fn: Callable[[], Any], cfg: TimingConfig, device: torch.device) -> Timing:
    """Warm up, then repeat until min_repeats and min_time_s are both reached (<= max_repeats)."""
    return time_interleaved({"call": fn}, cfg, device)["call"]


def time_interleaved(
    fns: dict[str, Callable[[], Any]], cfg: TimingConfig, device: torch.device
) -> dict[str, Timing]:
    """Time several calls in one interleaved sequence, so a machine that drifts between speed
    phases (a shared VM, a GPU's clocks) slows every call alike and their ratios stay true.

    Every call is warmed up first.  Then, until each call has ``min_repeats`` samples and
    ``min_time_s`` of them, the call with the least time spent so far runs next; calls that are done
    keep running in this order (each up to ``max_repeats``) while another one is still short, so
    all samples spread over the same stretch of time.  A call alone is plain repeat-until-enough."""
    for fn in fns.values():
        for _ in range(cfg.warmup):
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    spent = dict.fromkeys(fns, 0.0)

    def short(k: str) -> bool:
        n = len(samples[k])
        return n < cfg.max_repeats and (n < cfg.min_repeats or spent[k] < cfg.min_time_s)

    while any(short(k) for k in fns):
        k = min((k for k in fns if len(samples[k]) < cfg.max_repeats), key=lambda k: spent[k])
        dt = _timed(fns[k], device)
        samples[k].append(dt)
        spent[k] += dt
    return {k: Timing(samples[k], cfg.warmup, device.type) for k in fns}


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":  # pragma: no cover - needs a GPU
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ------------------------------------------------------------------ one method vs dense
@dataclass
class LatencyResult:
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)


def per_sample_work(bb: Backbone, batch: Batch, plan: VisualPlan, mode: str) -> list[tuple]:
    """Per sample: (geometry, LayerWork schedule, analytic report) of its batch-1 prefill, from
    the same pipeline as FLOPs cells (``flops.counted.analytic_prefill``).  Drop-mode stats come
    from compiling the plan against the sample's layout (host arithmetic, no prefill); mask mode
    runs one."""
    out = []
    for i in range(batch.batch_size):
        one = batch.select([i])
        ex = Executor(bb, mode)
        stats = (
            ex.prepare(one, plan)[1].stats
            if mode == "drop"
            else ex.prefill(one, plan, cache_extra=None).stats
        )
        out.append(analytic_prefill(bb, one, plan, stats, mode))
    return out


def decoder_flops(bb: Backbone, batch: Batch, plan: VisualPlan, mode: str, work: list | None = None) -> float:
    """Analytic decoder prefill FLOPs (exact convention, incl. score rows and the LM-head row)
    summed over the batch."""
    return sum(
        rep.decoder_total.flops + rep.lm_head.flops + rep.overhead.flops
        for _, _, rep in work or per_sample_work(bb, batch, plan, mode)
    )


def measure(
    bb: Backbone,
    make_batch: Callable[[], Batch] | Batch,
    plan: VisualPlan,
    *,
    mode: str = "drop",
    timing: TimingConfig | None = None,
    decode_tokens: int = 16,
    include_dense: bool = True,
    include_reference: bool = True,
    peak_tflops: float | None = None,
    bandwidth_gbs: float | None = None,
    cuda_graphs: bool | None = None,
) -> LatencyResult:
    """Time prefill and decode of ``plan``, of the dense plan and of the stock HF decoder
    (``reference.py``) in the same run; count their ops and host reads in separate calls.

    ``cuda_graphs`` (default: on for a CUDA batch, off otherwise): the executor's prefill and
    decode step are captured once and their replays timed (``models/cuda_graphs.py``); a call that
    cannot be captured is timed eagerly and ``details["cuda_graphs_fallback"]`` says why."""
    timing = timing or TimingConfig()
    batch = make_batch if isinstance(make_batch, Batch) else make_batch()
    device = batch.embeds.device
    graphs = device.type == "cuda" if cuda_graphs is None else cuda_graphs
    if graphs:
        require_cuda(device)
    if device.type == "cuda":  # pragma: no cover - needs a GPU
        torch.cuda.reset_peak_memory_stats(device)
    dense = VisualPlan.dense(bb.num_layers)
    plans = {"method": plan} | ({"dense": dense} if include_dense else {})
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {
        "cuda_graphs": graphs,
        "timing": asdict(timing),
        "threads": torch.get_num_threads(),
        "device": device.type,
        "dtype": str(batch.embeds.dtype).replace("torch.", ""),
    }
    flops: dict[str, float] = {}
    works: dict[str, list] = {}
    executors = {key: Executor(bb, mode if key == "method" else "drop") for key in plans}
    calls = {
        key: (lambda ex=executors[key], p=p: ex.prefill(batch, p, cache_extra=None))
        for key, p in plans.items()
    }
    fallback: dict[str, str] = {}
    if graphs:  # pragma: no cover - needs a GPU
        for key, p in plans.items():
            try:
                calls[key] = GraphedPrefill(executors[key], batch, p, timing.warmup)
            except GraphError as exc:
                fallback[f"{key}_prefill"] = str(exc)
    ref = HFReference(bb, batch) if include_reference else None
    impl = attention_implementation(bb, device, batch.embeds.dtype)
    with using_attention(bb, impl):
        if ref is not None:
            calls["reference"] = ref.prefill
            details["reference"] = {"model": type(bb.decoder).__name__, "attention": impl,
                                    "cache": "DynamicCache"}  # fmt: skip
        # every prefill interleaved: one stretch of machine time for all (see time_interleaved)
        prefill = time_interleaved(calls, timing, device)
        details["prefill_order"] = "interleaved" if len(calls) > 1 else "alone"
        for key in calls:
            prefix = {"method": "prefill", "dense": "dense_prefill", "reference": "reference_prefill"}[key]
            metrics.update(prefill[key].summary(prefix))
            metrics[f"{prefix}_samples_per_s"] = batch.batch_size / prefill[key].q(50)
        n_steps = max(decode_tokens, timing.min_repeats)
        decode_cfg = TimingConfig(timing.warmup, n_steps, 0.0, n_steps)
        for key, p in plans.items():
            ex = executors[key]
            if decode_tokens > 0:
                # room for the warm-up and timed steps (and a captured graph's own warm-up step)
                out = ex.prefill(batch, p, cache_extra=timing.warmup + n_steps + (2 if graphs else 0))
                kv = "kv" if key == "method" else "dense_kv"
                metrics[f"{kv}_bytes_per_sample"] = statistics.fmean(out.cache.bytes_per_sample())
                metrics[f"{kv}_visual_bytes_per_sample"] = statistics.fmean(
                    out.cache.visual_bytes_per_sample()
                )
                tok = out.logits.argmax(-1)  # forced: the same token every step, a fixed decode length

                def step(ex=ex, p=p, cache=out.cache, tok=tok):
                    return ex.decode_step(tok, cache, p)

                if graphs:  # pragma: no cover - needs a GPU
                    try:
                        step = GraphedDecode(ex, out.cache, tok, p, warmup=1)
                    except GraphError as exc:
                        fallback[f"{key}_decode"] = str(exc)
                dec = time_call(step, decode_cfg, device)
                dprefix = "decode" if key == "method" else "dense_decode"
                metrics.update(dec.summary(dprefix))
                metrics[f"{dprefix}_tokens_per_s"] = batch.batch_size / dec.q(50)
            works[key] = per_sample_work(bb, batch, p, mode if key == "method" else "drop")
            flops[key] = decoder_flops(bb, batch, p, mode, works[key])
        if ref is not None and decode_tokens > 0:
            state = ref.start_decode()
            dec = time_call(lambda: ref.decode_step(state), decode_cfg, device)
            metrics.update(dec.summary("reference_decode"))
            metrics["reference_decode_tokens_per_s"] = batch.batch_size / dec.q(50)
        metrics.update(_counts(executors, plans, ref, batch, decode_tokens > 0))
    if fallback:  # pragma: no cover - needs a GPU
        details["cuda_graphs_fallback"] = fallback
    metrics["flops_prefill"] = flops["method"]
    metrics["batch_size"] = float(batch.batch_size)
    metrics["threads"] = float(torch.get_num_threads())
    metrics["warmup"] = float(timing.warmup)
    metrics["peak_memory_mib"] = peak_memory_mib(device)
    if include_dense:
        metrics["dense_flops_prefill"] = flops["dense"]
        metrics["speedup"] = metrics["dense_prefill_p50_s"] / metrics["prefill_p50_s"]
        metrics["flops_bound"] = flops["dense"] / flops["method"]
        metrics["conversion"] = metrics["speedup"] / metrics["flops_bound"]
        if decode_tokens > 0:
            metrics["decode_speedup"] = metrics["dense_decode_p50_s"] / metrics["decode_p50_s"]
            metrics["kv_ratio"] = metrics["kv_bytes_per_sample"] / metrics["dense_kv_bytes_per_sample"]
            metrics["kv_visual_ratio"] = metrics["kv_visual_bytes_per_sample"] / max(
                metrics["dense_kv_visual_bytes_per_sample"], 1.0
            )
        hw = roofline.hardware(
            device, batch.embeds.dtype, peak_tflops=peak_tflops, bandwidth_gbs=bandwidth_gbs
        )
        size = roofline.dtype_bytes(batch.embeds.dtype)
        times = {
            k: roofline.batch_time([(g, w) for g, w, _ in works[k]], size, hw) for k in ("dense", "method")
        }
        # the method's own selection work (score rows, a reducer) runs at peak at best
        overhead = sum(rep.overhead.flops for _, _, rep in works["method"])
        times["method"] += overhead / (hw.peak_tflops * 1e12)
        metrics["roofline_bound"] = times["dense"] / times["method"]
        metrics["conversion_roofline"] = metrics["speedup"] / metrics["roofline_bound"]
        metrics["peak_tflops"] = hw.peak_tflops
        metrics["bandwidth_gbs"] = hw.bandwidth_gbs
        details["hardware"] = asdict(hw)
    if ref is not None:
        if include_dense:
            metrics["executor_overhead"] = metrics["dense_prefill_p50_s"] / metrics["reference_prefill_p50_s"]
        metrics["speedup_vs_reference"] = metrics["reference_prefill_p50_s"] / metrics["prefill_p50_s"]
    details["plan"] = plan.describe()
    details["visual_counts"] = batch.visual_counts()
    details["prompt_lengths"] = batch.lengths()
    return LatencyResult(metrics, details)


def _counts(executors, plans, ref, batch: Batch, decode: bool) -> dict[str, float]:
    """ATen ops and host reads of one prefill (no cache, as timed) and one decode step of the
    method, the dense path and the HF reference, in untimed calls (``opcount.py``)."""
    out: dict[str, float] = {}
    for key, p in plans.items():
        ex = executors[key]
        pre = count_call(lambda ex=ex, p=p: ex.prefill(batch, p, cache_extra=None))
        name = "" if key == "method" else "dense_"
        out[f"{name}ops_prefill"] = float(pre.ops)
        if key == "method":
            out["host_reads_prefill"] = float(pre.host_reads)
        if decode:
            res = ex.prefill(batch, p, cache_extra=2)
            tok = res.logits.argmax(-1)
            ex.decode_step(tok, res.cache, p)  # the first step prepares the cache's decode state
            dec = count_call(lambda ex=ex, p=p, res=res, tok=tok: ex.decode_step(tok, res.cache, p))
            out[f"{name}ops_decode"] = float(dec.ops)
            if key == "method":
                out["host_reads_decode"] = float(dec.host_reads)
    if ref is not None:
        out["reference_ops_prefill"] = float(count_call(ref.prefill).ops)
        if decode:
            state = ref.start_decode()
            ref.decode_step(state)
            out["reference_ops_decode"] = float(count_call(lambda: ref.decode_step(state)).ops)
    return out
