"""Convert checkpoints published in LLaVA's original layout to the HF layout the backbones load.

ViCA (``HarrisonWu/ViCA``), YOPO (``zwt123home123/llava-1.5-*-prune-*``) and SAISA
(``yuanqianhao/saisa-*``) publish ``LlavaLlamaForCausalLM`` checkpoints: Llama weights under
``model.*``, the projector as ``model.mm_projector.{0,2}``, the vision tower referenced by name
(``mm_vision_tower``) and not included, image placeholders as id -200.  The HF layout needs the
vision tower's weights, an ``<image>`` token in the vocabulary and ``LlavaForConditionalGeneration``
key names.  SAISA's per-layer projectors (``model.layers.{l}.mm_projector.{0,2}``, input = raw
vision features) are kept in ``saisa_projectors.safetensors`` and marked in ``seebench.json``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from .errors import SeebenchError

LLAMA_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta", "hidden_act",
    "attention_bias", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings",
)  # fmt: skip


class ConvertError(SeebenchError):
    """One line naming the missing piece and the fix."""


def _load_state(src: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(src.glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    if files:
        for f in files:
            state.update(load_file(str(f)))
        return state
    bins = sorted(src.glob("pytorch_model*.bin"))
    if not bins:
        raise ConvertError(f"no weights (*.safetensors or pytorch_model*.bin) in '{src}'")
    for f in bins:
        state.update(torch.load(f, map_location="cpu", weights_only=True))
    return state


def convert_llava_original(src: str | Path, vision_tower: str | Path, out: str | Path) -> dict[str, Any]:
    """Write an HF ``LlavaForConditionalGeneration`` checkpoint (plus processor) to ``out``."""
    import transformers

    src, vision_tower, out = Path(src), Path(vision_tower), Path(out)
    cfg_path = src / "config.json"
    if not cfg_path.exists():
        raise ConvertError(f"'{src}' has no config.json; pass the original checkpoint directory")
    cfg = json.loads(cfg_path.read_text())
    if not (vision_tower / "config.json").exists():
        raise ConvertError(
            f"vision tower '{vision_tower}' is not a local CLIP directory; download {cfg.get('mm_vision_tower')} "
            "and pass its folder with --vision-tower"
        )
    vt = transformers.CLIPVisionModel.from_pretrained(str(vision_tower))
    state = _load_state(src)
    old_vocab = int(cfg["vocab_size"])
    text = {k: cfg[k] for k in LLAMA_KEYS if k in cfg}
    text.update(model_type="llama", vocab_size=old_vocab + 1)
    select = cfg.get("mm_vision_select_layer", -2)
    config = transformers.LlavaConfig(
        vision_config=vt.config.to_dict(),
        text_config=text,
        image_token_index=old_vocab,
        vision_feature_layer=select,
        vision_feature_select_strategy="default"
        if cfg.get("mm_vision_select_feature", "patch") == "patch"
        else "full",
        projector_hidden_act="gelu",
    )
    new: dict[str, torch.Tensor] = {}
    saisa: dict[str, torch.Tensor] = {}
    per_layer = re.compile(r"model\.layers\.(\d+)\.mm_projector\.(\d+)\.(weight|bias)")
    for key, t in state.items():
        if (m := per_layer.fullmatch(key)) is not None:
            saisa[f"{m.group(1)}.{m.group(2)}.{m.group(3)}"] = t
        elif key.startswith("model.mm_projector."):
            idx, rest = key.removeprefix("model.mm_projector.").split(".", 1)
            new[f"model.multi_modal_projector.linear_{1 if idx == '0' else 2}.{rest}"] = t
        elif key.startswith("model.vision_tower."):
            continue  # the tower comes from --vision-tower
        elif key.startswith("model."):
            new["model.language_model." + key.removeprefix("model.")] = t
        elif key.startswith("lm_head."):
            new[key] = t
        else:
            raise ConvertError(f"unexpected weight '{key}' in '{src}'")
    for name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if name not in new:
            raise ConvertError(f"'{src}' lacks {name.split('.', 2)[-1]}: not a LLaVA-LLaMA checkpoint")
        w = new[name]
        new[name] = torch.cat([w, w.mean(0, keepdim=True)])  # the <image> row: mean embedding
    for k, t in vt.state_dict().items():
        new[f"model.vision_tower.{k}"] = t
    model = transformers.LlavaForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(new, strict=False)
    if missing or unexpected:
        raise ConvertError(
            f"weights do not match the LLaVA layout: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    _save_processor(src, vision_tower, out, config)
    meta: dict[str, Any] = {"weights": "pretrained", "converted_from": str(src), "vision_tower": str(vision_tower),
                            "layout": "llava-original"}  # fmt: skip
    if saisa:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in saisa.items()}, str(out / "saisa_projectors.safetensors"))
        meta["architecture"] = "saisa"
    (out / "seebench.json").write_text(json.dumps(meta, indent=2))
    return meta


def _save_processor(src: Path, vision_tower: Path, out: Path, config) -> None:
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(src))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    if tok.convert_tokens_to_ids("<image>") != config.image_token_id:
        raise ConvertError(
            f"the tokenizer gives <image> id {tok.convert_tokens_to_ids('<image>')}, expected {config.image_token_id}"
        )
    try:
        image_processor = transformers.AutoImageProcessor.from_pretrained(str(vision_tower))
    except (OSError, ValueError):
        image_processor = transformers.CLIPImageProcessor()
    proc = transformers.LlavaProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy, image_token="<image>",
        num_additional_image_tokens=1,
    )  # fmt: skip
    proc.save_pretrained(out)
    for f in ("generation_config.json",):
        if (src / f).exists():
            shutil.copy(src / f, out / f)
