"""Roofline time of a decoder prefill: the fastest a layer can run given peak compute and memory bandwidth.

Why. A FLOPs ratio says how much arithmetic a method removes; it says nothing about how much *memory
traffic* remains. A layer that touches few rows still has to stream all of its weights from memory, so
on a GPU at batch 1 a pruned layer is limited by bandwidth long before it is limited by arithmetic.
Comparing a measured speed-up against the FLOPs ratio alone then makes a physically impossible target
look like a shortfall. This module gives the second yardstick (docs/latency.md §4).

Model. Each decoder layer l is a roofline of its own::

    time_l = max(FLOPs_l / peak, bytes_l / bandwidth)

and a prefill takes ``sum_l time_l`` plus the LM head, timed the same way. The roofline bound of a
method is ``T_dense / T_method`` on the same hardware, batch and dtype.

FLOPs of a layer (per batch of B samples) = B x the analytic count of `harness.flops.model` under
the ``exact`` convention: ``layer_count(g, w).decoder`` plus the layer's own projector (SAISA), x 2 for
FLOPs (the analytic module counts MACs). Attention therefore uses the same rectangles as the FLOPs
bound the harness reports, so the two bounds are computed from the same work.

Bytes of a layer (``e`` = element size of the dtype, B = batch):

* **Weights**, read once per prefill whatever B, for every matrix some row of the layer uses:

  - Q and O (``2 x hidden x heads*head_dim``) when any row is an attention query; if the only query
    rows are visual rows restricted to a head fraction ``f`` (no non-visual queries), that fraction;
  - K and V (``hidden x kv_heads*head_dim`` each) when any K/V row is computed; the visual-only
    case is scaled by ``f_k`` / ``f_v`` the same way;
  - gate, up and down (``3 x hidden x intermediate``) when any FFN row exists. A visual FFN
    slice (YOPO ``m_v``) saves nothing while non-visual rows go through the full MLP; only a layer
    with visual FFN rows alone reads just the ``m_v`` slice;
  - the SAISA per-layer projector matrices (``LayerWork.proj``) when ``proj_rows > 0``.

  Norm weights, biases and rotary tables are ignored (kilobytes against hundreds of megabytes).
* **KV**: ``B x (2t + (f_k + f_v) v_k) x kv_heads*head_dim`` elements are written by the K/V
  projections and read back once by attention: twice that many bytes are moved.
* **Activations**: every row the layer touches (``t + max(v_q, v_k, ffn rows)``) is read once as
  input and written once as output: ``2 x B x rows x hidden`` elements. Intermediate tensors
  (attention probabilities, the MLP's inner activations) are assumed to stay on chip (fused kernels),
  which is what makes this a lower bound. A SAISA projector also reads its input features
  (``proj_rows x in_features`` of its first matrix).
* **LM head**: ``hidden x vocab`` weights once; FLOPs ``2 x B x rows x hidden x vocab`` for the scored
  rows (1 per sample at prefill, as in ``generate()``).

Everything is in the one dtype asked for (weights, KV and activations alike).

Hardware. `hardware` returns peak dense tensor throughput and memory bandwidth: on CUDA from the
built-in datasheet table `PEAKS` (matched on ``torch.cuda.get_device_name``), on CPU from a short
measurement (one GEMM size, one large copy) cached per (dtype, thread count); either number can be
overridden (``--peak-tflops`` / ``--bandwidth-gbs`` on the command line).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from harness.errors import HarnessError
from harness.flops.model import LayerWork, layer_count
from harness.models.geometry import Geometry

__all__ = [
    "PEAKS",
    "Cost",
    "Hardware",
    "HardwareError",
    "calibrate_cpu",
    "dtype_bytes",
    "hardware",
    "layer_cost",
    "layer_costs",
    "layer_times",
    "lm_head_cost",
    "match_gpu",
    "roofline_bound",
    "roofline_time",
    "table_hardware",
]


# --------------------------------------------------------------------------------------------------
# Hardware
# --------------------------------------------------------------------------------------------------


class HardwareError(HarnessError):
    """Peak numbers cannot be determined for a device (one line, names the override flags)."""


@dataclass(frozen=True)
class Hardware:
    """Peak dense throughput and memory bandwidth of one device, for one dtype."""

    name: str
    peak_tflops: float  # dense (no structured sparsity), for the dtype asked for
    bandwidth_gbs: float  # device memory (HBM / GDDR / DRAM), 1 GB = 1e9 bytes
    source: str  # "table:<entry>", "measured", "override", or "<base>+override"

    @property
    def peak_flops(self) -> float:
        """FLOP/s."""
        return self.peak_tflops * 1e12

    @property
    def bandwidth(self) -> float:
        """Bytes/s."""
        return self.bandwidth_gbs * 1e9

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP per byte) at which compute and memory time are equal."""
        return self.peak_flops / self.bandwidth


