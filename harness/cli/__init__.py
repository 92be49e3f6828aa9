"""The ``harness`` command line.

Every user error prints one line ``harness: error: ...`` naming the problem and the fix, and
exits 2; a check that runs but fails (``verify`` out of tolerance) exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import HarnessError


def _threads(n: int | None) -> None:
    import torch

    torch.set_num_threads(n or int(os.environ.get("SEEBENCH_THREADS", "1")))


def _params(text: str | None) -> dict:
    """--params '{"fastv": {"budget": 64}}' -> per-method parameters."""
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HarnessError(
            f'--params is not valid JSON ({exc.msg}); e.g. \'{{"fastv": {{"budget": 64}}}}\''
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise HarnessError(
            '--params maps method names to parameter objects, e.g. \'{"fastv": {"budget": 64}}\''
        )
    return data


def _positive(name: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got '{text}'") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v

    return parse


# ------------------------------------------------------------------ verify
def cmd_verify(args: argparse.Namespace) -> int:
    from harness.models.backbones.random import ragged_samples
    from harness.models.verify import checkpoint_samples, verify_dense

    from ..backbones import open_backbone

    if bool(args.model) == bool(args.random):
        raise HarnessError(
            "give a checkpoint directory (harness verify MODEL) or --random FAMILY, not both/neither"
        )
    if args.random:
        bb = open_backbone(f"random:{args.random}")
        samples = ragged_samples(bb, args.batch, args.seed)
    else:
        bb = open_backbone(args.model)
        try:
            samples = checkpoint_samples(bb, args.batch, args.seed)
        except ValueError as exc:
            raise HarnessError(str(exc).splitlines()[0]) from None
    rep = verify_dense(bb, samples, args.tokens)
    data = rep.as_dict()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        from tabulate import tabulate

        rows = [
            ["backbone", f"{rep.backbone} ({rep.family}, {rep.weights})"],
            [
                "samples (ragged)",
                f"{rep.samples}: prompt lengths {rep.prompt_lengths}, visual tokens {rep.visual_tokens}",
            ],
            ["max |logit diff| batch 1", f"{rep.max_abs_diff_batch1:.3e}  (tolerance {rep.tolerance:g})"],
            [f"max |logit diff| batch {rep.samples}", f"{rep.max_abs_diff_batched:.3e}"],
            [f"greedy {rep.greedy_tokens} tokens == HF (batch 1)", rep.greedy_equal_batch1],
            [f"greedy {rep.greedy_tokens} tokens == HF (batched)", rep.greedy_equal_batched],
            ["result", "PASS" if rep.ok else "FAIL"],
        ]
        print(tabulate(rows, tablefmt="simple"))
    return 0 if rep.ok else 1


# ------------------------------------------------------------------ run
def cmd_run(args: argparse.Namespace) -> int:
    from ..runner import parse_shard, run_suite
    from ..suite import load_suite

    suite = load_suite(args.suite)
    if args.plan:
        return _print_plan(suite, parse_shard(args.shard))
    out = Path(args.out or f"out/{suite.name}")
    # cells that time nothing use every core unless --threads / SEEBENCH_THREADS says otherwise
    explicit = args.threads is not None or "SEEBENCH_THREADS" in os.environ
    summary = run_suite(
        suite, out, force=args.force, shard=parse_shard(args.shard), progress=not args.no_progress,
        work_threads=None if explicit else (os.cpu_count() or 1),
    )  # fmt: skip
    _print_run(summary, out)
    return 1 if summary.failed else 0


def _print_plan(suite, shard) -> int:
    import time

    from tabulate import tabulate

    from ..availability import analytic_flops_metrics, cell_needs, estimate_gpu_minutes
    from ..runner import select_shard
    from ..suite import expand

    t0 = time.perf_counter()
    cells = select_shard(expand(suite), shard)
    rows, runnable, total_min = [], 0, 0.0
    for c in cells:
        n = cell_needs(c)
        est = estimate_gpu_minutes(c)
        total_min += est or 0.0
        analytic = (
            c.scenario.kind == "flops" and not n.available and c.backbone.geometry
            and analytic_flops_metrics(c.backbone.geometry, c.method.name, c.method.params) is not None
        )  # fmt: skip
        if c.scenario.kind == "flops" and not n.available and not analytic:
            n.missing.append("no analytic schedule for this method stack")
        status = "runs" if n.available else ("runs (analytic FLOPs)" if analytic else "skipped")
        runnable += status.startswith("runs")
        needs = ", ".join(x for x in ["weights", "dataset" if n.dataset else "", "GPU" if n.gpu else ""] if x)
        rows.append([c.index, c.backbone.name, c.method.name, c.task, c.scenario.kind, needs, status,
                     "; ".join(n.missing) if status == "skipped" else "", "" if est is None else f"{est:.0f}"])  # fmt: skip
    print(tabulate(rows, headers=["#", "backbone", "method", "task", "scenario", "needs", "here", "reason",
                                  "est. GPU-min"]))  # fmt: skip
    print(f"{len(cells)} cells: {runnable} can run here, {len(cells) - runnable} skipped; "
          f"estimated {total_min / 60:.1f} GPU-hours for the accuracy and latency cells (prefill-bound, "
          f"{__import__('harness.availability', fromlist=['x']).GPU_EFFECTIVE_TFLOPS:.0f} TFLOPS sustained); "
          f"planned in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    return 0


def _print_run(summary, out: Path) -> None:
    from ..tables import run_summary

    print(run_summary(summary.all_records))
    print(
        f"{summary.cells} cells: {summary.ran - summary.skipped_unavailable} ran, {summary.skipped} already done (resumed), "
        f"{summary.failed} failed, {summary.skipped_unavailable} skipped (not runnable here); records in {out}"
    )
    for r in summary.records:
        if r.status == "failed":
            print(f"failed: {r.backbone} | {r.method} | {r.task} | {r.scenario}: {r.error}")


# ------------------------------------------------------------------ flops
def cmd_flops(args: argparse.Namespace) -> int:
    if args.suite:
        return _flops_paper(args)
    from harness.baselines.registry import build_stack
    from harness.models.method import MethodError

    from ..backbones import open_backbone
    from ..flops import flops_cell
    from ..scenarios import verify_inputs

    if bool(args.model) == bool(args.random):
        raise HarnessError("give --suite paper, a checkpoint directory, or --random FAMILY")
    bb = open_backbone(args.model or f"random:{args.random}")
    if args.random and "saisa" in args.method.split("+") and bb.family == "llava":
        from harness.models.saisa import with_random_projectors

        bb = with_random_projectors(bb)  # SAISA brings its own projectors (random, as the decoder)
    try:
        plan = build_stack(args.method, _params(args.params)).plan(bb)
    except MethodError as exc:
        raise HarnessError(str(exc)) from None
    cell = flops_cell(bb, verify_inputs(bb, 1, 0)[0], plan, args.mode)
    data = {"backbone": bb.source, "method": args.method, "mode": args.mode, **cell.metrics(),
            "fvcore_vs_analytic": cell.rel_diff(), "unsupported_ops": cell.counted.unsupported}  # fmt: skip
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        from tabulate import tabulate

        a, c = cell.analytic, cell.counted
        rows = [
            [name, f"{2 * cv:.4g}", f"{av.flops:.4g}", f"{cell.rel_diff()[key]:.2%}"]
            for name, key, cv, av in [
                ("vision tower", "vision_tower", c.vision_tower, a.vision_tower),
                ("projector", "projector", c.projector, a.projector),
                ("decoder (+ score rows)", "decoder", c.decoder, a.decoder_total + a.overhead),
                ("LM head", "lm_head", c.lm_head, a.lm_head),
                ("total", "total", c.macs, a.total),
            ]
        ]
        print(tabulate(rows, headers=["FLOPs (2 x MACs)", "fvcore (counted)", "analytic", "rel. diff"]))
        print(f"unsupported ops: {c.unsupported or 'none'} (share {c.unsupported_share:.2%}); "
              f"visual side: YOPO {a.decoder_visual_yopo.flops:.4g}, ViCA {a.decoder_visual_vica.flops:.4g}")  # fmt: skip
    return 0 if cell.counted.ok and max(cell.rel_diff().values()) <= 0.01 else 1


def _flops_paper(args: argparse.Namespace) -> int:
    import time

    from .. import flops_analytic as fa

    if args.suite != "paper":
        raise HarnessError(
            f"harness flops --suite takes 'paper' (the published geometries), got '{args.suite}'"
        )
    t0 = time.perf_counter()
    rows = fa.paper_table()
    checks = []
    if not args.no_check:
        from harness.models.geometry import PAPER_GEOMETRIES

        for name in PAPER_GEOMETRIES:
            res = fa.cross_check_dense(PAPER_GEOMETRIES[name])
            checks.append({"backbone": name, **res})
    elapsed = time.perf_counter() - t0
    out = Path(args.out) if args.out else None
    if out:
        import pandas as pd

        out.mkdir(parents=True, exist_ok=True)
        df = pd.DataFrame(rows)
        df.to_csv(out / "paper_flops.csv", index=False)
        (out / "paper_flops.json").write_text(json.dumps(rows, indent=2, default=str))
        (out / "paper_flops.md").write_text(df.to_markdown(index=False))
        if checks:
            (out / "paper_flops_crosscheck.json").write_text(json.dumps(checks, indent=2, default=str))
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    from tabulate import tabulate

    cols = [
        "backbone",
        "method",
        "setting",
        "convention",
        "tflops",
        "tflops_visual",
        "visual_convention",
        "published",
    ]
    print(tabulate([[r.get(c) for c in cols] for r in rows], headers=cols, floatfmt=".3f"))
    if checks:
        print()
        print("dense cross-check: analytic vs torch FlopCounterMode under FakeTensorMode")
        table = [
            [
                c["backbone"],
                part,
                c["analytic"][part] / 1e12,
                c["fake"][part] / 1e12,
                f"{c['rel_diff'][part]:+.2e}",
            ]
            for c in checks
            for part in ("decoder", "vision_tower", "projector", "lm_head")
        ]
        print(tabulate(table, headers=["backbone", "line", "analytic TFLOPs", "counted TFLOPs", "rel. diff"],
                       floatfmt=".4f"))  # fmt: skip
    print(f"{len(rows)} rows in {elapsed:.1f} s; FLOPs = 2 x MACs; conventions: fastv (F2, MACs), "
          "swiglu (F3, GQA-aware, MACs), shortv (paper D/S formulas, t=64, FLOPs), exact (per class)")  # fmt: skip
    return 0


# ------------------------------------------------------------------ latency
def _device(choice: str) -> str:
    """--device auto|cpu|cuda -> the torch device to run on (one-line error without CUDA)."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise HarnessError("--device cuda: no CUDA device is visible; use --device cpu")
    return choice


