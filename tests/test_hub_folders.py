"""Checkpoint folders laid out the way the hub ships them (``models/backbones/hub_layout.py``) load
through ``load_backbone`` and pass ``harness verify DIR`` on this CPU install, which has no
torchvision: the processors that take a video processor (Qwen, OneVision, InternVL) are built for
images only (``models/backbones/processors.py``), and bad processor files are one-line errors."""

from __future__ import annotations

import json
import logging
import re
import shutil

import numpy as np
import pytest
import transformers

from harness.cli import main
from harness.models.backbones import processors
from harness.models.backbones.base import BackboneError
from harness.models.backbones.hub_layout import save_hub_checkpoint
from harness.models.backbones.processors import load_processor
from harness.models.backbones.random import RANDOM_FAMILIES, VOCAB

HUB_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
             "tokenizer_config.json", "preprocessor_config.json", "processor_config.json", "seebench.json"}  # fmt: skip


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    """``hub_folder(family)``: that family's folder, saved once per module."""
    root, saved = tmp_path_factory.mktemp("hub"), {}

    def get(family: str):
        if family not in saved:
            saved[family] = save_hub_checkpoint(family, root / family)
        return saved[family]

    return get


@pytest.mark.parametrize("family", list(RANDOM_FAMILIES))
def test_a_hub_folder_passes_verify(family, hub_folder, capsys):
    folder = hub_folder(family)
    proc_class = json.loads((folder / "processor_config.json").read_text())["processor_class"]
    takes_video = "video_processor" in getattr(transformers, proc_class).get_attributes()
    files = {p.name for p in folder.iterdir()}
    expected = HUB_FILES | ({"video_preprocessor_config.json"} if takes_video else set())
    expected |= {"chat_template.jinja"} if family != "llava-1.5" else set()  # vicuna's prompt: no template
    assert files == expected
    ids = [t["id"] for t in json.loads((folder / "tokenizer.json").read_text())["added_tokens"]]
    assert max(ids) < VOCAB
    assert main(["verify", str(folder), "--batch", "2", "--tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^result\s+PASS\s*$", out, re.M), out
    assert "random-init" in out  # seebench.json says so


def test_without_torchvision_the_processor_is_built_for_images_and_said_once(hub_folder, monkeypatch, caplog):
    folder = str(hub_folder("qwen2-vl"))
    assert not processors.torchvision_available()  # this CPU install
    monkeypatch.setattr(processors, "_warned", set())
    tried = []
    auto = transformers.AutoProcessor.from_pretrained
    monkeypatch.setattr(
        transformers.AutoProcessor,
        "from_pretrained",
        staticmethod(lambda *a, **k: tried.append(a) or auto(*a, **k)),
    )
    with caplog.at_level(logging.WARNING, logger="harness.models"):
        first, second = load_processor(folder), load_processor(folder)
    assert tried == [(folder,), (folder,)]  # AutoProcessor is tried first, each time
    said = [r.getMessage() for r in caplog.records if r.name == "harness.models"]
    assert len(said) == 1 and "images only" in said[0] and "torchvision" in said[0], said
    for proc in (first, second):
        assert isinstance(proc, transformers.Qwen2VLProcessor) and proc.get_attributes() == [
            "image_processor",
            "tokenizer",
        ]
        assert getattr(proc, "video_processor", None) is None and proc.chat_template
    assert first.to_dict()["processor_class"] == "Qwen2VLProcessor"
    with pytest.raises(BackboneError, match="images only .*install torchvision"):
        first(
            text=["<|vision_start|><|video_pad|><|vision_end|>"], videos=[np.zeros((2, 28, 28, 3), np.uint8)]
        )


def test_where_torchvision_imports_autoprocessor_decides(hub_folder, monkeypatch):
    folder = str(hub_folder("qwen2-vl"))
    monkeypatch.setattr(processors, "torchvision_available", lambda: True)
    full = object()
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", staticmethod(lambda *a, **k: full))
    assert load_processor(folder) is full

    def fails(*args, **kwargs):
        raise ImportError("Qwen2VLVideoProcessor requires the Torchvision library but it was not found")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", staticmethod(fails))
    with pytest.raises(BackboneError, match="cannot load the processor .*processor_config.json"):
        load_processor(folder)  # not taken for the missing-torchvision case: torchvision is there


def test_a_folder_without_processor_configs_has_no_processor(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")  # a tokenizer alone does not make a processor
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", None)  # never asked
    assert load_processor(str(tmp_path)) is None


@pytest.mark.parametrize("family", ["qwen2-vl", "llava-1.5"])  # the image-only path and AutoProcessor's
def test_a_corrupt_preprocessor_config_is_one_line_naming_it(family, hub_folder, tmp_path, capsys):
    folder = shutil.copytree(hub_folder(family), tmp_path / family)
    (folder / "preprocessor_config.json").write_text('{"size": ')
    assert main(["verify", str(folder)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("harness: error: cannot load the "), err
    assert "preprocessor_config.json" in err[0]


def test_verify_save_folder_writes_and_verifies_the_folder(tmp_path, capsys):
    out = tmp_path / "l15"
    assert (
        main(["verify", "--random", "llava-1.5", "--save-folder", str(out), "--batch", "2", "--tokens", "2"])
        == 0
    )
    captured = capsys.readouterr()
    assert (out / "preprocessor_config.json").is_file() and f"saved {out}" in captured.err
    assert str(out) in captured.out and "PASS" in captured.out  # the folder is what was verified
    assert main(["verify", str(out), "--save-folder", str(tmp_path / "x")]) == 2
    assert "--save-folder saves a random model" in capsys.readouterr().err


def test_the_layout_transformers_5_saves_loads_too(hub_folder, tmp_path, capsys):
    """``save_pretrained`` of transformers 5 nests the image and video processors in
    processor_config.json; older hub folders keep the template in chat_template.json."""
    folder = shutil.copytree(hub_folder("qwen2.5-vl"), tmp_path / "nested")
    nested = json.loads((folder / "processor_config.json").read_text())
    for key, file in (
        ("image_processor", "preprocessor_config.json"),
        ("video_processor", "video_preprocessor_config.json"),
    ):
        nested[key] = json.loads((folder / file).read_text())
        (folder / file).unlink()
    (folder / "processor_config.json").write_text(json.dumps(nested))
    template = folder / "chat_template.jinja"
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template.read_text()}))
    template.unlink()
    proc = load_processor(str(folder))
    assert isinstance(proc, transformers.Qwen2_5_VLProcessor) and proc.chat_template
    assert proc.image_processor.size["longest_edge"] == nested["image_processor"]["size"]["longest_edge"]
    assert main(["verify", str(folder), "--batch", "2", "--tokens", "2"]) == 0
    assert re.search(r"^result\s+PASS\s*$", capsys.readouterr().out, re.M)


@pytest.mark.skipif("internvl3" not in RANDOM_FAMILIES, reason="no random InternVL3")
def test_a_folder_without_a_video_config_falls_back_too(hub_folder, tmp_path):
    """Without video_preprocessor_config.json AutoProcessor fails with a ValueError (it asks for
    torchvision) instead of the ImportError of a torchvision-only class: the same fallback."""
    folder = shutil.copytree(hub_folder("internvl3"), tmp_path / "internvl3")
    (folder / "video_preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match="torchvision"):
        transformers.AutoProcessor.from_pretrained(str(folder))
    proc = load_processor(str(folder))
    assert isinstance(proc, transformers.InternVLProcessor) and getattr(proc, "video_processor", None) is None
    config = json.loads((folder / "config.json").read_text())
    assert proc.image_seq_length == config["image_seq_length"] and proc.image_token == "<IMG_CONTEXT>"
