"""Paper geometries: the shapes of the published backbones, without weights.

A `Geometry` carries everything the analytic FLOPs model (`harness.flops.model`) needs and enough to
build the matching Hugging Face config at full size (`hf_config`), so that a model can be instantiated
under `FakeTensorMode` (no memory allocated) and its operations counted.

Token-count conventions (docs/flops.md §1, docs/methods.md §2.1):

- ``v``: visual tokens that enter the decoder.
  LLaVA-1.5: 576 (24 x 24 CLIP patches, CLS dropped).
  LLaVA-NeXT: 2880 = 5 x 576, the "max anyres" figure before the ``_unpad`` step (base image + 2 x 2
  tiles; the count VisPruner's evaluation uses). A real 672 x 672 image gives 2928 tokens in HF
  (576 base + 48 rows x (48 + 1 newline)); see `hf_visual_tokens`.
  Qwen2-VL: dynamic; we fix a standard 448 x 448 image -> 32 x 32 patches of 14 px -> 2 x 2 merge ->
  256 tokens.
  InternVL3 / InternVL3.5: 448 px tiles, 256 tokens each (32 x 32 patches, pixel shuffle 0.5); we fix
  CDPruner's InternVL3 setting, an 896 x 896 image -> 2 x 2 tiles + the thumbnail = 1280 tokens.
- ``s``: system-prefix tokens before the image (S). LLaVA ``vicuna_v1``: 35 (BOS + system prompt +
  ``USER: ``). Qwen2-VL default chat template: 15 (``<|im_start|>system ... <|im_start|>user\\n
  <|vision_start|>``; YOPO's hard-coded Qwen2-VL prefix).
- ``t``: **all non-visual prompt tokens**, S + T (system prefix plus the text after the image).
  Default 64, the value ShortV fixes in its tables and ViCA uses in its visual-side column
  (docs/flops.md §2.3-2.4). The text after the image is therefore ``t - s`` (29 for LLaVA-1.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

Family = Literal["llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl"]


@dataclass(frozen=True)
class VisionGeometry:
    """A ViT vision tower as executed in prefill (per image)."""

    name: str
    layers: int  # encoder layers the checkpoint holds (and HF executes)
    layers_needed: int  # layers whose output is used (LLaVA: select layer -2 -> 23 of 24)
    width: int
    mlp: int
    heads: int
    patch: int
    image_size: int  # side of one crop in pixels
    cls_token: bool = True
    crops: int = 1  # LLaVA-NeXT anyres: base image + tiles
    temporal_patch: int = 1  # Qwen2-VL: Conv3d over 2 frames (a still image is duplicated)
    channels: int = 3
    merge: int = 1  # Qwen2-VL: 2 x 2 patches -> 1 token in the merger
    select_layer: int = -2
    mlp_matrices: int = 2  # 2: fc1/fc2 (CLIP, Qwen2-VL); 3: SwiGLU gate/up/down (Qwen2.5-VL)
    window: int = 0  # patches per side of an attention window (Qwen2.5-VL: 112 px = 8); 0: full
    full_blocks: tuple[int, ...] = ()  # blocks that attend over the whole image when ``window``

    @property
    def grid(self) -> int:
        """Patches per side of one crop."""
        return self.image_size // self.patch

    def attention_area(self, block: int) -> int:
        """Query x key pairs one block computes per crop: N² with full attention; with windows the
        sum over windows of their size squared (windows tile the patch grid; the last one per axis
        may be short)."""
        n = self.tokens
        if not self.window or block in self.full_blocks:
            return n * n
        g, w = self.grid, self.window
        per_axis = sum(min(w, g - i) ** 2 for i in range(0, g, w))
        return per_axis * per_axis

    @property
    def patches(self) -> int:
        """Patches per crop."""
        return (self.image_size // self.patch) ** 2

    @property
    def tokens(self) -> int:
        """Sequence length inside the encoder, per crop (577 for CLIP ViT-L/14-336)."""
        return self.patches + int(self.cls_token)


@dataclass(frozen=True)
class Geometry:
    """Decoder + vision geometry of one backbone (no weights)."""

    name: str
    family: Family
    layers: int  # L
    hidden: int  # h
    intermediate: int  # m (SwiGLU: gate, up, down)
    heads: int  # H
    kv_heads: int
    head_dim: int
    vocab: int
    v: int  # visual tokens entering the decoder
    s: int  # system-prefix tokens (S)
    vision: VisionGeometry
    projector: tuple[tuple[int, int], ...]  # (in, out) of each projector matrix
    projector_rows: int  # rows through the projector (LLaVA-NeXT: all 5 x 576 crops)
    t: int = 64  # all non-visual prompt tokens, S + T (ShortV convention)
    image_token_id: int = 32000
    rope_theta: float = 10000.0
    max_positions: int = 4096
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Width of the K and V projections (GQA: n_kv_heads x head_dim)."""
        return self.kv_heads * self.head_dim

    @property
    def text_tokens(self) -> int:
        """Text tokens after the image (T) under the default ``t``."""
        return self.t - self.s

    def with_tokens(self, *, v: int | None = None, t: int | None = None) -> Geometry:
        """Copy with another visual count and/or non-visual count."""
        return replace(self, v=self.v if v is None else v, t=self.t if t is None else t)


