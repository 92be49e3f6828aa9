"""``harness latency``: prefill / decode timing of a method, the dense path and the HF decoder."""

from __future__ import annotations

import argparse
import json

from ..errors import HarnessError
from .common import RANDOM_FAMILIES, parse_params, pick_device, positive


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    lt = subparsers.add_parser("latency", help="prefill/decode latency of a method vs dense in the same run")
    lt.add_argument("model", nargs="?", help="local checkpoint directory (real suite samples)")
    lt.add_argument(
        "--geometry",
        help="synthetic token geometry with random weights: llava-1.5, llava-next, llava-onevision, qwen2-vl, "
        "qwen2.5-vl, qwen3-vl, internvl3, internvl3.5",
    )
    lt.add_argument("--random", choices=RANDOM_FAMILIES, help="small random-init model")
    lt.add_argument("--method", default="dense", help="method stack (default dense)")
    lt.add_argument("--params", help='method parameters as JSON, e.g. \'{"fastv": {"budget": 64}}\'')
    lt.add_argument(
        "--plan", help="hand-written plan spec instead of a method, e.g. 'kv_only=60%%' (see README)"
    )
    lt.add_argument("--mode", choices=["drop", "mask"], default="drop")
    lt.add_argument("--batch", type=positive("batch size"), default=1)
    lt.add_argument(
        "--layers", type=positive("--layers"), default=8, help="synthetic decoder depth (default 8)"
    )
    lt.add_argument(
        "--hidden", type=positive("--hidden"), default=1024, help="synthetic decoder width (default 1024)"
    )
    lt.add_argument("--heads", type=positive("--heads"), default=8)
    lt.add_argument(
        "--decode-tokens", type=int, default=16, help="forced decode length for TPOT (0: prefill only)"
    )
    lt.add_argument("--warmup", type=int, default=2)
    lt.add_argument("--min-repeats", type=positive("--min-repeats"), default=5)
    lt.add_argument("--max-repeats", type=positive("--max-repeats"), default=200)
    lt.add_argument("--min-time", type=float, default=2.0, help="minimum timed seconds per measurement")
    lt.add_argument("--no-dense", action="store_true", help="skip the dense baseline (no ratios)")
    lt.add_argument(
        "--no-reference", action="store_true", help="skip the stock HF decoder (no executor_overhead)"
    )
    lt.add_argument(
        "--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
        help="time CUDA-graph replays of the executor's prefill and decode (default: on with --device cuda)",
    )  # fmt: skip
    lt.add_argument(
        "--peak-tflops", type=float, help="peak TFLOP/s for the roofline (default: table / measured)"
    )
    lt.add_argument(
        "--bandwidth-gbs", type=float, help="memory GB/s for the roofline (default: table / measured)"
    )
    lt.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="cpu",
        help="where to time (auto: cuda when visible); GPU timings use CUDA events + synchronize",
    )  # fmt: skip
    lt.add_argument(
        "--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
        help="model and batch dtype for timing (default float32)",
    )  # fmt: skip
    lt.add_argument("--seed", type=int, default=0)
    lt.add_argument("--json", action="store_true")
    lt.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from harness.baselines.registry import build_stack
    from harness.models.backbones.synthetic import SYNTHETIC_TOKEN_LAYOUTS as GEOMETRIES
    from harness.models.backbones.synthetic import synthetic_backbone

    from .. import environment
    from ..backbones import DTYPES
    from ..latency import measure
    from ..scenarios import cell_batch, timing_config

    chosen = [x for x in (args.geometry, args.model, args.random) if x]
    if len(chosen) != 1:
        raise HarnessError("give exactly one of --geometry NAME, a checkpoint directory, or --random FAMILY")
    device = pick_device(args.device)
    method = f"plan:{args.plan}" if args.plan else args.method
    if args.geometry:
        if args.geometry not in GEOMETRIES:
            raise HarnessError(f"unknown geometry '{args.geometry}': use one of {', '.join(GEOMETRIES)}")
        # random weights are drawn where they will run: a 7B-geometry decoder initialises in seconds
        # on a GPU, minutes on the CPU (the GPU's random stream differs: weights are random-init)
        with torch.device(device):
            bb = synthetic_backbone(args.geometry, layers=args.layers, hidden=args.hidden, heads=args.heads)
            bb = build_stack(method, parse_params(args.params)).prepare_backbone(bb)
    else:
        from ..backbones import open_backbone

        bb = open_backbone(args.model or f"random:{args.random}")
    batch = cell_batch(bb, args.batch, args.seed)  # the inputs a suite's latency cell times
    # built and encoded on the CPU in float32; then the model and the batch move together
    bb.to(device, DTYPES[args.dtype])
    batch = batch.to(device, DTYPES[args.dtype])
    plan = build_stack(method, parse_params(args.params)).plan(bb)
    try:
        timing = timing_config(args.warmup, args.min_repeats, args.min_time, args.max_repeats)
    except ValueError as exc:  # a plain ValueError there (--warmup -1, --min-time -1) is the user's
        raise HarnessError(str(exc)) from None
    for flag, value in (("--peak-tflops", args.peak_tflops), ("--bandwidth-gbs", args.bandwidth_gbs)):
        if value is not None and not value > 0:
            raise HarnessError(f"{flag} must be > 0, got {value}")
    res = measure(bb, batch, plan, mode=args.mode, timing=timing, decode_tokens=args.decode_tokens,
                  include_dense=not args.no_dense, include_reference=not args.no_reference,
                  cuda_graphs=args.cuda_graphs,
                  peak_tflops=args.peak_tflops, bandwidth_gbs=args.bandwidth_gbs)  # fmt: skip
    env = environment.capture()
    data = {
        "backbone": bb.source, "weights": bb.weights, "method": method, "mode": args.mode,
        "geometry": args.geometry, "layers": bb.num_layers, "hidden": bb.hidden_size,
        "device": res.details["device"], "dtype": res.details["dtype"], **res.metrics,
        "machine": env["machine"], "cpu": env["cpu"], "gpu": env["gpu"], "visual_counts": res.details["visual_counts"],
        "prompt_lengths": res.details["prompt_lengths"], "prefill_order": res.details["prefill_order"],
        "cuda_graphs": res.details["cuda_graphs"],
        **({"cuda_graphs_fallback": res.details["cuda_graphs_fallback"]} if "cuda_graphs_fallback" in res.details else {}),
        **({"reference": res.details["reference"]} if "reference" in res.details else {}),
        **({"hardware": res.details["hardware"]} if "hardware" in res.details else {}),
    }  # fmt: skip
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    from tabulate import tabulate

    m = res.metrics
    rows = [
        [
            "prefill p50 / p90 / p99 (s)",
            f"{m['prefill_p50_s']:.4f} / {m['prefill_p90_s']:.4f} / {m['prefill_p99_s']:.4f}",
        ]
    ]
    if "dense_prefill_p50_s" in m:
        rows += [
            ["dense prefill p50 (s)", f"{m['dense_prefill_p50_s']:.4f}"],
            ["speed-up (dense / method)", f"{m['speedup']:.2f}x"],
            ["FLOPs bound (dense / method)", f"{m['flops_bound']:.2f}x"],
            ["conversion (speed-up / FLOPs bound)", f"{m['conversion']:.3f}"],
            ["roofline bound / conversion", f"{m['roofline_bound']:.2f}x / {m['conversion_roofline']:.3f}"],
        ]
    if "reference_prefill_p50_s" in m:
        rows += [["HF reference prefill p50 (s)", f"{m['reference_prefill_p50_s']:.4f}"],
                 ["speed-up vs HF reference", f"{m['speedup_vs_reference']:.2f}x"]]  # fmt: skip
        if "executor_overhead" in m:
            rows += [["executor overhead (dense / HF)", f"{m['executor_overhead']:.3f}"]]
    rows += [["host reads prefill / decode", f"{m['host_reads_prefill']:.0f} / {m.get('host_reads_decode', 0):.0f}"],
             ["ATen ops prefill (HF reference)", f"{m['ops_prefill']:.0f}" + (f" ({m['reference_ops_prefill']:.0f})" if "reference_ops_prefill" in m else "")]]  # fmt: skip
    if "decode_p50_s" in m:
        rows += [["decode p50 per token (s)", f"{m['decode_p50_s']:.5f}"],
                 ["KV bytes per sample", f"{m['kv_bytes_per_sample']:.0f}" + (f" ({m['kv_ratio']:.1%} of dense)" if "kv_ratio" in m else "")]]  # fmt: skip
    rows += [["device / dtype", f"{res.details['device']} / {res.details['dtype']}"],
             ["batch / threads / repeats", f"{args.batch} / {int(m['threads'])} / {int(m['prefill_repeats'])}"],
             ["peak memory (MiB)", f"{m['peak_memory_mib']:.0f}"]]  # fmt: skip
    print(f"{bb.source} ({bb.weights}), method {method}, mode {args.mode}")
    print(tabulate(rows, tablefmt="simple"))
    return 0
