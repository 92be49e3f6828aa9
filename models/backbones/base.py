"""The backbone base class: an HF multimodal model seen as the parts the executor calls.

A backbone turns images + prompts into an embedded :class:`~harness.models.batch.Batch` (vision
tower, projector, token-type map, original positions) and exposes its decoder's submodules.  It
never changes the HF model: the executor calls ``q_proj``, ``k_proj``, ... and the backbone's
``rope`` / ``rotate`` give the rotary embedding of each family.

The families are subclasses (``llava.py``, ``qwen2_vl.py``); this module knows none of them, and
``loading.py`` is the one that picks a family's class for a checkpoint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

from ..batch import Batch
from ..errors import SeebenchError


class BackboneError(SeebenchError):
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


class Decoder(Protocol):
    """The parts of the HF language model (Llama / Qwen2 decoder) that the executor calls."""

    layers: nn.ModuleList
    norm: nn.Module
    embed_tokens: nn.Embedding
    rotary_emb: nn.Module


class Backbone:
    """Base class: decoder access shared by every family."""

    family: str = ""
    position_dims: int = 1
    # The HF model: its submodules are reached by their family's names (``model.model.vision_tower``,
    # ``lm_head``, ...), which nn.Module's ``__getattr__`` can only type as ``Tensor | Module``.
    model: Any
    config: PreTrainedConfig
    text_config: PreTrainedConfig
    decoder: Decoder

    def __init__(
        self, model: nn.Module, processor: Any = None, source: str = "", weights: str = "pretrained"
    ):
        self.model = model.eval()
        self.processor = processor
        self.source = source
        self.weights = weights  # "pretrained" or "random-init"
        self.info: dict[str, Any] = {}  # the checkpoint's seebench.json (architecture, method defaults)
        self.config = self.model.config
        self.text_config = self.config.get_text_config()
        self.decoder = cast(Decoder, self.model.model.language_model)
        attn0: Any = self.decoder.layers[0].self_attn  # the HF attention module (q_proj, ...)
        self.num_heads = self.text_config.num_attention_heads
        self.num_kv_heads = getattr(self.text_config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = attn0.q_proj.out_features // self.num_heads
        # Qwen3-style decoders (InternVL3.5, Qwen3-VL) RMS-normalise each head's q and k before RoPE
        self.qk_norm = hasattr(attn0, "q_norm") and hasattr(attn0, "k_norm")
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
    def embed_tokens(self) -> nn.Embedding:
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

    def queries(self, attn: Any, x: torch.Tensor) -> torch.Tensor:
        """Layer ``attn``'s queries of rows x [B, N, h] as heads [B, N, H, d], before RoPE: ``q_proj``,
        then the per-head ``q_norm`` where the decoder has one."""
        q = attn.q_proj(x).unflatten(-1, (-1, self.head_dim))
        return attn.q_norm(q) if self.qk_norm else q

    def keys(self, attn: Any, x: torch.Tensor) -> torch.Tensor:
        """Layer ``attn``'s keys [B, N, Hkv, d] before RoPE (``k_proj``, then ``k_norm`` if any)."""
        k = attn.k_proj(x).unflatten(-1, (-1, self.head_dim))
        return attn.k_norm(k) if self.qk_norm else k

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

    def vision(self, inputs: dict[str, Any]) -> VisionOutput:
        """The vision side (tower and projector) of model inputs, per image (each family's own)."""
        raise NotImplementedError

    # ---- inputs
    @property
    def image_token_id(self) -> int:
        return int(self.config.image_token_id)

    def encode(self, inputs: dict[str, Any], sample_ids: list[str] | None = None, tower: Any = None) -> Batch:
        """Processor outputs (input_ids, attention_mask, pixel values, ...) -> embedded batch;
        ``tower``: a method that runs inside the vision tower's forward (``VisualPlan.tower``)."""
        raise NotImplementedError

    # ---- the HF model's own calls (the references the executor is checked against)
    def hf_logits(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The HF model's own forward logits [B, N, V] (the reference for ``harness verify``)."""
        self._reset_hf_state()
        kw = self._hf_forward_inputs(inputs)
        with torch.inference_mode():
            return self.model(**kw).logits.float()

    def hf_generate(self, inputs: dict[str, Any], max_new_tokens: int) -> torch.Tensor:
        """The HF model's own greedy generation, exactly ``max_new_tokens`` new ids per sample."""
        self._reset_hf_state()
        kw = self._hf_inputs(inputs)
        gen = self.model.generate(
            **kw, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
            do_sample=False, eos_token_id=None, pad_token_id=0,
        )  # fmt: skip
        return gen[:, kw["input_ids"].shape[1] :]

    # what a family changes in those calls
    def _hf_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The inputs as the HF model takes them (entries that are None left out)."""
        return {k: v for k, v in inputs.items() if v is not None}

    def _hf_forward_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """What ``hf_logits`` passes to the forward (``_hf_inputs`` unless the family adds more)."""
        return self._hf_inputs(inputs)

    def _reset_hf_state(self) -> None:
        """Forget state the HF model keeps between calls (none unless the family has some)."""

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

    def collate_images(self, samples: list[dict]) -> dict[str, Any]:
        """The image inputs of single-sample model inputs, stacked as the family's HF model takes
        them for a batch (``collate``): here one pixel tensor per image, concatenated."""
        return {"pixel_values": torch.cat([s["pixel_values"] for s in samples])}

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
    prompts); image inputs are stacked by the backbone, the way its family's HF model takes them."""
    n = max(s["input_ids"].shape[1] for s in samples)
    ids = torch.zeros(len(samples), n, dtype=torch.long)
    mask = torch.zeros(len(samples), n, dtype=torch.long)
    for i, s in enumerate(samples):
        k = s["input_ids"].shape[1]
        ids[i, n - k :] = s["input_ids"][0]
        mask[i, n - k :] = 1
    return {"input_ids": ids, "attention_mask": mask, **bb.collate_images(samples)}
