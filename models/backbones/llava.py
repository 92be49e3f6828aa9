"""LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision backbones.

The vision tower is run layer by layer up to the feature layer the model uses: LLaVA-1.5 reads
the output of encoder layer -2, so the last encoder layer is never computed here (the HF model
computes it and throws it away).  The saving is recorded as ``vision_layers_run`` /
``vision_layers_total`` so FLOPs counts and the analytic model agree (docs/flops.md).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from ..batch import Batch, TokenType, left_pad_positions, token_types_from_ids, visual_index_from_types
from ..method import MethodError
from .base import Backbone, VisionOutput


def _feature_layers(config) -> list[int]:
    fl = config.vision_feature_layer
    return [fl] if isinstance(fl, int) else list(fl)


class LlavaBackbone(Backbone):
    family = "llava"

    # ---- vision
    def _vision_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, int, int, dict[str, Any]]:
        """Selected vision hidden states [n_img, n_tok, d(*k)], layers run, layers total, and the
        CLIP states that pre-LLM methods read (empty for a tower that runs whole)."""
        vt = self.model.model.vision_tower
        layers = _feature_layers(self.config)
        pixel_values = pixel_values.to(self.dtype)
        enc_layers = getattr(getattr(vt, "encoder", None), "layers", None)
        if enc_layers is None or not hasattr(vt, "embeddings"):  # generic tower: let it run whole
            out = vt(pixel_values, output_hidden_states=True, return_dict=True)
            hs = out.hidden_states
            feats = torch.cat([hs[i] for i in layers], dim=-1)
            n = len(hs) - 1
            return feats, n, n, {}
        total = len(enc_layers)
        wanted = [i if i >= 0 else total + 1 + i for i in layers]  # index into hidden_states
        h = _tower_input(vt, pixel_values)
        states = {0: h}
        for i in range(max(wanted)):
            h = enc_layers[i](h, None)
            states[i + 1] = h
        feats = torch.cat([states[i] for i in wanted], dim=-1)
        w = max(wanted)
        # returned for pre-LLM methods that read the ViT's own attention (CLS row) or keys: the states
        # entering and leaving the last layer whose output LLaVA uses (CLS included); and the input
        # of layer 0, from which methods that change the tower's tokens (ToMe) run their own loop
        clip = {"layer": w - 1, "h_embed": states[0], "h_in": states[w - 1], "h_out": states[w]}
        return feats, w, total, clip

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """Vision features -> LLM input space (the multimodal projector)."""
        return self.model.model.multi_modal_projector(feats)

    def _select(self, feats: torch.Tensor) -> torch.Tensor:
        if self.config.vision_feature_select_strategy == "default":
            return feats[:, 1:]
        return feats

    def _merged_vision(self, pixel_values: torch.Tensor, tower: Any) -> VisionOutput:
        """The tower forward with a method merging inside it (``tower.run_tower``, e.g. ToMe): the
        merged patch states of the feature layer go through the projector; the image's slots keep
        the dense layout and each image's (embeds, anchors) waits in ``extras["tower"]``."""
        vt = self.model.model.vision_tower
        enc_layers = getattr(getattr(vt, "encoder", None), "layers", None)
        layers = _feature_layers(self.config)
        if enc_layers is None or len(layers) != 1:
            raise ValueError("a tower that merges needs a CLIP encoder read at one feature layer")
        total = len(enc_layers)
        w = layers[0] if layers[0] >= 0 else total + 1 + layers[0]
        h = _tower_input(vt, pixel_values.to(self.dtype))
        merged = tower.run_tower(self, h, enc_layers[:w])
        reduced = [(self.project(x), anchors) for x, anchors, _ in merged]  # (embeds, anchors)
        n = int(h.shape[1]) - (1 if self.config.vision_feature_select_strategy == "default" else 0)
        return VisionOutput(
            features=[x for x, _, _ in merged],
            embeds=[e for e, _ in reduced],
            coords=[_grid(n)] * len(merged),
            vision_layers_run=w,
            vision_layers_total=total,
            extras={"tower": reduced, "tower_macs": [m for _, _, m in merged]},
        )

    def vision(self, inputs: dict[str, Any], tower: Any = None) -> VisionOutput:
        if tower is not None:
            return self._merged_vision(inputs["pixel_values"], tower)
        feats, run, total, clip = self._vision_features(inputs["pixel_values"])
        feats = self._select(feats)
        embeds = self.project(feats)
        return VisionOutput(
            features=list(feats),
            embeds=list(embeds),
            coords=[_grid(int(feats.shape[1]))] * feats.shape[0],
            vision_layers_run=run,
            vision_layers_total=total,
            extras=clip,
        )

    # ---- batch
    def encode(self, inputs: dict[str, Any], sample_ids: list[str] | None = None, tower: Any = None) -> Batch:
        """Processor inputs -> embedded batch.  ``tower``: a pre-LLM method that merges inside the
        vision tower's forward (``VisualPlan.tower``); its merged tokens replace the image's in the
        executor (``extras["tower"]``), and the image slots hold the image-token embedding meanwhile."""
        input_ids = inputs["input_ids"]
        attention_mask = inputs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        b = input_ids.shape[0]
        ttype = token_types_from_ids(input_ids, attention_mask, self.image_token_id)
        embeds = self.embed_tokens(input_ids.to(self.device))
        coords = torch.full((*input_ids.shape, 3), -1, dtype=torch.long)
        vision = None
        if inputs.get("pixel_values") is not None:
            vision = self.vision(inputs, tower) if tower is not None else self.vision(inputs)
            img_rows = (input_ids == self.image_token_id).any(1).nonzero().flatten().tolist()
            if len(img_rows) != len(vision.embeds):
                raise ValueError(
                    f"{len(vision.embeds)} images for {len(img_rows)} prompts with an image token; "
                    "give exactly one image per prompt that has one"
                )
            merged = "tower" in vision.extras
            for row, emb, crd in zip(img_rows, vision.embeds, vision.coords, strict=True):
                slots = (input_ids[row] == self.image_token_id).nonzero().flatten()
                if merged and slots.numel() == crd.shape[0]:
                    coords[row, slots] = crd  # the merged tokens replace these slots in the executor
                    continue
                if slots.numel() != emb.shape[0]:
                    raise ValueError(
                        f"sample {row}: {slots.numel()} image tokens in the prompt but the image gives "
                        f"{emb.shape[0]} features; build inputs with the checkpoint's processor"
                    )
                embeds[row, slots] = emb.to(embeds.dtype)
                coords[row, slots] = crd
        positions = left_pad_positions(attention_mask)
        feats = None
        if vision is not None:
            feats = [torch.empty(0)] * b
            for row, f in zip(img_rows, vision.features, strict=True):
                feats[row] = f
        return Batch(
            embeds=embeds,
            token_type=ttype,
            positions=positions,
            next_position=attention_mask.long().sum(1),
            visual_index=visual_index_from_types(ttype),
            visual_coords=coords,
            sample_ids=sample_ids or [str(i) for i in range(b)],
            vision_features=feats,
            extras={
                "vision_layers_run": vision.vision_layers_run if vision else 0,
                "vision_layers_total": vision.vision_layers_total if vision else 0,
                # the instruction's token ids (TEXT rows, host lists): CDPruner's CLIP-text relevance
                "text_ids": [input_ids[i][ttype[i] == int(TokenType.TEXT)].tolist() for i in range(b)],
                "clip": _per_sample(vision.extras, img_rows, b)
                if vision and self.family == "llava" and "tower" not in vision.extras
                else None,
                **(_tower_outputs(vision.extras, img_rows, b) if vision and "tower" in vision.extras else {}),
            },
        )

    def _hf_forward_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The forward gets the left-padded samples' own positions (generate finds them itself)."""
        kw = self._hf_inputs(inputs)
        if "attention_mask" in kw and "position_ids" not in kw:
            kw["position_ids"] = left_pad_positions(kw["attention_mask"])[0]
        return kw


