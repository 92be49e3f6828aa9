"""YOPO: neighbour-window visual attention, pruned visual heads, half-width visual FFN, visual cut.

Two registered semantics (docs/seed-methods.md §3.3):

* ``yopo`` - the released code: heads outside a layer's mask give visual queries no output and give
  text queries the softmax over all keys with the visual weights zeroed *without renormalisation*
  (reproduced exactly by zeroing those heads' visual values); from ``k_cut`` on no head serves visual
  tokens, but visual keys stay in the denominators and the half-width visual FFN still runs.
* ``yopo_textonly`` - the stated intent: pruned heads see no visual keys (renormalised) and from
  ``k_cut`` on visual tokens are absent (no K/V, no FFN).

Window: visual queries attend to the system prefix and the k x k neighbours on the image grid
(non-causal inside the window).  Visual FFN: the first m / r intermediate channels.
"""

from __future__ import annotations

from dataclasses import replace
from dataclasses import replace as dc_replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from harness.models import calibration
from harness.models.batch import TokenType
from harness.models.method import Method, MethodError, PaperRow
from harness.models.plan import INVISIBLE, HeadMode, LayerPlan, VisualPlan

#: heads kept per layer by YOPO's shipped head masks (``LLaVA/headmask/headmask_*.npy`` in
#: ZhangAIPI/YOPO_MLLM_Pruning @ f0783f4: row sums of the boolean [L, H] arrays)
SHIPPED_HEAD_COUNTS: dict[str, tuple[int, ...]] = {
    "headmask_7b_8": (
        32, 32, 0, 0, 1, 0, 1, 0, 4, 3, 5, 5, 10, 8, 18, 11, 9, 10, 9, 11, 15, 11, 11, 6, 11, 7, 10, 1,
        4, 6, 2, 7,
    ),
    "headmask_7b_16": (
        32, 32, 9, 5, 10, 4, 5, 15, 18, 13, 15, 20, 23, 24, 27, 23, 27, 17, 14, 18, 18, 16, 15, 8, 14,
        10, 15, 5, 7, 11, 5, 24,
    ),
    "headmask_7b_24": (
        32, 32, 32, 19, 24, 17, 21, 27, 26, 23, 27, 24, 28, 31, 31, 27, 29, 27, 23, 28, 25, 21, 20, 19,
        18, 21, 20, 13, 18, 22, 16, 32,
    ),
    "headmask_13b_5": (
        40, 40, 0, 0, 0, 0, 0, 0, 2, 0, 3, 2, 1, 3, 3, 7, 6, 7, 4, 6, 5, 2, 4, 5, 5, 6, 5, 3, 4, 1, 4, 2,
        4, 0, 3, 1, 5, 4, 4, 9,
    ),
    "headmask_13b_10": (
        40, 40, 4, 3, 0, 5, 2, 7, 13, 8, 10, 8, 12, 20, 9, 14, 14, 16, 17, 12, 14, 16, 9, 9, 9, 9, 8, 5,
        5, 2, 4, 2, 6, 2, 4, 6, 7, 6, 9, 21,
    ),
    "headmask_13b_20": (
        40, 40, 29, 24, 7, 21, 16, 11, 21, 21, 19, 20, 23, 28, 24, 25, 32, 26, 26, 25, 21, 26, 20, 12,
        17, 12, 14, 11, 11, 9, 15, 10, 15, 10, 16, 16, 18, 18, 17, 32,
    ),
    "headmask_13b_30": (
        40, 40, 40, 38, 31, 32, 29, 27, 33, 29, 33, 28, 33, 32, 32, 34, 39, 33, 32, 35, 30, 31, 31, 23,
        23, 23, 22, 23, 16, 24, 28, 29, 28, 25, 30, 27, 24, 29, 26, 35,
    ),
}  # fmt: skip

