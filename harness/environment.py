"""Environment capture for records: library versions, machine, threads, git commit."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

LIBS = ("torch", "transformers", "fvcore", "lmms_eval", "numpy", "pydantic", "accelerate", "tokenizers")
REPO = Path(__file__).resolve().parent.parent


def lib_version(name: str) -> str | None:
    for dist in (name, name.replace("_", "-")):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_model() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a broken CUDA setup means "no GPU" for the record
        return None
    return None


@lru_cache(maxsize=1)
def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if out.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=5, check=False,
            ).stdout.strip()  # fmt: skip
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def total_memory_gib() -> float:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return 0.0


def machine_fingerprint(cpu: str, cores: int, gpu: str | None, mem: float) -> str:
    """Absolute times are comparable only between records with the same machine fingerprint."""
    return hashlib.sha256(f"{cpu}|{cores}|{gpu}|{round(mem)}".encode()).hexdigest()[:12]


def capture() -> dict[str, Any]:
    import torch

    cpu, cores, gpu, mem = cpu_model(), os.cpu_count() or 0, gpu_model(), total_memory_gib()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: lib_version(name) for name in LIBS},
        "cpu": cpu,
        "cpu_count": cores,
        "memory_gib": mem,
        "gpu": gpu,
        "cuda": torch.version.cuda if gpu else None,
        "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "machine": machine_fingerprint(cpu, cores, gpu, mem),
    }


def placement(launcher: str, job_id: str | None = None, node: str | None = None) -> dict[str, Any]:
    """Where a record was produced, for its ``environment`` (never for its fingerprint): the
    launcher, the node's host name and the scheduler's job id (a SLURM job outside any launcher
    still names its job)."""
    if job_id is None and os.environ.get("SLURM_JOB_ID"):
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        job_id = f"{array}_{task}" if array and task else os.environ["SLURM_JOB_ID"]
    return {"launcher": launcher, "node": node or platform.node(), "job_id": job_id}


def fingerprint_versions() -> dict[str, str | None]:
    """The library versions that change results (part of every cell fingerprint)."""
    return {name: lib_version(name) for name in ("torch", "transformers")}
