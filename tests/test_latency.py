"""Latency machinery: timer rules, percentiles, result keys, KV accounting (no timed assertions)."""

import json

import pytest

from harness.cli import main
from harness.latency import (
    Timing,
    TimingConfig,
    measure,
    time_call,
    time_interleaved,
)
from harness.models.backbones.synthetic import synthetic_backbone, synthetic_batch
from harness.models.plan_spec import parse_plan


def test_timer_respects_warmup_min_repeats_and_cap():
    calls = []
    t = time_call(lambda: calls.append(1), TimingConfig(warmup=3, min_repeats=7, min_time_s=0.0, max_repeats=50),
                  __import__("torch").device("cpu"))  # fmt: skip
    assert len(calls) == 3 + 7 and len(t.samples_s) == 7 and t.warmup == 3
    calls.clear()
    t = time_call(lambda: calls.append(1), TimingConfig(warmup=0, min_repeats=1, min_time_s=60.0, max_repeats=25),
                  __import__("torch").device("cpu"))  # fmt: skip
    assert len(calls) == 25, "max_repeats caps a minimum duration that is never reached"


def test_interleaved_timer_spreads_both_calls_over_the_same_stretch(monkeypatch):
    """The call with the least time spent runs next, and a call that is done keeps running while
    the other is still short: a fast and a slow call share one stretch of (fake) time."""
    import harness.latency as lat

    cost = {"fast": 1.0, "slow": 3.0}
    order: list[str] = []
    monkeypatch.setattr(lat, "_timed", lambda fn, device: (fn(), cost[order[-1]])[1])
    fns = {k: (lambda k=k: order.append(k)) for k in cost}
    cfg = TimingConfig(warmup=2, min_repeats=2, min_time_s=5.0, max_repeats=100)
    t = time_interleaved(fns, cfg, __import__("torch").device("cpu"))
    assert order[:4] == ["fast", "fast", "slow", "slow"], "warm-up of each call first"
    timed = order[4:]
    # least time spent runs next (ties: the first named); slow is done after 2 calls (6 s >= 5 s),
    # fast after 5 (5 s), and the two alternate until then
    assert timed == ["fast", "slow", "fast", "fast", "fast", "slow", "fast"]
    assert t["fast"].samples_s == [1.0] * 5 and t["slow"].samples_s == [3.0] * 2
    # fast has its 4 repeats after 4 s, but keeps sampling (in step) until slow has its 4 (12 s)
    order.clear()
    t = time_interleaved(fns, TimingConfig(warmup=0, min_repeats=4, min_time_s=0.0, max_repeats=100),
                         __import__("torch").device("cpu"))  # fmt: skip
    assert order.count("slow") == 4 and order.count("fast") == 10 and order[-1] == "slow"
    cfg = TimingConfig(warmup=0, min_repeats=2, min_time_s=30.0, max_repeats=3)
    order.clear()
    t = time_interleaved(fns, cfg, __import__("torch").device("cpu"))
    assert len(t["fast"].samples_s) == 3 and len(t["slow"].samples_s) == 3, "max_repeats caps each call"


def test_percentiles():
    t = Timing([5.0, 1.0, 3.0, 2.0, 4.0], warmup=0, device="cpu")
    assert t.q(50) == 3.0 and t.q(0) == 1.0 and t.q(100) == 5.0
    assert t.q(90) == pytest.approx(4.6)
    s = t.summary("x")
    assert s["x_p50_s"] == 3.0 and s["x_repeats"] == 5 and s["x_stdev_s"] == pytest.approx(1.5811, abs=1e-4)


def test_bad_timing_config_is_rejected():
    with pytest.raises(ValueError, match="min_repeats"):
        TimingConfig(min_repeats=0)


@pytest.fixture(scope="module")
def small():
    bb = synthetic_backbone("llava-1.5", layers=4, hidden=128, heads=4)
    return bb, synthetic_batch(bb, "llava-1.5", 2)


