"""The stock HF decoder on the executor's inputs: what a user runs today, timed beside the methods.

``harness latency`` measures every speed-up twice: against the executor's own dense path and against
this reference, the backbone's HF language model called the way ``generate`` calls it (its
configured attention implementation, ``sdpa`` unless flash-attn is installed on a GPU; its own
``DynamicCache`` for decode) on the same embeddings, positions, batch, device, dtype and threads.
If the executor's dense path were slower than this, every "speed-up" it reports would partly be
the executor's overhead; ``executor_overhead`` in the latency records says how far from that it is.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from harness.models.backbones.base import Backbone
from harness.models.batch import Batch


def attention_implementation(bb: Backbone, device: torch.device, dtype: torch.dtype) -> str:
    """What a user's HF model would run: flash-attn 2 on a GPU in half precision when installed,
    else the model's configured implementation (sdpa here)."""
    if (
        device.type == "cuda"
        and dtype in (torch.float16, torch.bfloat16)
        and importlib.util.find_spec("flash_attn") is not None
    ):
        return "flash_attention_2"
    return getattr(bb.text_config, "_attn_implementation", None) or "sdpa"


@contextlib.contextmanager
def using_attention(bb: Backbone, impl: str) -> Iterator[None]:
    """Run the HF model with ``impl`` inside the block; the configured one is restored after."""
    before = getattr(bb.text_config, "_attn_implementation", None) or "sdpa"
    if impl == before:
        yield
        return
    bb.model.set_attn_implementation(impl)
    try:
        yield
    finally:
        bb.model.set_attn_implementation(before)


@dataclass
class _DecodeState:
    cache: object
    tokens: torch.Tensor
    t: int = 0


class HFReference:
    """Prefill and decode of the backbone's own HF decoder on a :class:`Batch`'s embeddings."""

    def __init__(self, bb: Backbone, batch: Batch) -> None:
        self.bb = bb
        self.batch = batch
        alive = batch.layout.alive
        dev = batch.embeds.device
        self.mask = None if bool(alive.all()) else torch.from_numpy(alive.astype(np.int64)).to(dev)
        self.positions = batch.positions[0] if bb.position_dims == 1 else batch.positions

    @torch.inference_mode()
    def prefill(self, cache=None) -> torch.Tensor:
        """Last-position logits [B, V] (the LM head on the last row only, as ``generate`` does)."""
        out = self.bb.decoder(
            inputs_embeds=self.batch.embeds, attention_mask=self.mask, position_ids=self.positions,
            use_cache=cache is not None, past_key_values=cache,
        )  # fmt: skip
        return self.bb.lm_head(out.last_hidden_state[:, -1:])[:, 0].float()

    def start_decode(self) -> _DecodeState:
        """A prefilled ``DynamicCache`` and the first token (forced: the same token every step)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.bb.text_config)
        logits = self.prefill(cache)
        return _DecodeState(cache, logits.argmax(-1)[:, None])

    @torch.inference_mode()
    def decode_step(self, state: _DecodeState) -> torch.Tensor:
        b = self.batch
        step = b.next_position + state.t
        pos = step[:, None] if self.bb.position_dims == 1 else step[None, :, None].expand(3, -1, -1)
        mask = None
        if self.mask is not None:
            mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], state.t + 1)], 1)
        out = self.bb.decoder(
            input_ids=state.tokens, attention_mask=mask, position_ids=pos, past_key_values=state.cache,
            use_cache=True,
        )  # fmt: skip
        state.t += 1
        return self.bb.lm_head(out.last_hidden_state)[:, 0].float()
