"""The paper suite on a machine without GPU/weights/data; sharded runs + merge == one run;
lmms-eval through accelerate with two CPU processes == one process."""

import json
import os
import subprocess
import sys

import pytest

from harness.records import load_dir


def _cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


def test_paper_plan_lists_every_cell_with_reasons():
    out = _cli("run", "--suite", "paper", "--plan")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    summary = lines[-1]
    n = int(summary.split(" cells")[0])
    body = [ln for ln in lines[:-1] if ln[:5].strip().isdigit()]  # the summary is the last line
    assert len(body) == n > 300
    skipped = [ln for ln in body if " skipped " in ln]
    assert skipped and all("not on this machine" in ln or "GPU" in ln or "dataset" in ln for ln in skipped)
    assert any("runs (analytic FLOPs)" in ln for ln in body)


@pytest.mark.slow
def test_gpu_latency_plan_on_a_cpu_machine_estimates_gpu_minutes():
    """The GPU campaign's cells: every method at batch 1/8/32, graphs on and off, each with its
    estimated GPU-minutes; none runs on a machine without CUDA."""
    from harness.suite import expand, load_suite

    cells = expand(load_suite("gpu_latency"))
    assert {c.scenario.batch_size for c in cells} == {1, 8, 32}
    assert {c.scenario.cuda_graphs for c in cells} == {True, False}
    assert {
        "dense",
        "vica",
        "shortv",
        "yopo",
        "saisa",
        "fastv",
        "pdrop",
        "visionzip",
        "sparsevlm",
        "dart",
    } == {c.method.name for c in cells}
    out = _cli("run", "--suite", "gpu_latency", "--plan")
    assert out.returncode == 0, out.stderr
    body = [ln for ln in out.stdout.splitlines()[:-1] if ln[:5].strip().isdigit()]
    assert len(body) == len(cells) and all(" skipped " in ln and "GPU" in ln for ln in body)
    minutes = [float(ln.split()[-1]) for ln in body]
    assert all(m >= 1 for m in minutes)  # a fixed setup plus the timed calls
    assert out.stdout.splitlines()[-1].startswith(f"{len(cells)} cells: 0 can run here")


@pytest.mark.slow
def test_paper_run_completes_flops_and_skips_the_rest(tmp_path):
    out = _cli("run", "--suite", "paper", "--out", str(tmp_path), "--no-progress")
    assert out.returncode == 0, out.stderr
    recs = load_dir(tmp_path)
    flops = [r for r in recs if r.scenario == "flops" and r.status == "ok"]
    assert flops and all("analytic model" in r.details["source"] for r in flops)
    dense7 = next(r for r in flops if r.backbone == "llava-1.5-7b" and r.method == "dense")
    assert round(dense7.metrics["flops_total_prefill_t64"] / 1e12, 1) == 8.5
    assert all(r.status == "skipped" and r.error for r in recs if r.scenario in ("accuracy", "latency"))


SUITE = """
name: shards
backbones:
  - {name: l15, model: "random:llava-1.5"}
  - {name: q2, model: "random:qwen2-vl"}
methods: [dense, "plan:kv_only=2-3", {name: fastv, params: {fastv: {budget: 200}}}]
scenarios:
  - {kind: verify, batch_size: 2, max_new_tokens: 3}
"""


@pytest.mark.slow
def test_sharded_runs_merged_equal_one_run(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)
    assert _cli("run", "--suite", str(suite), "--out", str(tmp_path / "all"), "--no-progress").returncode == 0
    for i in (1, 2, 3):
        r = _cli(
            "run",
            "--suite",
            str(suite),
            "--out",
            str(tmp_path / f"s{i}"),
            "--shard",
            f"{i}/3",
            "--no-progress",
        )
        assert r.returncode == 0, r.stderr
    sizes = [len(load_dir(tmp_path / f"s{i}")) for i in (1, 2, 3)]
    assert sum(sizes) == 6 and all(s == 2 for s in sizes)
    m = _cli(
        "merge",
        str(tmp_path / "s1"),
        str(tmp_path / "s2"),
        str(tmp_path / "s3"),
        "--out",
        str(tmp_path / "merged"),
    )
    assert m.returncode == 0, m.stderr
    one = {r.fingerprint: r.metrics for r in load_dir(tmp_path / "all")}
    merged = {r.fingerprint: r.metrics for r in load_dir(tmp_path / "merged")}
    assert one == merged


@pytest.mark.slow
def test_lmms_eval_two_cpu_processes_equal_one(tmp_path):
    from harness.models.tiny.model import TinyConfig, build_model, file_sha256
    from harness.models.tiny.tokenizer import save_processor

    ckpt = tmp_path / "tiny"
    build_model(TinyConfig(layers=2)).save_pretrained(ckpt)
    save_processor(ckpt)
    (ckpt / "seebench.json").write_text(
        json.dumps({"sha256": {"model.safetensors": file_sha256(ckpt / "model.safetensors")}})
    )
    tasks = _cli("tasks-path").stdout.strip()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")  # fmt: skip
    common = ["--model", "seebench", "--model_args", f"pretrained={ckpt}", "--tasks", "shapes_count_ci",
              "--include_path", tasks, "--limit", "10", "--log_samples"]  # fmt: skip
    bin_dir = os.path.dirname(sys.executable)
    runs = {
        "one": [sys.executable, "-m", "lmms_eval", *common, "--output_path", str(tmp_path / "one")],
        "two": [os.path.join(bin_dir, "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lmms_eval",
                *common, "--output_path", str(tmp_path / "two")],
    }  # fmt: skip
    per = {}
    for name, cmd in runs.items():
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        files = list((tmp_path / name).rglob("*_samples_shapes_count_ci.jsonl"))
        assert files, out.stdout[-2000:] + out.stderr[-2000:]
        rows = [json.loads(x) for x in files[0].read_text().splitlines()]
        per[name] = sorted((r["doc_id"], r["filtered_resps"][0], r["exact_match"]) for r in rows)
    assert len(per["one"]) == 10
    assert per["one"] == per["two"]
