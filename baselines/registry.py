"""Method registry: names -> method classes, and stacks such as ``vica+pdrop``.

The harness knows methods only through this module.  ``dense`` is the empty stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from harness.models.method import STAGE_ORDER, Method, MethodError
from harness.models.plan import VisualPlan

REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if cls.name in REGISTRY:
        raise MethodError(f"method '{cls.name}' registered twice")
    REGISTRY[cls.name] = cls
    return cls


_LOADED = False


def _load_all() -> None:
    """Register every method, one line each.  Nothing else imports a concrete method."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from harness.models.saisa import SAISA
    from harness.models.vica import ViCA

    from .cdpruner import CDPruner
    from .dart import DART
    from .divprune import DivPrune
    from .fastervlm import FasterVLM
    from .fastv import FastV
    from .naavit import NAAViT
    from .pdrop import PDrop
    from .prumerge_plus import PruMergePlus
    from .random_drop import RandomDrop
    from .shortv import ShortV
    from .sparsevlm import SparseVLM
    from .tome import ToMe
    from .visionzip import VisionZip
    from .vispruner import VisPruner
    from .vtw import VTW
    from .yopo import YOPO, YOPOTextOnly

    for cls in (ViCA, SAISA, ShortV, YOPO, YOPOTextOnly, NAAViT, FastV, PDrop, VTW, DART, RandomDrop,
                FasterVLM, VisionZip, VisPruner, PruMergePlus, DivPrune, CDPruner, ToMe,
                SparseVLM):  # fmt: skip
        register(cls)


def names() -> list[str]:
    _load_all()
    return ["dense", *sorted(REGISTRY)]


def get(name: str) -> type[Method]:
    _load_all()
    if name not in REGISTRY:
        raise MethodError(f"unknown method '{name}': registered methods are {', '.join(names())}")
    return REGISTRY[name]


def _make(part: str, params: dict[str, dict[str, Any]]) -> Method:
    if part.startswith("plan:"):
        from harness.models.plan_spec import HandPlan

        return HandPlan(spec=part.removeprefix("plan:"))
    return get(part)(**params.get(part, {}))


@dataclass
class Stack:
    """An ordered, validated composition of methods (empty = dense)."""

    methods: list[Method] = field(default_factory=list)

    @property
    def name(self) -> str:
        return "+".join(m.label for m in self.methods) or "dense"

    def params(self) -> dict[str, dict[str, Any]]:
        return {m.name: m.params.model_dump() for m in self.methods}

    def plan(self, backbone: Any) -> VisualPlan:
        plan = VisualPlan.dense(backbone.num_layers)
        for m in self.methods:
            m.validate_for(backbone)
            plan = m.apply(plan, backbone)
        return replace(plan, name=self.name)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "methods": [m.describe() for m in self.methods]}


def build_stack(spec: str, params: dict[str, dict[str, Any]] | None = None) -> Stack:
    """Parse ``a+b`` into a stack; order must be pre-llm -> structural -> in-llm."""
    params = dict(params or {})
    parts = [p.strip() for p in spec.split("+") if p.strip()]
    if not parts:
        raise MethodError("empty method name: use 'dense' or a registered method such as 'vica+pdrop'")
    if parts == ["dense"]:
        if params.get("dense"):
            raise MethodError("method 'dense' takes no parameters")
        return Stack([])
    if "dense" in parts:
        raise MethodError(f"'dense' cannot be stacked ('{spec}'): it means no method")
    if len(set(parts)) != len(parts):
        raise MethodError(f"method stack '{spec}' repeats a method")
    unknown = set(params) - set(parts)
    if unknown:
        raise MethodError(f"parameters given for {sorted(unknown)} which are not in the stack '{spec}'")
    methods = [_make(p, params) for p in parts]
    stages = [STAGE_ORDER[m.stage] for m in methods]
    if stages != sorted(stages):
        order = " -> ".join(f"{m.name} ({m.stage})" for m in methods)
        raise MethodError(
            f"method stack '{spec}' is out of order ({order}); compose pre-llm -> structural -> in-llm"
        )
    if sum(m.stage == "pre-llm" for m in methods) > 1:
        raise MethodError(f"method stack '{spec}' has two pre-llm reducers; use at most one")
    structural = [m.name for m in methods if m.stage == "structural"]
    if len(structural) > 1:
        raise MethodError(f"method stack '{spec}' combines structural methods {structural}; use at most one")
    return Stack(methods)
