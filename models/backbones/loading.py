"""Which backbone class serves a checkpoint: the one module that knows the family subclasses.

Families: ``llava`` (LLaVA-1.5), ``llava_next`` (LLaVA-NeXT, anyres), ``qwen2_vl`` (M-RoPE) and
``qwen2_5_vl`` (Qwen2-VL's decoder, a window-attention tower), ``llava_onevision`` (SigLIP,
anyres_max_9, a Qwen2 decoder), ``internvl`` (InternVL3 / InternVL3.5: tiles, pixel shuffle, a Qwen2
or Qwen3 decoder);
a checkpoint whose ``seebench.json`` says ``architecture: saisa`` loads as ``SaisaBackbone``.
The subclasses are imported when first needed, so importing this module loads no family.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from .base import Backbone, BackboneError
from .processors import load_processor

#: family (the config's model_type) -> (module of its backbone class, that class, the HF model class)
_FAMILY_CLASSES: dict[str, tuple[str, str, str]] = {
    "llava": (".llava", "LlavaBackbone", "LlavaForConditionalGeneration"),
    "llava_next": (".llava", "LlavaNextBackbone", "LlavaNextForConditionalGeneration"),
    "llava_onevision": (".llava", "LlavaOnevisionBackbone", "LlavaOnevisionForConditionalGeneration"),
    "qwen2_vl": (".qwen2_vl", "Qwen2VLBackbone", "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": (".qwen2_5_vl", "Qwen25VLBackbone", "Qwen2_5_VLForConditionalGeneration"),
    "qwen3_vl": (".qwen3_vl", "Qwen3VLBackbone", "Qwen3VLForConditionalGeneration"),
    "internvl": (".internvl", "InternVLBackbone", "InternVLForConditionalGeneration"),
}
FAMILIES = tuple(_FAMILY_CLASSES)


def family_of(config: Any) -> str:
    """A config's family: its model_type, one of ``FAMILIES``, whose HF class must be among the
    config's ``architectures`` when it names any (else the weights would not fit the class)."""
    model_type = getattr(config, "model_type", "") or ""
    archs = [str(a) for a in getattr(config, "architectures", None) or []]
    if model_type not in FAMILIES:
        named = f"model_type '{model_type}'" if model_type else "without a model_type"
        named += f" (architectures: {', '.join(archs)})" if archs else ""
        raise BackboneError(
            f"unknown backbone {named}: supported are {', '.join(FAMILIES)} "
            "(LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL3/3.5)"
        )
    hf_class = _FAMILY_CLASSES[model_type][2]
    if archs and hf_class not in archs:
        raise BackboneError(
            f"unsupported architecture {', '.join(archs)} for model_type '{model_type}': seebench loads "
            f"that family as {hf_class}; supported families are {', '.join(FAMILIES)}"
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


def _config_file(path: Path) -> SimpleNamespace:
    """A folder's config.json as read (model_type, architectures), before transformers parses it."""
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackboneError(
            f"cannot read '{path / 'config.json'}': {exc}; save the checkpoint again with save_pretrained"
        ) from None
    if not isinstance(raw, dict):
        raise BackboneError(f"'{path / 'config.json'}' is not a JSON object; save the checkpoint again")
    return SimpleNamespace(model_type=raw.get("model_type"), architectures=raw.get("architectures"))


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
    if path.is_dir():  # the family first: AutoConfig has no one-line error for an unknown model_type
        family_of(_config_file(path))
    try:
        config = transformers.AutoConfig.from_pretrained(name_or_dir)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackboneError(f"cannot load config of '{name_or_dir}': {first}") from None
    family = family_of(config)
    model_cls = getattr(transformers, _FAMILY_CLASSES[family][2])
    processor = load_processor(name_or_dir, family)  # before the weights: a bad file fails fast
    model = model_cls.from_pretrained(name_or_dir, dtype=dtype, attn_implementation="sdpa").to(device)
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
