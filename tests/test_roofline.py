"""Roofline model (harness/roofline.py): paper numbers, hardware lookup, CPU calibration, toy arithmetic."""

from __future__ import annotations

import math

import pytest
import torch
from paper_schedules import vica

from harness import roofline as rf
from harness.flops import model as fa
from harness.flops.model import LayerWork
from harness.models.geometry import CLIP_L14_336, Geometry, get_geometry

G7 = get_geometry("llava-1.5-7b")
VICA_T2V_7B = [0, 1, 7, 8, 9, 10, 11, 14]
FP16 = rf.dtype_bytes(torch.float16)


def _schedules():
    g = G7.with_tokens(v=576, t=64)
    return g, fa.dense(g), vica(g, t2v_layers=VICA_T2V_7B, system_queries=False)


def _hw(name: str) -> rf.Hardware:
    return rf.table_hardware(name, torch.float16)


# --------------------------------------------------------------------------------------------------
# LLaVA-1.5-7B, fp16, 576 visual + 64 non-visual tokens (docs/latency.md §4)
# --------------------------------------------------------------------------------------------------


def test_dense_b1_h100_is_compute_bound_at_about_8_5_ms():
    g, dense, _ = _schedules()
    hw = _hw("NVIDIA H100 80GB HBM3")
    costs = rf.layer_costs(g, dense, 1, FP16)
    assert all(c.bound(hw) == "compute" for c in costs[:-1])
    decoder_s = sum(c.time(hw) for c in costs[:-1])
    assert decoder_s == pytest.approx(8.5e-3, rel=0.05)
    assert rf.roofline_time(g, dense, 1, FP16, hw) == pytest.approx(8.5e-3, rel=0.05)


def test_decoder_weights_are_12_95_gb_read_once_whatever_the_batch():
    # bytes(B) = weights + B x per-sample traffic, so weights = 2 bytes(1) - bytes(2).
    g, dense, vica = _schedules()
    for sched in (dense, vica):
        one = rf.layer_costs(g, sched, 1, FP16, lm_head_rows=0)
        two = rf.layer_costs(g, sched, 2, FP16, lm_head_rows=0)
        weights = sum(2 * a.bytes - b.bytes for a, b in zip(one, two, strict=True))
        assert weights == pytest.approx(32 * (4 * 4096**2 + 3 * 4096 * 11008) * 2)
        assert weights / 1e9 == pytest.approx(12.95, abs=0.01)


@pytest.mark.parametrize(
    ("device_name", "bound_b1"),
    [("NVIDIA H100 80GB HBM3", 2.2), ("NVIDIA H200", 3.1), ("NVIDIA A100-SXM4-80GB", 4.2)],
)
def test_vica_roofline_bound_b1_is_weight_bound(device_name, bound_b1):
    g, dense, vica = _schedules()
    hw = _hw(device_name)
    assert all(c.bound(hw) == "memory" for c in rf.layer_costs(g, vica, 1, FP16)[:-1])
    assert rf.roofline_bound(g, dense, vica, 1, FP16, hw) == pytest.approx(bound_b1, rel=0.05)


@pytest.mark.parametrize("device_name", ["NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-80GB"])
def test_vica_roofline_bound_b8_equals_the_flops_ratio(device_name):
    g, dense, vica = _schedules()
    hw = _hw(device_name)
    bound = rf.roofline_bound(g, dense, vica, 8, FP16, hw)
    assert bound == pytest.approx(7.9, rel=0.05)
    flops_ratio = fa.analyze(g, dense).decoder.flops / fa.analyze(g, vica).decoder.flops
    assert bound == pytest.approx(flops_ratio, rel=0.02)


def test_flops_ratio_at_b1_far_exceeds_the_roofline_bound():
    g, dense, vica = _schedules()
    flops_ratio = fa.analyze(g, dense).decoder.flops / fa.analyze(g, vica).decoder.flops
    assert flops_ratio == pytest.approx(7.97, rel=0.01)
    bound = rf.roofline_bound(g, dense, vica, 1, FP16, _hw("NVIDIA H100 80GB HBM3"))
    assert flops_ratio > 3 * bound