_DTYPE_KEYS = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}

# Vendor datasheet peaks. TFLOP/s are *dense* tensor-core numbers for float16/bfloat16 (NVIDIA lists
# them "with sparsity"; dense = half of that) with FP32 accumulation, which is what cuBLAS uses for
# torch fp16/bf16 GEMMs; float32 is the plain FP32 (CUDA core) number, i.e. TF32 disabled, torch's
# default for matmul. Bandwidth is the datasheet device-memory bandwidth in GB/s (1e9 bytes).
PEAKS: dict[str, dict] = {
    # NVIDIA H100 Tensor Core GPU datasheet, SXM column: FP16/BF16 Tensor 1,979 TFLOPS with sparsity
    # (989.4 dense), FP32 67 TFLOPS, 80 GB HBM3 at 3.35 TB/s.
    "H100 SXM": {
        "tflops": {"float16": 989.4, "bfloat16": 989.4, "float32": 66.9},
        "bandwidth_gbs": 3350.0,
        "datasheet": "NVIDIA H100 Tensor Core GPU datasheet (H100 SXM)",
    },
    # NVIDIA H100 datasheet (2022), PCIe column / H100 PCIe product brief PB-11133-001: FP16/BF16 Tensor
    # 1,513 TFLOPS with sparsity (756.5 dense), FP32 51 TFLOPS, 80 GB HBM2e at 2,000 GB/s.
    "H100 PCIe": {
        "tflops": {"float16": 756.5, "bfloat16": 756.5, "float32": 51.2},
        "bandwidth_gbs": 2000.0,
        "datasheet": "NVIDIA H100 Tensor Core GPU datasheet (H100 PCIe); product brief PB-11133-001",
    },
    # NVIDIA H100 Tensor Core GPU datasheet, NVL column (per GPU): FP16/BF16 Tensor 1,671 TFLOPS with
    # sparsity (835.5 dense), FP32 60 TFLOPS, 94 GB HBM3 at 3.9 TB/s.
    "H100 NVL": {
        "tflops": {"float16": 835.5, "bfloat16": 835.5, "float32": 60.0},
        "bandwidth_gbs": 3900.0,
        "datasheet": "NVIDIA H100 Tensor Core GPU datasheet (H100 NVL)",
    },
    # NVIDIA H200 Tensor Core GPU datasheet, SXM column: FP16/BF16 Tensor 1,979 TFLOPS with sparsity
    # (989.4 dense, the H100 SXM compute), FP32 67 TFLOPS, 141 GB HBM3e at 4.8 TB/s.
    "H200": {
        "tflops": {"float16": 989.4, "bfloat16": 989.4, "float32": 66.9},
        "bandwidth_gbs": 4800.0,
        "datasheet": "NVIDIA H200 Tensor Core GPU datasheet (H200 SXM)",
    },
    # NVIDIA H200 Tensor Core GPU datasheet, NVL column: FP16/BF16 Tensor 1,671 TFLOPS with sparsity
    # (835.5 dense), FP32 60 TFLOPS, 141 GB HBM3e at 4.8 TB/s.
    "H200 NVL": {
        "tflops": {"float16": 835.5, "bfloat16": 835.5, "float32": 60.0},
        "bandwidth_gbs": 4800.0,
        "datasheet": "NVIDIA H200 Tensor Core GPU datasheet (H200 NVL)",
    },
    # NVIDIA A100 Tensor Core GPU datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4), 80GB SXM
    # column: FP16/BF16 Tensor 312 TFLOPS dense (624 with sparsity), FP32 19.5 TFLOPS, HBM2e 2,039 GB/s.
    "A100 80GB": {
        "tflops": {"float16": 312.0, "bfloat16": 312.0, "float32": 19.5},
        "bandwidth_gbs": 2039.0,
        "datasheet": "NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM)",
    },
    # Same A100 datasheet, 80GB PCIe column: same compute, HBM2e 1,935 GB/s.
    "A100 80GB PCIe": {
        "tflops": {"float16": 312.0, "bfloat16": 312.0, "float32": 19.5},
        "bandwidth_gbs": 1935.0,
        "datasheet": "NVIDIA A100 Tensor Core GPU datasheet (A100 80GB PCIe)",
    },
    # Same A100 datasheet, 40GB columns (SXM and PCIe): same compute, HBM2 1,555 GB/s.
    "A100 40GB": {
        "tflops": {"float16": 312.0, "bfloat16": 312.0, "float32": 19.5},
        "bandwidth_gbs": 1555.0,
        "datasheet": "NVIDIA A100 Tensor Core GPU datasheet (A100 40GB SXM / PCIe)",
    },
    # NVIDIA RTX A6000 datasheet: FP32 38.7 TFLOPS, Tensor 309.7 TFLOPS with sparsity (154.8 dense;
    # NVIDIA Ampere GA102 whitepaper: FP16/BF16 Tensor with FP32 accumulate 154.8 | 309.7), 48 GB GDDR6
    # at 768 GB/s.
    "RTX A6000": {
        "tflops": {"float16": 154.8, "bfloat16": 154.8, "float32": 38.7},
        "bandwidth_gbs": 768.0,
        "datasheet": "NVIDIA RTX A6000 datasheet; NVIDIA Ampere GA102 GPU architecture whitepaper",
    },
    # NVIDIA L40S datasheet: FP16/BF16 Tensor 362.05 TFLOPS dense (733 with sparsity), FP32 91.6 TFLOPS,
    # 48 GB GDDR6 at 864 GB/s.
    "L40S": {
        "tflops": {"float16": 362.05, "bfloat16": 362.05, "float32": 91.6},
        "bandwidth_gbs": 864.0,
        "datasheet": "NVIDIA L40S datasheet",
    },
    # NVIDIA Ada GPU architecture whitepaper (GeForce RTX 4090 column): FP16/BF16 Tensor with FP32
    # accumulate 165.2 TFLOPS dense (330.4 with sparsity; 330.3 dense with FP16 accumulate, which torch
    # does not use), FP32 82.6 TFLOPS, 24 GB GDDR6X at 1,008 GB/s.
    "RTX 4090": {
        "tflops": {"float16": 165.2, "bfloat16": 165.2, "float32": 82.6},
        "bandwidth_gbs": 1008.0,
        "datasheet": "NVIDIA Ada Lovelace GPU architecture whitepaper (GeForce RTX 4090)",
    },
}