def test_measure_reports_ratios_and_kv(small):
    bb, batch = small
    quick = TimingConfig(warmup=0, min_repeats=1, min_time_s=0.0, max_repeats=1)
    # plan (d): visual K/V only in 1 of 4 layers (8 of 32), invisible elsewhere
    res = measure(bb, batch, parse_plan("t2v=0", 4), timing=quick, decode_tokens=2).metrics
    for key in (
        "prefill_p50_s",
        "dense_prefill_p50_s",
        "speedup",
        "flops_bound",
        "conversion",
        "decode_p50_s",
        "kv_bytes_per_sample",
        "dense_kv_bytes_per_sample",
        "threads",
        "warmup",
        "peak_memory_mib",
    ):
        assert key in res, key
    assert res["conversion"] == pytest.approx(res["speedup"] / res["flops_bound"])
    # the stock HF decoder, the roofline and the counts
    assert res["executor_overhead"] == pytest.approx(
        res["dense_prefill_p50_s"] / res["reference_prefill_p50_s"]
    )
    assert res["speedup_vs_reference"] == pytest.approx(res["reference_prefill_p50_s"] / res["prefill_p50_s"])
    assert res["conversion_roofline"] == pytest.approx(res["speedup"] / res["roofline_bound"])
    assert (
        res["peak_tflops"] > 0
        and res["bandwidth_gbs"] > 0
        and 1 < res["roofline_bound"] <= res["flops_bound"] * 1.01
    )
    assert res["reference_decode_p50_s"] > 0
    assert res["host_reads_prefill"] == 0 and res["host_reads_decode"] == 0
    assert res["dense_ops_prefill"] <= res["reference_ops_prefill"]
    assert res["ops_decode"] <= res["reference_ops_decode"]
    # KV: 64 non-visual entries in 4 layers + 576 visual in 1 layer, vs 640 in 4 layers
    assert res["kv_ratio"] == pytest.approx((4 * 64 + 576) / (4 * 640))
    assert res["kv_visual_ratio"] == pytest.approx(1 / 4)
    assert res["flops_bound"] > 3


def test_latency_cli_json_keys(capsys):
    assert main(["latency", "--geometry", "llava-1.5", "--plan", "keep=64@2", "--batch", "1", "--layers", "4",
                 "--hidden", "128", "--heads", "4", "--warmup", "0", "--min-repeats", "1", "--min-time", "0",
                 "--decode-tokens", "2", "--json"]) == 0  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    for key in ("prefill_p50_s", "dense_prefill_p50_s", "speedup", "flops_bound", "conversion", "machine",
                "reference_prefill_p50_s", "reference_decode_p50_s", "executor_overhead", "speedup_vs_reference",
                "roofline_bound", "conversion_roofline", "peak_tflops", "bandwidth_gbs", "host_reads_prefill",
                "host_reads_decode", "ops_prefill", "ops_decode", "dense_ops_prefill", "reference_ops_prefill",
                "reference_ops_decode"):  # fmt: skip
        assert key in data, key
    assert data["reference"]["attention"] == "sdpa" and data["hardware"]["source"] == "measured"
    assert data["weights"] == "random-init" and data["method"] == "plan:keep=64@2"
    assert data["prefill_order"] == "interleaved"
    assert main(["latency", "--geometry", "llava-1.5", "--plan", "keep=64@2", "--batch", "1", "--layers", "4",
                 "--hidden", "128", "--heads", "4", "--warmup", "0", "--min-repeats", "1", "--min-time", "0",
                 "--decode-tokens", "0", "--no-dense", "--json"]) == 0  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert data["prefill_order"] == "interleaved" and "dense_prefill_p50_s" not in data
    assert "speedup_vs_reference" in data and "executor_overhead" not in data
    assert main(["latency", "--geometry", "llava-1.5", "--plan", "keep=64@2", "--batch", "1", "--layers", "4",
                 "--hidden", "128", "--heads", "4", "--warmup", "0", "--min-repeats", "1", "--min-time", "0",
                 "--decode-tokens", "0", "--no-dense", "--no-reference", "--peak-tflops", "1", "--bandwidth-gbs",
                 "10", "--json"]) == 0  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert data["prefill_order"] == "alone" and "reference_prefill_p50_s" not in data