CLIP_L14_336 = VisionGeometry(
    name="clip-vit-large-patch14-336",
    layers=24,
    layers_needed=23,
    width=1024,
    mlp=4096,
    heads=16,
    patch=14,
    image_size=336,
)

QWEN2_VL_VIT = VisionGeometry(
    name="qwen2-vl-vit-675m",
    layers=32,
    layers_needed=32,
    width=1280,
    mlp=5120,
    heads=16,
    patch=14,
    image_size=448,
    cls_token=False,
    temporal_patch=2,
    merge=2,
    select_layer=-1,
)

# Qwen2.5-VL-7B-Instruct vision_config: 32 blocks, hidden 1280, SwiGLU intermediate 3420, 16 heads,
# patch 14, temporal patch 2, merge 2, window 112 px, full attention in blocks 7/15/23/31
QWEN2_5_VL_VIT = replace(
    QWEN2_VL_VIT, name="qwen2.5-vl-vit", mlp=3420, mlp_matrices=3, window=8, full_blocks=(7, 15, 23, 31)
)

# Qwen3-VL-8B-Instruct vision_config (the installed Qwen3VLVisionConfig defaults; the checkpoint's
# values UNVERIFIED here): 27 blocks, hidden 1152, GELU MLP 4304, 16 heads, patch 16, temporal patch 2,
# merge 2, full attention everywhere; DeepStack mergers on blocks 8/16/24 (in the projector)
QWEN3_VL_VIT = replace(
    QWEN2_VL_VIT, name="qwen3-vl-vit", layers=27, layers_needed=27, width=1152, mlp=4304, patch=16
)

# SigLIP-so400m-patch14-384 as LLaVA-OneVision ships it (llava-onevision-qwen2-7b-ov-hf vision_config:
# 26 blocks, hidden 1152, intermediate 4304, 16 heads, patch 14, 384 px, no pooling head; all 729
# tokens of a crop kept, feature layer -1), for a 768 x 768 image: the base crop + 2 x 2 tiles
SIGLIP_SO400M_384 = VisionGeometry(
    name="siglip-so400m-patch14-384",
    layers=26,
    layers_needed=26,
    width=1152,
    mlp=4304,
    heads=16,
    patch=14,
    image_size=384,
    cls_token=False,
    crops=5,
    select_layer=-1,
)

# InternViT-300M-448px as InternVL3-8B and InternVL3.5-8B ship it: the installed InternVLVisionConfig
# defaults (24 layers, hidden 1024, 16 heads, MLP 4096, 448 px, patch 14, LayerNorm, a CLS token, no
# qk-norm); feature layer -1 with the CLS dropped, pixel shuffle 0.5 (``merge`` 2: 2 x 2 patches -> one
# token, 256 per tile) and LayerNorm(4096) + Linear + GELU + Linear to the LM width; 5 crops = the
# 2 x 2 tiles + thumbnail of an 896 x 896 image (CDPruner's InternVL3 setting).
INTERNVIT_300M = VisionGeometry(
    name="internvit-300m-448px",
    layers=24,
    layers_needed=24,
    width=1024,
    mlp=4096,
    heads=16,
    patch=14,
    image_size=448,
    crops=5,
    merge=2,
    select_layer=-1,
)

