"""The compiled executor against the reference one, and graph capture.

The reference executor (``reference_executor.py``) keeps seebench's first drop path (row sets
decided by reading the device in every layer) and the mask path (every token in every matmul).
The compiled path must give their logits, stats, KV-cache contents and greedy tokens for every
registered method and hand-made plan, in a ragged batch, also with the GPU's attention choices (two
SDPA calls for a query prefix, torch's bottom-right causal bias) forced on the CPU; and its prefill
at a fixed layout and its decode step must trace into one graph (``torch.compile(fullgraph=True)``,
no graph break), which is what CUDA graphs are built on.
"""

import pytest
import torch
from method_params import CLIP_METHODS, PARAMS
from test_executor_modes import hand_made_plans

from harness.baselines.registry import build_stack, names
from harness.models.backbones.base import collate
from harness.models.backbones.random import ragged_samples
from harness.models.backbones.synthetic import synthetic_backbone, synthetic_batch
from harness.models.executor import Executor
from harness.models.reference_executor import ReferenceExecutor
from harness.models.verify import TOLERANCE

METHODS = [n for n in names()[1:] if n != "saisa"]


def _run(ex, batch, plan, steps=3):
    out = ex.prefill(batch, plan, cache_extra=steps)
    tok = out.logits.argmax(-1)
    toks, logits = [tok], [out.logits]
    for _ in range(steps - 1):
        lg = ex.decode_step(tok, out.cache, plan)
        tok = lg.argmax(-1)
        toks.append(tok)
        logits.append(lg)
    return out, torch.stack(toks, 1), logits


def _compare(bb, batch, plan, **options):
    new, new_toks, new_logits = _run(Executor(bb, **options), batch, plan)
    caches = {}
    for mode in ("drop", "mask"):
        ref, ref_toks, ref_logits = _run(ReferenceExecutor(bb, mode), batch, plan)
        caches[mode] = ref.cache
        diff = max(float((a - b).abs().max()) for a, b in zip(new_logits, ref_logits, strict=True))
        assert diff <= TOLERANCE, (mode, diff)
        assert torch.equal(new_toks, ref_toks), mode
        assert [s.present for s in new.stats] == [s.present for s in ref.stats]
        assert [(s.attn_q, s.kv, s.ffn) for s in new.stats] == [(s.attn_q, s.kv, s.ffn) for s in ref.stats]
    drop = caches["drop"]  # after the same decode steps
    assert new.cache.bytes_per_sample() == drop.bytes_per_sample()
    assert new.cache.visual_entries() == drop.visual_entries()
    assert [lk.next_pos.tolist() for lk in new.cache.layers] == [lk.next_pos.tolist() for lk in drop.layers]


CASES = [
    (n, f) for n in METHODS for f in ("llava-1.5", "qwen2-vl") if f == "llava-1.5" or n not in CLIP_METHODS
]


@pytest.mark.parametrize(("name", "family"), CASES)
def test_every_method_equals_the_reference_paths(random_backbones, name, family):
    bb = random_backbones[family]
    plan = build_stack(name, {name: PARAMS[name]} if name in PARAMS else {}).plan(bb)
    _compare(bb, bb.encode(collate(bb, ragged_samples(bb, 4))), plan)
    _compare(bb, bb.encode(ragged_samples(bb, 1)[0]), plan)


@pytest.mark.parametrize("family", ["llava-1.5", "llava-next", "qwen2-vl"])
@pytest.mark.parametrize("plan_name", list(hand_made_plans(4)))
def test_hand_made_plans_equal_the_reference_paths(random_backbones, family, plan_name):
    bb = random_backbones[family]
    plan = hand_made_plans(bb.num_layers)[plan_name]
    _compare(bb, bb.encode(collate(bb, ragged_samples(bb, 4))), plan)


@pytest.fixture(scope="module")
def synthetic():
    bb = synthetic_backbone("llava-1.5", layers=4, hidden=128, heads=4, kv_heads=2)
    return bb, synthetic_batch(bb, "llava-1.5", 2)


GPU_STYLE = ["vica", "shortv", "yopo", "yopo_textonly", "fastv", "pdrop", "sparsevlm", "plan:t2v=0-1"]


