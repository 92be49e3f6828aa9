"""Task names a suite may list, and the version string that enters cell fingerprints."""

from __future__ import annotations

import os
from typing import Any


def task_version(task: str) -> str:
    if task == "none":
        return "none"
    if task.startswith("shapes_"):
        from harness.models.tiny.shapes import GENERATOR_VERSION

        return GENERATOR_VERSION
    from .environment import lib_version

    return f"lmms_eval-{lib_version('lmms_eval')}"


def load_tasks(names: list[str], task_manager: Any) -> dict[str, Any]:
    """lmms-eval task objects by name.  seebench's task YAMLs name their index files relative to
    their own folder, and ``datasets`` resolves ``data_files`` against the working directory, so the
    tasks load from inside that folder (a run started anywhere finds them)."""
    from lmms_eval.tasks import get_task_dict

    from .lmms_entry import TASKS_DIR

    before = os.getcwd()
    os.chdir(TASKS_DIR)
    try:
        return get_task_dict(names, task_manager)
    finally:
        os.chdir(before)
