"""Device and dtype paths: Batch.to, the executor and methods in float64 (catches float32 tensors a
method creates and mixes with model tensors, which would also break float16/bfloat16 on a GPU), and
``harness latency --device/--dtype``."""

import json

import pytest
import torch
from method_params import CLIP_METHODS, PARAMS

from harness.baselines.registry import build_stack, names
from harness.cli import main
from harness.models.backbones.base import collate
from harness.models.backbones.random import build_random, ragged_samples
from harness.models.executor import Executor

METHODS = ["dense", "fastv", "pdrop", "visionzip", "divprune", "sparsevlm", "shortv", "plan:t2v=0,2"]
LATENCY = ["latency", "--geometry", "llava-1.5", "--layers", "2", "--hidden", "128", "--heads", "4",
           "--batch", "1", "--min-repeats", "1", "--max-repeats", "1", "--warmup", "0", "--min-time", "0",
           "--decode-tokens", "2", "--json"]  # fmt: skip


@pytest.fixture(scope="module")
def pair():
    """The same random LLaVA-1.5 backbone in float32 and float64, and a ragged batch for each."""
    bb32 = build_random("llava-1.5")
    bb64 = build_random("llava-1.5").to("cpu", torch.float64)
    batch = bb32.encode(collate(bb32, ragged_samples(bb32, 2)))
    return bb32, bb64, batch, batch.to("cpu", torch.float64)


def test_batch_to_casts_floats_and_keeps_integer_fields(pair):
    _, _, batch, _ = pair
    assert batch.extras["clip"] and batch.vision_features
    out = batch.to("cpu", torch.float64)
    assert out.embeds.dtype == torch.float64 and torch.equal(out.embeds, batch.embeds.double())
    for name in ("token_type", "positions", "next_position", "visual_index", "visual_coords"):
        before, after = getattr(batch, name), getattr(out, name)
        assert after.dtype == before.dtype and not after.is_floating_point() and torch.equal(after, before)
    assert all(f.dtype == torch.float64 for f in out.vision_features)
    for clip in out.extras["clip"]:
        assert {k: v.dtype for k, v in clip.items() if isinstance(v, torch.Tensor)} == {
            "h_embed": torch.float64, "h_in": torch.float64, "h_out": torch.float64
        }  # fmt: skip
        assert isinstance(clip["layer"], int)
    assert out.extras["vision_layers_run"] == batch.extras["vision_layers_run"]
    assert out.sample_ids == batch.sample_ids
    assert batch.embeds.dtype == torch.float32 and batch.extras["clip"][0]["h_in"].dtype == torch.float32
    same = batch.to("cpu")  # no dtype: floats keep theirs
    assert same.embeds.dtype == torch.float32 and same.vision_features[0].dtype == torch.float32