LLAVA_NEXT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


def _llava(name: str, layers: int, hidden: int, inter: int, heads: int, source: str) -> Geometry:
    return Geometry(
        name=name,
        family="llava",
        layers=layers,
        hidden=hidden,
        intermediate=inter,
        heads=heads,
        kv_heads=heads,
        head_dim=hidden // heads,
        vocab=32064,
        v=576,
        s=35,
        vision=CLIP_L14_336,
        projector=((1024, hidden), (hidden, hidden)),  # mlp2x_gelu
        projector_rows=576,
        source=source,
    )


def _llava_next(name: str, layers: int, hidden: int, inter: int, heads: int, source: str) -> Geometry:
    base = _llava(name, layers, hidden, inter, heads, source)
    return replace(
        base,
        family="llava_next",
        v=2880,
        vision=replace(CLIP_L14_336, crops=5),
        projector_rows=5 * 576,
        extra={"hf_image_size": (672, 672)},
    )


_VICUNA7 = "Vicuna-7B-v1.5 (LLaMA-2-7B shapes); llava-hf conversion vocab 32064 (original 32000)"
_VICUNA13 = "Vicuna-13B-v1.5 (LLaMA-2-13B shapes); llava-hf conversion vocab 32064 (original 32000)"

PAPER_GEOMETRIES: dict[str, Geometry] = {
    "llava-1.5-7b": _llava("llava-1.5-7b", 32, 4096, 11008, 32, _VICUNA7),
    "llava-1.5-13b": _llava("llava-1.5-13b", 40, 5120, 13824, 40, _VICUNA13),
    "llava-next-7b": _llava_next("llava-next-7b", 32, 4096, 11008, 32, "llava-v1.6-vicuna-7b; " + _VICUNA7),
    "llava-next-13b": _llava_next(
        "llava-next-13b", 40, 5120, 13824, 40, "llava-v1.6-vicuna-13b; " + _VICUNA13
    ),
    # LLaVA-1.5-3B of the ViCA paper = LLaVA-1.5 recipe on MobileLLaMA-2.7B. Shapes verified against the
    # public config.json of mtgv/MobileVLM-3B (built on MobileLLaMA-2.7B-Chat): hidden 2560,
    # intermediate 6912, 32 layers, 32 heads (head_dim 80), 32 KV heads, vocab 32000, 2048 positions.
    # There is no llava-hf conversion; vocab 32064 assumes the llava-hf layout like the other LLaVA rows.
    "mobilellama-2.7b": replace(
        _llava("mobilellama-2.7b", 32, 2560, 6912, 32, "MobileLLaMA-2.7B (mtgv/MobileVLM-3B config.json)"),
        max_positions=2048,
    ),
    # Qwen2-VL-7B(-Instruct) config.json: hidden 3584, intermediate 18944, 28 layers, 28 heads, 4 KV heads
    # (head_dim 128), vocab 152064, rope_theta 1e6, M-RoPE sections [16, 24, 24]; vision: 32 blocks,
    # embed 1280, mlp_ratio 4, 16 heads, patch 14, temporal patch 2, spatial merge 2 (675M ViT).
    # Image fixed at 448 x 448 -> 1024 patches -> 256 tokens; merger MLP 5120 -> 5120 -> 3584.
    "qwen2-vl-7b": (
        _QWEN2_VL_7B := Geometry(
            name="qwen2-vl-7b",
            family="qwen2_vl",
            layers=28,
            hidden=3584,
            intermediate=18944,
            heads=28,
            kv_heads=4,
            head_dim=128,
            vocab=152064,
            v=256,
            s=15,
            vision=QWEN2_VL_VIT,
            projector=((5120, 5120), (5120, 3584)),
            projector_rows=256,
            image_token_id=151655,
            rope_theta=1_000_000.0,
            max_positions=32768,
            source="Qwen/Qwen2-VL-7B-Instruct config.json; image 448x448",
            extra={"vision_start_token_id": 151652, "vision_end_token_id": 151653, "video_token_id": 151656},
        )
    ),
    # llava-onevision-qwen2-7b-ov-hf: a Qwen2-7B decoder (28 layers, hidden 3584, intermediate 18944,
    # 28 heads / 4 KV heads, rope_theta 1e6; vocab 152128, UNVERIFIED) and SigLIP above; a 768 x 768
    # image gives 729 base tokens + the 54 x 54 tile map with one newline per row (no unpadding, no
    # downscaling: 4 tiles <= 9) = 729 + 54 x 55 = 3699; projector mlp2x_gelu over the 5 x 729 crop tokens.
    "llava-onevision-7b": Geometry(
        name="llava-onevision-7b",
        family="llava_onevision",
        layers=28,
        hidden=3584,
        intermediate=18944,
        heads=28,
        kv_heads=4,
        head_dim=128,
        vocab=152128,
        v=729 + 54 * 55,
        s=15,
        vision=SIGLIP_SO400M_384,
        projector=((1152, 3584), (3584, 3584)),
        projector_rows=5 * 729,
        image_token_id=151646,
        rope_theta=1_000_000.0,
        max_positions=32768,
        source="llava-hf/llava-onevision-qwen2-7b-ov-hf config.json (UNVERIFIED here); image 768x768",
        extra={"hf_image_size": (768, 768)},
    ),
    # Qwen2.5-VL-7B-Instruct config.json: the decoder is Qwen2-VL-7B's (28 layers, hidden 3584,
    # intermediate 18944, 28 heads / 4 KV heads, vocab 152064, rope_theta 1e6); the tower above; the
    # same 448 x 448 image -> 256 tokens; merger 5120 -> 5120 -> 3584.
    "qwen2.5-vl-7b": replace(
        _QWEN2_VL_7B,
        name="qwen2.5-vl-7b",
        family="qwen2_5_vl",
        vision=QWEN2_5_VL_VIT,
        source="Qwen/Qwen2.5-VL-7B-Instruct config.json; image 448x448",
    ),
    # Qwen3-VL-8B-Instruct: a Qwen3-8B decoder (36 layers, hidden 4096, intermediate 12288, 32 heads / 8 KV
    # heads, explicit head_dim 128, per-head q/k RMSNorm, no biases, vocab 151936, rope_theta 5e6,
    # interleaved M-RoPE [24, 20, 20], 262144 positions: UNVERIFIED, from memory) and the tower above; a
    # 448 x 448 image -> 28 x 28 patches of 16 px -> 2 x 2 merge -> 196 tokens.  The projector is the
    # merger plus the three DeepStack mergers, each 4608 -> 4608 -> 4096 over the 196 tokens.
    "qwen3-vl-8b": replace(
        _QWEN2_VL_7B,
        name="qwen3-vl-8b",
        family="qwen3_vl",
        layers=36,
        hidden=4096,
        intermediate=12288,
        heads=32,
        kv_heads=8,
        vocab=151936,
        v=196,
        vision=QWEN3_VL_VIT,
        projector=((4608, 4608), (4608, 4096)) * 4,
        projector_rows=196,
        rope_theta=5_000_000.0,
        max_positions=262144,
        source="Qwen/Qwen3-VL-8B-Instruct (shapes UNVERIFIED here); image 448x448",
        extra={**_QWEN2_VL_7B.extra, "deepstack_layers": (8, 16, 24)},
    ),
    # InternVL3-8B(-hf): InternViT-300M above and a Qwen2.5-7B decoder (28 layers, hidden 3584,
    # intermediate 18944, 28 heads / 4 KV heads, head_dim 128, q/k/v biases, rope_theta 1e6); vocab 151674
    # and max positions 32768 UNVERIFIED (the LM shapes are Qwen2.5-7B's from memory, not from installed
    # defaults); image token id 151667 = the installed InternVLConfig default (its InternVL3-1B-hf
    # checkpoint). s = 15: the Qwen chat template's system turn and user header, <img> counted as system
    # (InternVL's own template has a longer default system message, UNVERIFIED). 896 x 896 -> 1280 tokens.
    "internvl3-8b": (
        _INTERNVL3_8B := Geometry(
            name="internvl3-8b",
            family="internvl",
            layers=28,
            hidden=3584,
            intermediate=18944,
            heads=28,
            kv_heads=4,
            head_dim=128,
            vocab=151674,
            v=5 * 256,
            s=15,
            vision=INTERNVIT_300M,
            projector=((4096, 3584), (3584, 3584)),
            projector_rows=5 * 256,
            image_token_id=151667,
            rope_theta=1_000_000.0,
            max_positions=32768,
            source="OpenGVLab/InternVL3-8B-hf (LM shapes UNVERIFIED here); image 896x896, 4 tiles + thumbnail",
            extra={"text_model_type": "qwen2"},
        )
    ),
    # InternVL3.5-8B(-HF): the same tower and a Qwen3-8B decoder (36 layers, hidden 4096, intermediate
    # 12288, 32 heads / 8 KV heads, explicit head_dim 128, per-head q/k RMSNorm, no biases, rope_theta 1e6,
    # vocab 151936, 40960 positions: all UNVERIFIED, from memory; Qwen3Config's installed defaults are not
    # Qwen3-8B's apart from head_dim 128); the projector 4096 -> 4096 -> 4096; image token id UNVERIFIED.
    "internvl3.5-8b": replace(
        _INTERNVL3_8B,
        name="internvl3.5-8b",
        layers=36,
        hidden=4096,
        intermediate=12288,
        heads=32,
        kv_heads=8,
        vocab=151936,
        projector=((4096, 4096), (4096, 4096)),
        max_positions=40960,
        source="OpenGVLab/InternVL3_5-8B-HF (LM shapes UNVERIFIED here); image 896x896, 4 tiles + thumbnail",
        extra={"text_model_type": "qwen3"},
    ),
}


