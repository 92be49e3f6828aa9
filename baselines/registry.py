"""Method registry: a table of names -> ``module:Class``, and stacks such as ``vica+pdrop``.

The harness knows methods only through this module; a method's module is imported the first
time its name is asked for.  ``dense`` is the empty stack.

Adding a method (the README's checklist):
  1. one file, e.g. ``baselines/mymethod.py``, with a :class:`Method` subclass whose pydantic
     fields are its knobs, and a ``reference`` naming the official code its rule follows;
  2. one line in :data:`METHODS` below;
  3. its tests (a reference test restating the official rule, knobs in ``tests/method_params.py``
     if the defaults do not act on the 4-layer test models).
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field, replace
from typing import Any

from harness.models.method import STAGE_ORDER, Method, MethodError
from harness.models.plan import VisualPlan

#: registry name -> "module:Class" (imported lazily)
METHODS: dict[str, str] = {
    "vica": "harness.models.vica:ViCA",
    "saisa": "harness.models.saisa:SAISA",
    "shortv": "harness.baselines.shortv:ShortV",
    "yopo": "harness.baselines.yopo:YOPO",
    "yopo_textonly": "harness.baselines.yopo:YOPOTextOnly",
    "naavit": "harness.baselines.naavit:NAAViT",
    "fastv": "harness.baselines.fastv:FastV",
    "pdrop": "harness.baselines.pdrop:PDrop",
    "vtw": "harness.baselines.vtw:VTW",
    "dart": "harness.baselines.dart:DART",
    "random": "harness.baselines.random_drop:RandomDrop",
    "fastervlm": "harness.baselines.fastervlm:FasterVLM",
    "visionzip": "harness.baselines.visionzip:VisionZip",
    "vispruner": "harness.baselines.vispruner:VisPruner",
    "prumerge_plus": "harness.baselines.prumerge_plus:PruMergePlus",
    "divprune": "harness.baselines.divprune:DivPrune",
    "cdpruner": "harness.baselines.cdpruner:CDPruner",
    "tome": "harness.baselines.tome:ToMe",
    "sparsevlm": "harness.baselines.sparsevlm:SparseVLM",
}

_LOADED: dict[str, type[Method]] = {}


def names() -> list[str]:
    return ["dense", *sorted(METHODS)]


def get(name: str) -> type[Method]:
    if name not in METHODS:
        close = difflib.get_close_matches(name, names(), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise MethodError(f"unknown method '{name}': {hint}registered methods are {', '.join(names())}")
    if name not in _LOADED:
        module, _, attr = METHODS[name].partition(":")
        cls = getattr(importlib.import_module(module), attr)
        if getattr(cls, "name", None) != name:
            raise MethodError(
                f"registry entry '{name}' points at {METHODS[name]}, whose name is '{cls.name}'"
            )
        _LOADED[name] = cls
    return _LOADED[name]


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
        return {m.name: m.settings() for m in self.methods}

    def prepare_backbone(self, backbone: Any) -> Any:
        """The backbone after each method added what it brings (SAISA's projectors on a random
        decoder); see :meth:`Method.prepare_backbone`."""
        for m in self.methods:
            backbone = m.prepare_backbone(backbone)
        return backbone

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