@pytest.mark.parametrize("name", GPU_STYLE)
def test_gpu_attention_choices_equal_the_reference(synthetic, name):
    """Uniform layouts use is_causal, bottom-right causal and query-prefix splits; forcing the
    CUDA defaults (two calls, CausalBias) on the CPU must not change a logit."""
    bb, batch = synthetic
    params = {"shortv": {"layers": [1, 2]}, "fastv": {"budget": 64}, "pdrop": {"budget": 64},
              "sparsevlm": {"layers": [0, 1, 2]}}  # fmt: skip
    plan = build_stack(name, {name: params[name]} if name in params else {}).plan(bb)
    ex = Executor(bb, prefer_split=True, lower_right_bias=True)
    kinds = {s.attn.kind for s in ex.prepare(batch, plan, None)[1].steps if hasattr(s, "attn")}
    assert kinds <= {"causal", "suffix", "split", "mask"}
    _compare(bb, batch, plan, prefer_split=True, lower_right_bias=True)
    _compare(bb, batch, plan)


def test_uniform_layouts_need_no_mask(synthetic):
    """ViCA-7B's shape (text queries only, over [sys|vis|text] or [sys|text]) attends bottom-right
    causal; dense is plain causal; ShortV's KV-only layers split their queries; none builds a mask."""
    bb, batch = synthetic
    ex = Executor(bb, prefer_split=True, lower_right_bias=True)
    vica7b = build_stack("vica", {"vica": {"t2v_layers": [0, 2], "system_query_layers": []}}).plan(bb)
    steps = ex.prepare(batch, vica7b, None)[1].steps
    assert [s.attn.kind for s in steps] == ["suffix"] * 4 and all(s.attn.mask is None for s in steps)
    assert [(s.attn.nq, s.attn.nk) for s in steps] == [(29, 640), (29, 64), (29, 640), (29, 64)]
    dense = [s.attn for s in ex.prepare(batch, None, None)[1].steps]
    assert {a.kind for a in dense} == {"causal"} and all(a.mask is None for a in dense)
    shortv = build_stack("shortv", {"shortv": {"layers": [1, 2]}}).plan(bb)
    steps = ex.prepare(batch, shortv, None)[1].steps
    assert [s.attn.kind for s in steps] == ["causal", "split", "split", "causal"]
    assert (
        all(s.attn.mask is None for s in steps) and steps[1].attn.split == 35
    )  # the system prompt attends on its own, the text over every key


def test_vica_runs_its_text_layers_on_the_text_rows_alone(synthetic):
    bb, batch = synthetic
    plan = build_stack("vica", {"vica": {"t2v_layers": [0, 2]}}).plan(bb)
    steps = Executor(bb).prepare(batch, plan, None)[1].steps
    assert [s.work.width for s in steps] == [640, 64, 640, 64]
    assert steps[1].work_key == steps[3].work_key or steps[1].work.same_rows(steps[3].work)


@pytest.mark.parametrize("name", ["dense", "vica", "fastv"])
def test_prefill_and_decode_trace_into_one_graph(synthetic, name):
    bb, batch = synthetic
    params = {"fastv": {"fastv": {"budget": 64}}}.get(name, {})
    plan = build_stack(name, params).plan(bb)
    ex = Executor(bb)
    inputs, program = ex.prepare(batch, plan, None)
    torch._dynamo.reset()
    with torch.no_grad():
        eager = ex.run_prefill(program, inputs).logits
        graph = torch.compile(lambda: ex.run_prefill(program, inputs).logits, fullgraph=True, backend="eager")
        assert torch.allclose(graph(), eager, atol=1e-5)
    out = ex.prefill(batch, plan, cache_extra=4)
    tok = out.logits.argmax(-1)
    ex.decode_step(tok, out.cache, plan)  # the first step prepares the cache's decode state
    with torch.inference_mode():
        step = torch.compile(lambda: ex.run_decode(tok, out.cache), fullgraph=True, backend="eager")
        compiled = step()
    eager_out = ex.prefill(batch, plan, cache_extra=4)
    ex.decode_step(tok, eager_out.cache, plan)
    assert torch.allclose(compiled, ex.decode_step(tok, eager_out.cache, plan), atol=1e-4)
