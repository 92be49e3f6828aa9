"""Task names a suite may list, and the version string that enters cell fingerprints."""

from __future__ import annotations


def task_version(task: str) -> str:
    if task == "none":
        return "none"
    if task.startswith("shapes_"):
        from harness.models.tiny.shapes import GENERATOR_VERSION

        return GENERATOR_VERSION
    from .environment import lib_version

    return f"lmms_eval-{lib_version('lmms_eval')}"