def test_latency_cli_rejects_bad_input(capsys):
    assert main(["latency", "--geometry", "llava-9"]) == 2
    assert "unknown geometry 'llava-9'" in capsys.readouterr().err
    assert main(["latency", "--geometry", "llava-1.5", "--layers", "4", "--peak-tflops", "0"]) == 2
    assert "--peak-tflops must be > 0, got 0.0" in capsys.readouterr().err
    assert main(["latency", "--geometry", "llava-1.5", "--plan", "kv_only=0-99", "--layers", "4"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_synthetic_llava15_keeps_clip_states_for_pre_llm_methods(small):
    """The synthetic LLaVA-1.5 geometry carries ViT states at the feature layer (CLS + 24 x 24 patches)
    whose projection is the visual input, so CLIP-reading methods (VisionZip) can be timed there."""
    import torch

    from harness.baselines.registry import build_stack
    from harness.baselines.visionzip import VisionZip

    bb, batch = small
    clip = batch.extras["clip"]
    assert len(clip) == 2 and clip[0]["h_out"].shape == (577, 1024) and clip[0]["layer"] == 0
    vis = batch.token_type[0] == 2
    torch.testing.assert_close(batch.embeds[0, vis], bb.project(clip[0]["h_out"][1:]))
    reduced = VisionZip(budget=64).reduce(bb, batch)
    assert [r.embeds.shape[0] for r in reduced] == [64, 64]
    assert build_stack("visionzip", {"visionzip": {"budget": 64}}).plan(bb).reducer is not None


def test_latency_cli_times_saisa_with_its_own_projectors(capsys):
    """SAISA on the synthetic geometry: random per-layer projectors over the CLIP-width features;
    visual K/V in every layer (KV as dense), the FFN and queries of visual rows skipped."""
    assert main(["latency", "--geometry", "llava-1.5", "--method", "saisa", "--batch", "2", "--layers", "4",
                 "--hidden", "128", "--heads", "4", "--warmup", "0", "--min-repeats", "1", "--min-time", "0",
                 "--decode-tokens", "2", "--json"]) == 0  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert data["kv_ratio"] == pytest.approx(1.0) and data["flops_bound"] > 1.5


@pytest.mark.parametrize("family", ["llava-1.5", "llava-next", "qwen2-vl"])
def test_hf_reference_is_the_same_model(random_backbones, family):
    """The reference the speed-ups are measured against computes what the executor computes: the
    HF decoder's prefill and cached decode on the same (ragged) batch give the same logits."""
    import torch

    from harness.models.backbones.base import collate
    from harness.models.backbones.random import ragged_samples
    from harness.models.executor import Executor
    from harness.reference import HFReference

    bb = random_backbones[family]
    batch = bb.encode(collate(bb, ragged_samples(bb, 4)))
    ref, ex = HFReference(bb, batch), Executor(bb)
    out = ex.prefill(batch, cache_extra=3)
    torch.testing.assert_close(ref.prefill(), out.logits, atol=1e-4, rtol=0)
    state = ref.start_decode()
    for _ in range(2):
        mine = ex.decode_step(state.tokens[:, 0], out.cache)
        torch.testing.assert_close(ref.decode_step(state), mine, atol=1e-4, rtol=0)


def test_synthetic_backbone_options_and_their_errors():
    from harness.backbones import open_backbone
    from harness.errors import HarnessError

    bb = open_backbone("synthetic:llava-1.5:L2:h128:saisa")
    assert bb.num_layers == 2 and bb.hidden_size == 128 and hasattr(bb, "projectors")
    assert not hasattr(open_backbone("synthetic:llava-1.5:L2:h128"), "projectors")
    with pytest.raises(
        HarnessError, match="bad synthetic option 'x3'.*use L<layers>, h<width> or the name of a method"
    ):
        open_backbone("synthetic:llava-1.5:x3")
