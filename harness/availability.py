"""What a cell needs (weights, datasets, a GPU) and whether this machine has it, without loading
anything; and the analytic FLOPs of published geometries when the weights are absent.

Used by ``harness run --suite paper --plan`` (the cell matrix in seconds) and by the runner, which
skips unavailable cells with their reason instead of crashing, and still completes FLOPs cells of
unavailable checkpoints from the paper geometry (analytic, recorded as such).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: lmms-eval task -> (HF dataset repo it loads, evaluation samples) for the paper benchmarks
PAPER_TASKS: dict[str, tuple[str, int]] = {
    "mme": ("lmms-lab/MME", 2374),
    "mmbench_en_dev": ("lmms-lab/MMBench", 4329),
    "mmbench_cn_dev": ("lmms-lab/MMBench", 4329),
    "gqa": ("lmms-lab/GQA", 12578),
    "vqav2_val": ("lmms-lab/VQAv2", 214354),
    "scienceqa_img": ("lmms-lab/ScienceQA", 2017),
    "textvqa_val": ("lmms-lab/textvqa", 5000),
    "pope": ("lmms-lab/POPE", 9000),
    "seedbench": ("lmms-lab/SEED-Bench", 14233),
    "mmmu_val": ("lmms-lab/MMMU", 900),
    "mmstar": ("Lin-Chen/MMStar", 1500),
}
GPU_EFFECTIVE_TFLOPS = 40.0  # assumed sustained fp16 throughput for cost estimates (A100-class, ~40% util)
GPU_EFFECTIVE_GBS = 1500.0  # assumed sustained memory bandwidth for decode-step estimates
LATENCY_CELL_SETUP_MIN = 1.0  # building a random-init 7B model, compiling plans, capturing graphs


@dataclass
class Needs:
    weights: str
    dataset: str | None = None
    gpu: bool = False
    missing: list[str] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return not self.missing


def _hub_cached(repo: str, filename: str, repo_type: str = "model") -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo, filename, repo_type=repo_type)
        return isinstance(hit, str)
    except Exception:  # noqa: BLE001 - an unreadable cache means "not available"
        return False


def weights_available(model: str) -> bool:
    if model == "embedded" or model.startswith(("embedded:", "random:", "synthetic:")):
        return True
    if Path(model).exists():
        return (Path(model) / "config.json").exists()
    return model.count("/") == 1 and _hub_cached(model, "config.json")


def dataset_available(task: str) -> bool:
    if task.startswith("shapes_") or task == "none":
        return True
    repo = PAPER_TASKS.get(task, (None, 0))[0]
    if repo is None:
        return False
    root = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    return (root / f"datasets--{repo.replace('/', '--')}").exists()


def gpu_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def cell_needs(cell: Any) -> Needs:
    b, sc = cell.backbone, cell.scenario
    needs = Needs(weights=b.model, gpu=b.requires_gpu and sc.kind in ("accuracy", "latency", "verify"))
    if not weights_available(b.model):
        needs.missing.append(f"weights {b.model} not on this machine (no network)")
    if sc.kind == "accuracy":
        needs.dataset = PAPER_TASKS.get(cell.task, (cell.task, 0))[0]
        if not dataset_available(cell.task):
            needs.missing.append(f"dataset {needs.dataset} for {cell.task} not in the local HF cache")
    if needs.gpu and not gpu_available():
        needs.missing.append("needs a GPU (7B+ checkpoint); none here")
    return needs


def analytic_schedule(geometry: str, method: str, params: dict[str, dict[str, Any]]):
    """(geometry, schedule) of a method stack at a published geometry (None when the stack cannot
    be built there)."""
    from .flops import model as fa

    g = fa.get_geometry(geometry)
    found = fa.plan_schedule(g, method, params)
    return None if found is None else (g, found)


def analytic_flops_metrics(
    geometry: str, method: str, params: dict[str, dict[str, Any]]
) -> dict[str, float] | None:
    from .flops import model as fa

    found = analytic_schedule(geometry, method, params)
    if found is None:
        return None
    g, sched = found
    rep = fa.analyze(g, sched, "exact")
    out = {
        "flops_total_prefill": rep.total.flops,
        "flops_decoder": rep.decoder_total.flops,
        "flops_visual_side_yopo": rep.decoder_visual_yopo.flops,
        "flops_visual_side_vica": rep.decoder_visual_vica.flops,
        "flops_vision_tower": rep.vision_tower.flops,
        "flops_total_prefill_t64": fa.analyze(g, sched, "shortv").decoder_total.flops,
    }
    return out


def estimate_gpu_minutes(cell: Any) -> float | None:
    """Prefill-bound estimate for accuracy cells on a GPU, and for latency cells the timed calls
    (method, dense and HF reference: warm-up + repeats of prefill, forced decode steps bound by the
    weight read) plus a fixed setup (labelled an estimate)."""
    geometry = cell.backbone.geometry
    if cell.scenario.kind == "latency" and geometry is not None:
        return _latency_minutes(cell, geometry)
    if cell.scenario.kind != "accuracy" or geometry is None or cell.task not in PAPER_TASKS:
        return None
    m = analytic_flops_metrics(geometry, cell.method.name, cell.method.params)
    if m is None:
        return None
    n = PAPER_TASKS[cell.task][1] if cell.scenario.limit is None else cell.scenario.limit
    return n * m["flops_total_prefill"] / (GPU_EFFECTIVE_TFLOPS * 1e12) / 60


def _latency_minutes(cell: Any, geometry: str) -> float | None:
    from .flops import model as fa

    try:
        m = analytic_flops_metrics(geometry, cell.method.name, cell.method.params)
    except (ValueError, KeyError):  # no schedule of this method for the geometry: dense bounds it
        m = None
    m = m or analytic_flops_metrics(geometry, "dense", {})
    if m is None:
        return None
    sc = cell.scenario
    prefill_s = sc.batch_size * m["flops_total_prefill"] / (GPU_EFFECTIVE_TFLOPS * 1e12)
    calls = 3 * (sc.warmup + max(sc.min_repeats, math.ceil(sc.min_time_s / max(prefill_s, 1e-6))))
    g = fa.get_geometry(geometry)
    weights = 2 * (
        g.layers * (4 * g.hidden**2 + 3 * g.hidden * g.intermediate) + g.vocab * g.hidden
    )  # fp16 bytes
    step_s = max(weights / (GPU_EFFECTIVE_GBS * 1e9), sc.batch_size * weights / (GPU_EFFECTIVE_TFLOPS * 1e12))
    steps = 3 * (sc.warmup + max(sc.max_new_tokens, sc.min_repeats))
    return LATENCY_CELL_SETUP_MIN + (calls * prefill_s + steps * step_s) / 60
