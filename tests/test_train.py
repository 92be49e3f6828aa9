"""The training command: a CI-sized smoke run, deterministic by seed (same thread count)."""

import json

import pytest

from harness.cli import main


@pytest.mark.slow
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


def test_deterministic_makes_repeated_index_backward_reproducible():
    """The packed batch's gathers repeat indices (several questions per scene); with two threads the
    backward of such a gather is a parallel float atomic add unless deterministic mode is on, so
    repeated passes give different gradients.  Training runs under ``deterministic()``."""
    import torch

    from harness.models.tiny.train import deterministic

    before_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(16, 300, 128, generator=gen, requires_grad=True)
        bi = torch.randint(0, 16, (2000,), generator=gen)
        ri = torch.randint(0, 4, (2000,), generator=gen)
        g = torch.randn(2000, 128, generator=gen)
        grads = set()
        with deterministic():
            assert torch.are_deterministic_algorithms_enabled()
            for _ in range(30):
                x.grad = None
                (x[bi, ri] * g).sum().backward()
                grads.add(x.grad.numpy().tobytes())
        assert len(grads) == 1
        assert not torch.are_deterministic_algorithms_enabled()  # restored afterwards
    finally:
        torch.set_num_threads(before_threads)