#: the settings whose FLOPs can be computed: (setting, mask, K_cut, note); the released checkpoints'
#: settings are unknown (docs/seed-methods.md §3.5)
PAPER_SETTINGS: dict[str, tuple[str, str, int, str]] = {
    "llava-1.5-7b": ("25% (headmask_7b_16, K_cut=16, w=5, s=35, r=2)", "headmask_7b_16", 16, "derived candidate"),
    "llava-1.5-13b": (
        "finetune flags (headmask_13b_30, K_cut=20, w=5, s=35, r=2)", "headmask_13b_30", 20,
        "candidate: training flags of finetune_yopo.sh (30% of V_Y(576), neither 25% nor 12%); "
        "checkpoint settings unknown",
    ),
}  # fmt: skip


class YOPO(Method):
    name: ClassVar[str] = "yopo"
    stage: ClassVar = "structural"
    description: ClassVar[str] = (
        "window visual attention, pruned visual heads, m/r visual FFN, cut (reference)"
    )
    reference: ClassVar[dict[str, str]] = {
        "repository": "ZhangAIPI/YOPO_MLLM_Pruning",
        "commit": "f0783f4",
        "file": "modeling_llama_prune.py",
        "rule": "YOPO pruned decoder",
    }
    window: int = Field(5, description="k of the k x k neighbour window (odd, >= 1)")
    k_cut: int | None = Field(
        None, description="first layer without visual computation (default 3/4 of the depth)"
    )
    ffn_ratio: int = Field(2, ge=1, description="visual FFN uses the first m / r channels")
    head_mask: list[list[int]] | None = Field(
        None, description="per layer, the heads that serve visual tokens (default: all; see calibrate yopo)"
    )
    head_mode: ClassVar[HeadMode] = "zero_values"

    def validate_for(self, backbone: Any) -> None:
        p = self
        if p.window < 1 or p.window % 2 == 0:
            raise MethodError(f"method '{self.name}': window must be odd and >= 1, got {p.window}")
        if p.k_cut is not None and not 0 <= p.k_cut <= backbone.num_layers:
            raise MethodError(f"method '{self.name}': k_cut={p.k_cut} outside [0, {backbone.num_layers}]")
        if p.head_mask is not None:
            if len(p.head_mask) != backbone.num_layers:
                raise MethodError(
                    f"method '{self.name}': head_mask has {len(p.head_mask)} layers, the backbone {backbone.num_layers}"
                )
            bad = sorted({h for hs in p.head_mask for h in hs if not 0 <= h < backbone.num_heads})
            if bad:
                raise MethodError(
                    f"method '{self.name}': head ids {bad} out of range [0, {backbone.num_heads})"
                )

    def cut_layer(self, backbone: Any) -> int:
        return self.k_cut if self.k_cut is not None else (3 * backbone.num_layers) // 4

    def heads_per_layer(self, backbone: Any) -> list[list[int]] | None:
        """The given mask, else one stored by ``harness calibrate yopo --save``, else all heads."""
        if self.head_mask is not None:
            return self.head_mask
        return calibration.stored(backbone, "yopo", "head_mask")

    calibration_key: ClassVar[str | None] = "head_mask"
    calibration_options: ClassVar[dict[str, float]] = {"tau": 0.1, "vote": 0.4}

    @classmethod
    def _calibrate(cls, backbone: Any, batches: list[Any], **options: float) -> dict[str, Any]:
        tau, vote = options["tau"], options["vote"]
        masks, share = head_masks(backbone, batches, tau, vote)
        return {"head_mask": masks, "active_share": share, "tau": tau, "vote": vote}

    @classmethod
    def calibration_summary(cls, result: dict[str, Any]) -> str:
        return f"head mask (kept heads per layer): {[len(h) for h in result['head_mask']]}"

    def apply(self, plan: VisualPlan, backbone: Any) -> VisualPlan:
        p = self
        mask = self.heads_per_layer(backbone)
        width = backbone.intermediate_size // p.ffn_ratio
        cut = self.cut_layer(backbone)
        layers = []
        for i, lp in enumerate(plan.layers):
            heads = None if mask is None else tuple(mask[i])
            if heads is not None and len(heads) == backbone.num_heads:
                heads = None
            if i < cut:
                new = LayerPlan(visual_attn="window", window=p.window, visual_ffn=width, visual_heads=heads,
                                head_mode=self.head_mode)  # fmt: skip
            else:
                new = self.after_cut(width)
            layers.append(replace(new, drop_before=lp.drop_before, drop_after=lp.drop_after))
        return dc_replace(plan, layers=tuple(layers))

    def after_cut(self, width: int) -> LayerPlan:
        # no head serves visual tokens: no visual queries, zeroed visual values, half FFN still runs
        return LayerPlan(visual_query=False, visual_ffn=width, visual_heads=(), head_mode="zero_values")

    @classmethod
    def paper_rows(cls, backbone: Any) -> list[PaperRow]:
        """YOPO Table 2's visual-side FLOPs follow the stated intent (``yopo_textonly``'s rule:
        pruned heads do no visual work, nothing visual after the cut), with a shipped mask's kept
        head counts (the first heads of each layer: the FLOPs depend on the counts alone)."""
        found = PAPER_SETTINGS.get(backbone.geometry.name) if cls.name == "yopo" else None
        if found is None:
            return []
        setting, mask, k_cut, note = found
        heads = [list(range(n)) for n in SHIPPED_HEAD_COUNTS[mask]]
        knobs = {"head_mask": heads, "k_cut": k_cut, "window": 5, "ffn_ratio": 2}
        published = (
            {"published": {"tflops_visual_yopo": 1.91}, "source": "YOPO Table 2"}
            if mask.endswith("7b_16")
            else {}
        )
        return [
            PaperRow(setting, {"yopo_textonly": knobs}, stack="yopo_textonly", visual_convention="yopo",
                     note=note, **published)
        ]  # fmt: skip


