"""ShortV: visual tokens are keys/values only (no query, no FFN, state frozen) in N layers.

Layers are chosen by Layer Contribution (``harness calibrate shortv``); the published lists are the
defaults for the published backbones (docs/seed-methods.md §4.3; replacement order, take a prefix
for smaller N).  Visual K/V come from the carried (frozen) state, positions are original, and every
layer keeps visual K/V in its cache.
"""

from __future__ import annotations

from dataclasses import replace
from dataclasses import replace as dc_replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from harness.models import calibration
from harness.models.method import Method, MethodError, PaperRow
from harness.models.plan import KV_ONLY, VisualPlan

from .common import check_layers, published_name

PUBLISHED_LAYERS: dict[str, list[int]] = {
    "llava-1.5-7b": [31, 29, 30, 28, 0, 26, 27, 25, 24, 22, 23, 21, 2, 3, 20, 18, 17, 12, 19],
    "llava-1.5-13b": [
        39,
        32,
        28,
        36,
        27,
        37,
        29,
        30,
        1,
        38,
        25,
        31,
        2,
        26,
        23,
        34,
        0,
        33,
        35,
        22,
        24,
        21,
        20,
        17,
    ],
    "llava-next-7b": [31, 29, 30, 28, 26, 27, 22, 24, 21, 23, 25, 20, 19, 17, 18, 15, 12, 0, 2],
    "llava-next-13b": [
        39,
        32,
        29,
        36,
        27,
        30,
        37,
        23,
        25,
        31,
        26,
        2,
        28,
        22,
        33,
        35,
        34,
        24,
        38,
        21,
        20,
        18,
        1,
        17,
    ],
}


#: ShortV Table 11's N sweeps (the published N first)
N_SWEEP: dict[str, tuple[int, ...]] = {
    "llava-1.5-7b": (19, 4, 8, 12, 16, 20, 24, 28),
    "llava-1.5-13b": (24, 8, 16, 28, 32, 36),
    "llava-next-7b": (19, 8, 16, 24),
    "llava-next-13b": (24, 8, 16, 32),
}
#: decoder TFLOPs at t = 64 as printed: ShortV Table 1 (N=19, with the ratio) and Table 11
PUBLISHED_FLOPS: dict[tuple[str, int], dict[str, Any]] = {
    ("llava-1.5-7b", 19): {"published": {"tflops": 4.7, "ratio": 0.55}, "source": "ShortV Table 1"},
    **{
        ("llava-1.5-7b", n): {"published": {"tflops": v}, "source": "ShortV Table 11"}
        for n, v in {4: 7.7, 8: 6.9, 12: 6.1, 16: 5.3, 20: 4.5, 24: 3.7, 28: 2.9}.items()
    },
}


class ShortV(Method):
    name: ClassVar[str] = "shortv"
    stage: ClassVar = "structural"
    description: ClassVar[str] = (
        "visual tokens K/V-only (no query, no FFN) in the N lowest-contribution layers"
    )
    reference: ClassVar[dict[str, str]] = {
        "repository": "icip-cas/ShortV",
        "commit": "737c28c",
        "file": "",
        "rule": "ShortvDecoderLayer",
    }
    layers: list[int] | None = Field(
        None, description="frozen layers in replacement order (overrides the default)"
    )
    n: int | None = Field(None, ge=0, description="how many layers to freeze (prefix of the ordered list)")

    def ordered_layers(self, backbone: Any) -> list[int]:
        p = self
        if p.layers is not None:
            order = list(p.layers)
        else:
            order = PUBLISHED_LAYERS.get(published_name(backbone) or "") or calibrated_layers(backbone)
            if order is None:
                raise MethodError(
                    "method 'shortv': no published layer list for this backbone; pass layers=[...] or run "
                    "harness calibrate shortv MODEL"
                )
        if p.n is not None:
            n = p.n
        elif p.layers is None and len(order) == backbone.num_layers:
            n = round(19 / 32 * backbone.num_layers)  # a calibrated full order: ShortV's share (19 of 32)
        else:
            n = len(order)
        if n > backbone.num_layers:
            raise MethodError(f"method 'shortv': n={n} exceeds the backbone's {backbone.num_layers} layers")
        if n > len(order):
            raise MethodError(f"method 'shortv': n={n} but the layer list has only {len(order)} entries")
        chosen = order[:n]
        check_layers("shortv", "layers", chosen, backbone.num_layers)
        return chosen

    def validate_for(self, backbone: Any) -> None:
        self.ordered_layers(backbone)

    calibration_key: ClassVar[str | None] = "layers"

    @classmethod
    def _calibrate(cls, backbone: Any, batches: list[Any], **options: float) -> dict[str, Any]:
        lc = layer_contribution(backbone, batches)
        return {"layers": sorted(range(backbone.num_layers), key=lambda i: (lc[i], i)), "lc": lc}

    @classmethod
    def calibration_summary(cls, result: dict[str, Any]) -> str:
        from tabulate import tabulate

        table = tabulate([[i, result["lc"][i]] for i in result["layers"]],
                         headers=["layer (ascending LC)", "LC"], floatfmt=".3e")  # fmt: skip
        return f"{table}\nordered layer list: {result['layers']} ({len(result['samples'])} samples)"

    def apply(self, plan: VisualPlan, backbone: Any) -> VisualPlan:
        layers = list(plan.layers)
        for i in self.ordered_layers(backbone):
            layers[i] = replace(KV_ONLY, drop_before=layers[i].drop_before, drop_after=layers[i].drop_after)
        return dc_replace(plan, layers=tuple(layers))

    @classmethod
    def paper_rows(cls, backbone: Any) -> list[PaperRow]:
        """ShortV Tables 1 and 11: N frozen layers, the published N first.  Beyond the published
        list (FLOPs depend on N alone) the remaining layers are appended from the top down; their
        true LC order is unknown, so such lists serve FLOPs only."""
        name = published_name(backbone) or ""
        order = PUBLISHED_LAYERS.get(name)
        if order is None:
            return []
        order = order + [i for i in reversed(range(backbone.num_layers)) if i not in order]
        return [
            PaperRow(f"N={n}", {"shortv": {"layers": order[:n]}}, **PUBLISHED_FLOPS.get((name, n), {}))
            for n in N_SWEEP.get(name, ())
        ]


def calibrated_layers(backbone: Any) -> list[int] | None:
    """The LC-ordered list stored next to a checkpoint by ``harness calibrate shortv --save``."""
    return calibration.stored(backbone, "shortv", "layers")


def layer_contribution(bb: Any, batches: list[Any]) -> list[float]:
    """LC per layer, averaged over the samples: KL(P_frozen,i || P_dense) at the last prompt
    position, with the visual tokens frozen (K/V-only) in layer i alone."""
    ex = calibration.executor(bb)
    lc = torch.zeros(bb.num_layers)
    n = 0
    for batch in batches:
        dense = F.log_softmax(calibration.last_logits(ex, batch), -1)
        for i in range(bb.num_layers):
            plan = VisualPlan.dense(bb.num_layers).with_layer(i, KV_ONLY)
            frozen = F.log_softmax(calibration.last_logits(ex, batch, plan), -1)
            lc[i] += (frozen.exp() * (frozen - dense)).sum(-1).sum()
        n += batch.batch_size
    return (lc / max(n, 1)).tolist()
