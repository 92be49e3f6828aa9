"""Small random-init models of each family's geometry, and random inputs for them.

``harness verify --random FAMILY`` checks the executor on these; latency and FLOPs may use
random weights too (recorded as ``weights: random-init``).  The geometry keeps what makes each
family different (CLIP with feature layer -2 and CLS dropped, anyres tiles with unpadding and
newline tokens, GQA with q/k/v biases and M-RoPE) and shrinks widths and depths.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from .base import Backbone, BackboneError
from .loading import wrap

RANDOM_FAMILIES = {
    "llava-1.5": "llava",
    "llava-next": "llava_next",
    "llava-onevision": "llava_onevision",
    "qwen2-vl": "qwen2_vl",
    "qwen2.5-vl": "qwen2_5_vl",
    "qwen3-vl": "qwen3_vl",
    "internvl3": "internvl",
    "internvl3.5": "internvl",
}
VOCAB = 512
IMAGE_TOKEN = VOCAB - 1
#: InternVL's ``<img>`` / ``</img>`` around each image's tokens (its config has no field for them)
IMG_START, IMG_END = IMAGE_TOKEN - 2, IMAGE_TOKEN - 3

_M = TypeVar("_M", bound=torch.nn.Module)


def _llama_text(layers: int = 4) -> dict[str, Any]:
    return dict(
        model_type="llama", hidden_size=64, intermediate_size=176, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, vocab_size=VOCAB, max_position_embeddings=4096,
        rms_norm_eps=1e-5, initializer_range=0.08, tie_word_embeddings=False,
    )  # fmt: skip


def _clip_vision(image_size: int = 84) -> dict[str, Any]:
    return dict(
        model_type="clip_vision_model", hidden_size=48, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, image_size=image_size, patch_size=14, projection_dim=48,
    )  # fmt: skip


def randomize_norms(model: _M, scale: float = 0.1) -> _M:
    """Draw every norm's weight as 1 + scale x N(0, 1) and its bias (LayerNorm) and every linear
    bias as scale x N(0, 1), from torch's current seed.

    HF initialises norm weights to 1 and biases to 0, and with those a misplaced, missing or doubled
    norm changes almost nothing (an RMSNorm of unit weight is idempotent), so equivalence checks on
    random models could not see one.  Call it after seeding, once the model is built."""
    with torch.no_grad():
        for module in model.modules():
            weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
            if "norm" in type(module).__name__.lower() and isinstance(weight, torch.nn.Parameter):
                weight.copy_(1 + scale * torch.randn_like(weight))
                if isinstance(bias, torch.nn.Parameter):
                    bias.copy_(scale * torch.randn_like(bias))
            elif isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.copy_(scale * torch.randn_like(module.bias))
    return model


def _qwen2_text(layers: int) -> dict[str, Any]:
    """A small Qwen2 decoder: GQA, q/k/v biases, M-RoPE in sections of 2/3/3 rotary pairs."""
    return dict(
        hidden_size=64, intermediate_size=176, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=4096, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        initializer_range=0.08, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip


def _internvl_text(family: str, layers: int) -> dict[str, Any]:
    """InternVL3's decoder (Qwen2: GQA, q/k/v biases) or InternVL3.5's (Qwen3: per-head q/k RMSNorm,
    no biases, an explicit head_dim, here 32, unlike hidden / heads = 16), both with plain 1-D RoPE."""
    text = {**_qwen2_text(layers), "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}
    if family == "internvl3":
        return {**text, "model_type": "qwen2"}
    return {**text, "model_type": "qwen3", "head_dim": 32, "attention_bias": False}


def build_random(family: str, seed: int = 0, layers: int = 4, image_size: int = 84) -> Backbone:
    """A random-init backbone of the given family (``llava-1.5``, ``llava-next``, ``qwen2-vl``),
    norm weights and biases drawn at random too (``randomize_norms``).  ``image_size`` sets
    LLaVA-1.5's CLIP input side: 84 gives 36 patches, 336 gives LLaVA-1.5's 576."""
    import transformers

    if family not in RANDOM_FAMILIES:
        raise BackboneError(
            f"unknown backbone '{family}': --random takes one of {', '.join(RANDOM_FAMILIES)}"
        )
    torch.manual_seed(seed)
    kind = RANDOM_FAMILIES[family]
    if kind == "llava":
        cfg = transformers.LlavaConfig(
            vision_config=_clip_vision(image_size), text_config=_llama_text(layers), image_token_index=IMAGE_TOKEN,
            vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        )  # fmt: skip
        model = transformers.LlavaForConditionalGeneration(cfg)
    elif kind == "llava_next":
        cfg = transformers.LlavaNextConfig(
            vision_config=_clip_vision(), text_config=_llama_text(layers), image_token_index=IMAGE_TOKEN,
            vision_feature_layer=-2, vision_feature_select_strategy="default",
            image_grid_pinpoints=[[84, 168], [168, 84], [168, 168], [84, 252], [252, 84]],
        )  # fmt: skip
        model = transformers.LlavaNextForConditionalGeneration(cfg)
    elif kind == "llava_onevision":
        # SigLIP at 84 px (6 x 6 patches, no CLS), anyres pinpoints up to 3 x 3 crops so that
        # anyres_max_9 packing is exercised, a Qwen2 decoder
        cfg = transformers.LlavaOnevisionConfig(
            vision_config=dict(
                model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, image_size=84, patch_size=14,
            ),
            text_config={**_qwen2_text(layers), "model_type": "qwen2"},
            image_token_index=IMAGE_TOKEN, vision_feature_layer=-1, vision_feature_select_strategy="full",
            image_grid_pinpoints=[[84, 168], [168, 84], [168, 168], [84, 252], [252, 84], [252, 252]],
            vision_aspect_ratio="anyres_max_9",
        )  # fmt: skip
        model = transformers.LlavaOnevisionForConditionalGeneration(cfg)
    elif kind == "qwen3_vl":
        # a Qwen3 decoder (explicit head_dim, per-head q/k norms, interleaved M-RoPE) and a tower of
        # 16 px patches whose blocks 0-2 feed DeepStack mergers: their features enter the decoder
        # after layers 0, 1 and 2, as in the released models (blocks 8, 16, 24)
        cfg = transformers.Qwen3VLConfig(
            text_config={**_qwen2_text(layers), "head_dim": 16, "attention_bias": False},
            vision_config=dict(
                depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_position_embeddings=64,
                deepstack_visual_indexes=[0, 1, 2],
            ),
            image_token_id=IMAGE_TOKEN, video_token_id=IMAGE_TOKEN - 1,
            vision_start_token_id=IMAGE_TOKEN - 2, vision_end_token_id=IMAGE_TOKEN - 3,
        )  # fmt: skip
        model = transformers.Qwen3VLForConditionalGeneration(cfg)
    elif kind == "internvl":
        # InternViT on 112 px tiles (8 x 8 patches + CLS), pixel shuffle 0.5: 4 x 4 = 16 tokens per tile
        cfg = transformers.InternVLConfig(
            vision_config=dict(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=112,
                patch_size=14,
            ),
            text_config=_internvl_text(family, layers), image_token_id=IMAGE_TOKEN, image_seq_length=16,
            downsample_ratio=0.5, vision_feature_layer=-1, vision_feature_select_strategy="default",
            tie_word_embeddings=False,
        )  # fmt: skip
        model = transformers.InternVLForConditionalGeneration(cfg)
        with torch.no_grad():  # HF starts the CLS token and position embeddings at zero
            emb = model.model.vision_tower.embeddings
            emb.cls_token.normal_(0.0, 0.5)
            emb.position_embeddings.normal_(0.0, 0.5)
    elif kind == "qwen2_5_vl":
        # a 56 px window (2 x 2 merged tokens) and full attention in blocks 1 and 3 of 4, so images of
        # several windows exercise the tower's window order
        cfg = transformers.Qwen2_5_VLConfig(
            text_config=_qwen2_text(layers),
            vision_config=dict(
                depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=56,
                fullatt_block_indexes=[1, 3],
            ),
            image_token_id=IMAGE_TOKEN, video_token_id=IMAGE_TOKEN - 1,
            vision_start_token_id=IMAGE_TOKEN - 2, vision_end_token_id=IMAGE_TOKEN - 3,
        )  # fmt: skip
        model = transformers.Qwen2_5_VLForConditionalGeneration(cfg)
    else:
        cfg = transformers.Qwen2VLConfig(
            text_config=_qwen2_text(layers),
            vision_config=dict(
                depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
            ),
            image_token_id=IMAGE_TOKEN, video_token_id=IMAGE_TOKEN - 1, bos_token_id=1, eos_token_id=2,  # pyright: ignore[reportCallIssue]  # kwargs the signature lacks
            vision_start_token_id=IMAGE_TOKEN - 2, vision_end_token_id=IMAGE_TOKEN - 3,
        )  # fmt: skip
        model = transformers.Qwen2VLForConditionalGeneration(cfg)
    model = randomize_norms(model.float().eval())
    model.config._attn_implementation = "sdpa"
    bb = wrap(model, source=f"random:{family}:seed{seed}", weights="random-init")
    return bb


def _image_processor(bb: Backbone):
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if bb.family == "llava_onevision":
        from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
            LlavaOnevisionImageProcessorPil,
        )

        return LlavaOnevisionImageProcessorPil(
            size={"height": 84, "width": 84}, image_grid_pinpoints=bb.config.image_grid_pinpoints
        )
    if bb.family == "internvl":  # square tiles on the closest aspect grid of 1-4 tiles, thumbnail last
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

        side = bb.config.vision_config.image_size[0]
        return GotOcr2ImageProcessorPil(
            size={"height": side, "width": side}, crop_to_patches=True, min_patches=1, max_patches=4
        )
    if bb.family == "llava_next":
        return LlavaNextImageProcessorPil(
            size={"shortest_edge": 84}, crop_size={"height": 84, "width": 84},
            image_grid_pinpoints=bb.config.image_grid_pinpoints,
        )  # fmt: skip
    if bb.family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        p = 16 if bb.family == "qwen3_vl" else 14  # patch side: one token per 2p x 2p pixels
        return Qwen2VLImageProcessorPil(
            size={"shortest_edge": (4 * p) ** 2, "longest_edge": (2 * p) ** 2 * 16},
            patch_size=p, merge_size=2, temporal_patch_size=2,
        )  # fmt: skip
    return None


def random_image(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr)


def random_sample_inputs(
    bb: Backbone, seed: int, text_len: int, image_size: tuple[int, int] = (84, 84)
) -> dict:
    """One sample (batch 1, no padding): [system tokens][image tokens][text tokens]."""
    rng = np.random.default_rng(seed)
    proc = _image_processor(bb)
    if bb.family == "llava":
        side = bb.config.vision_config.image_size
        pv = torch.from_numpy(rng.standard_normal((1, 3, side, side)).astype(np.float32))
        inputs: dict[str, Any] = {"pixel_values": pv}
    else:
        assert proc is not None  # every family but llava has its image processor
        out = proc(images=[random_image(rng, image_size)], return_tensors="pt")
        if bb.family in ("llava_next", "llava_onevision"):
            inputs = {"pixel_values": out["pixel_values"], "image_sizes": out["image_sizes"]}
        elif bb.family == "internvl":  # the tiles, flat: the model gets no per-image count
            inputs = {"pixel_values": out["pixel_values"]}
        else:
            inputs = {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}
    n_img = sum(e.shape[0] for e in bb.vision(inputs).embeds)
    sys_ids = rng.integers(4, VOCAB - 8, size=5)
    txt_ids = rng.integers(4, VOCAB - 8, size=text_len)
    image = np.full(n_img, IMAGE_TOKEN)
    if bb.family == "internvl":  # <img> [image tokens] </img>
        image = np.concatenate([[IMG_START], image, [IMG_END]])
    ids = np.concatenate([[1], sys_ids, image, txt_ids])
    inputs["input_ids"] = torch.from_numpy(ids).long()[None]
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    return inputs


RAGGED = [(7, (84, 84)), (12, (140, 84)), (4, (84, 168)), (9, (112, 112))]


def ragged_samples(bb: Backbone, n: int = 4, seed: int = 0) -> list[dict]:
    """n samples with different prompt lengths and (NeXT, Qwen2-VL) different image sizes."""
    return [random_sample_inputs(bb, seed * 100 + i, *RAGGED[i % len(RAGGED)]) for i in range(n)]


def _byte_level_vocab() -> dict[str, int]:
    """A CLIP-tokenizer vocabulary of the 256 byte-level symbols (word-final too) and the specials."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    symbols = [chr(c) for c in keep] + [chr(256 + j) for j in range(len(extra))]
    vocab = {c: i for i, c in enumerate(symbols)}
    vocab.update({c + "</w>": len(symbols) + i for i, c in enumerate(symbols)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return vocab


def save_random_clip(bb: Backbone, out: Any, seed: int = 0) -> Any:
    """A CLIP checkpoint with a small random text tower whose vision tower is ``bb``'s (its weights
    copied), saved with ``save_pretrained`` and a byte-level CLIP tokenizer: the local file that
    CDPruner's CLIP-space relevance reads (``cdpruner`` parameter ``clip``)."""
    import transformers

    torch.manual_seed(seed)
    vc = bb.config.vision_config.to_dict()
    cfg = transformers.CLIPConfig(
        vision_config=vc,
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         vocab_size=514, max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
                         pad_token_id=513),
        projection_dim=24,
    )  # fmt: skip
    model = randomize_norms(transformers.CLIPModel(cfg).eval())
    tower = bb.model.model.vision_tower
    model.vision_model.load_state_dict(tower.state_dict())
    model.save_pretrained(out)
    transformers.CLIPTokenizer(vocab=_byte_level_vocab(), merges=[]).save_pretrained(out)
    return out
