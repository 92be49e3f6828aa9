"""FLOPs you can audit: fvcore counts of what the executor really ran, cross-checked analytically.

Units: fvcore's ``FlopCountAnalysis`` counts one multiply-add as one "flop", i.e. **MACs**.  We
keep MACs and report FLOPs = 2 x MACs; every stored number names its unit (docs/flops.md §1).

Counted: matmul-class ops (``linear``, ``matmul``, ``bmm``, ``einsum``, convolutions) by fvcore's
own handles, plus handles registered here for fused attention, which fvcore otherwise skips:
``aten::scaled_dot_product_attention`` and its CPU/CUDA kernels and the flash-attn ops (the full
n_q x n_k rectangle, 2 x B x H x n_q x n_k x d MACs, as SDPA computes it whatever the mask).
Excluded by the papers' convention: norms, RoPE, softmax, activations, residual adds and other
elementwise or indexing ops (their output sizes are tallied for information).  Any other op is
*unsupported*: its output size bounds the arithmetic it could carry, and a cell fails when that
bound exceeds 1% of the counted total.

The vision tower: LLaVA reads encoder layer -2, so the executor runs one layer fewer than the HF
model (``vision_layers_run``); the count and the analytic model both use the layers really run.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from harness.models.backbones.base import Backbone
from harness.models.batch import Batch, TokenType
from harness.models.executor import Executor, LayerStats
from harness.models.geometry import Geometry, VisionGeometry
from harness.models.plan import VisualPlan

from . import model as fa

UNSUPPORTED_LIMIT = 0.01

SDPA_OPS = (
    "aten::scaled_dot_product_attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
    "flash_attn::_flash_attn_forward",
)
VARLEN_OPS = ("flash_attn::_flash_attn_varlen_forward",)

#: ops the paper convention excludes (elementwise, norms, softmax, RoPE pieces, indexing, masks)
CONVENTION_EXCLUDED = frozenset(
    "aten::" + n
    for n in [
        "add",
        "add_",
        "sub",
        "sub_",
        "mul",
        "mul_",
        "div",
        "div_",
        "neg",
        "pow",
        "rsqrt",
        "sqrt",
        "exp",
        "log",
        "mean",
        "sum",
        "cos",
        "sin",
        "silu",
        "gelu",
        "sigmoid",
        "tanh",
        "softmax",
        "log_softmax",
        "layer_norm",
        "native_layer_norm",
        "group_norm",
        "rms_norm",
        "where",
        "masked_fill",
        "masked_fill_",
        "clamp",
        "clamp_min",
        "abs",
        "lt",
        "le",
        "gt",
        "ge",
        "eq",
        "ne",
        "__and__",
        "__or__",
        "__invert__",
        "logical_not",
        "any",
        "all",
        "cumsum",
        "argmax",
        "max",
        "min",
        "amax",
        "sort",
        "topk",
        "gather",
        "scatter",
        "scatter_add",
        "index",
        "index_put_",
        "fill_",
        "zero_",
        "embedding",
        "copy_",
        "to",
        "contiguous",
        "cat",
        "stack",
        "repeat_interleave",
        "expand_as",
        "arange",
        "full",
        "zeros",
        "ones",
        "masked_scatter",
        "isin",
        "nonzero",
        "argsort",
        "clone",
        "repeat",
        "expand",
        "reshape",
        "view",
        "flatten",
        "unflatten",
        "transpose",
        "permute",
        # indexing and data movement of the compiled executor and the reducers
        "index_select",
        "index_add",
        "index_add_",
        "index_copy",
        "index_copy_",
        "scatter_",
        "scatter_add_",
        "scatter_reduce",
        "addcmul",
        "addcmul_",
        "rsub",
        "minimum",
        "maximum",
        "eye",
        "diagonal",
        "linalg_vector_norm",
        "quantile",
        "randperm",
        "ones_like",
        "zeros_like",
        "new_ones",
        "new_zeros",
        "new_full",
        "full_like",
        "lift_fresh",
        "numel",
        "numpy_T",
        "narrow",
        "split",
        "unsqueeze",
        "squeeze",
        "slice",
        "select",
        "bitwise_not",
    ]
)


def _shape(v) -> list[int]:
    """The static shape of a traced value ([] for scalars / non-tensors)."""
    from fvcore.nn.jit_handles import get_shape

    shape = get_shape(v)
    return [int(x) for x in shape] if shape else []


def sdpa_macs(inputs, outputs) -> int:
    """q [B, H, Nq, d], k [B, Hkv, Nk, d]: QKᵀ and A·V over the full rectangle, per query head."""
    q, k = _shape(inputs[0]), _shape(inputs[1])
    b, h, nq, d = q[0], q[1], q[-2], q[-1]
    return 2 * b * h * nq * k[-2] * d


def flash_macs(inputs, outputs) -> int:
    """flash-attn layout q [B, Nq, H, d], k [B, Nk, Hkv, d]."""
    q, k = _shape(inputs[0]), _shape(inputs[1])
    return 2 * q[0] * q[1] * q[2] * q[3] * k[1]


def varlen_macs(inputs, outputs) -> int:
    """Packed varlen q [T, H, d]: without the sequence boundaries (values, not shapes) the bound
    T_q x T_k is reported, an upper bound for the block-diagonal work."""
    q, k = _shape(inputs[0]), _shape(inputs[1])
    return 2 * q[0] * q[1] * q[2] * k[0]


@dataclass
class Counted:
    """fvcore's count of one prefill, in MACs, split by part."""

    macs: float
    vision_tower: float
    projector: float
    decoder: float
    lm_head: float
    by_operator: dict[str, float]
    unsupported: dict[str, int]
    unsupported_numel: float
    excluded_numel: float

    @property
    def unsupported_share(self) -> float:
        return self.unsupported_numel / max(self.macs, 1.0)

    @property
    def ok(self) -> bool:
        return self.unsupported_share <= UNSUPPORTED_LIMIT