@pytest.mark.parametrize("mode", ["drop", "mask"])
@pytest.mark.parametrize("name", METHODS)
def test_float64_run_matches_float32(pair, name, mode):
    bb32, bb64, b32, b64 = pair
    spec = {name: PARAMS[name]} if name in PARAMS else {}
    outs = []
    for bb, batch in ((bb32, b32), (bb64, b64)):
        plan = build_stack(name, spec).plan(bb)
        ex = Executor(bb, mode)
        pre = ex.prefill(batch, plan, cache_extra=2)
        tok = pre.logits.argmax(-1)
        dec = ex.decode_step(tok, pre.cache, plan)
        assert pre.cache.layers[0].k.dtype == bb.dtype
        outs.append((pre.logits, tok, dec, [s.present for s in pre.stats]))
    (l32, t32, d32, s32), (l64, t64, d64, s64) = outs
    assert s32 == s64, "the float64 run kept other visual tokens"
    assert torch.equal(t32, t64)
    torch.testing.assert_close(l64, l32, atol=1e-4, rtol=0)
    torch.testing.assert_close(d64, d32, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def half():
    """bfloat16 (CPU): a float32 tensor a method creates and concatenates with model tensors is
    promoted to float32 and then fails against bfloat16 weights, as it would in float16 on a GPU."""
    out = {}
    for family in ("llava-1.5", "qwen2-vl"):
        bb = build_random(family)
        batch = bb.encode(collate(bb, ragged_samples(bb, 2)))
        out[family] = (bb.to("cpu", torch.bfloat16), batch.to("cpu", torch.bfloat16))
    return out


@pytest.mark.parametrize("family", ["llava-1.5", "qwen2-vl"])
@pytest.mark.parametrize("name", [n for n in names() if n != "saisa"] + ["plan:keep=8@1;window=3@0"])
def test_every_method_runs_in_bfloat16(half, family, name):
    bb, batch = half[family]
    if name in CLIP_METHODS and family == "qwen2-vl":
        return  # these read the CLIP tower (LLaVA-1.5 only)
    plan = build_stack(name, {name: PARAMS[name]} if name in PARAMS else {}).plan(bb)
    for mode in ("drop", "mask"):
        ex = Executor(bb, mode)
        pre = ex.prefill(batch, plan, cache_extra=2)
        dec = ex.decode_step(pre.logits.argmax(-1), pre.cache, plan)
        assert pre.cache.layers[0].k.dtype == torch.bfloat16
        assert bool(pre.logits.isfinite().all()) and bool(dec.isfinite().all())


def test_latency_json_reports_device_and_dtype(capsys):
    assert main([*LATENCY, "--device", "cpu", "--dtype", "float32"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["device"] == "cpu" and data["dtype"] == "float32"
    assert data["prefill_p50_s"] > 0 and data["kv_bytes_per_sample"] > 0


def test_latency_bfloat16_with_a_clip_method(capsys):
    """The model, the batch and its CLIP states are cast together (VisionZip reads the CLIP states)."""
    assert main([*LATENCY, "--device", "auto", "--dtype", "bfloat16", "--method", "visionzip"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert data["dtype"] == "bfloat16" and data["kv_ratio"] < 0.5  # 128 of 576 visual tokens kept


def test_latency_device_cuda(capsys):
    rc = main([*LATENCY, "--device", "cuda"])
    out = capsys.readouterr()
    if torch.cuda.is_available():
        assert rc == 0 and json.loads(out.out)["device"] == "cuda"
    else:
        assert rc == 2
        assert out.err.strip() == "harness: error: --device cuda: no CUDA device is visible; use --device cpu"
        assert out.out == ""


def test_latency_table_shows_device(capsys):
    assert main([a for a in LATENCY if a != "--json"]) == 0
    assert "cpu / float32" in capsys.readouterr().out


def test_latency_cuda_graphs_on_cuda_and_a_one_line_error_elsewhere(capsys):
    """Graphs are on by default on CUDA (the replays are timed) and off on the CPU; asked for on a
    CPU they are one line naming the fix."""
    assert main([*LATENCY, "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["cuda_graphs"] is False
    rc = main([*LATENCY, "--device", "cpu", "--cuda-graphs"])
    out = capsys.readouterr()
    assert rc == 2 and out.out == ""
    assert out.err.strip() == (
        "harness: error: CUDA graphs need a CUDA device, and this run is on 'cpu'; use --no-cuda-graphs "
        "(eager timing) or run with --device cuda on a GPU machine"
    )
    if torch.cuda.is_available():
        for method in ("dense", "vica", "fastv", "visionzip"):
            assert main([*LATENCY, "--device", "cuda", "--dtype", "float16", "--method", method]) == 0
            data = json.loads(capsys.readouterr().out)
            assert data["cuda_graphs"] is True and data["decode_p50_s"] > 0, method


def test_graph_replays_equal_eager_calls_on_cuda():
    """A captured prefill and decode step give the eager logits (CUDA only; on a CPU, asking for
    them is the one-line error above)."""
    from harness.models.cuda_graphs import GraphedDecode, GraphedPrefill, GraphError

    bb = build_random("llava-1.5")
    batch = bb.encode(collate(bb, ragged_samples(bb, 2)))
    plan = build_stack("fastv", {"fastv": PARAMS["fastv"]}).plan(bb)
    if not torch.cuda.is_available():
        with pytest.raises(GraphError, match="CUDA graphs need a CUDA device"):
            GraphedPrefill(Executor(bb), batch, plan)
        return
    bb.to("cuda", torch.float32)
    batch = batch.to("cuda", torch.float32)
    ex = Executor(bb)
    eager = ex.prefill(batch, plan, cache_extra=8)
    graphed = GraphedPrefill(Executor(bb), batch, plan)()
    assert torch.allclose(graphed.logits, eager.logits, atol=1e-4)
    tok = eager.logits.argmax(-1)
    step = GraphedDecode(ex, eager.cache, tok, plan, warmup=1)
    want = Executor(bb).prefill(batch, plan, cache_extra=8)
    ref = Executor(bb)
    ref.decode_step(tok, want.cache, plan)  # the graph's warm-up step
    assert torch.allclose(step(), ref.decode_step(tok, want.cache, plan), atol=1e-4)