# torch.cuda.get_device_name -> PEAKS entry; first match wins, case-insensitive. Word boundaries keep
# "GH200" (a Grace Hopper superchip, other memory) from matching "H200", and "RTX 4090 D" / laptop parts
# from matching the desktop RTX 4090.
_NAME_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (entry, re.compile(pattern, re.IGNORECASE))
    for entry, pattern in (
        ("H100 NVL", r"\bH100\b.*\bNVL\b"),
        ("H100 PCIe", r"\bH100\b.*\bPCIe\b"),
        ("H100 SXM", r"\bH100\b"),  # "NVIDIA H100 80GB HBM3" is the SXM5 board
        ("H200 NVL", r"\bH200\b.*\bNVL\b"),
        ("H200", r"\bH200\b"),
        ("A100 80GB PCIe", r"\bA100\b.*\b80GB\b.*\bPCIe\b"),
        ("A100 80GB", r"\bA100\b.*\b80GB\b"),  # "NVIDIA A100-SXM4-80GB"
        ("A100 40GB", r"\bA100\b.*\b40GB\b"),  # "NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB"
        ("RTX A6000", r"\bRTX A6000\b"),
        ("L40S", r"\bL40S\b"),
        ("RTX 4090", r"\bRTX 4090\b(?!\s*(?:D\b|Laptop|Mobile|Max-Q))"),
    )
)