class LlavaNextBackbone(LlavaBackbone):
    """LLaVA-NeXT: anyres tiles, unpadding and newline tokens make per-image token counts differ."""

    family = "llava_next"

    def vision(self, inputs: dict[str, Any], tower: Any = None) -> VisionOutput:
        if tower is not None:
            raise MethodError(
                f"method '{tower.name}' merges inside the vision tower: it needs a LLaVA-1.5 backbone with a CLIP tower"
            )
        pixel_values, image_sizes = inputs["pixel_values"], inputs["image_sizes"]
        cfg = self.config
        n_patches = [
            image_size_to_num_patches(
                image_size=s, grid_pinpoints=cfg.image_grid_pinpoints, patch_size=cfg.vision_config.image_size
            )
            for s in image_sizes
        ]
        if pixel_values.dim() == 5:
            pixel_values = torch.cat([pv[:n] for pv, n in zip(pixel_values, n_patches, strict=True)], 0)
        feats, run, total, _ = self._vision_features(pixel_values)
        feats = self._select(feats)
        proj = self.model.model.multi_modal_projector(feats)
        per_image = torch.split(proj, n_patches, dim=0)
        hf = self.model.model
        packed = self._pack(list(per_image), image_sizes, hf.image_newline)
        raw = torch.split(feats, n_patches, dim=0)
        raw_packed = self._pack(list(raw), image_sizes, feats.new_zeros(feats.shape[-1]))
        coords = [self._coords(n, image_sizes[i], feats.shape[1]) for i, n in enumerate(n_patches)]
        for c, e in zip(coords, packed, strict=True):
            assert c.shape[0] == e.shape[0], (c.shape, e.shape)
        return VisionOutput(
            features=list(raw_packed),
            embeds=list(packed),
            coords=coords,
            vision_layers_run=run * sum(n_patches),
            vision_layers_total=total * sum(n_patches),
        )

    def collate_images(self, samples: list[dict]) -> dict[str, Any]:
        """Anyres tiles: each sample's tiles zero-padded to the batch's largest count, plus the sizes."""
        p = max(s["pixel_values"].shape[1] for s in samples)
        pv = torch.zeros(len(samples), p, *samples[0]["pixel_values"].shape[2:])
        for i, s in enumerate(samples):
            pv[i, : s["pixel_values"].shape[1]] = s["pixel_values"][0]
        return {"pixel_values": pv, "image_sizes": torch.cat([s["image_sizes"] for s in samples])}

    def _pack(
        self, per_image: list[torch.Tensor], image_sizes, newline: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """The model's own packing of each image's crops (base, unpadded tiles, newline column)."""
        packed, _ = self.model.model.pack_image_features(
            per_image, image_sizes, self.config.vision_feature_select_strategy, image_newline=newline
        )
        return packed

    def _coords(self, n_patch: int, image_size, n_tok: int) -> torch.Tensor:
        """(grid, row, col) per packed token: grid 0 = base image, 1 = unpadded high-res tiles;
        newline tokens get -1.  Found by packing a marker tensor through the model's own packer."""
        marker = [torch.ones(n_patch, n_tok, 1)]
        packed = self._pack(marker, image_size[None], torch.zeros(1))[0][:, 0]
        g = math.isqrt(int(n_tok))
        out = torch.full((packed.shape[0], 3), -1, dtype=torch.long)
        if n_patch == 1:
            j = torch.arange(packed.shape[0] - 1)
            out[:-1] = torch.stack([torch.zeros_like(j), j // g, j % g], 1)
            return out
        j = torch.arange(g * g)
        out[: g * g] = torch.stack([torch.zeros_like(j), j // g, j % g], 1)
        hi = packed[g * g :]
        rows = int((hi == 0).sum())
        width = hi.shape[0] // rows  # includes the newline column
        t = torch.arange(hi.shape[0])
        r, c = t // width, t % width
        hi_coords = torch.stack([torch.ones_like(t), r, c], 1)
        hi_coords[c == width - 1] = -1
        out[g * g :] = hi_coords
        return out


def _tower_input(vt: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """The CLIP encoder's layer-0 input: patch (and CLS, position) embeddings, pre-layernorm."""
    h = vt.embeddings(pixel_values)
    pre = getattr(vt, "pre_layrnorm", None)
    return pre(h) if pre is not None else h


def _grid(n: int) -> torch.Tensor:
    """(0, row, col) of n patches on a square grid (else (0, 0, j))."""
    g = math.isqrt(n)
    j = torch.arange(n)
    if g * g == n:
        return torch.stack([torch.zeros_like(j), j // g, j % g], 1)
    return torch.stack([torch.zeros_like(j), torch.zeros_like(j), j], 1)


def _tower_outputs(extras: dict, img_rows: list[int], b: int) -> dict[str, list]:
    """A merging tower's per-image outputs, per sample (None / 0 for prompts without an image)."""
    reduced: list = [None] * b
    macs = [0.0] * b
    for j, row in enumerate(img_rows):
        reduced[row], macs[row] = extras["tower"][j], extras["tower_macs"][j]
    return {"tower": reduced, "tower_macs": macs}


def _per_sample(clip: dict, img_rows: list[int], b: int) -> list[dict | None] | None:
    """Split the batched ViT states per sample (None for prompts without an image)."""
    if not clip:
        return None
    out: list[dict | None] = [None] * b
    for j, row in enumerate(img_rows):
        out[row] = {key: v[j] if isinstance(v, torch.Tensor) else v for key, v in clip.items()}
    return out


class LlavaOnevisionBackbone(LlavaNextBackbone):
    """LLaVA-OneVision: a SigLIP tower (no CLS token; all its tokens are kept), a Qwen2 decoder, and
    anyres_max_9 packing, which shrinks a high-resolution grid larger than 9 crops by bilinear
    interpolation before the newline column is added."""

    family = "llava_onevision"

    def _pack(
        self, per_image: list[torch.Tensor], image_sizes, newline: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        packed, _ = self.model.model.pack_image_features(
            per_image, image_sizes, image_newline=newline, vision_aspect_ratio=self.config.vision_aspect_ratio
        )
        return packed
