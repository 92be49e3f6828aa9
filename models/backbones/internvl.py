"""InternVL3 and InternVL3.5 backbones (HF ``InternVLForConditionalGeneration``, model_type ``internvl``).

- Images are cut into square tiles (448 px in the released models) on the grid whose aspect ratio
  is closest to the image's, plus a thumbnail of the whole image last when there is more than one
  tile.  The processor hands the model every tile of the batch flat, [sum of tiles, 3, S, S], and
  drops the per-image counts; they are read back here from the prompt: each image is one run of
  ``image_seq_length`` image tokens per tile between ``<img>`` and ``</img>``.
- Each tile goes through the InternViT tower (CLS first, feature layer ``vision_feature_layer``,
  the CLS dropped), is laid out on its patch grid and pixel-shuffled by 0.5 (2 x 2 neighbouring
  patches become one token of 4x the width: 32 x 32 patches give 16 x 16 = 256 tokens), then
  projected (LayerNorm, Linear, GELU, Linear).  The raw features kept for the methods are the
  pixel-shuffled ones, one per visual token, before the projector.
- Coordinates: (tile index, row, col) on each tile's token grid; the thumbnail is the last tile,
  so it has its own grid id.
- The decoder is a Qwen2 model (InternVL3: GQA, q/k/v biases) or a Qwen3 model (InternVL3.5:
  per-head q/k RMSNorm before RoPE, explicit head_dim, no biases), both with 1-D RoPE: positions,
  left padding and token types are LLaVA's (``<img>`` is a system-prefix token, ``</img>`` text).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..batch import Batch
from ..method import MethodError
from .base import BackboneError, VisionOutput
from .llava import LlavaBackbone

#: why the methods that score patches by a CLIP tower's CLS attention do not run here (the batch
#: carries it as ``extras["no_clip"]`` for their one-line error)
NO_CLIP = (
    "InternVL's visual tokens are pixel-shuffled groups of 2 x 2 InternViT patches, which a CLS-attention "
    "rule over single patches does not score"
)


class InternVLBackbone(LlavaBackbone):
    family = "internvl"

    @property
    def tokens_per_tile(self) -> int:
        """Visual tokens of one tile (``image_seq_length``: 256 for 448 px tiles)."""
        return int(self.config.image_seq_length)

    def tiles_per_image(self, inputs: dict[str, Any]) -> list[int]:
        """Tiles of each image, in prompt order, from the image-token runs of ``input_ids`` (one
        image per prompt); without ``input_ids`` every tile belongs to one image."""
        total = int(inputs["pixel_values"].shape[0])
        ids = inputs.get("input_ids")
        if ids is None:
            return [total]
        per_tile = self.tokens_per_tile
        tiles = []
        for row, seq in enumerate(np.asarray(ids.cpu()) == self.image_token_id):
            edges = np.flatnonzero(np.diff(np.concatenate([[0], seq.astype(np.int8), [0]])))
            runs = (edges[1::2] - edges[::2]).tolist()
            if not runs:
                continue
            if len(runs) > 1:
                raise BackboneError(
                    f"sample {row} has {len(runs)} images (<img> spans); the InternVL backbone takes one image "
                    "per prompt: give each image its own prompt"
                )
            if runs[0] % per_tile:
                raise BackboneError(
                    f"sample {row}: {runs[0]} image tokens are not a whole number of tiles of {per_tile} tokens "
                    "(image_seq_length); build inputs with the checkpoint's processor"
                )
            tiles.append(runs[0] // per_tile)
        if sum(tiles) != total:
            raise BackboneError(
                f"the prompts' image tokens make {sum(tiles)} tiles but pixel_values holds {total}; build "
                "inputs with the checkpoint's processor (one <img> span per image)"
            )
        return tiles

    def vision(self, inputs: dict[str, Any], tower: Any = None) -> VisionOutput:
        if tower is not None:
            raise MethodError(
                f"method '{tower.name}' merges inside the vision tower: it needs a LLaVA-1.5 backbone with a "
                "CLIP tower (InternVL's pixel shuffle needs every patch of each tile's grid)"
            )
        tiles = self.tiles_per_image(inputs)
        hf = self.model.model
        vt = hf.vision_tower
        fl = self.config.vision_feature_layer
        if not isinstance(fl, int):
            raise BackboneError(
                f"InternVL reads one vision feature layer; the config gives {fl}: set vision_feature_layer "
                "to one index"
            )
        layers = vt.encoder.layer
        total = len(layers)
        depth = fl if fl >= 0 else total + 1 + fl  # encoder layers whose output is read
        h = vt.embeddings(inputs["pixel_values"].to(self.dtype))
        for layer in layers[:depth]:
            h = layer(h)
        if fl == -1:  # the tower's last_hidden_state (its closing norm; an identity with mean pooling)
            h = vt.layernorm(h)
        if self.config.vision_feature_select_strategy == "default":
            h = h[:, 1:]  # the CLS token
        side = math.isqrt(int(h.shape[1]))
        shuffled = hf.pixel_shuffle(
            h.reshape(h.shape[0], side, side, -1), scale_factor=self.config.downsample_ratio
        )
        grid = int(shuffled.shape[1])
        feats = shuffled.reshape(shuffled.shape[0], grid * grid, -1)  # [tiles, tokens per tile, 4 d_vis]
        embeds = hf.multi_modal_projector(feats)
        features, projected, coords = [], [], []
        for f, e in zip(torch.split(feats, tiles), torch.split(embeds, tiles), strict=True):
            features.append(f.flatten(0, 1))
            projected.append(e.flatten(0, 1))
            coords.append(tile_coords(int(f.shape[0]), grid))
        n_tiles = sum(tiles)
        return VisionOutput(
            features=features,
            embeds=projected,
            coords=coords,
            vision_layers_run=depth * n_tiles,
            vision_layers_total=total * n_tiles,
        )

    def encode(self, inputs: dict[str, Any], sample_ids: list[str] | None = None, tower: Any = None) -> Batch:
        batch = super().encode(inputs, sample_ids, tower)
        batch.extras["no_clip"] = NO_CLIP
        return batch


def tile_coords(tiles: int, grid: int) -> torch.Tensor:
    """(tile index, row, col) of every token of ``tiles`` tiles of ``grid`` x ``grid`` tokens, in
    order (the thumbnail, when there is one, is the last tile)."""
    j = torch.arange(tiles * grid * grid)
    within = j % (grid * grid)
    return torch.stack([j // (grid * grid), within // grid, within % grid], 1)
