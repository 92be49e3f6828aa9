"""Accuracy through lmms-eval: the seebench model plugin, the shapes tasks, failed-sample counting,
and checkpoint errors.  Uses a random-init checkpoint of the tiny architecture (no training)."""

import json
import os
import subprocess
import sys

import pytest

from harness.errors import HarnessError


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from harness.models.tiny.model import TinyConfig, build_model, file_sha256
    from harness.models.tiny.tokenizer import save_processor

    out = tmp_path_factory.mktemp("ckpt") / "tiny-llava"
    build_model(TinyConfig(layers=2)).save_pretrained(out)
    save_processor(out)
    meta = {"weights": "random-init", "sha256": {"model.safetensors": file_sha256(out / "model.safetensors")}}
    (out / "seebench.json").write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="module")
def tiny_bb(tiny_ckpt):
    from harness.backbones import open_backbone

    return open_backbone(str(tiny_ckpt))


def _stack():
    from harness.baselines.registry import build_stack

    return build_stack("dense")


def test_accuracy_keeps_per_sample_correctness(tiny_bb):
    from harness.accuracy import evaluate_task

    stack = _stack()
    res = evaluate_task(
        tiny_bb, stack, stack.plan(tiny_bb), "shapes_exist_ci", mode="drop", batch_size=4, limit=8
    )
    m = res["metrics"]
    assert m["n"] == 8 and m["failed"] == 0 and 0.0 <= m["accuracy"] <= 1.0
    per = res["details"]["per_sample"]
    assert sorted(per) == [f"shapes_exist/ci/{i:06d}" for i in range(8)]
    assert m["accuracy"] == sum(per.values()) / 8


def test_failed_batches_are_counted_not_scored(tiny_bb, monkeypatch):
    from harness import lmms_plugin
    from harness.accuracy import evaluate_task

    def boom(self, *a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(lmms_plugin.SeebenchLMM, "_generate", boom)
    stack = _stack()
    res = evaluate_task(
        tiny_bb, stack, stack.plan(tiny_bb), "shapes_attr_ci", mode="drop", batch_size=4, limit=8
    )
    assert res["metrics"]["failed"] == 8 and res["metrics"]["n"] == 0


def test_unknown_task_is_rejected(tiny_bb):
    from harness.accuracy import evaluate_task

    stack = _stack()
    with pytest.raises(HarnessError, match="unknown task 'shapes_nope'"):
        evaluate_task(tiny_bb, stack, stack.plan(tiny_bb), "shapes_nope", mode="drop", batch_size=1, limit=1)


def test_every_shapes_task_is_an_lmms_eval_task():
    from lmms_eval.tasks import TaskManager

    from harness.lmms_entry import TASKS_DIR
    from harness.models.tiny.shapes import TASKS

    tm = TaskManager("ERROR", include_path=TASKS_DIR, include_defaults=False)
    for t in TASKS:
        assert t in tm.all_tasks and f"{t}_ci" in tm.all_tasks
    assert "shapes" in tm.all_groups if hasattr(tm, "all_groups") else "shapes" in tm.all_tasks


@pytest.mark.slow
def test_lmms_eval_cli_runs_our_model_offline(tiny_ckpt, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    tasks_dir = subprocess.run([sys.executable, "-m", "harness.cli", "tasks-path"], capture_output=True, text=True,
                               check=True).stdout.strip()  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "seebench", "--model_args", f"pretrained={tiny_ckpt}",
         "--tasks", "shapes_read", "--include_path", tasks_dir, "--limit", "4", "--batch_size", "2",
         "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    results = list((tmp_path / "out").rglob("*_results.json"))
    assert results, out.stdout[-2000:] + out.stderr[-2000:]
    data = json.loads(results[0].read_text())
    assert "exact_match,none" in data["results"]["shapes_read"]


def test_corrupted_or_missing_checkpoint_one_line(tiny_ckpt, tmp_path, monkeypatch):
    import shutil

    from harness.backbones import open_backbone
    from harness.models.tiny import model as tm

    bad = tmp_path / "tiny-llava"
    shutil.copytree(tiny_ckpt, bad)
    monkeypatch.setattr(tm, "CHECKPOINT_DIR", tmp_path)
    with open(bad / "model.safetensors", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00garbage\x00")
    with pytest.raises(HarnessError) as err:
        open_backbone("embedded")
    msg = str(err.value)
    assert (
        "model.safetensors is corrupted" in msg
        and "harness train tiny-llava --out" in msg
        and "\n" not in msg
    )
    (bad / "model.safetensors").unlink()
    with pytest.raises(
        HarnessError, match=r"model.safetensors is missing; rebuild it with: harness train tiny-llava"
    ):
        open_backbone("embedded")
