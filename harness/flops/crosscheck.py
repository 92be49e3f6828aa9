"""An independent check of the analytic model: the dense HF models' prefill counted by
``torch.utils.flop_counter.FlopCounterMode`` at full size under ``FakeTensorMode``."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any, Literal

from harness.models.geometry import Geometry, get_geometry, hf_config, hf_visual_tokens

from .model import analyze, dense

# --------------------------------------------------------------------------------------------------
# Independent cross-check: FlopCounterMode on the HF model under FakeTensorMode
# --------------------------------------------------------------------------------------------------


def _sdpa_flops(
    query_shape: Sequence[int],
    key_shape: Sequence[int],
    value_shape: Sequence[int],
    *args: Any,
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """FLOPs of one SDPA call: QKᵀ and A·V over the full rectangle, query heads (GQA-safe)."""
    b, heads, sq, d = query_shape
    sk, dv = key_shape[-2], value_shape[-1]
    return 2 * b * heads * sq * sk * d + 2 * b * heads * sq * sk * dv


def fake_count_dense(
    g: Geometry | str, t: int | None = None, lm_head: Literal["last", "all"] = "last"
) -> dict[str, Any]:
    """Count the dense HF model's prefill FLOPs with ``torch.utils.flop_counter.FlopCounterMode``.

    The model is built at full size inside ``FakeTensorMode`` (parameters are fake: nothing is
    allocated) and run *outside* the mode with small real index tensors (input ids, image sizes,
    grid), so HF's data-dependent bookkeeping (placeholder counts, M-RoPE indices, Qwen2-VL
    ``cu_seqlens``) runs on real values while every op touching a parameter is faked.
    ``aten._scaled_dot_product_flash_attention_for_cpu`` (counted as 0 by default) gets a formula via
    ``custom_mapping``. Returns FLOPs per module group, the visual tokens used and the time taken.
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    g = get_geometry(g) if isinstance(g, str) else g
    t = g.t if t is None else t
    v = hf_visual_tokens(g)
    start = time.perf_counter()
    cfg = hf_config(g)
    from transformers.initialization import no_init_weights

    # the weights' values never matter here (SigLIP's truncated-normal init cannot run on fake tensors)
    with FakeTensorMode(allow_non_fake_inputs=True), no_init_weights():
        model = _hf_model_class(g)(cfg)
    model.eval()
    built = time.perf_counter()

    n = t + v
    ids = torch.zeros(1, n, dtype=torch.long)
    ids[0, g.s : g.s + v] = g.image_token_id
    kwargs: dict[str, Any] = {"input_ids": ids}
    vg = g.vision
    if g.family == "llava":
        kwargs["pixel_values"] = torch.zeros(1, vg.channels, vg.image_size, vg.image_size)
    elif g.family in ("llava_next", "llava_onevision"):
        h_px, w_px = g.extra.get("hf_image_size", (672, 672))
        kwargs["pixel_values"] = torch.zeros(1, vg.crops, vg.channels, vg.image_size, vg.image_size)
        kwargs["image_sizes"] = torch.tensor([[h_px, w_px]])
    elif g.family == "internvl":  # the tiles, flat (4 + thumbnail for the 896 x 896 image)
        kwargs["pixel_values"] = torch.zeros(vg.crops, vg.channels, vg.image_size, vg.image_size)
    else:  # qwen2_vl, qwen2_5_vl, qwen3_vl
        side = vg.image_size // vg.patch
        ids[0, g.s - 1] = g.extra["vision_start_token_id"]
        ids[0, g.s + v] = g.extra["vision_end_token_id"]
        kwargs["pixel_values"] = torch.zeros(side * side, vg.channels * vg.temporal_patch * vg.patch**2)
        kwargs["image_grid_thw"] = torch.tensor([[1, side, side]])
        kwargs["mm_token_type_ids"] = (ids == g.image_token_id).long()
    kwargs["logits_to_keep"] = 1 if lm_head == "last" else 0

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    counter = FlopCounterMode(display=False, depth=None, custom_mapping=mapping)
    root = ".model"
    with counter, torch.no_grad():
        if g.family == "qwen3_vl":
            _run_in_parts(model, kwargs)
            root = ""
        else:
            model(**kwargs)
    done = time.perf_counter()

    per_module = {k: sum(c.values()) for k, c in counter.get_flop_counts().items()}

    def module(suffix: str) -> int:
        hits = [val for key, val in per_module.items() if key.endswith(suffix)]
        return hits[0] if hits else 0

    if g.family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        # the patch merger (and Qwen3-VL's DeepStack mergers) count as the projector
        visual = f"{root}.visual" if root else "Qwen3VLVisionModel"
        deepstack = [
            v for k, v in per_module.items() if re.fullmatch(rf".*{visual}\.deepstack_merger_list\.\d+", k)
        ]
        projector = module(f"{visual}.merger") + sum(deepstack)
        vision = module(visual) - projector
    else:
        projector = module(".model.multi_modal_projector")
        vision = module(".model.vision_tower")
    decoder = module(f"{root}.language_model") if root else module("Qwen3VLTextModel")
    return {
        "unit": "FLOPs",
        "geometry": g.name,
        "t": t,
        "visual_tokens": v,
        "vision_tower": vision,
        "projector": projector,
        "decoder": decoder,
        "lm_head": module(".lm_head") if root else module("Linear"),
        "total": per_module.get("Global", 0),
        "build_s": built - start,
        "count_s": done - built,
    }