class GeometryBackbone:
    """A weightless stand-in for a published checkpoint: what a method reads of a backbone to build
    its plan (family, depth, widths), so plans, and the FLOPs schedule derived from them, exist at
    paper geometries without loading anything."""

    weights = "none"

    def __init__(self, g: Geometry) -> None:
        self.geometry = g
        self.family = g.family
        self.num_layers, self.hidden_size, self.intermediate_size = g.layers, g.hidden, g.intermediate
        self.num_heads, self.num_kv_heads, self.head_dim = g.heads, g.kv_heads, g.head_dim
        self.source = f"geometry:{g.name}"  # no checkpoint folder: no stored calibration either
        self.info: dict[str, Any] = {}
        #: (in, out) of each matrix of a per-layer projector a method brings (SAISA), else ()
        self.layer_projector_shapes: tuple[tuple[int, int], ...] = ()

    def with_layer_projectors(self, shapes: tuple[tuple[int, int], ...]) -> GeometryBackbone:
        out = GeometryBackbone(self.geometry)
        out.layer_projector_shapes = shapes
        return out


def get_geometry(name: str) -> Geometry:
    """Look up a paper geometry by name (e.g. ``llava-1.5-7b``)."""
    try:
        return PAPER_GEOMETRIES[name]
    except KeyError:
        raise KeyError(f"unknown geometry {name!r}; known: {sorted(PAPER_GEOMETRIES)}") from None


