"""Qwen2-VL backbone: dynamic-resolution vision tower and 3-D M-RoPE positions.

Positions come from the model's own ``get_rope_index`` (text tokens advance 1-D, image tokens
take (temporal, row, col) ids); transformers 5.x needs ``mm_token_type_ids`` for it (1 = image).
The first generated token continues at max(position) + 1 of each sample.
"""

from __future__ import annotations

from typing import Any

import torch

from ..batch import Batch, token_types_from_ids, visual_index_from_types
from ..method import MethodError
from .base import Backbone, VisionOutput


class Qwen2VLBackbone(Backbone):
    family = "qwen2_vl"
    position_dims = 3

    def rope(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if positions.shape[0] == 1:
            positions = positions.expand(3, -1, -1)
        return self.decoder.rotary_emb(x, positions)

    def mm_token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return (input_ids == self.image_token_id).int()

    def vision(self, inputs: dict[str, Any]) -> VisionOutput:
        visual = self.model.model.visual
        grid = inputs["image_grid_thw"]
        out = visual(inputs["pixel_values"].to(self.dtype), grid_thw=grid)
        merge = visual.spatial_merge_size
        sizes = (grid.prod(-1) // merge**2).tolist()
        embeds = list(torch.split(out.pooler_output, sizes))
        # the raw features the merger consumed, grouped per merged token (merge^2 patches each)
        raw = out.last_hidden_state.reshape(-1, merge * merge * out.last_hidden_state.shape[-1])
        feats = list(torch.split(self.raster_order(raw, grid), sizes))
        coords = []
        for t, h, w in grid.tolist():
            hh, ww = h // merge, w // merge
            j = torch.arange(t * hh * ww)
            coords.append(torch.stack([j // (hh * ww), (j // ww) % hh, j % ww], 1))
        depth = len(visual.blocks)
        return VisionOutput(features=feats, embeds=embeds, coords=coords, vision_layers_run=depth,
                            vision_layers_total=depth, extras=self.vision_extras(out, sizes))  # fmt: skip

    def vision_extras(self, out: Any, sizes: list[int]) -> dict[str, Any]:
        """What the tower's output holds beyond the merged tokens and raw features (none here)."""
        return {}

    def raster_order(self, merged_raw: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """The tower's raw features per merged token, in the order of the image tokens (raster)."""
        return merged_raw

    def _hf_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """transformers 5.x's ``get_rope_index`` needs ``mm_token_type_ids`` (1 = image token)."""
        kw = super()._hf_inputs(inputs)
        kw.setdefault("mm_token_type_ids", self.mm_token_type_ids(kw["input_ids"]))
        return kw

    def encode(self, inputs: dict[str, Any], sample_ids: list[str] | None = None, tower: Any = None) -> Batch:
        if tower is not None:
            raise MethodError(
                f"method '{tower.name}' merges inside the vision tower: it needs a LLaVA-1.5 backbone with a CLIP tower"
            )
        kw = self._hf_inputs(inputs)
        input_ids = kw["input_ids"]
        attention_mask = kw.get("attention_mask", torch.ones_like(input_ids))
        b = input_ids.shape[0]
        ttype = token_types_from_ids(input_ids, attention_mask, self.image_token_id)
        embeds = self.embed_tokens(input_ids)
        coords = torch.full((*input_ids.shape, 3), -1, dtype=torch.long)
        feats, deepstack = None, None
        if kw.get("pixel_values") is not None:
            vision = self.vision(kw)
            img_rows = [r for r in range(b) if bool((input_ids[r] == self.image_token_id).any())]
            per_row = [int((input_ids[r] == self.image_token_id).sum()) for r in img_rows]
            # several images per sample are concatenated in order
            flat_emb = torch.cat(vision.embeds, 0)
            flat_crd = torch.cat(vision.coords, 0)
            flat_feat = torch.cat(vision.features, 0)
            if flat_emb.shape[0] != sum(per_row):
                raise ValueError(
                    f"{sum(per_row)} image tokens in the prompts but the images give {flat_emb.shape[0]} "
                    "features; build inputs with the checkpoint's processor"
                )
            feats = [torch.empty(0)] * b
            # DeepStack (Qwen3-VL): per decoder layer one feature per image token, laid out on the
            # batch's slots [D, B, N, h], zero on rows that are not image tokens
            stack = vision.extras.get("deepstack")
            flat_ds = torch.stack(stack).to(embeds.dtype) if stack else None
            deepstack = None if flat_ds is None else embeds.new_zeros(flat_ds.shape[0], *embeds.shape)
            start = 0
            for row, n in zip(img_rows, per_row, strict=True):
                slots = (input_ids[row] == self.image_token_id).nonzero().flatten()
                embeds[row, slots] = flat_emb[start : start + n].to(embeds.dtype)
                coords[row, slots] = flat_crd[start : start + n]
                feats[row] = flat_feat[start : start + n]
                if deepstack is not None and flat_ds is not None:
                    deepstack[:, row, slots] = flat_ds[:, start : start + n]
                start += n
            positions, _ = self.model.model.get_rope_index(
                input_ids,
                mm_token_type_ids=kw["mm_token_type_ids"],
                image_grid_thw=kw.get("image_grid_thw"),
                attention_mask=attention_mask,
            )
        else:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[None].expand(3, -1, -1)
        valid = attention_mask.bool()
        masked = torch.where(valid[None], positions, torch.full_like(positions, -1))
        next_position = masked.amax(dim=(0, 2)) + 1
        return Batch(
            embeds=embeds,
            token_type=ttype,
            positions=positions.long(),
            next_position=next_position,
            visual_index=visual_index_from_types(ttype),
            visual_coords=coords,
            sample_ids=sample_ids or [str(i) for i in range(b)],
            vision_features=feats,
            deepstack=deepstack,
        )

    def _reset_hf_state(self) -> None:
        """The HF model caches M-RoPE deltas across calls; each reference call starts afresh."""
        self.model.model.rope_deltas = None

    def collate_images(self, samples: list[dict]) -> dict[str, Any]:
        """Patches of every image concatenated, with each image's (t, h, w) patch grid."""
        return {
            "pixel_values": torch.cat([s["pixel_values"] for s in samples]),
            "image_grid_thw": torch.cat([s["image_grid_thw"] for s in samples]),
        }
