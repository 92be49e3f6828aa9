"""The training command: a CI-sized smoke run, deterministic by seed (same thread count)."""

import json

from harness.cli import main


def test_train_smoke_is_deterministic(tmp_path, capsys):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert (
            main(
                [
                    "--threads",
                    "1",
                    "train",
                    "tiny-llava",
                    "--scale",
                    "0.003",
                    "--out",
                    str(out),
                    "--no-progress",
                ]
            )
            == 0
        )
        outs.append(json.loads((out / "seebench.json").read_text()))
    a, b = outs
    assert a["sha256"]["model.safetensors"] == b["sha256"]["model.safetensors"]
    assert a["eval_ci"] == b["eval_ci"]
    for f in ("model.safetensors", "config.json", "tokenizer.json", "processor_config.json", "README.md",
              "training_log.jsonl"):  # fmt: skip
        assert (tmp_path / "a" / f).exists(), f
    assert "harness train tiny-llava" in (tmp_path / "a" / "README.md").read_text()


def test_train_rejects_bad_arguments(capsys):
    assert main(["train", "tiny-llava", "--scale", "0"]) == 2
    assert "--scale must be > 0" in capsys.readouterr().err
    assert main(["train", "big-llava"]) == 2