def _dtype_key(dtype: torch.dtype) -> str:
    try:
        return _DTYPE_KEYS[dtype]
    except KeyError:
        raise HardwareError(
            f"no peak numbers for dtype {dtype}; supported: float16, bfloat16, float32"
        ) from None


def dtype_bytes(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype`` (2 for float16/bfloat16, 4 for float32)."""
    return torch.empty((), dtype=dtype).element_size()


def match_gpu(name: str) -> str | None:
    """The `PEAKS` entry for a CUDA device name, or None when the GPU is not in the table."""
    for entry, pattern in _NAME_RULES:
        if pattern.search(name):
            return entry
    return None


def _unknown(name: str) -> HardwareError:
    return HardwareError(
        f"no peak numbers for GPU {name!r} (known: {', '.join(PEAKS)}); "
        "give them with --peak-tflops and --bandwidth-gbs"
    )


def table_hardware(name: str, dtype: torch.dtype) -> Hardware:
    """The datasheet `Hardware` for a CUDA device name; `HardwareError` when it is not in the table."""
    entry = match_gpu(name)
    if entry is None:
        raise _unknown(name)
    row = PEAKS[entry]
    return Hardware(
        name, float(row["tflops"][_dtype_key(dtype)]), float(row["bandwidth_gbs"]), f"table:{entry}"
    )


# --------------------------------------------------------------------------------------------------
# CPU calibration
# --------------------------------------------------------------------------------------------------

_CPU_CACHE: dict[tuple[torch.dtype, int], tuple[float, float]] = {}
_COPY_BYTES = 128 * 2**20  # per buffer; larger than the last-level cache of common server CPUs
_GEMM_MIN, _GEMM_MAX = 256, 4096


def _best_time(fn, budget_s: float, min_reps: int = 2) -> float:
    """Shortest of repeated timings of ``fn`` over about ``budget_s`` (at least ``min_reps``)."""
    best = math.inf
    deadline = time.perf_counter() + budget_s
    reps = 0
    while reps < min_reps or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return best


def _gemm_tflops(dtype: torch.dtype, budget_s: float) -> float:
    # Square GEMMs of doubling size while the next size still fits in what is left of the budget (3
    # calls at ~8x the time), up to a cap; the rest of the budget repeats the largest size. The best
    # rate seen is the answer: large enough GEMMs run at the machine's throughput for this dtype and
    # thread count, and the best repeat is the one least disturbed by other work on the machine.
    deadline = time.perf_counter() + budget_s
    best_rate = 0.0
    n = _GEMM_MIN
    while True:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        c = torch.empty(n, n, dtype=dtype)

        def mm(a=a, b=b, c=c) -> None:
            torch.mm(a, b, out=c)

        mm()  # warm-up (allocation, kernel selection)
        once = _best_time(mm, 0.0)
        best_rate = max(best_rate, 2.0 * n**3 / once)
        if n >= _GEMM_MAX or 3 * 8 * once > deadline - time.perf_counter():
            break
        n *= 2
    once = _best_time(mm, max(0.0, deadline - time.perf_counter()), min_reps=1)
    return max(best_rate, 2.0 * n**3 / once) / 1e12


def _copy_gbs(budget_s: float) -> float:
    src = torch.ones(_COPY_BYTES // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up (first-touch page faults)
    best = _best_time(lambda: dst.copy_(src), budget_s)
    return 2.0 * _COPY_BYTES / best / 1e9  # each byte read once and written once


def calibrate_cpu(dtype: torch.dtype, seconds: float = 0.3) -> tuple[float, float]:
    """Measured (TFLOP/s, GB/s) of this CPU at ``dtype`` and the current torch thread count.

    About ``seconds`` in all (60 % GEMM, 40 % copy; at least two timed repeats of each, so a very small
    budget still gives a number). The best repeat counts: the aim is the machine's capability, not an
    average under noise. Cached per (dtype, threads) for the life of the process.
    """
    _dtype_key(dtype)
    key = (dtype, torch.get_num_threads())
    if key not in _CPU_CACHE:
        with torch.inference_mode():
            tflops = _gemm_tflops(dtype, 0.6 * seconds)
            gbs = _copy_gbs(0.4 * seconds)
        _CPU_CACHE[key] = (tflops, gbs)
    return _CPU_CACHE[key]


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        try:
            return torch.cuda.get_device_name(dev)
        except Exception:  # no CUDA here: only reached when both numbers are overridden
            return str(dev)
    if dev.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(dev)


def hardware(
    device: torch.device | str,
    dtype: torch.dtype,
    *,
    peak_tflops: float | None = None,
    bandwidth_gbs: float | None = None,
    calibrate_s: float = 0.3,
) -> Hardware:
    """Peak compute and bandwidth of ``device`` at ``dtype``.

    CUDA: the `PEAKS` row matched from the device name (`HardwareError`, one line naming
    ``--peak-tflops`` / ``--bandwidth-gbs``, when the GPU is not in the table and not both numbers are
    given). CPU: `calibrate_cpu` (about ``calibrate_s`` seconds, once per dtype and thread count).
    ``peak_tflops`` / ``bandwidth_gbs`` replace the corresponding number; with both given nothing is
    looked up or measured and ``source`` is ``"override"``, with one given it is e.g.
    ``"measured+override"``.
    """
    dev = torch.device(device)
    for label, value in (("--peak-tflops", peak_tflops), ("--bandwidth-gbs", bandwidth_gbs)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise HardwareError(f"{label} must be a positive number, got {value}")
    _dtype_key(dtype)
    name = _device_name(dev)
    if peak_tflops is not None and bandwidth_gbs is not None:
        return Hardware(name, float(peak_tflops), float(bandwidth_gbs), "override")
    if dev.type == "cuda":
        base = table_hardware(name, dtype)
    elif dev.type == "cpu":
        tflops, gbs = calibrate_cpu(dtype, calibrate_s)
        base = Hardware(name, tflops, gbs, "measured")
    else:
        raise HardwareError(
            f"no peak numbers for device type {dev.type!r}; give them with --peak-tflops and --bandwidth-gbs"
        )
    if peak_tflops is None and bandwidth_gbs is None:
        return base
    return Hardware(
        name,
        base.peak_tflops if peak_tflops is None else float(peak_tflops),
        base.bandwidth_gbs if bandwidth_gbs is None else float(bandwidth_gbs),
        base.source + "+override",
    )


# --------------------------------------------------------------------------------------------------
# Work and traffic per layer
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    """FLOPs and bytes moved by one layer (or the LM head) for the whole batch."""

    flops: float
    bytes: float

    def compute_s(self, hw: Hardware) -> float:
        return self.flops / hw.peak_flops

    def memory_s(self, hw: Hardware) -> float:
        return self.bytes / hw.bandwidth

    def time(self, hw: Hardware) -> float:
        """Roofline time in seconds: the slower of arithmetic at peak and traffic at full bandwidth."""
        return max(self.compute_s(hw), self.memory_s(hw))

    def bound(self, hw: Hardware) -> str:
        """``"compute"`` or ``"memory"``: which limit sets `time`."""
        return "compute" if self.compute_s(hw) >= self.memory_s(hw) else "memory"


def _weight_elems(g: Geometry, w: LayerWork) -> float:
    h, qw, kvw = g.hidden, g.q_width, g.kv_width
    t_q = w.t if w.t_q is None else w.t_q
    if t_q > 0:
        qo_frac = 1.0
    else:
        qo_frac = w.f if w.v_q > 0 else 0.0
    if w.t > 0:
        k_frac = v_frac = 1.0
    else:
        k_frac = w.f_k if w.v_k > 0 else 0.0
        v_frac = w.f_v if w.v_k > 0 else 0.0
    if w.t > 0:
        mlp_width = g.intermediate
    elif w.ffn_rows > 0:
        mlp_width = g.intermediate if w.m_v is None else w.m_v
    else:
        mlp_width = 0
    proj = sum(a * b for a, b in w.proj) if w.proj_rows > 0 else 0
    return 2 * h * qw * qo_frac + h * kvw * (k_frac + v_frac) + 3 * h * mlp_width + proj


def layer_cost(g: Geometry, w: LayerWork, batch: int, dtype_bytes: int) -> Cost:
    """FLOPs and bytes of one decoder layer over ``batch`` samples (model in the module docstring)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    lc = layer_count(g, w, "exact")
    flops = batch * 2.0 * (lc.decoder.macs + lc.projectors)
    kv = 2 * (2 * w.t + (w.f_k + w.f_v) * w.v_k) * g.kv_width  # written, then read by attention
    act = 2 * (w.t + w.visual_present) * g.hidden  # input read, output written
    proj_in = w.proj_rows * w.proj[0][0] if (w.proj and w.proj_rows > 0) else 0
    elems = _weight_elems(g, w) + batch * (kv + act + proj_in)
    return Cost(flops, elems * dtype_bytes)


def lm_head_cost(g: Geometry, batch: int, dtype_bytes: int, rows: int = 1) -> Cost:
    """The LM head over ``rows`` scored positions per sample (nothing at all when ``rows`` is 0)."""
    if rows <= 0:
        return Cost(0.0, 0.0)
    return Cost(2.0 * batch * rows * g.hidden * g.vocab, float(g.hidden * g.vocab * dtype_bytes))


def layer_costs(
    g: Geometry, schedule: Sequence[LayerWork], batch: int, dtype_bytes: int, *, lm_head_rows: int = 1
) -> list[Cost]:
    """`layer_cost` of every decoder layer, then `lm_head_cost` as the last entry (len = layers + 1)."""
    if len(schedule) != g.layers:
        raise ValueError(f"schedule has {len(schedule)} layers, {g.name} has {g.layers}")
    out = [layer_cost(g, w, batch, dtype_bytes) for w in schedule]
    out.append(lm_head_cost(g, batch, dtype_bytes, lm_head_rows))
    return out


def layer_times(
    g: Geometry,
    schedule: Sequence[LayerWork],
    batch: int,
    dtype_bytes: int,
    hw: Hardware,
    *,
    lm_head_rows: int = 1,
) -> list[float]:
    """Roofline seconds per decoder layer, with the LM head appended as the last entry.

    The list has ``len(schedule) + 1`` entries; ``lm_head_rows=0`` makes the last one 0.
    """
    return [c.time(hw) for c in layer_costs(g, schedule, batch, dtype_bytes, lm_head_rows=lm_head_rows)]


def roofline_time(
    g: Geometry,
    schedule: Sequence[LayerWork],
    batch: int,
    dtype_bytes: int,
    hw: Hardware,
    *,
    lm_head_rows: int = 1,
) -> float:
    """Roofline seconds of one prefill of ``batch`` samples: decoder layers plus the LM head."""
    return sum(layer_times(g, schedule, batch, dtype_bytes, hw, lm_head_rows=lm_head_rows))


def roofline_bound(
    g: Geometry,
    dense_schedule: Sequence[LayerWork],
    method_schedule: Sequence[LayerWork],
    batch: int,
    dtype_bytes: int,
    hw: Hardware,
    *,
    lm_head_rows: int = 1,
) -> float:
    """Best speed-up physics allows the method over dense on ``hw``: T_dense / T_method."""
    dense = roofline_time(g, dense_schedule, batch, dtype_bytes, hw, lm_head_rows=lm_head_rows)
    method = roofline_time(g, method_schedule, batch, dtype_bytes, hw, lm_head_rows=lm_head_rows)
    return dense / method


def batch_time(
    per_sample: Sequence[tuple[Geometry, Sequence[LayerWork]]], dtype_bytes: int, hw: Hardware
) -> float:
    """Roofline seconds of one prefill of a batch whose samples differ (a ragged batch): per layer,
    the samples' FLOPs and their KV and activation bytes add up, the weights are read once."""
    if not per_sample:
        raise ValueError("batch_time needs at least one sample")
    g0, s0 = per_sample[0]
    total = 0.0
    for layer in range(len(s0)):
        flops = data = weights = 0.0
        for g, schedule in per_sample:
            w = schedule[layer]
            c = layer_cost(g, w, 1, dtype_bytes)
            own = _weight_elems(g, w) * dtype_bytes
            flops += c.flops
            data += c.bytes - own
            weights = max(weights, own)
        total += Cost(flops, data + weights).time(hw)
    head = lm_head_cost(g0, len(per_sample), dtype_bytes)
    return total + head.time(hw)