def hf_visual_tokens(g: Geometry) -> int:
    """Visual tokens HF produces for the reference image used by the FakeTensor cross-check.

    LLaVA: one 336 px crop -> 576. Qwen2-VL: 448 px -> 256. LLaVA-NeXT: a 672 x 672 image (an exact
    2 x 2 pinpoint, so ``_unpad`` removes nothing) -> 576 base + (2*24) x (2*24 + 1 newline) = 2928.
    """
    if g.family != "llava_next":
        return g.v
    side = g.vision.image_size // g.vision.patch
    h_px, w_px = g.extra.get("hf_image_size", (672, 672))
    if (h_px, w_px) not in LLAVA_NEXT_PINPOINTS:
        raise ValueError("hf_visual_tokens supports images that exactly match a pinpoint")
    gh, gw = h_px // g.vision.image_size, w_px // g.vision.image_size
    return side * side + (gh * side) * (gw * side + 1)


def hf_config(g: Geometry) -> Any:
    """A full-size HF config (LlavaConfig / LlavaNextConfig / Qwen2VLConfig) for this geometry.

    Meant for instantiation under ``FakeTensorMode``; SDPA attention is selected.
    """
    if g.family in ("llava", "llava_next"):
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaNextConfig

        vc = CLIPVisionConfig(
            hidden_size=g.vision.width,
            intermediate_size=g.vision.mlp,
            num_hidden_layers=g.vision.layers,
            num_attention_heads=g.vision.heads,
            image_size=g.vision.image_size,
            patch_size=g.vision.patch,
            projection_dim=768,
        )
        tc = LlamaConfig(
            hidden_size=g.hidden,
            intermediate_size=g.intermediate,
            num_hidden_layers=g.layers,
            num_attention_heads=g.heads,
            num_key_value_heads=g.kv_heads,
            head_dim=g.head_dim,
            vocab_size=g.vocab,
            max_position_embeddings=g.max_positions,
            rope_theta=g.rope_theta,  # pyright: ignore[reportCallIssue]  # a kwarg the signature lacks
        )
        common: dict[str, Any] = dict(
            vision_config=vc,
            text_config=tc,
            image_token_id=g.image_token_id,
            vision_feature_layer=g.vision.select_layer,
            vision_feature_select_strategy="default",
            projector_hidden_act="gelu",
        )
        if g.family == "llava":
            cfg = LlavaConfig(**common)
        else:
            cfg = LlavaNextConfig(**common, image_grid_pinpoints=[list(p) for p in LLAVA_NEXT_PINPOINTS])
    elif g.family == "qwen2_vl":
        from transformers import Qwen2VLConfig

        cfg = Qwen2VLConfig(
            text_config=dict(
                hidden_size=g.hidden,
                intermediate_size=g.intermediate,
                num_hidden_layers=g.layers,
                num_attention_heads=g.heads,
                num_key_value_heads=g.kv_heads,
                vocab_size=g.vocab,
                max_position_embeddings=g.max_positions,
                rope_theta=g.rope_theta,
                rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
            ),
            vision_config=dict(
                depth=g.vision.layers,
                embed_dim=g.vision.width,
                hidden_size=g.hidden,
                mlp_ratio=g.vision.mlp // g.vision.width,
                num_heads=g.vision.heads,
                in_chans=g.vision.channels,
                patch_size=g.vision.patch,
                spatial_merge_size=g.vision.merge,
                temporal_patch_size=g.vision.temporal_patch,
            ),
            image_token_id=g.image_token_id,
            video_token_id=g.extra["video_token_id"],
            vision_start_token_id=g.extra["vision_start_token_id"],
            vision_end_token_id=g.extra["vision_end_token_id"],
        )
    elif g.family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        vg = g.vision
        cfg = Qwen2_5_VLConfig(
            text_config=dict(
                hidden_size=g.hidden, intermediate_size=g.intermediate, num_hidden_layers=g.layers,
                num_attention_heads=g.heads, num_key_value_heads=g.kv_heads, vocab_size=g.vocab,
                max_position_embeddings=g.max_positions,
                rope_parameters={"rope_type": "default", "rope_theta": g.rope_theta, "mrope_section": [16, 24, 24]},
            ),
            vision_config=dict(
                depth=vg.layers, hidden_size=vg.width, intermediate_size=vg.mlp, num_heads=vg.heads,
                in_channels=vg.channels, patch_size=vg.patch, spatial_merge_size=vg.merge,
                temporal_patch_size=vg.temporal_patch, window_size=vg.window * vg.patch,
                fullatt_block_indexes=list(vg.full_blocks), out_hidden_size=g.hidden,
            ),
            image_token_id=g.image_token_id,
            video_token_id=g.extra["video_token_id"],
            vision_start_token_id=g.extra["vision_start_token_id"],
            vision_end_token_id=g.extra["vision_end_token_id"],
        )  # fmt: skip
    elif g.family == "qwen3_vl":
        from transformers import Qwen3VLConfig

        vg = g.vision
        cfg = Qwen3VLConfig(
            text_config=dict(
                hidden_size=g.hidden, intermediate_size=g.intermediate, num_hidden_layers=g.layers,
                num_attention_heads=g.heads, num_key_value_heads=g.kv_heads, head_dim=g.head_dim,
                vocab_size=g.vocab, max_position_embeddings=g.max_positions,
                rope_parameters={"rope_type": "default", "rope_theta": g.rope_theta, "mrope_section": [24, 20, 20],
                                 "mrope_interleaved": True},
            ),
            vision_config=dict(
                depth=vg.layers, hidden_size=vg.width, intermediate_size=vg.mlp, num_heads=vg.heads,
                in_channels=vg.channels, patch_size=vg.patch, spatial_merge_size=vg.merge,
                temporal_patch_size=vg.temporal_patch, out_hidden_size=g.hidden,
                deepstack_visual_indexes=list(g.extra["deepstack_layers"]),
            ),
            image_token_id=g.image_token_id,
            video_token_id=g.extra["video_token_id"],
            vision_start_token_id=g.extra["vision_start_token_id"],
            vision_end_token_id=g.extra["vision_end_token_id"],
        )  # fmt: skip
    elif g.family == "llava_onevision":
        from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

        vg = g.vision
        cfg = LlavaOnevisionConfig(
            vision_config=SiglipVisionConfig(
                hidden_size=vg.width, intermediate_size=vg.mlp, num_hidden_layers=vg.layers,
                num_attention_heads=vg.heads, image_size=vg.image_size, patch_size=vg.patch, vision_use_head=False,
            ),
            text_config=Qwen2Config(
                hidden_size=g.hidden, intermediate_size=g.intermediate, num_hidden_layers=g.layers,
                num_attention_heads=g.heads, num_key_value_heads=g.kv_heads, vocab_size=g.vocab,
                max_position_embeddings=g.max_positions,
                rope_parameters={"rope_type": "default", "rope_theta": g.rope_theta},
            ),
            image_token_index=g.image_token_id, vision_feature_layer=-1, vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9",
        )  # fmt: skip
    elif g.family == "internvl":
        from transformers import InternVLConfig

        vg = g.vision
        cfg = InternVLConfig(
            vision_config=dict(
                hidden_size=vg.width, intermediate_size=vg.mlp, num_hidden_layers=vg.layers,
                num_attention_heads=vg.heads, image_size=vg.image_size, patch_size=vg.patch,
            ),
            text_config=dict(
                model_type=g.extra["text_model_type"], hidden_size=g.hidden, intermediate_size=g.intermediate,
                num_hidden_layers=g.layers, num_attention_heads=g.heads, num_key_value_heads=g.kv_heads,
                head_dim=g.head_dim, vocab_size=g.vocab, max_position_embeddings=g.max_positions,
                rope_parameters={"rope_type": "default", "rope_theta": g.rope_theta},
            ),
            image_token_id=g.image_token_id, image_seq_length=(vg.grid // vg.merge) ** 2,
            downsample_ratio=1 / vg.merge, vision_feature_layer=vg.select_layer,
            vision_feature_select_strategy="default", tie_word_embeddings=False,
        )  # fmt: skip
    else:  # pragma: no cover - Family is closed
        raise ValueError(g.family)
    cfg._attn_implementation = "sdpa"
    for sub in ("text_config", "vision_config"):
        sub_cfg = getattr(cfg, sub, None)
        if sub_cfg is not None:
            sub_cfg._attn_implementation = "sdpa"
    return cfg
