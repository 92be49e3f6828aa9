"""pytest-benchmark benchmarks of the executor's hot paths.

CI runs them once as tests (``--benchmark-disable`` in pytest's addopts).  To measure and compare:
``pytest tests/test_bench_executor.py --benchmark-enable --benchmark-autosave`` then
``pytest tests/test_bench_executor.py --benchmark-enable --benchmark-compare``.
"""

import pytest

from harness.models.backbones.synthetic import synthetic_backbone, synthetic_batch
from harness.models.executor import Executor
from harness.models.plan import VisualPlan
from harness.models.plan_spec import parse_plan


@pytest.fixture(scope="module")
def setup():
    bb = synthetic_backbone("llava-1.5", layers=2, hidden=128, heads=4)
    return bb, synthetic_batch(bb, "llava-1.5", 2)


@pytest.mark.parametrize("spec", ["", "kv_only=0-1", "keep=64@0:renumber", "t2v=0"])
def test_bench_prefill(benchmark, setup, spec):
    bb, batch = setup
    plan = parse_plan(spec, bb.num_layers) if spec else VisualPlan.dense(bb.num_layers)
    ex = Executor(bb)  # the plan is compiled on the first call, then reused
    out = benchmark(lambda: ex.prefill(batch, plan, cache_extra=None))
    assert out.logits.shape == (2, bb.text_config.vocab_size)


def test_bench_decode_step(benchmark, setup):
    bb, batch = setup
    ex = Executor(bb)
    out = ex.prefill(batch, cache_extra=10_000)
    tok = out.logits.argmax(-1)
    logits = benchmark(lambda: ex.decode_step(tok, out.cache))
    assert logits.shape == (2, bb.text_config.vocab_size)


def test_bench_compile(benchmark, setup):
    """The host half of a prefill: a plan compiled against a batch layout (numpy only)."""
    bb, batch = setup
    plan = parse_plan("t2v=0", bb.num_layers)
    prog = benchmark(lambda: Executor(bb).compile(batch, plan, None))
    assert len(prog.stats) == bb.num_layers