def test_layer_times_has_the_lm_head_last():
    g, dense, _ = _schedules()
    hw = _hw("NVIDIA H100 80GB HBM3")
    times = rf.layer_times(g, dense, 1, FP16, hw)
    assert len(times) == g.layers + 1
    # B=1, one scored row: the LM head is a weight read of hidden x vocab fp16 values.
    assert times[-1] == pytest.approx(4096 * 32064 * 2 / 3350e9)
    assert rf.layer_times(g, dense, 1, FP16, hw, lm_head_rows=0)[-1] == 0.0
    assert rf.roofline_time(g, dense, 1, FP16, hw) == pytest.approx(sum(times))
    with pytest.raises(ValueError, match="layers"):
        rf.layer_times(g, dense[:-1], 1, FP16, hw)


# --------------------------------------------------------------------------------------------------
# Toy geometry, exact arithmetic
# --------------------------------------------------------------------------------------------------

TOY = Geometry(
    name="toy",
    family="llava",
    layers=2,
    hidden=8,
    intermediate=16,
    heads=2,
    kv_heads=1,
    head_dim=4,
    vocab=10,
    v=4,
    s=1,
    vision=CLIP_L14_336,
    projector=((4, 8),),
    projector_rows=4,
    t=3,
)
# Layer 0: dense (t=3, 4 visual). Layer 1: visual rows frozen, 2 visual keys, 2 of 3 non-visual queries.
TOY_SCHEDULE = [LayerWork(t=3, v_q=4, v_k=4), LayerWork(t=3, v_q=0, v_k=2, t_q=2)]
# 600 FLOP/s and 100 B/s: ridge at 6 FLOP/byte.
TOY_HW = rf.Hardware("toy", peak_tflops=600e-12, bandwidth_gbs=100e-9, source="override")


def test_toy_layer_times_by_hand():
    # h=8, q width 8, kv width 4, m=16, vocab 10; batch 2, fp16 (2 bytes).
    # Layer 0 MACs/sample: QO 2*8*8*(3+4)=896, KV 8*4*(2*3+2*4)=448, text attn 2*8*3*3 + 2*8*3*4=336,
    #   visual attn 2*8*4*(3+4)=448, FFN 3*8*16*(3+4)=2688 -> 4816 MACs = 9632 FLOPs; x2 samples = 19264.
    #   Elements: weights 2*8*8 + 2*8*4 + 3*8*16 = 576 once; per sample KV 2*(2*3+2*4)*4 = 112 and
    #   activations 2*(3+4)*8 = 112 -> 576 + 2*224 = 1024 elements = 2048 bytes.
    #   Time: max(19264/600, 2048/100) = 32.1067 s (compute-bound).
    # Layer 1 MACs/sample: QO 2*8*8*2=256, KV 8*4*(6+2*2)=320, text attn 2*8*2*3 + 2*8*2*2=160, FFN
    #   3*8*16*3=1152 -> 1888 MACs = 3776 FLOPs; x2 = 7552. Elements: weights 576; per sample KV
    #   2*(6+4)*4=80, activations 2*(3+2)*8=80 -> 576 + 2*160 = 896 = 1792 bytes.
    #   Time: max(7552/600, 1792/100) = 17.92 s (memory-bound).
    # LM head, 1 row/sample: 2*2*1*8*10 = 320 FLOPs, 8*10*2 = 160 bytes -> max(0.533, 1.6) = 1.6 s.
    costs = rf.layer_costs(TOY, TOY_SCHEDULE, 2, 2)
    assert [(c.flops, c.bytes) for c in costs] == [(19264, 2048), (7552, 1792), (320, 160)]
    assert [c.bound(TOY_HW) for c in costs] == ["compute", "memory", "memory"]
    times = rf.layer_times(TOY, TOY_SCHEDULE, 2, 2, TOY_HW)
    assert times == pytest.approx([19264 / 600, 1792 / 100, 160 / 100], rel=1e-12)
    total = 19264 / 600 + 1792 / 100 + 160 / 100
    assert rf.roofline_time(TOY, TOY_SCHEDULE, 2, 2, TOY_HW) == pytest.approx(total, rel=1e-12)


