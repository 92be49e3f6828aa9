"""Helpers shared by the method files: published-backbone detection, budgets, layer lists."""

from __future__ import annotations

from typing import Any

import torch

from harness.models.method import MethodError
from harness.models.selection import top_k_slots

#: (family, layers, hidden) -> published backbone name
PUBLISHED = {
    ("llava", 32, 4096): "llava-1.5-7b",
    ("llava", 40, 5120): "llava-1.5-13b",
    ("llava", 32, 2560): "llava-1.5-3b",
    ("llava_next", 32, 4096): "llava-next-7b",
    ("llava_next", 40, 5120): "llava-next-13b",
    ("qwen2_vl", 28, 3584): "qwen2-vl-7b",
}
REFERENCE_VISUAL = 576  # budgets 192 / 128 / 64 are "of 576"; other counts keep the same fraction


def published_name(backbone: Any) -> str | None:
    return PUBLISHED.get((backbone.family, backbone.num_layers, backbone.hidden_size))


def check_layers(method: str, param: str, layers: list[int], num_layers: int) -> None:
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise MethodError(f"method '{method}': {param} {bad} out of range for a {num_layers}-layer decoder")


def scaled_layers(reference: list[int], reference_layers: int, num_layers: int) -> list[int]:
    """Map layer ids of a 32-layer reference schedule to another depth (proportionally)."""
    return sorted({min(num_layers - 1, max(1, round(i * num_layers / reference_layers))) for i in reference})


def kept_count(budget: float, n_visual: int) -> int:
    """Visual tokens kept for a budget given "of 576" (the same fraction of any other count)."""
    return max(1, min(n_visual, round(budget / REFERENCE_VISUAL * n_visual)))


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest of 1-D ``scores`` (at most all of them); ties toward the lower index."""
    return top_k_slots(scores, min(k, scores.numel()))
