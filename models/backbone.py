"""Backbones: an HF multimodal model seen as the parts the executor calls.

A backbone turns images + prompts into an embedded :class:`~harness.models.batch.Batch` (vision
tower, projector, token-type map, original positions) and exposes its decoder's submodules.  It
never changes the HF model: the executor calls ``q_proj``, ``k_proj``, ... and the backbone's
``rope`` / ``rotate`` give the rotary embedding of each family.

Families: ``llava`` (LLaVA-1.5), ``llava_next`` (LLaVA-NeXT, anyres) and ``qwen2_vl`` (M-RoPE).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .batch import Batch

FAMILIES = ("llava", "llava_next", "qwen2_vl")


class BackboneError(ValueError):
    """Bad backbone input; the message is one line that names the problem and the fix."""


@dataclass
class VisionOutput:
    """What the vision side produced for a batch of images (one entry per image)."""

    features: list[torch.Tensor]  # raw vision features the projector consumed, per image [n, d_vis]
    embeds: list[torch.Tensor]  # projector output per image [n_visual, h]
    coords: list[torch.Tensor]  # (grid, row, col) per visual token [n_visual, 3]
    vision_layers_run: int = 0  # encoder layers actually computed (feature layer -2 skips the last)
    vision_layers_total: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


class Backbone:
    """Base class: decoder access shared by every family."""

    family: str = ""
    position_dims: int = 1

    def __init__(
        self, model: nn.Module, processor: Any = None, source: str = "", weights: str = "pretrained"
    ):
        self.model = model.eval()
        self.processor = processor
        self.source = source
        self.weights = weights  # "pretrained" or "random-init"
        self.info: dict[str, Any] = {}  # the checkpoint's seebench.json (architecture, method defaults)
        self.config = model.config
        self.text_config = model.config.get_text_config()
        self.decoder = model.model.language_model
        attn0 = self.decoder.layers[0].self_attn
        self.num_heads = self.text_config.num_attention_heads
        self.num_kv_heads = getattr(self.text_config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = attn0.q_proj.out_features // self.num_heads
        self.hidden_size = self.text_config.hidden_size
        self.intermediate_size = self.text_config.intermediate_size

    # ---- decoder parts used by the executor
    @property
    def layers(self) -> nn.ModuleList:
        return self.decoder.layers

    @property
    def num_layers(self) -> int:
        return len(self.decoder.layers)

    @property
    def norm(self) -> nn.Module:
        return self.decoder.norm

    @property
    def embed_tokens(self) -> nn.Module:
        return self.decoder.embed_tokens

    @property
    def lm_head(self) -> nn.Module:
        return self.model.lm_head

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Backbone:
        """Move the model (and any weights the backbone keeps beside it) to ``device``, casting
        floating weights to ``dtype`` when given.  Encode on the CPU first, then move the model
        and the batch (``Batch.to``): ``encode`` builds its index tensors on the CPU.  Rotary
        ``inv_freq`` buffers stay float32, as ``from_pretrained(dtype=...)`` leaves them."""
        rotary = [m for m in self.model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)]
        kept = [(m, n, b) for m in rotary for n, b in m.named_buffers(recurse=False) if b.is_floating_point()]
        self.model.to(device=device, dtype=dtype)
        for m, name, buf in kept:
            setattr(m, name, buf.to(device=device))
        return self

    def rope(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B, N, d] for positions [P, B, N] (the family's own rotary module)."""
        return self.decoder.rotary_emb(x, positions[0])

    @staticmethod
    def rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Apply RoPE to t [B, H, N, d] (rotate-half convention shared by Llama and Qwen2)."""
        cos, sin = cos[:, None], sin[:, None]
        half = t.shape[-1] // 2
        rot = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
        return t * cos + rot * sin

    @staticmethod
    def signed_sin(sin: torch.Tensor) -> torch.Tensor:
        """sin with rotate-half's sign folded in: ``rotate_half(t) * sin`` becomes
        ``swap_halves(t) * signed_sin`` (the same numbers, one elementwise pass fewer)."""
        half = sin.shape[-1] // 2
        return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)

    @staticmethod
    def rotate_rows(t: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        """:meth:`rotate` for t [B, N, H, d], the projections' own layout (before the head
        transpose, so every elementwise pass runs on contiguous rows), with ``signed_sin``."""
        half = t.shape[-1] // 2
        swapped = torch.cat((t[..., half:], t[..., :half]), dim=-1)
        return (t * cos[:, :, None]).addcmul_(swapped, signed_sin[:, :, None])

    def layer_projection(self, layer: int, feats: torch.Tensor) -> torch.Tensor:
        """Raw vision features [..., d_vis] -> layer ``layer``'s visual states [..., h] (SAISA)."""
        raise BackboneError(
            f"backbone '{self.family}' has no per-layer visual projectors; kv_source 'projector' needs "
            "an architecture with its own weights (e.g. saisa)"
        )

    # ---- inputs
    @property
    def image_token_id(self) -> int:
        return int(self.config.image_token_id)

    def encode(self, inputs: dict[str, Any], sample_ids: list[str] | None = None, tower: Any = None) -> Batch:
        """Processor outputs (input_ids, attention_mask, pixel values, ...) -> embedded batch;
        ``tower``: a method that runs inside the vision tower's forward (``VisualPlan.tower``)."""
        raise NotImplementedError

    def hf_logits(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The HF model's own forward logits [B, N, V] (the reference for ``harness verify``)."""
        raise NotImplementedError

    def hf_generate(self, inputs: dict[str, Any], max_new_tokens: int) -> torch.Tensor:
        gen = self.model.generate(
            **self._hf_kwargs(inputs),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        return gen[:, inputs["input_ids"].shape[1] :]

    def _hf_kwargs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return dict(inputs)

    def build_inputs(self, prompts: list[str], images: list[Any]) -> dict[str, Any]:
        """Images + prompts -> model inputs through the checkpoint's own processor (left padding)."""
        if self.processor is None:
            raise BackboneError(
                f"checkpoint '{self.source}' has no processor files (preprocessor_config.json, tokenizer); "
                "save the processor next to the weights with processor.save_pretrained(DIR)"
            )
        tok = getattr(self.processor, "tokenizer", None)
        if tok is not None:
            tok.padding_side = "left"
        out = self.processor(images=images, text=prompts, return_tensors="pt", padding=True)
        return dict(out)

    # ---- provenance
    def weights_hash(self) -> str:
        """A short content hash of the weights (first/last bytes of every tensor + shapes)."""
        h = hashlib.sha256()
        for name, p in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            flat = p.detach().reshape(-1)
            for part in (flat[:8], flat[-8:]):
                h.update(part.float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "source": self.source,
            "weights": self.weights,
            "layers": self.num_layers,
            "hidden": self.hidden_size,
            "heads": self.num_heads,
            "kv_heads": self.num_kv_heads,
            "ffn": self.intermediate_size,
            "dtype": str(self.dtype).replace("torch.", ""),
            "weights_hash": self.weights_hash(),
        }


def collate(bb: Backbone, samples: list[dict]) -> dict:
    """Left-pad single-sample model inputs into one batch (what the processor does for a list of
    prompts); pixel inputs are stacked the way each family's HF model expects them."""
    n = max(s["input_ids"].shape[1] for s in samples)
    ids = torch.zeros(len(samples), n, dtype=torch.long)
    mask = torch.zeros(len(samples), n, dtype=torch.long)
    for i, s in enumerate(samples):
        k = s["input_ids"].shape[1]
        ids[i, n - k :] = s["input_ids"][0]
        mask[i, n - k :] = 1
    out: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    if bb.family == "llava_next":
        p = max(s["pixel_values"].shape[1] for s in samples)
        pv = torch.zeros(len(samples), p, *samples[0]["pixel_values"].shape[2:])
        for i, s in enumerate(samples):
            pv[i, : s["pixel_values"].shape[1]] = s["pixel_values"][0]
        out["pixel_values"] = pv
        out["image_sizes"] = torch.cat([s["image_sizes"] for s in samples])
    else:
        out["pixel_values"] = torch.cat([s["pixel_values"] for s in samples])
        if bb.family == "qwen2_vl":
            out["image_grid_thw"] = torch.cat([s["image_grid_thw"] for s in samples])
    return out


def family_of(config: Any) -> str:
    model_type = getattr(config, "model_type", "")
    if model_type not in FAMILIES:
        raise BackboneError(
            f"unknown backbone model_type '{model_type}': supported are {', '.join(FAMILIES)} "
            "(LLaVA-1.5, LLaVA-NeXT, Qwen2-VL)"
        )
    return model_type


def wrap(model: nn.Module, processor: Any = None, source: str = "", weights: str = "pretrained") -> Backbone:
    """Wrap an already-built HF model in the backbone class of its family."""
    family = family_of(model.config)
    if family in ("llava", "llava_next"):
        from .llava import LlavaBackbone, LlavaNextBackbone

        cls = LlavaBackbone if family == "llava" else LlavaNextBackbone
    else:
        from .qwen2_vl import Qwen2VLBackbone

        cls = Qwen2VLBackbone
    return cls(model, processor=processor, source=source, weights=weights)


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
    cls_name = {
        "llava": "LlavaForConditionalGeneration",
        "llava_next": "LlavaNextForConditionalGeneration",
        "qwen2_vl": "Qwen2VLForConditionalGeneration",
    }[family]
    model_cls = getattr(transformers, cls_name)
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
        from .saisa import SaisaBackbone, load_projectors

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
