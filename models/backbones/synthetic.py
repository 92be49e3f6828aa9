"""Synthetic backbones for timing: random weights at a published backbone's token layout.

``synthetic_backbone`` builds a random-init Llama decoder (InternVL3.5 and Qwen3-VL: Qwen3, with its
per-head q/k norms) in the LLaVA wrapper at a chosen width and depth; ``synthetic_batch`` gives it
``[system][visual][text]`` inputs with random embeddings at the token counts of one published
backbone (``SYNTHETIC_TOKEN_LAYOUTS``, read from the paper geometries in ``models/geometry.py``;
Qwen3-VL's batches also carry DeepStack features).  Records made with them say
``weights: random-init``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch

from ..batch import Batch, TokenType
from ..geometry import PAPER_GEOMETRIES, Geometry
from .base import Backbone
from .loading import wrap
from .random import randomize_norms

if TYPE_CHECKING:
    from .llava import LlavaBackbone


def _token_layout(g: Geometry) -> dict[str, int]:
    """System prefix, visual and text-after-the-image token counts, and the side of the visual grid."""
    return {
        "s": g.s,
        "v": g.v,
        "t": g.text_tokens,
        "grid": g.vision.image_size // g.vision.patch // g.vision.merge,
    }


#: token layouts of the published backbones (system prefix, visual, text after the image, grid side);
#: the 7B paper geometries' counts (13B shares them)
SYNTHETIC_TOKEN_LAYOUTS: dict[str, dict[str, int]] = {
    name: _token_layout(PAPER_GEOMETRIES[paper])
    for name, paper in (
        ("llava-1.5", "llava-1.5-7b"),
        ("llava-next", "llava-next-7b"),
        ("qwen2-vl", "qwen2-vl-7b"),
        ("qwen2.5-vl", "qwen2.5-vl-7b"),
        ("qwen3-vl", "qwen3-vl-8b"),
        ("llava-onevision", "llava-onevision-7b"),
        ("internvl3", "internvl3-8b"),
        ("internvl3.5", "internvl3.5-8b"),
    )
}


def synthetic_backbone(
    geometry: str, layers: int = 8, hidden: int = 1024, heads: int = 8, kv_heads: int | None = None,
    ffn: int | None = None, vocab: int = 32064, seed: int = 0,
) -> Backbone:  # fmt: skip
    """A random-init Llama decoder (LLaVA wrapper) at reduced width and depth for timing; a method
    that brings its own modules adds random ones with ``Stack.prepare_backbone``."""
    import transformers

    if geometry not in SYNTHETIC_TOKEN_LAYOUTS:
        raise ValueError(f"unknown geometry '{geometry}': use one of {', '.join(SYNTHETIC_TOKEN_LAYOUTS)}")
    torch.manual_seed(seed)
    ffn = ffn or int(round(hidden * 11008 / 4096 / 64)) * 64
    gqa = geometry in ("qwen2-vl", "qwen2.5-vl", "qwen3-vl", "llava-onevision", "internvl3", "internvl3.5")
    kv_heads = kv_heads or (max(1, heads // 4) if gqa else heads)  # the Qwen2 decoders are GQA
    if geometry == "llava-1.5":
        # CLIP ViT-L/14-336 width and patch grid (24 x 24), two layers: the feature layer (-2) and the
        # unused last one.  The tower never runs in a timed pass; its weights serve the pre-LLM
        # methods that read the ViT's CLS attention or keys (VisionZip, FasterVLM, ...).
        vision = dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=2,
                      num_attention_heads=16, image_size=336, patch_size=14)  # fmt: skip
    else:
        vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, image_size=28, patch_size=14)  # fmt: skip
    text = dict(model_type="llama", hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                max_position_embeddings=8192)  # fmt: skip
    if geometry in (
        "internvl3.5",
        "qwen3-vl",
    ):  # a Qwen3 decoder: per-head q/k RMSNorm before RoPE, no biases
        text.update(model_type="qwen3", head_dim=hidden // heads)
    cfg = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=vocab - 1)
    model = randomize_norms(transformers.LlavaForConditionalGeneration(cfg).float().eval())
    model.config._attn_implementation = "sdpa"
    bb = wrap(model, source=f"synthetic:{geometry}:L{layers}h{hidden}", weights="random-init")
    bb.synthetic_geometry = geometry  # type: ignore[attr-defined]
    return bb


def synthetic_batch(bb: Backbone, geometry: str, batch_size: int, seed: int = 0) -> Batch:
    """[system][visual][text] with random embeddings at the geometry's token counts."""
    g = SYNTHETIC_TOKEN_LAYOUTS[geometry]
    s, v, t, grid = g["s"], g["v"], g["t"], g["grid"]
    n = s + v + t
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch_size, n, bb.hidden_size, generator=gen) * 0.5
    extras: dict = {}
    vc = bb.config.vision_config
    if geometry == "llava-1.5" and (vc.image_size // vc.patch_size) ** 2 == v:
        # random ViT states at the feature layer (CLS + 576 patches), as the LLaVA backbone keeps
        # them; the visual embeddings are their projection, so CLIP-reading methods and the
        # decoder see one consistent image
        with torch.no_grad():
            # drawn on the CPU generator (the same batch on every device), run where the model is
            h_in = torch.randn(batch_size, v + 1, vc.hidden_size, generator=gen).to(bb.device, bb.dtype)
            h_out = bb.model.model.vision_tower.encoder.layers[0](h_in, None)
            embeds[:, s : s + v] = cast("LlavaBackbone", bb).project(h_out[:, 1:]).to(embeds)
        extras["clip"] = [
            {"layer": 0, "h_embed": h_in[i], "h_in": h_in[i], "h_out": h_out[i]} for i in range(batch_size)
        ]
        feats = [h_out[i, 1:].to(embeds) for i in range(batch_size)]  # what SAISA's projectors read
    else:
        feats = None
    tt = torch.full((batch_size, n), int(TokenType.TEXT))
    tt[:, :s] = int(TokenType.SYSTEM)
    tt[:, s : s + v] = int(TokenType.VISUAL)
    vidx = torch.full((batch_size, n), -1)
    vidx[:, s : s + v] = torch.arange(v)
    coords = torch.full((batch_size, n, 3), -1)
    j = torch.arange(v)
    coords[:, s : s + v] = torch.stack([j // (grid * grid), (j // grid) % grid, j % grid], 1)
    deepstack = None
    if geometry == "qwen3-vl":  # Qwen3-VL's DeepStack features, added to the visual rows after layers 0-2
        deepstack = torch.zeros(3, batch_size, n, bb.hidden_size)
        deepstack[:, :, s : s + v] = torch.randn(3, batch_size, v, bb.hidden_size, generator=gen) * 0.1
    batch = Batch(
        embeds=embeds, token_type=tt, positions=torch.arange(n).expand(1, batch_size, n).clone(),
        next_position=torch.full((batch_size,), n), visual_index=vidx, visual_coords=coords,
        sample_ids=[f"synthetic-{i}" for i in range(batch_size)], extras=extras, vision_features=feats,
        deepstack=deepstack,
    )  # fmt: skip
    return batch.to(bb.device, bb.dtype)