def test_toy_sliced_visual_ffn_still_reads_the_full_mlp():
    full = rf.layer_cost(TOY, LayerWork(t=3, v_q=4, v_k=4), 1, 2)
    sliced = rf.layer_cost(TOY, LayerWork(t=3, v_q=4, v_k=4, m_v=8), 1, 2)
    assert sliced.bytes == full.bytes
    assert full.flops - sliced.flops == 2 * 3 * 8 * (16 - 8) * 4  # 3 matrices, h x (m - m_v), 4 rows
    # Without non-visual rows only the m_v slice is read: 3 x 8 x 8 elements instead of 3 x 8 x 16.
    vis_full = rf.layer_cost(TOY, LayerWork(t=0, v_q=4, v_k=4), 1, 2)
    vis_sliced = rf.layer_cost(TOY, LayerWork(t=0, v_q=4, v_k=4, m_v=8), 1, 2)
    assert vis_full.bytes - vis_sliced.bytes == 3 * 8 * 8 * 2


def test_toy_saisa_projector_weights_and_inputs_are_read():
    base = LayerWork(t=3, v_q=0, v_k=4, v_ffn=0)
    proj = LayerWork(t=3, v_q=0, v_k=4, v_ffn=0, proj=((4, 8), (8, 8)), proj_rows=4)
    for batch in (1, 3):
        a, b = rf.layer_cost(TOY, base, batch, 2), rf.layer_cost(TOY, proj, batch, 2)
        # weights 4*8 + 8*8 = 96 once, input features 4 rows x 4 per sample; FLOPs 2 x rows x (32 + 64)
        assert b.bytes - a.bytes == (96 + batch * 16) * 2
        assert b.flops - a.flops == batch * 2 * 4 * 96


def test_toy_empty_layer_costs_nothing():
    c = rf.layer_cost(TOY, LayerWork(t=0), 4, 2)
    assert (c.flops, c.bytes) == (0.0, 0.0)


# --------------------------------------------------------------------------------------------------
# Hardware table and device names
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "entry"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB"),
        ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe"),
        ("NVIDIA A100-SXM4-40GB", "A100 40GB"),
        ("NVIDIA A100-PCIE-40GB", "A100 40GB"),
        ("NVIDIA RTX A6000", "RTX A6000"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ],
)
def test_device_names_match_table_entries(name, entry):
    assert rf.match_gpu(name) == entry
    hw = rf.table_hardware(name, torch.bfloat16)
    assert hw.source == f"table:{entry}"
    assert hw.name == name
    assert hw.peak_tflops == rf.PEAKS[entry]["tflops"]["bfloat16"]
    assert hw.bandwidth_gbs == rf.PEAKS[entry]["bandwidth_gbs"]


@pytest.mark.parametrize(
    "name",
    [
        "NVIDIA GH200 480GB",
        "NVIDIA L40",
        "NVIDIA GeForce RTX 4090 D",
        "NVIDIA GeForce RTX 4090 Laptop GPU",
        "NVIDIA RTX 6000 Ada Generation",
        "NVIDIA A10",
        "Tesla V100-SXM2-16GB",
    ],
)
def test_other_gpus_are_not_matched(name):
    assert rf.match_gpu(name) is None


def test_table_rows_are_complete():
    required = {"H100 SXM", "H100 PCIe", "H200", "A100 80GB", "A100 40GB", "RTX A6000", "L40S", "RTX 4090"}
    assert required <= set(rf.PEAKS)
    for row in rf.PEAKS.values():
        tf = row["tflops"]
        assert set(tf) == {"float16", "bfloat16", "float32"}
        assert tf["float16"] == tf["bfloat16"] > tf["float32"] > 0
        assert row["bandwidth_gbs"] > 0
        assert row["datasheet"]
    h100 = rf.table_hardware("NVIDIA H100 80GB HBM3", torch.float16)
    assert (h100.peak_tflops, h100.bandwidth_gbs) == (989.4, 3350.0)
    assert h100.ridge == pytest.approx(295, rel=0.01)