def cmd_latency(args: argparse.Namespace) -> int:
    import torch

    from harness.baselines.registry import build_stack
    from harness.models.backbones.base import collate
    from harness.models.backbones.synthetic import SYNTHETIC_TOKEN_LAYOUTS as GEOMETRIES
    from harness.models.backbones.synthetic import synthetic_backbone, synthetic_batch
    from harness.models.method import MethodError

    from .. import environment
    from ..backbones import DTYPES
    from ..latency import TimingConfig, measure
    from ..scenarios import verify_inputs

    chosen = [x for x in (args.geometry, args.model, args.random) if x]
    if len(chosen) != 1:
        raise HarnessError("give exactly one of --geometry NAME, a checkpoint directory, or --random FAMILY")
    device = _device(args.device)
    method = f"plan:{args.plan}" if args.plan else args.method
    if args.geometry:
        if args.geometry not in GEOMETRIES:
            raise HarnessError(f"unknown geometry '{args.geometry}': use one of {', '.join(GEOMETRIES)}")
        # random weights are drawn where they will run: a 7B-geometry decoder initialises in seconds
        # on a GPU, minutes on the CPU (the GPU's random stream differs: weights are random-init)
        with torch.device(device):
            arch = "saisa" if "saisa" in method.split("+") else "llava"  # SAISA brings its own projectors
            bb = synthetic_backbone(
                args.geometry, layers=args.layers, hidden=args.hidden, heads=args.heads, architecture=arch
            )
        batch = synthetic_batch(bb, args.geometry, args.batch, args.seed)
    else:
        from ..backbones import open_backbone

        bb = open_backbone(args.model or f"random:{args.random}")
        samples = verify_inputs(bb, args.batch, args.seed)
        batch = bb.encode(collate(bb, samples) if len(samples) > 1 else samples[0])
    # built and encoded on the CPU in float32; then the model and the batch move together
    bb.to(device, DTYPES[args.dtype])
    batch = batch.to(device, DTYPES[args.dtype])
    try:
        plan = build_stack(method, _params(args.params)).plan(bb)
        timing = TimingConfig(
            args.warmup, args.min_repeats, args.min_time, max(args.min_repeats, args.max_repeats)
        )
    except (MethodError, ValueError) as exc:
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