class _Prefill(torch.nn.Module):
    """Traced wrapper: model inputs -> encode -> executor prefill -> last-token logits."""

    def __init__(self, bb: Backbone, plan: VisualPlan, mode: str, keys: list[str], extra: dict[str, Any]):
        super().__init__()
        self.bb, self.plan, self.mode, self.keys, self.extra = bb, plan, mode, keys, extra
        self.model = bb.model  # registered so fvcore attributes ops to its submodules
        if hasattr(bb, "projectors"):  # SAISA's per-layer projectors
            self.projectors = bb.projectors

    def forward(self, *tensors):
        inputs = dict(zip(self.keys, tensors, strict=True)) | self.extra
        batch = self.bb.encode(inputs, tower=self.plan.tower)
        return Executor(self.bb, self.mode).prefill(batch, self.plan, cache_extra=None).logits


def _zero(inputs, outputs) -> int:
    return 0


def _tally(store: dict[str, float], name: str):
    def handle(inputs, outputs) -> int:
        n = 1
        for s in _shape(outputs[0]) if outputs else []:
            n *= s
        store[name] = store.get(name, 0.0) + n
        return 0

    return handle


def count_prefill(bb: Backbone, inputs: dict[str, Any], plan: VisualPlan, mode: str = "drop") -> Counted:
    """fvcore count of the executor's prefill (vision tower, projector, decoder, LM head)."""
    from fvcore.nn import FlopCountAnalysis

    keys = [k for k, v in inputs.items() if isinstance(v, torch.Tensor)]
    extra = {k: v for k, v in inputs.items() if not isinstance(v, torch.Tensor)}
    module = _Prefill(bb, plan, mode, keys, extra)
    args = tuple(inputs[k] for k in keys)

    def analysis(tallies: dict[str, dict[str, float]] | None):
        an = FlopCountAnalysis(module, args)
        for op in SDPA_OPS:
            an.set_op_handle(op, sdpa_macs if not op.startswith("flash_attn") else flash_macs)
        for op in VARLEN_OPS:
            an.set_op_handle(op, varlen_macs)
        # norms are excluded by the papers' convention (docs/flops.md §1)
        for norm in ("aten::layer_norm", "aten::group_norm", "aten::batch_norm", "aten::instance_norm"):
            an.set_op_handle(norm, _zero)
        if tallies is not None:
            for name in tallies["names"]:
                bucket = tallies["excluded"] if name in CONVENTION_EXCLUDED else tallies["unknown"]
                an.set_op_handle(name, _tally(bucket, name))
        an.unsupported_ops_warnings(False)
        an.uncalled_modules_warnings(False)
        an.tracer_warnings("none")
        return an

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = analysis(None)
        total = float(first.total())
        names = dict(first.unsupported_ops())
        tallies: dict[str, Any] = {"names": names, "excluded": {}, "unknown": {}}
        second = analysis(tallies)
        second.total()
        by_module = first.by_module()
    vision = float(by_module.get("model.model.vision_tower", 0) or by_module.get("model.model.visual", 0))
    if bb.family == "qwen2_vl":
        merger = float(by_module.get("model.model.visual.merger", 0))
        vision, projector = vision - merger, merger
    else:
        projector = float(by_module.get("model.model.multi_modal_projector", 0))
    lm_head = float(by_module.get("model.lm_head", 0))
    unknown = {k: int(v) for k, v in names.items() if k not in CONVENTION_EXCLUDED}
    return Counted(
        macs=total,
        vision_tower=vision,
        projector=projector,
        decoder=total - vision - projector - lm_head,
        lm_head=lm_head,
        by_operator={k: float(v) for k, v in first.by_operator().items()},
        unsupported=unknown,
        unsupported_numel=float(sum(tallies["unknown"].values())),
        excluded_numel=float(sum(tallies["excluded"].values())),
    )