def test_dtype_bytes():
    assert [rf.dtype_bytes(d) for d in (torch.float16, torch.bfloat16, torch.float32)] == [2, 2, 4]


def _fake_gpu(monkeypatch, name: str) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def test_hardware_cuda_uses_the_table(monkeypatch):
    _fake_gpu(monkeypatch, "NVIDIA H200")
    hw = rf.hardware("cuda", torch.float32)
    assert hw == rf.Hardware("NVIDIA H200", 66.9, 4800.0, "table:H200")
    hw = rf.hardware(torch.device("cuda", 0), torch.float16, bandwidth_gbs=4000.0)
    assert (hw.peak_tflops, hw.bandwidth_gbs, hw.source) == (989.4, 4000.0, "table:H200+override")


def test_hardware_unknown_gpu_is_one_line_naming_the_flags(monkeypatch):
    _fake_gpu(monkeypatch, "NVIDIA GH200 480GB")
    for kwargs in ({}, {"peak_tflops": 900.0}, {"bandwidth_gbs": 4000.0}):
        with pytest.raises(rf.HardwareError) as err:
            rf.hardware("cuda", torch.float16, **kwargs)
        msg = str(err.value)
        assert "\n" not in msg
        assert "GH200" in msg and "--peak-tflops" in msg and "--bandwidth-gbs" in msg
        assert isinstance(err.value, ValueError)
    hw = rf.hardware("cuda", torch.float16, peak_tflops=900.0, bandwidth_gbs=4000.0)
    assert hw == rf.Hardware("NVIDIA GH200 480GB", 900.0, 4000.0, "override")


def test_hardware_rejects_bad_inputs():
    with pytest.raises(rf.HardwareError, match="float64"):
        rf.hardware("cpu", torch.float64, peak_tflops=1.0, bandwidth_gbs=1.0)
    with pytest.raises(rf.HardwareError, match="--peak-tflops"):
        rf.hardware("cpu", torch.float32, peak_tflops=-1.0, bandwidth_gbs=1.0)
    with pytest.raises(rf.HardwareError, match="--bandwidth-gbs"):
        rf.hardware("meta", torch.float32)


# --------------------------------------------------------------------------------------------------
# CPU calibration (sanity only; no timing threshold)
# --------------------------------------------------------------------------------------------------


def test_cpu_calibration_is_positive_finite_and_cached(monkeypatch):
    hw = rf.hardware("cpu", torch.float32, calibrate_s=0.05)
    assert hw.source == "measured"
    assert math.isfinite(hw.peak_tflops) and hw.peak_tflops > 0
    assert math.isfinite(hw.bandwidth_gbs) and hw.bandwidth_gbs > 0
    assert "cpu" in hw.name

    def fail(*a, **k):
        raise AssertionError("measured again")

    monkeypatch.setattr(rf, "_gemm_tflops", fail)
    monkeypatch.setattr(rf, "_copy_gbs", fail)
    assert rf.hardware("cpu", torch.float32, calibrate_s=0.05) == hw  # cached per (dtype, threads)
    half = rf.hardware("cpu", torch.float32, peak_tflops=2.0)
    assert (half.peak_tflops, half.bandwidth_gbs, half.source) == (2.0, hw.bandwidth_gbs, "measured+override")
    both = rf.hardware("cpu", torch.float32, peak_tflops=2.0, bandwidth_gbs=30.0)
    assert (both.peak_tflops, both.bandwidth_gbs, both.source) == (2.0, 30.0, "override")


def test_cpu_roofline_is_compute_bound_so_bound_equals_flops_ratio():
    # A CPU's ridge is a few FLOP/byte: with a 7B layer's hundreds of rows every layer is compute-bound.
    g, dense, vica = _schedules()
    cpu = rf.Hardware("cpu", peak_tflops=0.2, bandwidth_gbs=20.0, source="override")
    bound = rf.roofline_bound(g, dense, vica, 1, 4, cpu)
    flops_ratio = fa.analyze(g, dense).decoder.flops / fa.analyze(g, vica).decoder.flops
    assert bound == pytest.approx(flops_ratio, rel=0.02)