# ------------------------------------------------------------------ train / tasks-path
def cmd_train(args: argparse.Namespace) -> int:
    from harness.models.tiny.model import CHECKPOINT_DIR
    from harness.models.tiny.recipe import Recipe
    from harness.models.tiny.train import train_tiny

    if args.what != "tiny-llava":
        raise HarnessError(f"harness train knows 'tiny-llava', got '{args.what}'")
    from harness.models.tiny.structures import ARCHES

    if args.arch not in ARCHES:
        raise HarnessError(f"--arch {args.arch}: use one of {', '.join(ARCHES)}")
    if args.scale <= 0:
        raise HarnessError(f"--scale must be > 0, got {args.scale}")
    if args.threads is None:  # training uses every core unless told otherwise (timing uses 1)
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    out = (
        Path(args.out)
        if args.out
        else CHECKPOINT_DIR / ("tiny-llava" + ("" if args.arch == "dense" else f"-{args.arch}"))
    )
    recipe = Recipe.default(seed=args.seed, scale=args.scale, arch=args.arch)
    summary = train_tiny(out, recipe, progress=not args.no_progress, device=_device(args.device))
    print(
        json.dumps(
            {"out": str(out), "wall_time_s": summary["wall_time_s"], "eval_ci": summary["eval_ci"]}, indent=2
        )
    )
    return 0


