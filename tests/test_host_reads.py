"""No host reads in the layer loop: every registered method and the latency tables' hand-written
plans, at batch 1 and in a ragged batch of 4, through prefill (with and without a KV cache) and two
decode steps.  A host read (``.item()``, ``.tolist()``, ``bool(t)``, ``nonzero``, boolean-mask
indexing, ...) is a GPU synchronisation; the counter (``harness/opcount.py``) sees every kind, also
under ``torch.inference_mode``.  The only reads allowed are the ones a method declares
(``Method.host_reads``), and those are outside the decoder layers (a pre-LLM reducer's count)."""

import pytest
import torch
from method_params import CLIP_METHODS, PARAMS

from harness.baselines.registry import build_stack, names
from harness.models.backbones.base import collate
from harness.models.backbones.random import ragged_samples
from harness.models.executor import Executor
from harness.opcount import count_call, counting

METHODS = [n for n in names()[1:] if n != "saisa"]  # saisa: tests/test_convert.py
PLANS = ["plan:keep=64@0:renumber", "plan:keep=64@2", "plan:kv_only=60%", "plan:t2v=0-1", "plan:keep=8@1"]


def _stack(name):
    return build_stack(name, {name: PARAMS[name]} if name in PARAMS else {})


def _declared(stack) -> int:
    return sum(getattr(m, "host_reads", 0) for m in stack.methods)


@pytest.fixture(scope="module")
def batches(random_backbones):
    out = {}
    for family in ("llava-1.5", "qwen2-vl"):
        bb = random_backbones[family]
        out[family] = {
            1: bb.encode(ragged_samples(bb, 1)[0]),
            4: bb.encode(collate(bb, ragged_samples(bb, 4))),
        }
    return out


# CLIP-reading methods need LLaVA-1.5's tower (tests/test_methods.py checks the error elsewhere)
CASES = [
    (n, f)
    for n in METHODS + PLANS
    for f in ("llava-1.5", "qwen2-vl")
    if f == "llava-1.5" or n not in CLIP_METHODS
]


@pytest.mark.parametrize("size", [1, 4])
@pytest.mark.parametrize(("name", "family"), CASES)
def test_prefill_and_decode_read_nothing_on_the_host(random_backbones, batches, family, size, name):
    bb = random_backbones[family]
    batch = batches[family][size]
    stack = _stack(name)
    plan = stack.plan(bb)
    allowed = _declared(stack)
    ex = Executor(bb)  # a fresh executor: the first call compiles the plan (host numpy only) too
    no_cache = count_call(lambda: ex.prefill(batch, plan, cache_extra=None))
    assert no_cache.host_reads <= allowed, (name, dict(no_cache.reads))
    with counting() as cached:
        out = ex.prefill(batch, plan, cache_extra=2)
    assert cached.host_reads <= allowed, (name, dict(cached.reads))
    tok = out.logits.argmax(-1)
    with counting() as decode:
        for _ in range(2):
            tok = ex.decode_step(tok, out.cache, plan).argmax(-1)
    assert decode.host_reads == 0, (name, dict(decode.reads))
    if size == 1:  # and the counter is on: the reference executor reads in every layer
        from harness.models.reference_executor import ReferenceExecutor

        ref = count_call(lambda: ReferenceExecutor(bb, "drop").prefill(batch, plan, cache_extra=None))
        assert ref.host_reads > 0


def test_only_pruning_with_a_data_dependent_count_declares_reads():
    declared = {n: _declared(_stack(n)) for n in METHODS}
    assert {n for n, r in declared.items() if r} <= {"prumerge_plus"}
    assert all(r <= 1 for r in declared.values())


def test_counter_sees_every_kind_of_host_read():
    x = torch.arange(6.0)
    cases = {
        "item": lambda: x[0].item(),
        "tolist": lambda: x.tolist(),
        "int": lambda: int(x[1]),
        "float": lambda: float(x[1]),
        "bool": lambda: bool(x[1] > 0),
        "nonzero": lambda: torch.nonzero(x > 2),
        "mask index": lambda: x[x > 2],
        "mask assignment": lambda: x.clone().__setitem__(x > 2, 0.0),
        "masked_select": lambda: torch.masked_select(x, x > 2),
        "unique": lambda: torch.unique(x),
        "repeat_interleave": lambda: torch.repeat_interleave(torch.tensor([1, 2])),
        "range": lambda: list(range(x[2].long())),
    }
    for what, fn in cases.items():
        for mode in (torch.inference_mode, torch.no_grad):
            with mode():
                c = count_call(fn)
            assert c.host_reads == 1, (what, mode.__name__, dict(c.reads))
    with torch.inference_mode():
        static = count_call(lambda: torch.gather(x, 0, torch.topk(x, 3).indices.sort().values))
    assert static.host_reads == 0 and static.ops >= 3
