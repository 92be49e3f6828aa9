"""SAISA: per-layer projectors re-project the raw vision features for every decoder layer.

Layer l overwrites the visual states with P_l(f) = Linear(d_vis -> h) -> GELU -> Linear(h -> h)
before its input norm; visual tokens are keys/values only (no query, no FFN); the global LLaVA
projector's output is dead (layer 0 overwrites it), so this backbone skips it.  Visual K/V are cached
in every layer.  (docs/seed-methods.md §5.2)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from torch import nn

from .backbones.llava import LlavaBackbone
from .geometry import GeometryBackbone
from .method import Method, MethodError, PaperRow
from .plan import KV_ONLY, VisualPlan


class SaisaBackbone(LlavaBackbone):
    """A LLaVA backbone plus one projector per decoder layer."""

    family = "llava"

    def __init__(self, model, projectors: nn.ModuleList, **kw: Any) -> None:
        super().__init__(model, **kw)
        if len(projectors) != self.num_layers:
            raise ValueError(f"SAISA needs {self.num_layers} per-layer projectors, got {len(projectors)}")
        self.projectors = projectors.eval().requires_grad_(False)

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """The global projector's output would be overwritten in layer 0: it is not computed."""
        return feats.new_zeros(*feats.shape[:-1], self.hidden_size)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> SaisaBackbone:
        super().to(device, dtype)
        self.projectors.to(device=device, dtype=dtype)
        return self

    def layer_projection(self, layer: int, feats: torch.Tensor) -> torch.Tensor:
        proj = cast(nn.Sequential, self.projectors[layer])  # make_projectors' Linear-GELU-Linear
        # the projector's own device and dtype (the model's, after load or .to)
        w = cast(nn.Linear, proj[0]).weight
        return proj(feats.to(device=w.device, dtype=w.dtype))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "architecture": "saisa"}


def make_projectors(d_vis: int, hidden: int, layers: int) -> nn.ModuleList:
    return nn.ModuleList(
        nn.Sequential(nn.Linear(d_vis, hidden), nn.GELU(), nn.Linear(hidden, hidden)) for _ in range(layers)
    )


def with_random_projectors(bb: LlavaBackbone) -> SaisaBackbone:
    """A random-init LLaVA backbone as a SAISA one: random per-layer projectors over the vision
    tower's width (the torch seed decides them), recorded as ``random-init`` with ``:saisa`` in its
    source.  For FLOPs and latency at a geometry, where no SAISA checkpoint exists."""
    proj = make_projectors(bb.config.vision_config.hidden_size, bb.hidden_size, bb.num_layers)
    w = next(bb.model.parameters())
    proj.to(device=w.device, dtype=w.dtype)
    out = SaisaBackbone(
        bb.model, proj, processor=bb.processor, source=bb.source + ":saisa", weights="random-init"
    )
    out.info = dict(bb.info)
    if hasattr(bb, "synthetic_geometry"):
        out.synthetic_geometry = bb.synthetic_geometry  # type: ignore[attr-defined]
    return out


def save_projectors(path: Path, projectors: nn.ModuleList) -> None:
    """Write per-layer projectors in the layout ``load_projectors`` reads."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in projectors.state_dict().items()}, str(path))


def load_projectors(path: Path, d_vis: int, hidden: int, layers: int) -> nn.ModuleList:
    from safetensors.torch import load_file

    state = load_file(str(path))
    projectors = make_projectors(d_vis, hidden, layers)
    projectors.load_state_dict(state, strict=True)
    return projectors


class SAISA(Method):
    name: ClassVar[str] = "saisa"
    stage: ClassVar = "structural"
    description: ClassVar[str] = (
        "per-layer projectors of raw vision features; visual tokens K/V-only, no FFN (needs SAISA weights)"
    )
    deepstack: ClassVar[str | None] = (
        "SAISA's visual K/V come from its projectors of the raw features (kv_source 'projector'), so DeepStack features never reach them"
    )
    reference: ClassVar[dict[str, str]] = {
        "repository": "icip-cas/SAISA",
        "commit": "53a3670",
        "file": "llava_llama.py, llava_arch.py",
        "rule": "SAISA attention block",
    }
    needs_weights: ClassVar[bool] = True

    def validate_for(self, backbone: Any) -> None:
        if isinstance(backbone, GeometryBackbone) and backbone.layer_projector_shapes:
            return
        if not isinstance(backbone, SaisaBackbone):
            raise MethodError(
                "method 'saisa' needs a SAISA checkpoint with per-layer projectors "
                "(convert one with: harness convert llava-original SRC --vision-tower CLIP_DIR --out DIR)"
            )

    def prepare_backbone(self, backbone: Any) -> Any:
        """A random-init LLaVA decoder gets random per-layer projectors (no SAISA checkpoint exists
        at the published geometries); a weightless stand-in of a published checkpoint declares the
        projectors' shapes (D_v -> h, h -> h); anything else is returned as it is (and validated)."""
        if isinstance(backbone, GeometryBackbone) and backbone.family in ("llava", "llava_next"):
            h = backbone.hidden_size
            return backbone.with_layer_projectors(((backbone.geometry.vision.width, h), (h, h)))
        if (
            isinstance(backbone, SaisaBackbone)
            or backbone.family != "llava"
            or backbone.weights != "random-init"
        ):
            return backbone
        return with_random_projectors(cast(LlavaBackbone, backbone))  # a random-init LLaVA

    def apply(self, plan: VisualPlan, backbone: Any) -> VisualPlan:
        layers = tuple(
            replace(KV_ONLY, kv_source="projector", drop_before=lp.drop_before, drop_after=lp.drop_after)
            for lp in plan.layers
        )
        return replace(plan, layers=layers)

    @classmethod
    def paper_rows(cls, backbone: Any) -> list[PaperRow]:
        if backbone.family not in ("llava", "llava_next"):
            return []
        return [PaperRow(f"per-layer projectors {backbone.geometry.vision.width}->h->h")]
