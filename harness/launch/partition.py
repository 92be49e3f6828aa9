"""The one partitioner of every launcher: cells grouped by backbone, split into chunks of at most a
GPU-minute budget, largest first.

* Grouping by backbone (model, dtype, device) lets a worker load each checkpoint once.
* Costs come from the paper suite's estimate (``availability.estimate_gpu_minutes``); a cell it
  cannot price (an embedded or random backbone, a FLOPs cell) counts ``UNPRICED_MINUTES``.
* Latency cells go into chunks of their own, marked ``exclusive``: they are timed with nothing else
  on their node (SLURM ``--exclusive``; on Ray the driver runs nothing beside them on that node).
* Within a group, cells are packed first-fit decreasing; a cell above the budget is a chunk alone.
  Chunks are returned largest first, and each lists its cells in suite order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..availability import estimate_gpu_minutes
from ..suite import Cell

UNPRICED_MINUTES = 1.0
DEFAULT_CHUNK_MINUTES = 60.0
EXCLUSIVE_SCENARIOS = ("latency",)


@dataclass
class Chunk:
    backbone: str  # the backbone's suite name
    exclusive: bool
    cells: list[int] = field(default_factory=list)  # cell indices, suite order
    minutes: float = 0.0

    def describe(self) -> str:
        kind = "latency, exclusive" if self.exclusive else "shared"
        return f"{self.backbone}: {len(self.cells)} cells, ~{self.minutes:.1f} GPU-min ({kind})"


def cell_minutes(cell: Cell) -> float:
    est = estimate_gpu_minutes(cell)
    return UNPRICED_MINUTES if est is None else max(est, 0.0)


def backbone_key(cell: Cell) -> tuple[str, str, str]:
    return (cell.backbone.model, cell.backbone.dtype, cell.backbone.device)


def is_exclusive(cell: Cell) -> bool:
    return cell.scenario.kind in EXCLUSIVE_SCENARIOS


def partition(cells: Sequence[Cell], budget_minutes: float = DEFAULT_CHUNK_MINUTES) -> list[Chunk]:
    """Chunks of the given cells (those a launcher still has to run)."""
    if not budget_minutes > 0:
        raise ValueError(f"the chunk budget must be positive, got {budget_minutes} GPU-minutes")
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        groups.setdefault((*backbone_key(c), is_exclusive(c)), []).append(c)
    chunks: list[Chunk] = []
    for key, members in groups.items():
        bins: list[Chunk] = []
        for c in sorted(members, key=lambda c: (-cell_minutes(c), c.index)):
            cost = cell_minutes(c)
            home = next((b for b in bins if b.minutes + cost <= budget_minutes), None)
            if home is None:
                home = Chunk(backbone=c.backbone.name, exclusive=key[-1])
                bins.append(home)
            home.cells.append(c.index)
            home.minutes += cost
        for b in bins:
            b.cells.sort()
        chunks.extend(bins)
    return sorted(chunks, key=lambda b: (-b.minutes, b.cells[0]))
