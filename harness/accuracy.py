"""Accuracy through lmms-eval: our model object + the shapes tasks (or any lmms-eval task).

The per-sample correctness is kept (paired tests need it); samples whose batch failed are counted
as ``failed`` and left out of the accuracy, never scored as wrong answers.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from .errors import HarnessError


def quiet_lmms_logging() -> None:
    """lmms-eval routes loguru to stdout at import; keep stdout for our tables (warnings -> stderr)."""
    try:
        from loguru import logger
    except ImportError:  # pragma: no cover
        return
    logger.remove()
    # a callable sink: it writes to whatever sys.stderr is at the time (the run's log during a cell)
    logger.add(lambda msg: sys.stderr.write(msg), level=os.environ.get("SEEBENCH_LMMS_LOG", "WARNING"))


def evaluate_task(
    bb, stack, plan, task: str, *, mode: str, batch_size: int, limit: int | None
) -> dict[str, Any]:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from lmms_eval.evaluator import simple_evaluate
        from lmms_eval.tasks import TaskManager
    except ImportError:
        raise HarnessError(
            "accuracy cells need lmms-eval: run ./install.sh (it installs lmms-eval without torchvision)"
        ) from None
    quiet_lmms_logging()
    from .lmms_entry import TASKS_DIR
    from .lmms_plugin import FAILED, SeebenchLMM
    from .tasks import load_tasks

    lm = SeebenchLMM(backbone=bb, plan=plan, method=stack.name, mode=mode, batch_size=batch_size)
    tm = TaskManager("WARNING", include_path=TASKS_DIR, include_defaults=not task.startswith("shapes"))
    if task not in tm.all_tasks:
        raise HarnessError(f"unknown task '{task}': not an lmms-eval task or a seebench shapes task")
    logging.getLogger("lmms-eval").setLevel(logging.WARNING)
    res = simple_evaluate(
        model=lm, tasks=list(load_tasks([task], tm).values()), task_manager=tm, limit=limit, log_samples=True, bootstrap_iters=0,
        batch_size=batch_size, device=lm.device,
    )  # fmt: skip
    quiet_lmms_logging()
    samples = sorted(res["samples"][task], key=lambda s: s["doc_id"])
    per_sample: dict[str, float] = {}
    preds: dict[str, str] = {}
    failed = 0
    for s in samples:
        key = str(s["doc"].get("id", s["doc_id"])) if isinstance(s.get("doc"), dict) else str(s["doc_id"])
        pred = s["filtered_resps"][0] if s.get("filtered_resps") else ""
        if pred == FAILED:
            failed += 1
            continue
        per_sample[key] = float(s["exact_match"])
        preds[key] = pred
    n = len(per_sample)
    acc = sum(per_sample.values()) / n if n else 0.0
    return {
        "metrics": {"accuracy": acc, "n": float(n), "failed": float(failed)},
        "details": {"per_sample": per_sample, "predictions": preds, "lmms_eval_version": _version()},
    }


def _version() -> str | None:
    from .environment import lib_version

    return lib_version("lmms_eval")