def _run_in_parts(model: Any, kwargs: dict[str, Any]) -> None:
    """Qwen3-VL's forward, part by part, for the counter: its DeepStack step indexes the hidden states
    with a mask made from the (fake) embeddings, which FakeTensorMode cannot size.  So the tower (with
    its DeepStack mergers), the text model on the prompt's embeddings at the model's own M-RoPE ids,
    and the head on the kept rows run one after the other; what is left out is the injection itself,
    additions that FlopCounterMode counts as zero in any case."""
    inner = model.model
    ids, grid = kwargs["input_ids"], kwargs["image_grid_thw"]
    inner.visual(kwargs["pixel_values"], grid_thw=grid)
    positions, _ = inner.get_rope_index(
        ids, mm_token_type_ids=kwargs["mm_token_type_ids"], image_grid_thw=grid
    )
    embeds = inner.get_input_embeddings()(ids)
    hidden = inner.language_model(inputs_embeds=embeds, position_ids=positions).last_hidden_state
    keep = kwargs["logits_to_keep"]
    model.lm_head(hidden[:, -keep:] if keep else hidden)


def _hf_model_class(g: Geometry) -> Any:
    if g.family == "llava":
        from transformers import LlavaForConditionalGeneration as cls
    elif g.family == "llava_next":
        from transformers import LlavaNextForConditionalGeneration as cls
    elif g.family == "llava_onevision":
        from transformers import LlavaOnevisionForConditionalGeneration as cls
    elif g.family == "internvl":
        from transformers import InternVLForConditionalGeneration as cls
    elif g.family == "qwen2_vl":
        from transformers import Qwen2VLForConditionalGeneration as cls
    elif g.family == "qwen3_vl":
        from transformers import Qwen3VLForConditionalGeneration as cls
    else:
        from transformers import Qwen2_5_VLForConditionalGeneration as cls
    return cls


def cross_check_dense(
    g: Geometry | str, t: int | None = None, lm_head: Literal["last", "all"] = "last"
) -> dict[str, Any]:
    """Analytic (``exact``) vs FlopCounterMode per line for the dense model; relative differences.

    The analytic side uses the visual count HF produces for the reference image (`hf_visual_tokens`).
    """
    g = get_geometry(g) if isinstance(g, str) else g
    fake = fake_count_dense(g, t, lm_head)
    ga = g.with_tokens(v=fake["visual_tokens"], t=fake["t"])
    rep = analyze(ga, dense(ga), "exact", lm_head=lm_head)
    analytic = {
        "vision_tower": rep.vision_tower.flops,
        "projector": rep.projector.flops,
        "decoder": rep.decoder.flops,
        "lm_head": rep.lm_head.flops,
        "total": rep.total.flops,
    }
    rel = {k: (fake[k] - a) / a for k, a in analytic.items()}
    return {"geometry": g.name, "unit": "FLOPs", "analytic": analytic, "fake": fake, "rel_diff": rel}
