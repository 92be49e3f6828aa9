"""Launchers: where the cells of ``harness run`` execute.

``local`` runs them in this process (``runner.run_suite``); ``ray`` on one Ray actor per GPU (or
CPU slot) that keeps its backbone loaded, the driver the only writer of records; ``slurm`` as
submitit job arrays whose tasks each run ``run_suite`` on a chunk into the shared records folder.
All three share one partitioner (``partition.py``) and the records folder as the only truth: a
cell is done when an ``ok`` record with its fingerprint exists, fingerprints are computed where
the cell runs, and re-running the same command is status, resume and retry at once.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import HarnessError

LAUNCHERS = ("local", "ray", "slurm")

#: launcher -> (module it needs, the extra that installs it)
_EXTRAS = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}


def require(launcher: str) -> ModuleType:
    """Import the engine a launcher runs on, or one line saying which extra installs it."""
    module, extra = _EXTRAS[launcher]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise HarnessError(
            f"--launcher {launcher} needs {module}, which is not installed: pip install 'seebench[{extra}]'"
            f" (or ./install.sh {extra})"
        ) from None
