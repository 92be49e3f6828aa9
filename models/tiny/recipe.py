"""The training recipe: its stages (``StageSpec``) and the committed default (``Recipe.default``).

Stages, each deterministic by seed: ``vision`` pretrains the ViT alone on per-patch labels;
``align`` freezes it and trains projector and decoder on packed questions, with a curriculum of
fewer objects; ``finetune`` trains everything (the vision tower at a lower learning rate) on the
evaluation mix.  ``arch`` trains the same stages, steps and data under another structure."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from . import shapes
from .model import TinyConfig
from .structures import ARCH_BY_NAME, ARCHES

EVAL_MIX = {t: 1.0 for t in shapes.TASKS}


@dataclass
class StageSpec:
    name: str
    steps: int
    lr: float
    batch: int
    extras: int = 0
    curriculum: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, float] = field(default_factory=lambda: dict(EVAL_MIX))
    vision_lr: float = 0.0  # 0 = vision tower frozen
    warmup: int = 50
    aux_layers: tuple[int, ...] = ()  # attention supervision (train-only auxiliary loss)
    aux_weight: float = 0.0
    caption: bool = False  # per-object-token caption loss (train-only auxiliary loss)
    copy_layer: int | None = None  # option word -> its letter attention supervision (train-only)
    option_layer: int | None = None  # where MC reads its correct option (None: the last aux layer)
    eos: bool = True  # learn to stop after the one-word answer


@dataclass
class Recipe:
    seed: int = 0
    model: TinyConfig = field(default_factory=TinyConfig)
    stages: list[StageSpec] = field(default_factory=list)
    eval_every: int = 500
    arch: str = "dense"  # one of ARCHES (structures.py)
    t2v_layers: tuple[int, ...] = ()  # vica: the layers where text reads visual K/V

    @classmethod
    def default(cls, seed: int = 0, scale: float = 1.0, arch: str = "dense") -> Recipe:
        """The committed recipe (about 50 minutes on 2 idle cores); ``scale`` shortens every stage.

        ``arch`` trains the same stages, steps and data under another structure (same budget):
        ``vica`` reads objects in its T2V layers (ViCA-7B's shape: the first layers and an early
        middle band), ``saisa`` adds one projector per layer, ``yopo`` runs the ``yopo`` method's
        defaults (5 x 5 window, half-width visual FFN, cut at 3/4 of the depth, every head serving
        visual tokens: the dense model's calibration keeps them all)."""
        if arch not in ARCHES:
            raise ValueError(f"unknown arch '{arch}': use one of {', '.join(ARCHES)}")

        def n(steps: int) -> int:
            return max(1, int(round(steps * scale)))

        # objects are read in layers 4-5, the correct option in layer 7 (a layer in between to turn
        # the object's attribute into a query for the option word): on the GPU this learned every
        # task by step 2000 of align, where reading both in layers 6-7 took until 2500 (MC last)
        qa = dict(extras=5, aux_layers=(4, 5), aux_weight=1.0, caption=True, copy_layer=0, option_layer=7)
        rules = ARCH_BY_NAME[arch]  # vica: objects can only be read in its T2V layers
        qa = rules.qa_stage(qa)
        glyph_heavy = {t: (3.0 if t == "shapes_read" else 1.0) for t in shapes.TASKS}
        return cls(
            seed=seed,
            stages=[
                StageSpec("vision", n(300), 2e-3, 32, tasks=glyph_heavy),
                StageSpec("align", n(3000), 1e-3, 16, **qa),
                StageSpec("finetune", n(600), 4e-4, 16, vision_lr=1e-4, warmup=20, **qa),
            ],
            eval_every=500 if scale >= 1 else 10**9,
            arch=arch,
            t2v_layers=rules.t2v_layers,
        )

    def as_dict(self) -> dict[str, Any]:
        out = {"seed": self.seed, "model": self.model.as_dict(), "stages": [asdict(st) for st in self.stages]}
        if self.arch != "dense":
            out["arch"] = self.arch
        if self.t2v_layers:
            out["t2v_layers"] = list(self.t2v_layers)
        return out