# ------------------------------------------------------------------ analytic side
def geometry_of(bb: Backbone, batch: Batch) -> Geometry:
    """The analytic model's geometry for a loaded backbone and a batch-1 sample."""
    cfg = bb.config
    tt = batch.token_type[0]
    v = int((tt == TokenType.VISUAL).sum())
    s = int((tt == TokenType.SYSTEM).sum())
    t = int(((tt == TokenType.SYSTEM) | (tt == TokenType.TEXT)).sum())
    vc = cfg.vision_config
    run = int(batch.extras.get("vision_layers_run", 0))
    if bb.family in ("llava", "llava_next"):
        n_img = max(1, run // max(1, _clip_layers_needed(bb))) if bb.family == "llava_next" else 1
        vision = VisionGeometry(
            name=vc.model_type, layers=vc.num_hidden_layers, layers_needed=_clip_layers_needed(bb),
            width=vc.hidden_size, mlp=vc.intermediate_size, heads=vc.num_attention_heads, patch=vc.patch_size,
            image_size=vc.image_size, cls_token=True, crops=n_img,
        )  # fmt: skip
        proj = bb.model.model.multi_modal_projector
        projector = (
            (proj.linear_1.in_features, proj.linear_1.out_features),
            (proj.linear_2.in_features, proj.linear_2.out_features),
        )
        rows = 0 if hasattr(bb, "projectors") else n_img * vision.patches  # SAISA: no global projector
    elif bb.family == "internvl":  # InternViT per tile (CLS kept inside), pixel shuffle, LN + MLP projector
        tiles = max(1, run // max(1, _clip_layers_needed(bb)))
        merge = round(1 / cfg.downsample_ratio)
        vision = VisionGeometry(
            name=vc.model_type, layers=vc.num_hidden_layers, layers_needed=_clip_layers_needed(bb),
            width=vc.hidden_size, mlp=vc.intermediate_size, heads=vc.num_attention_heads, patch=vc.patch_size[0],
            image_size=vc.image_size[0], crops=tiles, merge=merge, select_layer=cfg.vision_feature_layer,
        )  # fmt: skip
        proj = bb.model.model.multi_modal_projector
        projector = (
            (proj.linear_1.in_features, proj.linear_1.out_features),
            (proj.linear_2.in_features, proj.linear_2.out_features),
        )
        rows = tiles * vision.patches // merge**2
    else:
        raise NotImplementedError("the analytic vision/projector lines cover the LLaVA and InternVL families")
    tc = bb.text_config
    return Geometry(
        name=bb.source or bb.family, family=bb.family, layers=bb.num_layers, hidden=bb.hidden_size,
        intermediate=bb.intermediate_size, heads=bb.num_heads, kv_heads=bb.num_kv_heads, head_dim=bb.head_dim,
        vocab=tc.vocab_size, v=v, s=s, vision=vision, projector=projector, projector_rows=rows, t=t,
    )  # fmt: skip


def _clip_layers_needed(bb: Backbone) -> int:
    total = bb.config.vision_config.num_hidden_layers
    fl = bb.config.vision_feature_layer
    layers = [fl] if isinstance(fl, int) else list(fl)
    return max(i if i >= 0 else total + 1 + i for i in layers)


def schedule_from_plan(
    plan: VisualPlan, stats: list[LayerStats], batch: Batch, mode: str = "drop", bb: Backbone | None = None
) -> list[fa.LayerWork]:
    """:func:`schedule` of a batch-1 run, with the visual tokens the executor had in each layer."""
    present = [st.present[0] for st in stats]
    return fa.schedule(plan, fa.PromptCounts.of(batch), present, mode, fa.projector_shapes_of(bb))


def selector_overhead(
    plan: VisualPlan, stats: list[LayerStats], batch: Batch, g: Geometry, bb: Backbone | None = None
) -> float:
    """MACs of attention-score rows computed for selectors (docs/methods.md §2.5)."""
    tt = batch.token_type[0]
    n_nv = int(((tt == TokenType.SYSTEM) | (tt == TokenType.TEXT)).sum())
    n_sys = int((tt == TokenType.SYSTEM).sum())
    macs = 0.0
    before = int((tt == TokenType.VISUAL).sum())  # visual tokens entering the layer
    if plan.reducer is not None:
        if bb is None:
            raise ValueError("a plan with a pre-LLM reducer needs the backbone to count its overhead")
        macs += plan.reducer.overhead_macs(bb, batch)
        before = stats[0].present[0]
    for lp, st in zip(plan.layers, stats, strict=True):
        present = n_nv + before
        before = st.present[0]
        if lp.drop_before is not None and "attn_last" in lp.drop_before.needs:
            # layer's own q for the last token and k for every present token, then one logit row
            macs += g.hidden * g.q_width + present * g.hidden * g.kv_width + present * g.q_width
        if lp.drop_after is not None and {"attn_last", "attn_rows"} & lp.drop_after.needs:
            keys = n_nv + (st.present[0] if lp.roles.visual_key else 0)
            # q of the scored rows reused (the last row, or the selector's text rows); one logit row each
            macs += st.score_rows[0] * keys * g.q_width
        for sel, n_vis in ((lp.drop_before, present - n_nv), (lp.drop_after, st.present[0])):
            if sel is not None and hasattr(sel, "overhead_macs"):
                macs += sel.overhead_macs(n_vis, g.hidden)
            # costs that depend on the prompt's counts (visual tokens entering layer 0, text tokens)
            if sel is not None and hasattr(sel, "sample_overhead_macs"):
                macs += sel.sample_overhead_macs(n_vis, stats[0].present[0], n_nv - n_sys, g.hidden)
    return macs


@dataclass
class FlopsCell:
    """Counted and analytic FLOPs of one prefill, with per-convention paper numbers."""

    counted: Counted
    analytic: fa.FlopsReport
    conventions: dict[str, float] = field(default_factory=dict)  # convention -> decoder FLOPs
    budget: dict[str, Any] = field(default_factory=dict)

    def rel_diff(self) -> dict[str, float]:
        a = self.analytic
        pairs = {
            "total": (self.counted.macs, a.total.macs),
            "decoder": (self.counted.decoder, a.decoder_total.macs + a.overhead.macs),
            "vision_tower": (self.counted.vision_tower, a.vision_tower.macs),
            "projector": (self.counted.projector, a.projector.macs),
            "lm_head": (self.counted.lm_head, a.lm_head.macs),
        }
        return {k: abs(c - x) / max(x, 1.0) for k, (c, x) in pairs.items()}

    def metrics(self) -> dict[str, float]:
        a = self.analytic
        out = {
            "flops_total_prefill": a.total.flops,
            "flops_decoder": (a.decoder_total.flops),
            "flops_visual_side_yopo": a.decoder_visual_yopo.flops,
            "flops_visual_side_vica": a.decoder_visual_vica.flops,
            "flops_vision_tower": a.vision_tower.flops,
            "flops_projector": a.projector.flops,
            "flops_lm_head": a.lm_head.flops,
            "flops_overhead": a.overhead.flops,
            "fvcore_macs": self.counted.macs,
            "fvcore_flops": 2 * self.counted.macs,
            "fvcore_vs_analytic_rel": self.rel_diff()["total"],
            "fvcore_unsupported_share": self.counted.unsupported_share,
        }
        for conv, value in self.conventions.items():
            out[f"flops_decoder_{conv}"] = value
        out.update({f"tokens_{k}": float(v) for k, v in self.budget.items() if isinstance(v, int | float)})
        return out


def analytic_prefill(
    bb: Backbone, batch: Batch, plan: VisualPlan, stats: list[LayerStats], mode: str = "drop"
) -> tuple[Geometry, list[fa.LayerWork], fa.FlopsReport]:
    """The analytic model of one batch-1 prefill the executor ran (``stats``: its per-layer
    visual counts): the geometry, the schedule, and the report in the exact convention with one
    LM-head row, the selectors' and reducer's overhead, a merging tower's tokens, and the vision
    layers the executor really runs.  FLOPs cells and latency records both use it."""
    g = geometry_of(bb, batch)
    work = schedule_from_plan(plan, stats, batch, mode, bb)
    overhead = fa.Compute(selector_overhead(plan, stats, batch, g, bb))
    tower = {}
    if plan.tower is not None:  # one tower pass that merges: its tokens per block, k projected rows
        tower = dict(
            vision_tokens=plan.tower.tower_tokens(g.vision.patches, g.vision.layers_needed),
            projector_rows=stats[0].present[0],
        )
    report = fa.analyze(
        g, work, "exact", lm_head="last", vision_crops=g.vision.crops, overhead=overhead, **tower
    )
    # the executor runs only the vision layers it needs (select layer -2 -> one fewer)
    return g, work, replace(report, vision_tower=report.vision_tower_needed)


def flops_cell(bb: Backbone, inputs: dict[str, Any], plan: VisualPlan, mode: str = "drop") -> FlopsCell:
    """Count (fvcore) and model (analytic) one batch-1 prefill of ``plan``."""
    batch = bb.encode(inputs, tower=plan.tower)
    if batch.batch_size != 1:
        raise ValueError("FLOPs are counted per sample: give batch-1 inputs")
    stats = Executor(bb, mode).prefill(batch, plan, cache_extra=None).stats
    g, work, report = analytic_prefill(bb, batch, plan, stats, mode)
    counted = count_prefill(bb, inputs, plan, mode)
    conventions = {}
    for conv in ("fastv", "swiglu", "shortv"):
        conventions[conv] = fa.analyze(g, work, conv).decoder_total.flops
    b = report.budget
    budget = {"in": b.kv[0] if b.kv else 0, "layer_avg": b.layer_avg, "layer_avg_attn_q": b.layer_avg_attn_q,
              "layer_avg_ffn": b.layer_avg_ffn}  # fmt: skip
    return FlopsCell(counted, report, conventions, budget)
