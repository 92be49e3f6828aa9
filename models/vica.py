"""ViCA (Vision-only Cross-Attention): visual tokens skip every self-attention and FFN sublayer.

Text reads them only in the T2V layers, through the layer's own input norm and k/v projections of
the projector output (``kv_source="fixed"``), at original positions; elsewhere text cannot see them;
only T2V layers cache visual K/V; decode continues at the full multimodal length.  ViCA-7B
checkpoints never query the system prefix (FFN kept): ``system_query_layers`` (default: none for 7B,
all for 3B/13B).  A checkpoint trained as ViCA here (``harness train tiny-llava --arch vica``) names its
T2V layers in ``seebench.json`` (``{"vica": {"t2v_layers": [...]}}``); they are the default for it.  Needs ViCA-trained weights; on stock weights it is a labelled ablation.
"""

from __future__ import annotations

from dataclasses import replace
from dataclasses import replace as dc_replace
from typing import Any, ClassVar

from pydantic import Field

from .method import Method, MethodError, PaperRow
from .plan import INVISIBLE, KV_ONLY, VisualPlan

T2V_LAYERS: dict[str, list[int]] = {
    "llava-1.5-3b": [0, 1, 14, 15, 18, 19, 21, 22, 23],
    "llava-1.5-7b": [0, 1, 7, 8, 9, 10, 11, 14],
    "llava-1.5-13b": [0, 6, 8, 9, 10, 13, 14, 16],
}
PUBLISHED = {
    ("llava", 32, 4096): "llava-1.5-7b",
    ("llava", 40, 5120): "llava-1.5-13b",
    ("llava", 32, 2560): "llava-1.5-3b",
}


class ViCA(Method):
    name: ClassVar[str] = "vica"
    stage: ClassVar = "structural"
    description: ClassVar[str] = (
        "visual tokens never updated; text reads them only in T2V layers (needs ViCA weights)"
    )
    deepstack: ClassVar[str | None] = (
        "ViCA's visual states are the layer-0 input in every layer it reads them (kv_source 'fixed'), so DeepStack features never reach them"
    )
    reference: ClassVar[dict[str, str]] = {
        "repository": "EIT-NLP/ViCA",
        "commit": "1ca09b9",
        "file": "",
        "rule": "ViCA decoder layers",
    }
    needs_weights: ClassVar[bool] = True
    t2v_layers: list[int] | None = Field(None, description="layers where text reads visual K/V")
    system_query_layers: list[int] | None = Field(
        None,
        description="layers where system-prefix tokens are queries (default: none for 7B, all otherwise)",
    )

    def layers(self, backbone: Any) -> list[int]:
        key = PUBLISHED.get((backbone.family, backbone.num_layers, backbone.hidden_size))
        t2v = self.t2v_layers
        if (
            t2v is None
        ):  # the checkpoint's own list (a ViCA-trained tiny model), a published one, or the default
            t2v = (getattr(backbone, "info", {}).get("vica") or {}).get("t2v_layers")
            t2v = t2v or T2V_LAYERS.get(key or "") or _default_t2v(backbone.num_layers)
        bad = [i for i in t2v if not 0 <= i < backbone.num_layers]
        if bad:
            raise MethodError(
                f"method 'vica': t2v_layers {bad} out of range for a {backbone.num_layers}-layer decoder"
            )
        return sorted(set(t2v))

    def validate_for(self, backbone: Any) -> None:
        self.layers(backbone)
        sq = self.system_query_layers or []
        bad = [i for i in sq if not 0 <= i < backbone.num_layers]
        if bad:
            raise MethodError(f"method 'vica': system_query_layers {bad} out of range")

    def apply(self, plan: VisualPlan, backbone: Any) -> VisualPlan:
        t2v = set(self.layers(backbone))
        key = PUBLISHED.get((backbone.family, backbone.num_layers, backbone.hidden_size))
        sq = self.system_query_layers
        sq = set(range(backbone.num_layers) if key != "llava-1.5-7b" else []) if sq is None else set(sq)
        layers = []
        for i, lp in enumerate(plan.layers):
            base = replace(KV_ONLY, kv_source="fixed") if i in t2v else INVISIBLE
            layers.append(
                replace(base, system_query=i in sq, drop_before=lp.drop_before, drop_after=lp.drop_after)
            )
        return dc_replace(plan, layers=tuple(layers))

    @classmethod
    def paper_rows(cls, backbone: Any) -> list[PaperRow]:
        """ViCA Table 1: the checkpoints' T2V layers; ViCA + PDrop only as a FLOPs-equivalent
        token count (its schedule is not published)."""
        key = PUBLISHED.get((backbone.family, backbone.num_layers, backbone.hidden_size))
        if key not in T2V_LAYERS:
            return []
        rows = [PaperRow(f"{len(T2V_LAYERS[key])} T2V layers")]
        if key == "llava-1.5-7b":
            rows[0] = replace(rows[0], published={"tflops_visual_vica": 0.31, "equiv_tokens": 24},
                              source="ViCA Table 1")  # fmt: skip
            rows.append(
                PaperRow(
                    "12 tokens (FLOPs-equivalent)",
                    label="vica+pdrop",
                    visual_tokens_label=12,
                    published={"tflops_visual_vica": 0.16},
                    source="ViCA Table 1",
                    note="schedule unknown; visual side = V_C(12) from the Token label",
                )  # fmt: skip
            )
        return rows


def _default_t2v(n: int) -> list[int]:
    """For other depths, the 7B list's shape: the first two layers and a middle band, 1/4 of the layers."""
    k = max(2, n // 4)
    mid = list(range(n // 4, n // 4 + k - 2))
    return sorted(set([0, 1, *mid]))[:k]
