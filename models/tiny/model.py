"""The embedded tiny LLaVA: a real ``LlavaForConditionalGeneration`` at laptop scale.

CLIP-style ViT (96 px images, patch 8 -> 144 patch tokens + CLS), a 2-layer MLP projector and a
Llama decoder with 8 layers.  Saved with ``save_pretrained`` next to the word-level processor,
so the same loader (``harness.models.backbones.loading.load_backbone``) serves it and real LLaVA
checkpoints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import SeebenchError
from . import tokenizer as tk

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


@dataclass(frozen=True)
class TinyConfig:
    vit_hidden: int = 128
    vit_layers: int = 3
    vit_heads: int = 4
    vit_mlp: int = 256
    hidden: int = 128
    layers: int = 8
    heads: int = 4
    ffn: int = 352
    vision_feature_layer: int = -1

    def as_dict(self) -> dict:
        return asdict(self)


def llava_config(cfg: TinyConfig):
    import transformers

    vocab = tk.vocabulary()
    return transformers.LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=cfg.vit_hidden, intermediate_size=cfg.vit_mlp,
            num_hidden_layers=cfg.vit_layers, num_attention_heads=cfg.vit_heads, image_size=tk.IMAGE_SIZE,
            patch_size=tk.PATCH_SIZE, projection_dim=cfg.vit_hidden, hidden_act="gelu",
        ),
        text_config=dict(
            model_type="llama", hidden_size=cfg.hidden, intermediate_size=cfg.ffn, num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads, vocab_size=len(vocab),
            max_position_embeddings=tk.MODEL_MAX_LENGTH, rms_norm_eps=1e-5, tie_word_embeddings=False,
            bos_token_id=vocab.index(tk.BOS_TOKEN), eos_token_id=vocab.index(tk.EOS_TOKEN), pad_token_id=0,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        image_token_index=vocab.index(tk.IMAGE_TOKEN),
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        pad_token_id=0,  # pyright: ignore[reportCallIssue]  # a kwarg the signature lacks
    )  # fmt: skip


def build_model(cfg: TinyConfig, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(llava_config(cfg))
    model.config._attn_implementation = "sdpa"
    return model.float()


def pixel_values(images) -> torch.Tensor:
    """uint8 [B, 96, 96, 3] -> normalised [B, 3, 96, 96], exactly what the processor produces."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(tk.IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(tk.IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class CheckpointError(SeebenchError):
    """A missing or corrupted embedded checkpoint; one line naming the file and the rebuild command."""


REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "processor_config.json",
    "seebench.json",
)


def file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_checkpoint(path: Path, name: str = "tiny-llava") -> Path:
    """Raise :class:`CheckpointError` unless every file is present and the weights match their hash."""
    rebuild = f"rebuild it with: harness train {name} --out {path}"
    for f in REQUIRED_FILES:
        if not (path / f).exists():
            raise CheckpointError(f"checkpoint file {path / f} is missing; {rebuild}")
    import json

    try:
        meta = json.loads((path / "seebench.json").read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint file {path / 'seebench.json'} is corrupted; {rebuild}") from None
    want = meta.get("sha256", {}).get("model.safetensors")
    if want and file_sha256(path / "model.safetensors") != want:
        raise CheckpointError(
            f"checkpoint file {path / 'model.safetensors'} is corrupted (hash mismatch); {rebuild}"
        )
    return path


def default_checkpoint(arch: str = "dense") -> Path:
    """The committed checkpoint of the embedded tiny model (``dense``, ``vica``, ``saisa``, ``yopo``)."""
    name = "tiny-llava" if arch == "dense" else f"tiny-llava-{arch}"
    return check_checkpoint(
        CHECKPOINT_DIR / name, "tiny-llava" + ("" if arch == "dense" else f" --arch {arch}")
    )
