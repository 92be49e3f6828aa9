"""Hand-written plans from a one-line spec, for timing and counting before a method exists.

Clauses are separated by ``;`` and applied left to right on top of the dense plan.  Layer sets
(``RANGE``) are lists and ranges (``0,1,7-11,14``) or a share of the last layers (``60%``).

=====================  =================================================================
clause                 effect
=====================  =================================================================
``keep=K@L``           keep the first K visual tokens from layer L on (dropped before L);
                       ``keep=K@L:renumber`` renumbers positions (pre-LLM / PDrop style)
``kv_only=RANGE``      visual tokens are keys/values only there (no query, no FFN; ShortV)
``invisible=RANGE``    visual tokens take no part there (not queried, not visible, no FFN)
``t2v=RANGE``          ViCA-like: K/V-only from the fixed layer-0 input in RANGE,
                       invisible everywhere else
``noquery=RANGE``      visual tokens are not queries there, FFN kept (NAAViT)
``window=K@RANGE``     visual queries see a K x K grid window (plus the system prefix)
``ffn=W@RANGE``        visual FFN uses the first W intermediate channels
``heads=H1,H2@RANGE``  only these heads serve visual tokens (``heads=...@RANGE:zero`` for the
                       zeroed-values variant)
=====================  =================================================================

Example (issue 5's acceptance plans on a 32-layer decoder): ``keep=64@0:renumber``,
``keep=64@2``, ``kv_only=60%``, ``t2v=0,1,7-11,14``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from dataclasses import replace as dc_replace
from typing import ClassVar, cast

from .method import Method, MethodError
from .plan import (
    DENSE_LAYER,
    INVISIBLE,
    KV_ONLY,
    KeepVisual,
    LayerPlan,
    PlanError,
    PositionPolicy,
    VisualPlan,
)


def parse_layers(text: str, num_layers: int) -> list[int]:
    text = text.strip()
    if text.endswith("%"):
        share = float(text[:-1]) / 100
        n = math.ceil(share * num_layers - 1e-9)
        return list(range(num_layers - n, num_layers))
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = (int(x) for x in part.split("-", 1))
            out.extend(range(a, b + 1))
        else:
            out.append(int(part))
    bad = [i for i in out if not 0 <= i < num_layers]
    if bad:
        raise PlanError(f"layer(s) {bad} out of range for a {num_layers}-layer decoder")
    return sorted(set(out))


def parse_plan(spec: str, num_layers: int) -> VisualPlan:
    """Build a plan from a spec (see the module docstring); one-line PlanError on bad input."""
    layers: list[LayerPlan] = [DENSE_LAYER] * num_layers
    for clause in [c.strip() for c in spec.split(";") if c.strip()]:
        if "=" not in clause:
            raise PlanError(f"plan clause '{clause}' needs NAME=VALUE (e.g. keep=64@2, kv_only=0-18)")
        name, value = (x.strip() for x in clause.split("=", 1))
        try:
            _apply(layers, name, value, num_layers)
        except (ValueError, IndexError) as exc:
            if isinstance(exc, PlanError):
                raise
            raise PlanError(f"plan clause '{clause}': {exc}") from None
    return VisualPlan(tuple(layers), name=f"plan:{spec}")


def _apply(layers: list[LayerPlan], name: str, value: str, n: int) -> None:
    if name == "keep":
        count, _, where = value.partition("@")
        at, _, policy = where.partition(":")
        li = int(at or 0)
        if not 0 <= li < n:
            raise PlanError(f"keep=...@{li}: layer out of range for a {n}-layer decoder")
        policy = cast(PositionPolicy, policy or "keep")  # VisualPlan.validate checks it
        sel = KeepVisual(count=int(count), positions=policy)
        layers[li] = replace(layers[li], drop_before=sel)
    elif name in ("kv_only", "invisible", "noquery"):
        base = {
            "kv_only": KV_ONLY,
            "invisible": INVISIBLE,
            "noquery": replace(DENSE_LAYER, visual_query=False),
        }[name]
        for i in parse_layers(value, n):
            layers[i] = replace(base, drop_before=layers[i].drop_before)
    elif name == "t2v":
        listed = set(parse_layers(value, n))
        for i in range(n):
            base = replace(KV_ONLY, kv_source="fixed") if i in listed else INVISIBLE
            layers[i] = replace(base, drop_before=layers[i].drop_before)
    elif name == "window":
        k, _, rng = value.partition("@")
        for i in parse_layers(rng or f"0-{n - 1}", n):
            layers[i] = replace(layers[i], visual_attn="window", window=int(k))
    elif name == "ffn":
        w, _, rng = value.partition("@")
        for i in parse_layers(rng or f"0-{n - 1}", n):
            layers[i] = replace(layers[i], visual_ffn=int(w))
    elif name == "heads":
        heads, _, rest = value.partition("@")
        rng, _, mode = rest.partition(":")
        hs = tuple(int(h) for h in heads.split(",") if h.strip())
        for i in parse_layers(rng or f"0-{n - 1}", n):
            layers[i] = replace(
                layers[i], visual_heads=hs, head_mode="zero_values" if mode == "zero" else "drop_keys"
            )
    else:
        raise PlanError(
            f"unknown plan clause '{name}': use keep, kv_only, invisible, t2v, noquery, window, ffn or heads"
        )


class HandPlan(Method):
    """A hand-written plan (``plan:SPEC`` in a method stack)."""

    name: ClassVar[str] = "plan"
    stage: ClassVar = "structural"
    description: ClassVar[str] = "hand-written visual plan from a spec (see models/plan_spec.py)"
    spec: str

    @property
    def label(self) -> str:
        return f"plan:{self.spec}"

    def validate_for(self, backbone) -> None:
        try:
            parse_plan(self.spec, backbone.num_layers)
        except PlanError as exc:
            raise MethodError(str(exc)) from None

    def apply(self, plan: VisualPlan, backbone) -> VisualPlan:
        hand = parse_plan(self.spec, backbone.num_layers)
        merged = [h if h != DENSE_LAYER else p for p, h in zip(plan.layers, hand.layers, strict=True)]
        return dc_replace(plan, layers=tuple(merged), name=hand.name)