def cmd_tasks_path(args: argparse.Namespace) -> int:
    from ..lmms_entry import TASKS_DIR

    print(TASKS_DIR)
    return 0


# ------------------------------------------------------------------ calibrate
def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..backbones import open_backbone
    from ..calibrate import calibrate, save_calibration

    bb = open_backbone(args.model)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    res = calibrate(args.method, bb, tasks, args.limit, tau=args.tau, vote=args.vote)
    res["backbone"] = bb.source
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    if args.save:
        key = {"shortv": "layers", "yopo": "head_mask"}[args.method]
        save_calibration(bb.source, args.method, {key: res[key], "samples": res["samples"]})
    if args.json:
        print(json.dumps(res, indent=2))
    elif args.method == "shortv":
        from tabulate import tabulate

        print(tabulate([[i, res["lc"][i]] for i in res["layers"]], headers=["layer (ascending LC)", "LC"],
                       floatfmt=".3e"))  # fmt: skip
        print(f"ordered layer list: {res['layers']} ({len(res['samples'])} samples)")
    else:
        print(f"head mask (kept heads per layer): {[len(h) for h in res['head_mask']]}")
    return 0


# ------------------------------------------------------------------ report / compare
def cmd_report(args: argparse.Namespace) -> int:
    import time

    from ..report.build import build_report

    t0 = time.perf_counter()
    paths = build_report(Path(args.records), Path(args.out))
    for kind, p in paths.items():
        print(f"{kind:5s} {p}")
    print(f"report built from records in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from ..gate import compare_dirs

    findings = compare_dirs(Path(args.base), Path(args.new), acc_floor=args.acc_floor,
                            latency_tol=args.latency_tol, abs_latency_tol=args.abs_latency_tol)  # fmt: skip
    shown = findings if args.all else [f for f in findings if f.verdict != "ok"]
    if shown:
        print(tabulate([[f.cell, f.check, f.base, f.new, f.verdict] for f in shown],
                       headers=["cell", "check", "base", "new", "verdict"]))  # fmt: skip
    failed = [f for f in findings if f.failed]
    n_cells = len({f.cell for f in findings})
    if failed:
        cells = sorted({f.cell for f in failed})
        print(f"compare: FAIL: {len(failed)} check(s) in {len(cells)} cell(s): " + "; ".join(cells))
        return 1
    print(f"compare: ok ({len(findings)} checks over {n_cells} cells)")
    return 0


# ------------------------------------------------------------------ merge
def cmd_merge(args: argparse.Namespace) -> int:
    from .. import records

    out = Path(args.out)
    seen: dict[str, str] = {}
    copied = 0
    for folder in args.folders:
        recs = records.load_dir(Path(folder))
        if not recs:
            raise HarnessError(f"no records under '{folder}'")
        for r in recs:
            if r.status != "ok":
                continue
            text = r.model_dump_json(indent=2)
            if r.fingerprint in seen:
                if json.loads(seen[r.fingerprint])["metrics"] != r.metrics and not args.allow_conflicts:
                    raise HarnessError(
                        f"cell {r.backbone} | {r.method} | {r.task} | {r.scenario} has two different results "
                        f"(fingerprint {r.fingerprint[:12]}); pass --allow-conflicts to keep the first"
                    )
                continue
            seen[r.fingerprint] = text
            records.save(r, out)
            copied += 1
    print(f"merged {copied} records from {len(args.folders)} folders into {out}")
    return 0


# ------------------------------------------------------------------ convert
def cmd_convert(args: argparse.Namespace) -> int:
    from harness.models.convert import ConvertError, convert_llava_original

    try:
        meta = convert_llava_original(args.src, args.vision_tower, args.out)
    except ConvertError as exc:
        raise HarnessError(str(exc)) from None
    print(
        f"converted {args.src} -> {args.out} ({meta.get('architecture', 'llava')}); check it with: harness verify {args.out}"
    )
    return 0


# ------------------------------------------------------------------ methods
def cmd_methods(args: argparse.Namespace) -> int:
    from harness.baselines import registry

    rows: list[dict[str, Any]] = [
        {
            "name": "dense",
            "stage": "none",
            "needs_weights": False,
            "knobs": {},
            "description": "no method",
            "host_reads": 0,
            "reference": {
                "repository": "transformers",
                "commit": "",
                "file": "",
                "rule": "the stock HF forward",
            },
        }  # fmt: skip
    ]
    for name in registry.names()[1:]:
        cls = registry.get(name)
        rows.append(
            {"name": name, "stage": cls.stage, "needs_weights": cls.needs_weights, "knobs": cls.knobs(),
             "description": cls.description, "host_reads": cls.host_reads, "reference": cls.reference}
        )  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        from tabulate import tabulate

        table = [
            [r["name"], r["stage"], "yes" if r["needs_weights"] else "no",
             ", ".join(f"{k}={v['default']}" for k, v in r["knobs"].items()), r["description"]]
            for r in rows
        ]  # fmt: skip
        print(
            tabulate(table, headers=["method", "stage", "needs weights", "knobs (defaults)", "description"])
        )
    return 0


# ------------------------------------------------------------------ parser
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump): the problem, then where to look."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="harness", description="seebench: compare efficient multimodal-LLM methods.")
    p.add_argument("--threads", type=_positive("--threads"), default=None,
                   help="torch threads (default: $SEEBENCH_THREADS or 1)")  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    v = sub.add_parser("verify", help="check the executor against the HF forward on a checkpoint")
    v.add_argument("model", nargs="?", help="local checkpoint directory (save_pretrained) or hub id")
    v.add_argument("--random", choices=["llava-1.5", "llava-next", "qwen2-vl"],
                   help="build a small random-init model of this family's geometry instead")  # fmt: skip
    v.add_argument("--batch", type=_positive("batch size"), default=4, help="ragged batch size (default 4)")
    v.add_argument(
        "--tokens", type=_positive("--tokens"), default=16, help="greedy tokens to compare (default 16)"
    )
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--json", action="store_true", help="print the figures as JSON")
    v.set_defaults(func=cmd_verify)

    r = sub.add_parser("run", help="run a suite (YAML file or bundled name) into one record per cell")
    r.add_argument("--suite", required=True, help="suite YAML file or bundled suite name")
    r.add_argument("--out", help="records folder (default out/SUITE)")
    r.add_argument("--force", action="store_true", help="re-run cells that already have a record")
    r.add_argument("--shard", help="i/N: run only every N-th cell starting at i (1-based)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument(
        "--plan", action="store_true", help="print the cell matrix, what each needs and what is here"
    )
    r.set_defaults(func=cmd_run)

    f = sub.add_parser("flops", help="FLOPs: counted (fvcore) vs analytic, or the paper geometries table")
    f.add_argument("model", nargs="?", help="local checkpoint directory")
    f.add_argument("--suite", help="'paper': published backbones x methods, analytically (no weights)")
    f.add_argument(
        "--random", choices=["llava-1.5", "llava-next", "qwen2-vl"], help="random-init small geometry"
    )
    f.add_argument("--method", default="dense", help="method stack or plan:SPEC (default dense)")
    f.add_argument("--params", help='method parameters as JSON, e.g. \'{"fastv": {"budget": 64}}\'')
    f.add_argument("--mode", choices=["drop", "mask"], default="drop")
    f.add_argument("--out", help="with --suite: folder for CSV / JSON / Markdown tables")
    f.add_argument("--no-check", action="store_true", help="with --suite: skip the FakeTensor cross-check")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_flops)

    lt = sub.add_parser("latency", help="prefill/decode latency of a method vs dense in the same run")
    lt.add_argument("model", nargs="?", help="local checkpoint directory (real suite samples)")
    lt.add_argument(
        "--geometry", help="synthetic token geometry with random weights: llava-1.5, llava-next, qwen2-vl"
    )
    lt.add_argument(
        "--random", choices=["llava-1.5", "llava-next", "qwen2-vl"], help="small random-init model"
    )
    lt.add_argument("--method", default="dense", help="method stack (default dense)")
    lt.add_argument("--params", help='method parameters as JSON, e.g. \'{"fastv": {"budget": 64}}\'')
    lt.add_argument(
        "--plan", help="hand-written plan spec instead of a method, e.g. 'kv_only=60%%' (see README)"
    )
    lt.add_argument("--mode", choices=["drop", "mask"], default="drop")
    lt.add_argument("--batch", type=_positive("batch size"), default=1)
    lt.add_argument(
        "--layers", type=_positive("--layers"), default=8, help="synthetic decoder depth (default 8)"
    )
    lt.add_argument(
        "--hidden", type=_positive("--hidden"), default=1024, help="synthetic decoder width (default 1024)"
    )
    lt.add_argument("--heads", type=_positive("--heads"), default=8)
    lt.add_argument(
        "--decode-tokens", type=int, default=16, help="forced decode length for TPOT (0: prefill only)"
    )
    lt.add_argument("--warmup", type=int, default=2)
    lt.add_argument("--min-repeats", type=_positive("--min-repeats"), default=5)
    lt.add_argument("--max-repeats", type=_positive("--max-repeats"), default=200)
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
    lt.set_defaults(func=cmd_latency)

    tr = sub.add_parser("train", help="train the embedded tiny model: harness train tiny-llava")
    tr.add_argument("what", help="tiny-llava")
    tr.add_argument(
        "--out", help="checkpoint folder (default: the committed models/tiny/checkpoints/tiny-llava)"
    )
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument(
        "--scale", type=float, default=1.0, help="fraction of the recipe's steps (CI smoke: 0.01)"
    )
    tr.add_argument(
        "--arch",
        default="dense",
        help="dense, vica, saisa or yopo (same recipe and budget, that structure in training)",
    )
    tr.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where to train (default cpu)"
    )
    tr.add_argument("--no-progress", action="store_true")
    tr.set_defaults(func=cmd_train)

    tp = sub.add_parser(
        "tasks-path", help="print the folder of seebench's lmms-eval tasks (for --include_path)"
    )
    tp.set_defaults(func=cmd_tasks_path)

    ca = sub.add_parser(
        "calibrate", help="ShortV layer order (LC) or YOPO head masks from calibration samples"
    )
    ca.add_argument("method", choices=["shortv", "yopo"])
    ca.add_argument("model", help="checkpoint directory, 'embedded' or a hub id")
    ca.add_argument(
        "--tasks", required=True, help="comma-separated lmms-eval tasks, e.g. shapes_attr_ci,shapes_exist_ci"
    )
    ca.add_argument("--limit", type=_positive("--limit"), default=40, help="samples per task (default 40)")
    ca.add_argument(
        "--tau", type=float, default=0.1, help="yopo: visual/non-visual mass ratio of an active head"
    )
    ca.add_argument(
        "--vote", type=float, default=0.4, help="yopo: share of samples on which a kept head is active"
    )
    ca.add_argument("--out", help="write the result JSON here")
    ca.add_argument("--save", action="store_true", help="store the result in the checkpoint's seebench.json")
    ca.add_argument("--json", action="store_true")
    ca.set_defaults(func=cmd_calibrate)

    rp = sub.add_parser("report", help="tables (Markdown, LaTeX, CSV, HTML) and charts from records only")
    rp.add_argument("records", help="folder of records")
    rp.add_argument("--out", required=True, help="output folder")
    rp.set_defaults(func=cmd_report)

    cp = sub.add_parser("compare", help="CI gate: fail on accuracy, FLOPs or latency-ratio regressions")
    cp.add_argument("base")
    cp.add_argument("new")
    cp.add_argument("--acc-floor", type=float, default=0.01, help="minimum accuracy tolerance (default 0.01)")
    cp.add_argument("--latency-tol", type=float, default=0.15, help="allowed worsening of method/dense ratio")
    cp.add_argument("--abs-latency-tol", type=float, default=0.5, help="allowed slowdown, same machine only")
    cp.add_argument("--all", action="store_true", help="show passing checks too")
    cp.set_defaults(func=cmd_compare)

    mg = sub.add_parser("merge", help="combine record folders (e.g. shards) into one")
    mg.add_argument("folders", nargs="+")
    mg.add_argument("--out", required=True)
    mg.add_argument("--allow-conflicts", action="store_true")
    mg.set_defaults(func=cmd_merge)

    cv = sub.add_parser("convert", help="LLaVA original-layout checkpoint (ViCA, YOPO, SAISA) -> HF layout")
    cv.add_argument("layout", choices=["llava-original"])
    cv.add_argument("src", help="original checkpoint directory")
    cv.add_argument(
        "--vision-tower", required=True, help="local CLIP vision tower directory (mm_vision_tower)"
    )
    cv.add_argument("--out", required=True)
    cv.set_defaults(func=cmd_convert)

    m = sub.add_parser("methods", help="list registered methods")
    m.add_argument("--json", action="store_true", help="print a JSON list of objects")
    m.set_defaults(func=cmd_methods)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser()
    args = parser.parse_args(argv)
    _threads(args.threads)
    try:
        return args.func(args)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # MethodError / PlanError / GraphError: one line naming the problem
        from harness.models.cuda_graphs import GraphError
        from harness.models.method import MethodError
        from harness.models.plan import PlanError

        if not isinstance(exc, MethodError | PlanError | GraphError):
            raise
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted; finished cells are kept, re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