class YOPOTextOnly(YOPO):
    name: ClassVar[str] = "yopo_textonly"
    description: ClassVar[str] = (
        "YOPO as stated: pruned heads see no visual keys; no visual tokens after the cut"
    )
    reference: ClassVar[dict[str, str]] = {
        "repository": "ZhangAIPI/YOPO_MLLM_Pruning",
        "commit": "f0783f4",
        "file": "modeling_llama_prune.py",
        "rule": "YOPO pruned decoder",
    }
    head_mode: ClassVar[HeadMode] = "drop_keys"
    calibration_key: ClassVar[str | None] = None  # reads the head masks ``harness calibrate yopo`` stores

    def after_cut(self, width: int) -> LayerPlan:
        return INVISIBLE


def head_masks(
    bb: Any, batches: list[Any], tau: float, vote: float
) -> tuple[list[list[int]], list[list[float]]]:
    """Per sample, layer and head: the attention mass on visual keys over the mass on system + text
    keys, summed over the prefill's query rows (one extra SDPA call whose values are the visual-key
    indicator, no eager attention).  A head is active on a sample when the ratio exceeds ``tau`` and
    kept when active on more than ``vote`` of the samples; layers 0-1 keep every head."""
    active = torch.zeros(bb.num_layers, bb.num_heads)

    def observe(li, q, k, v, mask, q_meta, k_meta):
        kvis = (k_meta["ttype"] == int(TokenType.VISUAL)).to(q.dtype)  # [B, nk]
        ind = kvis[:, None, :, None].expand(-1, q.shape[1], -1, 1)  # indicator values per query head
        kk = k if k.shape[1] == q.shape[1] else k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        m = mask | ~mask.any(-1, keepdim=True)
        vis_mass = F.scaled_dot_product_attention(
            q, kk, ind, attn_mask=m, scale=bb.layers[li].self_attn.scaling
        )
        real = (q_meta["ttype"] != int(TokenType.PAD))[:, None, :, None].to(q.dtype)
        vm = (vis_mass * real).sum((2, 3))  # [B, H] visual mass summed over rows
        total = real.sum((2, 3))  # rows (each row's masses sum to 1)
        ratio = vm / (total - vm).clamp(min=1e-9)
        active[li] += (ratio > tau).float().sum(0)

    n = calibration.observe_attention(bb, batches, observe)
    share = active / max(n, 1)
    masks = [
        list(range(bb.num_heads)) if li < 2 else [h for h in range(bb.num_heads) if share[li, h] > vote]
        for li in range(bb.num_layers)
    ]
    return masks, share.tolist()
