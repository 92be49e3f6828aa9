"""Which backbone class serves a checkpoint: the one module that knows the family subclasses.

Families: ``llava`` (LLaVA-1.5), ``llava_next`` (LLaVA-NeXT, anyres), ``qwen2_vl`` (M-RoPE) and
``qwen2_5_vl`` (Qwen2-VL's decoder, a window-attention tower), ``llava_onevision`` (SigLIP,
anyres_max_9, a Qwen2 decoder);
a checkpoint whose ``seebench.json`` says ``architecture: saisa`` loads as ``SaisaBackbone``.
The subclasses are imported when first needed, so importing this module loads no family.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import Backbone, BackboneError

#: family (the config's model_type) -> (module of its backbone class, that class, the HF model class)
_FAMILY_CLASSES: dict[str, tuple[str, str, str]] = {
    "llava": (".llava", "LlavaBackbone", "LlavaForConditionalGeneration"),
    "llava_next": (".llava", "LlavaNextBackbone", "LlavaNextForConditionalGeneration"),
    "llava_onevision": (".llava", "LlavaOnevisionBackbone", "LlavaOnevisionForConditionalGeneration"),
    "qwen2_vl": (".qwen2_vl", "Qwen2VLBackbone", "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": (".qwen2_5_vl", "Qwen25VLBackbone", "Qwen2_5_VLForConditionalGeneration"),
}
FAMILIES = tuple(_FAMILY_CLASSES)


def family_of(config: Any) -> str:
    model_type = getattr(config, "model_type", "")
    if model_type not in FAMILIES:
        raise BackboneError(
            f"unknown backbone model_type '{model_type}': supported are {', '.join(FAMILIES)} "
            "(LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL)"
        )
    return model_type


def backbone_class(family: str) -> type[Backbone]:
    """The backbone class of a family (one of ``FAMILIES``), imported when first asked for."""
    if family not in _FAMILY_CLASSES:
        raise BackboneError(f"unknown backbone family '{family}': supported are {', '.join(FAMILIES)}")
    module, name, _ = _FAMILY_CLASSES[family]
    return getattr(importlib.import_module(module, __package__), name)


def wrap(model: nn.Module, processor: Any = None, source: str = "", weights: str = "pretrained") -> Backbone:
    """Wrap an already-built HF model in the backbone class of its family."""
    family = family_of(model.config)
    return backbone_class(family)(model, processor=processor, source=source, weights=weights)


def load_backbone(name_or_dir: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Backbone:
    """Load a checkpoint from a local directory (or a hub id when the hub is reachable)."""
    import transformers

    path = Path(name_or_dir)
    looks_local = path.exists() or name_or_dir.startswith((".", "/", "~")) or name_or_dir.count("/") != 1
    if looks_local and not path.exists():
        raise BackboneError(
            f"model directory '{name_or_dir}' does not exist; pass a local checkpoint directory "
            "(saved with save_pretrained) or a hub id like llava-hf/llava-1.5-7b-hf"
        )
    if path.exists() and not (path / "config.json").exists():
        raise BackboneError(
            f"'{name_or_dir}' has no config.json; it is not a save_pretrained checkpoint directory"
        )
    try:
        config = transformers.AutoConfig.from_pretrained(name_or_dir)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackboneError(f"cannot load config of '{name_or_dir}': {first}") from None
    family = family_of(config)
    model_cls = getattr(transformers, _FAMILY_CLASSES[family][2])
    model = model_cls.from_pretrained(name_or_dir, dtype=dtype, attn_implementation="sdpa").to(device)
    processor = None
    try:
        processor = transformers.AutoProcessor.from_pretrained(name_or_dir)
    except (OSError, ValueError, TypeError, KeyError):
        processor = None
    weights, info = "pretrained", {}
    meta = path / "seebench.json"
    if meta.exists():
        info = json.loads(meta.read_text())
        weights = info.get("weights", weights)
    if info.get("architecture") == "saisa":
        from ..saisa import SaisaBackbone, load_projectors

        vc = model.config.vision_config
        fl = model.config.vision_feature_layer
        d_vis = vc.hidden_size * (1 if isinstance(fl, int) else len(fl))
        tc = model.config.get_text_config()
        proj = load_projectors(
            path / "saisa_projectors.safetensors", d_vis, tc.hidden_size, tc.num_hidden_layers
        ).to(device=device, dtype=dtype)  # with the model: layer_projection runs at its dtype
        bb = SaisaBackbone(model, proj, processor=processor, source=name_or_dir, weights=weights)
    else:
        bb = wrap(model, processor=processor, source=name_or_dir, weights=weights)
    bb.info = info
    return bb
