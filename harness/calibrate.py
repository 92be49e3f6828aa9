"""``harness calibrate METHOD``: calibration samples from lmms-eval tasks, handed to the method.

The method owns what it computes and the ``seebench.json`` section it keeps (``calibration_key``,
``calibrate`` on the method class; models/calibration.py); this module only gathers the samples,
asks the method, and saves what it returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.baselines.registry import get, names
from harness.models import calibration
from harness.models.backbones.base import Backbone

from .errors import HarnessError


def calibration_inputs(bb: Backbone, tasks: list[str], limit: int) -> tuple[list[dict[str, Any]], list[str]]:
    """``limit`` samples per task from lmms-eval tasks (seebench's shapes tasks included), in order,
    as single-sample model inputs built with the checkpoint's chat template; plus their ids."""
    from lmms_eval.tasks import TaskManager

    from harness.models.verify import chat_prompt

    from .accuracy import quiet_lmms_logging
    from .lmms_entry import TASKS_DIR
    from .tasks import load_tasks

    quiet_lmms_logging()
    tm = TaskManager(
        "ERROR", include_path=TASKS_DIR, include_defaults=not all(t.startswith("shapes") for t in tasks)
    )
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        raise HarnessError(
            f"unknown calibration task(s) {unknown}: give lmms-eval task names, e.g. shapes_exist_ci"
        )
    inputs, ids = [], []
    for name, task in load_tasks(tasks, tm).items():
        docs = task.test_docs() if task.has_test_docs() else task.validation_docs()
        for i, doc in enumerate(docs):
            if i >= limit:
                break
            images = task.doc_to_visual(doc)
            prompt = chat_prompt(bb, task.doc_to_text(doc))
            inputs.append(bb.build_inputs([prompt], [images[0]]))
            ids.append(f"{name}/{doc.get('id', i) if isinstance(doc, dict) else i}")
    return inputs, ids


def calibrated_methods() -> list[str]:
    return [n for n in names() if n != "dense" and get(n).calibration_key is not None]


def method_for_calibration(method: str) -> Any:
    cls = get(method)
    if cls.calibration_key is None:
        raise HarnessError(
            f"method '{method}' has no calibration; methods that calibrate: {', '.join(calibrated_methods())}"
        )
    return cls


def calibrate(method: str, bb: Backbone, tasks: list[str], limit: int, **options: float) -> dict[str, Any]:
    """The method's calibration on ``limit`` samples per task: ``{"method", <its result>, "samples"}``."""
    cls = method_for_calibration(method)
    inputs, ids = calibration_inputs(bb, tasks, limit)
    if not inputs:
        raise HarnessError("no calibration samples: check --tasks and --limit")
    result = cls.calibrate(bb, list(calibration.batches(bb, inputs)), **options)
    return {"method": method, **result, "samples": ids}


def save_calibration(model_dir: str, method: str, result: dict[str, Any]) -> Path:
    """Keep the method's key (and the samples it came from) in the checkpoint's seebench.json."""
    key = method_for_calibration(method).calibration_key
    return calibration.save(model_dir, method, {key: result[key], "samples": result["samples"]})
