"""The CLI answers bad input with one line on stderr and exit code 2."""

import json
import subprocess
import sys

import pytest

from harness.cli import main


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify", "--random", "llava-9"], "invalid choice: 'llava-9'"),
        pytest.param(
            ["verify", "/no/such/model"],
            "model directory '/no/such/model' does not exist",
            marks=pytest.mark.slow,
        ),
        (["verify", "--random", "llava-1.5", "--batch", "0"], "batch size must be >= 1, got 0"),
        pytest.param(
            ["run", "--suite", "no-such-suite"], "unknown suite 'no-such-suite'", marks=pytest.mark.slow
        ),
    ],
)
def test_bad_inputs_one_line_errors(args, message):
    out = _run(*args)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert message in lines[0]


@pytest.mark.slow
def test_unknown_backbone_type_in_a_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    out = _run("verify", str(tmp_path))
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "unknown backbone model_type 'bert'" in lines[0], out.stderr


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"model_type": "gemma3"}, "unknown backbone model_type 'gemma3': supported are "),
        ({}, "unknown backbone without a model_type: supported are "),
        (
            {"architectures": ["Gemma3ForConditionalGeneration"]},
            "unknown backbone without a model_type (architectures: Gemma3ForConditionalGeneration)",
        ),
        (
            {"model_type": "llava", "architectures": ["LlavaLlamaForCausalLM"]},
            "unsupported architecture LlavaLlamaForCausalLM for model_type 'llava': seebench loads",
        ),
    ],
)
def test_an_unsupported_architecture_is_one_line_listing_the_families(config, message, tmp_path, capsys):
    from harness.models.backbones.loading import FAMILIES

    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main(["verify", str(tmp_path)]) == 2  # a traceback would raise here instead
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("harness: error: ") and message in lines[0], lines
    assert all(family in lines[0] for family in FAMILIES)


@pytest.mark.slow
def test_suite_with_unknown_key_via_cli(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(
        "name: x\nbackbones: [{name: a, model: 'random:llava-1.5'}]\nscenarios: [{kind: verify}]\nextra: 1\n"
    )
    out = _run("run", "--suite", str(p), "--out", str(tmp_path / "o"))
    assert out.returncode == 2
    assert "unknown key 'extra' at top level" in out.stderr


def test_verify_random_json(capsys):
    assert main(["verify", "--random", "qwen2-vl", "--json", "--batch", "2", "--tokens", "4"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["samples"] == 2 and data["max_abs_diff_batched"] <= 1e-4


def test_methods_json_lists_dense(capsys):
    assert main(["methods", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["name"] == "dense" and "stage" in data[0]
    reads = {row["name"]: row["host_reads"] for row in data}
    assert reads["fastv"] == reads["sparsevlm"] == reads["vica"] == 0 and reads["prumerge_plus"] == 1
    refs = {row["name"]: row["reference"] for row in data}
    assert all(set(r) == {"repository", "commit", "file", "rule"} for r in refs.values()), refs
    # every pruning baseline with official code names the commit and file its rule follows
    official = ["fastv", "pdrop", "sparsevlm", "dart", "fastervlm", "visionzip", "vispruner", "prumerge_plus",
                "divprune", "cdpruner", "tome"]  # fmt: skip
    for name in official:
        ref = refs[name]
        assert "/" in ref["repository"] and len(ref["commit"]) == 40 and ref["file"], name
    assert refs["random"]["repository"] == "seebench"


@pytest.mark.slow
def test_run_uses_every_core_for_untimed_cells_unless_told(tmp_path, monkeypatch):
    import json
    import os

    import torch

    monkeypatch.delenv("SEEBENCH_THREADS", raising=False)
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "name: x\nbackbones: [{name: a, model: 'random:llava-1.5'}]\nscenarios: [{kind: flops}]\n"
    )
    before = torch.get_num_threads()
    for args, want in ((["run"], os.cpu_count()), (["--threads", "1", "run"], 1)):
        out = tmp_path / f"out{want}"
        assert main([*args, "--suite", str(suite), "--out", str(out), "--no-progress"]) == 0
        (rec,) = [json.loads(p.read_text()) for p in out.glob("*.json")]
        assert rec["details"]["threads"] == want
    torch.set_num_threads(before)


def test_help_imports_no_torch():
    """`harness --help` and every command's --help stay light: handlers import torch inside run()."""
    code = (
        "import sys\n"
        "from harness.cli import COMMANDS, build_parser, main\n"
        "sub = next(a for a in build_parser()._actions if a.__class__.__name__ == '_SubParsersAction')\n"
        "for argv in [[], *([name] for name in sub.choices)]:\n"
        "    try:\n"
        "        main([*argv, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'pandas') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_every_error_class_is_a_seebench_error():
    """One user-error base (models/errors.py): main catches SeebenchError once."""
    import ast
    import importlib
    from pathlib import Path

    from harness.models.errors import SeebenchError

    root = Path(__file__).resolve().parent.parent
    found = []
    for folder, package in (
        ("harness", "harness"),
        ("models", "harness.models"),
        ("baselines", "harness.baselines"),
    ):
        for py in sorted((root / folder).rglob("*.py")):
            names = [n.name for n in ast.parse(py.read_text()).body
                     if isinstance(n, ast.ClassDef) and n.name.endswith("Error")]  # fmt: skip
            if names:
                parts = py.relative_to(root / folder).with_suffix("").parts
                module = importlib.import_module(".".join((package, *parts)).removesuffix(".__init__"))
                found += [(module.__name__, name, getattr(module, name)) for name in names]
    assert {name for _, name, _ in found} >= {"HarnessError", "MethodError", "PlanError", "BackboneError",
                                              "ConvertError", "CheckpointError", "GraphError"}  # fmt: skip
    assert [(m, n) for m, n, cls in found if not issubclass(cls, SeebenchError)] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["flops", "--random", "llava-1.5", "--method", "fastvv"],
            "unknown method 'fastvv': did you mean 'fastv'?",
        ),
        (
            ["convert", "llava-original", "{tmp}", "--vision-tower", "{tmp}", "--out", "{tmp}/out"],
            "has no config.json",
        ),
        (
            ["latency", "--geometry", "llava-1.5", "--layers", "2", "--warmup", "-1"],
            "timing needs warmup >= 0",
        ),
    ],
)
def test_user_errors_reach_main_as_one_line(args, message, tmp_path, capsys):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("harness: error: ") and message in err[0], err


def test_random_choices_are_the_builders():
    from harness.cli.common import RANDOM_FAMILIES as CHOICES
    from harness.models.backbones.random import RANDOM_FAMILIES

    assert list(RANDOM_FAMILIES) == CHOICES
