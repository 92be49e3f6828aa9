"""One schedule for every FLOPs figure: the visual tokens each layer holds follow from the plan alone
(the same counts the executor compiles), and at paper geometries a method's runtime plan gives the
analytic model's hand-written schedules of the papers."""

from __future__ import annotations

import paper_schedules as ps
import pytest
from method_params import PARAMS

import harness.flops.model as fa
from harness.availability import analytic_schedule
from harness.baselines.registry import build_stack, names
from harness.flops.model import PromptCounts, visual_present
from harness.flops.paper import paper_table
from harness.models.backbones.random import ragged_samples
from harness.models.executor import Executor

METHODS = [n for n in names()[1:] if n != "saisa"]


@pytest.mark.parametrize("name", METHODS)
def test_present_tokens_follow_from_the_plan(random_backbones, name):
    bb = random_backbones["llava-1.5"]
    stack = build_stack(name, {name: PARAMS[name]} if name in PARAMS else {})
    plan = stack.plan(bb)
    inputs = ragged_samples(bb, 1)[0]
    batch = bb.encode(inputs, tower=plan.tower)
    stats = Executor(bb).prefill(batch, plan, cache_extra=None).stats
    measured = [st.present[0] for st in stats]
    assert visual_present(plan, PromptCounts.of(batch)) == measured
    drops = plan.reducer is not None or any(lp.drop_before or lp.drop_after for lp in plan.layers)
    if drops:  # the counts are not trivially the prompt's
        assert min(measured) < PromptCounts.of(bb.encode(inputs)).visual


G7 = fa.get_geometry("llava-1.5-7b")
PDROP = {192: ([8, 16, 24], 0.25), 128: ([2, 8, 16], 0.42), 64: ([2, 8, 16], 0.195)}


def _of_576(b):
    return round(b * G7.v / 576)


HAND = [  # (method, params, the paper model's own schedule of it)
    ("dense", {}, fa.dense(G7)),
    ("vica", {}, ps.vica(G7)),  # the 7B checkpoint: 8 T2V layers, no system queries
    ("shortv", {}, ps.shortv(G7)),  # the published 19 layers
    ("shortv", {"n": 8}, ps.shortv(G7, 8)),
    ("naavit", {}, ps.naavit(G7)),
    ("vtw", {"k": 16}, ps.vtw(G7, 16)),
    ("fastv", {}, ps.fastv(G7, 2, ratio=0.5)),
    ("fastv", {"k": 3, "budget": 64}, ps.fastv(G7, 3, keep=_of_576(64))),
    *[("pdrop", {"budget": b}, ps.pdrop(G7, *PDROP[b])) for b in PDROP],
    *[("random", {"budget": b}, fa.in_llm(G7, [_of_576(b)] * G7.layers)) for b in (192, 128, 64)],
    *[
        ("dart", {"budget": b}, fa.in_llm(G7, [G7.v] * 2 + [4 + 8 * (_of_576(b) // 8)] * 30))
        for b in (192, 64)
    ],
    ("visionzip", {"budget": 64}, fa.prune(G7, 64)),
]


@pytest.mark.parametrize(("method", "params", "hand"), HAND, ids=[f"{m}{p}" for m, p, _ in HAND])
def test_paper_geometry_schedule_is_the_methods_plan(method, params, hand):
    g, derived = analytic_schedule("llava-1.5-7b", method, {method: params} if params else {})
    for convention in ("exact", "shortv", "swiglu"):
        assert fa.analyze(g, derived, convention).as_dict() == fa.analyze(g, hand, convention).as_dict()


def test_a_stack_that_cannot_be_built_there_has_no_paper_schedule():
    assert analytic_schedule("qwen2-vl-7b", "shortv", {}) is None  # no published or calibrated list
    g, sched = analytic_schedule("llava-1.5-7b", "saisa", {})  # SAISA brings projectors' shapes
    assert fa.analyze(g, sched).decoder_projectors.flops > 0


def test_the_restated_published_constants_are_the_methods_own():
    """The tests' restatement quotes the papers; the methods hold the same lists."""
    from harness.baselines.pdrop import BUDGET_SCHEDULES
    from harness.baselines.shortv import PUBLISHED_LAYERS
    from harness.models.vica import T2V_LAYERS

    assert {k: list(v) for k, v in ps.SHORTV_LAYERS.items()} == PUBLISHED_LAYERS
    by_geometry = {"mobilellama-2.7b": "llava-1.5-3b"}  # the 3B ViCA model's geometry
    assert {by_geometry.get(k, k): list(v) for k, v in ps.VICA_T2V.items()} == T2V_LAYERS
    assert {b: (list(layers), lam) for b, (layers, lam) in ps.PDROP_DEFAULTS.items()} == BUDGET_SCHEDULES


def _yopo_heads(mask):
    return [list(range(n)) for n in ps.HEADMASK_KEPT[mask]]


RULES = [  # schedules whose paper convention needs the rule's work (head fractions, windows, projectors)
    ("saisa", {}, ps.saisa(G7)),
    (
        "yopo_textonly",
        {"head_mask": _yopo_heads("headmask_7b_16"), "k_cut": 16},
        ps.yopo(G7, "headmask_7b_16", 16),
    ),
    (
        "yopo_textonly",
        {"head_mask": _yopo_heads("headmask_7b_8"), "k_cut": 8},
        ps.yopo(G7, "headmask_7b_8", 8),
    ),
    (
        "yopo",
        {"head_mask": _yopo_heads("headmask_7b_16"), "k_cut": 16},
        ps.yopo(G7, "headmask_7b_16", 16, semantics="reference"),
    ),
    ("shortv", {"layers": list(range(31, 3, -1))}, ps.shortv(G7, layers=range(31, 3, -1))),
]


@pytest.mark.parametrize(
    ("method", "params", "hand"), RULES, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(RULES)]
)
def test_paper_conventions_follow_from_the_plans(method, params, hand):
    derived = fa.plan_schedule(G7, method, {method: params})
    for convention in ("exact", "shortv"):
        assert fa.analyze(G7, derived, convention).as_dict() == fa.analyze(G7, hand, convention).as_dict()


def test_the_paper_table_rows_are_the_methods_own():
    rows = paper_table(["llava-1.5-7b", "llava-1.5-13b"])
    by = {(r["backbone"], r["method"], r["setting"]): r for r in rows}
    yopo = by[("llava-1.5-7b", "yopo", "25% (headmask_7b_16, K_cut=16, w=5, s=35, r=2)")]
    assert yopo["published"] == {"tflops_visual_yopo": 1.91} and yopo["visual_convention"] == "yopo"
    # PDrop's rank layers scale with depth: the "192" schedule averages 192 tokens on 40 layers too
    assert by[("llava-1.5-13b", "pdrop", "192 layer-avg ([8, 16, 24], λ=0.25)")]["layer_avg"] == 191.25
    assert {m for _, m, _ in by} == {
        "dense", "fastv", "naavit", "pdrop", "prune", "saisa", "shortv", "vica", "vica+pdrop", "vtw", "yopo",
    }  # fmt: skip
