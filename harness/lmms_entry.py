"""lmms-eval plugin entry point (group ``lmms_eval.models``): registers the ``seebench`` model.

Kept free of heavy imports: lmms-eval calls it while ``lmms_eval.models`` is still importing.
"""

from __future__ import annotations

import os

TASKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lmms_tasks")


def lmms_eval_manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id="seebench", simple_class_path="harness.lmms_plugin.SeebenchLMM")]
