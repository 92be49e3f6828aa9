"""Training structures: how visual tokens move through the decoder in the training forward.

Each ``--arch`` is one ``Arch`` object in ``ARCH_BY_NAME``: the ``Structure`` it trains under (the
rules the executor runs for the method of that name, here as masks on the packed batch), its extra
parameters, its hooks in ``forward_packed``, the recipe change it needs, and what it saves beside
the weights and in ``seebench.json``.  Adding an architecture is one more ``Arch`` subclass in
``ARCH_BY_NAME``; the equivalence tests check each training forward against the executor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from ..plan import LayerPlan, VisualPlan
from ..vica import ViCA
from . import shapes
from . import tokenizer as tk
from .model import TinyConfig, file_sha256
from .packing import IMAGE_ID, PREFIX_WORDS, Packed

VICA_T2V = (0, 1, 2, 3)  # ViCA-7B's shape on 8 layers: the first two and an early middle band


@dataclass
class Structure:
    """The rules of one training forward: ``kind`` names the ``Arch`` that runs them, the other
    fields are that architecture's settings (see its class)."""

    kind: str = "dense"
    t2v: tuple[int, ...] = ()  # vica: the layers where text reads visual K/V
    projectors: torch.nn.ModuleList | None = None  # saisa: one projector per decoder layer
    window: int = 5  # yopo: visual queries see their window x window grid neighbours
    k_cut: int = 0  # yopo: from this layer on no head serves visual tokens
    ffn_width: int = 0  # yopo: visual rows use the first ffn_width FFN channels
    head_mask: tuple[tuple[int, ...], ...] | None = None  # yopo, per layer; None: every head serves

    @property
    def arch(self) -> Arch:
        return ARCH_BY_NAME[self.kind]


DENSE = Structure()


def vision_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """The vision tower's patch states at the feature layer, without CLS or projector [B, 144, d]."""
    vt = model.model.vision_tower
    out = vt(pixels, output_hidden_states=True)
    return out.hidden_states[model.config.vision_feature_layer][:, 1:]


@dataclass
class Pass:
    """One training forward of a packed batch, as the architecture's hooks see it."""

    model: Any
    batch: Packed
    structure: Structure
    vis: torch.Tensor  # [B, N] the image rows
    fixed_states: list[torch.Tensor] = field(default_factory=list)  # visual states layers read (caption loss)
    emb: torch.Tensor | None = None  # vica: the decoder input, whose visual rows every layer reads
    blind: torch.Tensor | None = None  # vica: the mask outside the T2V layers
    raw: torch.Tensor | None = None  # saisa: the raw vision features [B, 144, d_vis]
    windowed: torch.Tensor | None = None  # yopo: the mask before the cut
    plans: tuple[LayerPlan, ...] = ()  # per layer, the rules (``Arch.layer_plans``)


class Arch:
    """One ``--arch``.  This base runs the dense rules; a subclass overrides what its structure
    changes."""

    name = "dense"
    t2v_layers: tuple[int, ...] = ()  # the recipe's ``t2v_layers``

    # --- recipe, structure, checkpoint
    def qa_stage(self, qa: dict[str, Any]) -> dict[str, Any]:
        """The question stages' supervision settings under this structure."""
        return qa

    def structure(self, cfg: TinyConfig, t2v_layers: tuple[int, ...]) -> Structure:
        """The structure a recipe trains under (before ``add_parameters``)."""
        return Structure(self.name, t2v_layers)

    def add_parameters(self, structure: Structure, model, seed: int, device: torch.device | str) -> None:
        """Create the structure's own trainable parameters (none here)."""

    def layer_plans(self, structure: Structure, num_layers: int) -> tuple[LayerPlan, ...]:
        """What visual tokens do in each layer, as the executor's plans state it; the hooks read
        each layer's ``LayerPlan.roles`` (and head set) instead of restating the rule."""
        return VisualPlan.dense(num_layers).layers

    def save(self, out_dir: Path, structure: Structure, meta: dict[str, Any]) -> None:
        """Write the structure's own files beside the weights and its entries into ``meta`` (the
        checkpoint's ``seebench.json``), where the loader and the method read them."""

    def card(self, rec: dict[str, Any], meta: dict[str, Any]) -> str:
        """The model card's sentence on the structure ("" for none)."""
        return ""

    # --- hooks of forward_packed
    def embed(self, fw: Pass, emb: torch.Tensor) -> torch.Tensor:
        """The decoder input: the projector's output scattered into the image rows of ``emb``."""
        feats = fw.model.model.get_image_features(pixel_values=fw.batch.pixels).pooler_output
        feats = torch.stack(list(feats))  # [B, 144, h]
        return emb.masked_scatter(fw.vis[..., None], feats.to(emb.dtype))

    def layer_input(self, fw: Pass, li: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``li``'s input states and attention mask (the mask the attention losses read too)."""
        return h, fw.batch.mask

    def run_layer(
        self, fw: Pass, layer, li: int, h: torch.Tensor, mask: torch.Tensor, cos_sin
    ) -> torch.Tensor:
        """One decoder layer."""
        return layer(h, attention_mask=mask, position_embeddings=cos_sin)


class Dense(Arch):
    """``dense``: every token is a query and goes through every sublayer."""


class Vica(Arch):
    """``vica``: visual states stay the projector output in every layer (no self-attention or FFN
    update); text reads them, through each layer's own input norm and K/V projections, only in the
    ``t2v`` layers, so the recipe reads objects in the last two of them."""

    name = "vica"
    t2v_layers = VICA_T2V

    def qa_stage(self, qa: dict[str, Any]) -> dict[str, Any]:
        return {**qa, "aux_layers": self.t2v_layers[-2:]}

    def save(self, out_dir: Path, structure: Structure, meta: dict[str, Any]) -> None:
        meta["architecture"] = "vica"
        meta["vica"] = {"t2v_layers": list(structure.t2v)}

    def card(self, rec: dict[str, Any], meta: dict[str, Any]) -> str:
        return f"The VICA structure in training: text reads visual K/V only in layers {rec['t2v_layers']}."

    def layer_plans(self, structure: Structure, num_layers: int) -> tuple[LayerPlan, ...]:
        vica = ViCA(t2v_layers=list(structure.t2v), system_query_layers=list(range(num_layers)))
        decoder = SimpleNamespace(family="llava", num_layers=num_layers, hidden_size=0)  # no published list
        return vica.apply(VisualPlan.dense(num_layers), decoder).layers

    def embed(self, fw: Pass, emb: torch.Tensor) -> torch.Tensor:
        fw.emb = super().embed(fw, emb)
        # text rows cannot read visual columns outside the T2V layers; visual rows still see the
        # system prefix, so no row is empty
        fw.blind = fw.batch.mask & ~fw.vis[:, None, None, :]
        return fw.emb

    def layer_input(self, fw: Pass, li: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert fw.emb is not None and fw.blind is not None  # set by embed
        h = torch.where(fw.vis[..., None], fw.emb, h)
        if li == 0:
            img0 = len(PREFIX_WORDS)
            fw.fixed_states.append(fw.emb[:, img0 : img0 + tk.NUM_IMAGE_TOKENS])
        return h, fw.batch.mask if fw.plans[li].roles.text_reads_visual else fw.blind


class Saisa(Arch):
    """``saisa``: before every layer the visual states are re-projected from the raw vision features
    by that layer's projector (``projectors[l]``, saved as ``saisa_projectors.safetensors``); they
    are keys and values only (their outputs are never read)."""

    name = "saisa"

    def add_parameters(self, structure: Structure, model, seed: int, device: torch.device | str) -> None:
        from harness.models.saisa import make_projectors

        torch.manual_seed(seed + 1)
        cfg = model.config
        structure.projectors = make_projectors(
            cfg.vision_config.hidden_size, cfg.text_config.hidden_size, cfg.text_config.num_hidden_layers
        )
        structure.projectors.to(device)

    def save(self, out_dir: Path, structure: Structure, meta: dict[str, Any]) -> None:
        from harness.models.saisa import save_projectors

        assert structure.projectors is not None  # made by add_parameters
        save_projectors(out_dir / "saisa_projectors.safetensors", structure.projectors)
        meta["architecture"] = "saisa"
        meta["sha256"]["saisa_projectors.safetensors"] = file_sha256(out_dir / "saisa_projectors.safetensors")

    def card(self, rec: dict[str, Any], meta: dict[str, Any]) -> str:
        return (
            "The SAISA structure in training: one projector per decoder layer"
            " (`saisa_projectors.safetensors`)."
        )

    def embed(self, fw: Pass, emb: torch.Tensor) -> torch.Tensor:
        # no global projector: layer 0 would overwrite its output
        fw.raw = vision_features(fw.model, fw.batch.pixels)  # [B, 144, d_vis]
        return emb

    def layer_input(self, fw: Pass, li: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert fw.structure.projectors is not None  # made by add_parameters
        pv = fw.structure.projectors[li](fw.raw).to(h.dtype)
        fw.fixed_states.append(pv)
        return h.masked_scatter(fw.vis[..., None], pv), fw.batch.mask


class Yopo(Arch):
    """``yopo`` (the released code's semantics, the ``yopo`` method): before ``k_cut`` visual
    queries attend to the system prefix and their ``window`` x ``window`` grid neighbours
    (non-causal), heads outside ``head_mask[l]`` give visual queries no output and give text queries
    zeroed visual values (no renormalisation); from ``k_cut`` on no head serves visual tokens;
    visual rows use the first ``ffn_width`` FFN channels in every layer.  The weights are plain
    LLaVA's; ``seebench.json`` holds the rules (the ``yopo`` method's defaults)."""

    name = "yopo"

    def structure(self, cfg: TinyConfig, t2v_layers: tuple[int, ...]) -> Structure:
        return yopo_structure(cfg)

    def layer_plans(self, structure: Structure, num_layers: int) -> tuple[LayerPlan, ...]:
        """The ``yopo`` method's layers: windowed visual queries, the served heads and a partial
        visual FFN before the cut; after it no head serves visual tokens (their values zeroed)."""
        width, masks = structure.ffn_width, structure.head_mask
        return tuple(
            LayerPlan(visual_attn="window", window=structure.window, visual_ffn=width, head_mode="zero_values",
                      visual_heads=None if masks is None else tuple(masks[li]))
            if li < structure.k_cut
            else LayerPlan(visual_query=False, visual_ffn=width, visual_heads=(), head_mode="zero_values")
            for li in range(num_layers)
        )  # fmt: skip

    def save(self, out_dir: Path, structure: Structure, meta: dict[str, Any]) -> None:
        meta["architecture"] = "yopo"
        meta["yopo"] = {
            "window": structure.window,
            "k_cut": structure.k_cut,
            "ffn_width": structure.ffn_width,
            "head_mask": None,  # every head serves visual tokens before the cut
        }

    def card(self, rec: dict[str, Any], meta: dict[str, Any]) -> str:
        y = meta["yopo"]
        return (
            "The YOPO structure in training (the `yopo` method's rules):"
            f" {y['window']} x {y['window']} visual window, visual FFN of the first {y['ffn_width']}"
            f" channels, no head serving visual tokens from layer {y['k_cut']} on,"
            " every head serving them before."
        )

    def embed(self, fw: Pass, emb: torch.Tensor) -> torch.Tensor:
        emb = super().embed(fw, emb)
        # before the cut, visual queries see the prefix and their window
        vv = fw.vis[:, None, :, None] & fw.vis[:, None, None, :]
        fw.windowed = torch.where(vv, _yopo_window(fw.vis, fw.structure.window)[:, None], fw.batch.mask)
        return emb

    def run_layer(
        self, fw: Pass, layer, li: int, h: torch.Tensor, mask: torch.Tensor, cos_sin
    ) -> torch.Tensor:
        lp = fw.plans[li]
        allowed = fw.windowed if lp.roles.visual_query else mask
        return _yopo_layer(layer, lp, h, allowed, fw.vis, cos_sin)


ARCH_BY_NAME: dict[str, Arch] = {a.name: a for a in (Dense(), Vica(), Saisa(), Yopo())}
ARCHES = tuple(ARCH_BY_NAME)


def forward_packed(
    model,
    batch: Packed,
    aux_layers: Sequence[int] = (),
    caption: bool = False,
    copy_layer: int | None = None,
    option_layer: int | None = None,
    structure: Structure = DENSE,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Logits at every question's last token [Q, V] (HF submodules, our block mask), under the rules
    of ``structure.arch`` (its decoder input, each layer's input and mask, each layer's forward).

    With ``aux_layers``, also the attention-supervision loss: in each listed layer, the best head's
    attention mass from the answer token onto the question's target cells, as -log(mass), averaged
    over questions that have targets (training only).  With ``copy_layer``, in that layer every
    multiple-choice option word also learns to attend to its own letter ("A . red": red -> A), so
    that its state carries the letter the last supervised layer must read out."""
    lm = model.model.language_model
    arch = structure.arch
    emb = lm.embed_tokens(batch.input_ids)
    fw = Pass(model, batch, structure, vis=batch.input_ids == IMAGE_ID)
    fw.plans = arch.layer_plans(structure, len(lm.layers))
    img0 = len(PREFIX_WORDS)
    h = arch.embed(fw, emb)
    cos_sin = lm.rotary_emb(h, batch.positions)
    aux = h.new_zeros(())
    opt_layer = option_layer if option_layer is not None else (max(aux_layers) if aux_layers else None)
    for li, layer in enumerate(lm.layers):
        h, mask = arch.layer_input(fw, li, h)
        if li in aux_layers or li == opt_layer:
            # the object's cells, read by the best head; in the option layer a multiple-choice
            # question instead reads the correct option word (its state holds the letter before
            # it) with one fixed head: with "best head" each head could sit on one option slot
            # (A, B, C, D) and always score, without ever comparing the options
            none = torch.zeros_like(batch.is_answer)
            mc = batch.options.any(-1) if li == opt_layer else none
            obj = batch.targets.any(-1) & ~mc if li in aux_layers else none
            losses = [
                _attention_mass_loss(layer, h, mask, cos_sin, batch.answer_rows[obj], batch.targets[obj]),
                _attention_mass_loss(layer, h, mask, cos_sin, batch.answer_rows[mc], batch.options[mc], 0),
            ]
            aux = aux + torch.cat(losses).mean() if bool((obj | mc).any()) else aux
        if li == copy_layer and len(batch.copies):
            onehot = F.one_hot(batch.copies[:, 2], h.shape[1]).bool()
            aux = aux + _attention_mass_loss(layer, h, mask, cos_sin, batch.copies[:, :2], onehot).mean()
        h = arch.run_layer(fw, layer, li, h, mask, cos_sin)
    rows = h[batch.answer_rows[:, 0], batch.answer_rows[:, 1]]
    logits = model.lm_head(lm.norm(rows))
    if aux_layers:
        aux = aux / len(set(aux_layers) | {opt_layer})
    if caption:
        # every object token names its colour, shape/glyph and quadrant: for dense the decoder's
        # last visual states, for vica/saisa the states the layers read (their outputs are unused)
        states = fw.fixed_states or [h[:, img0 : img0 + tk.NUM_IMAGE_TOKENS]]
        tgt = batch.captions
        cap = h.new_zeros(())
        for st in states:
            v = model.lm_head(lm.norm(st))  # [B, 144, V]
            cap = (
                cap
                + sum(
                    F.cross_entropy(v.flatten(0, 1), tgt[..., k].flatten(), ignore_index=-100)
                    for k in range(3)
                )
                / 3
            )
        aux = aux + cap / len(states)
    if copy_layer is not None and len(batch.copies):
        # and every option word's own output names its letter, as object tokens name their
        # colour: the last supervised layer then only has to pass that state on
        opt = model.lm_head(lm.norm(h[batch.copies[:, 0], batch.copies[:, 1]]))
        aux = aux + F.cross_entropy(opt, batch.input_ids[batch.copies[:, 0], batch.copies[:, 2]])
    if aux_layers or caption or copy_layer is not None:
        return logits, aux
    return logits


def yopo_structure(cfg: TinyConfig) -> Structure:
    """The ``yopo`` method's defaults on this model: 5 x 5 window, half-width visual FFN, cut at
    3/4 of the depth, every head serving visual tokens."""
    return Structure("yopo", window=5, k_cut=(3 * cfg.layers) // 4, ffn_width=cfg.ffn // 2)


def _rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = t.shape[-1] // 2
    return t * cos + torch.cat((-t[..., half:], t[..., :half]), -1) * sin


def _yopo_window(vis: torch.Tensor, window: int) -> torch.Tensor:
    """[B, N, N] visual-to-visual pairs inside the window x window neighbourhood on the image grid
    (the image is one contiguous run of NUM_IMAGE_TOKENS visual rows per sample, row-major)."""
    slot = torch.cumsum(vis.long(), 1) - 1  # visual index of each visual row
    r, c = slot // shapes.GRID, slot % shapes.GRID
    half = (window - 1) // 2
    near = ((r[:, :, None] - r[:, None, :]).abs() <= half) & ((c[:, :, None] - c[:, None, :]).abs() <= half)
    return near & vis[:, :, None] & vis[:, None, :]


def _yopo_layer(layer, lp: LayerPlan, h, allowed, vis, cos_sin) -> torch.Tensor:
    """One decoder layer under YOPO's rules as ``lp`` states them (served heads, visual FFN width),
    from the layer's own submodules (no HF forward); ``allowed`` [B, 1, N, N] is the layer's mask
    (windowed visual queries before the cut)."""
    attn = layer.self_attn
    b, n, _ = h.shape
    d = attn.head_dim
    hn = layer.input_layernorm(h)
    q = attn.q_proj(hn).view(b, n, -1, d).transpose(1, 2)
    k = attn.k_proj(hn).view(b, n, -1, d).transpose(1, 2)
    v = attn.v_proj(hn).view(b, n, -1, d).transpose(1, 2)
    cos, sin = cos_sin[0][:, None], cos_sin[1][:, None]
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    heads = q.shape[1]
    k = k.repeat_interleave(heads // k.shape[1], dim=1)
    v = v.repeat_interleave(heads // v.shape[1], dim=1)
    served = torch.zeros(heads, dtype=torch.bool, device=h.device)
    served[slice(None) if lp.visual_heads is None else list(lp.visual_heads)] = True
    pruned = ~served[None, :, None, None]  # [1, H, 1, 1]
    qv = vis[:, None, :, None]  # [B, 1, N, 1]: visual rows (as queries, and as keys of v)
    v = v.masked_fill(pruned & qv, 0.0)  # pruned heads: visual values zeroed
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=attn.scaling)
    out = out.masked_fill(pruned & qv, 0.0)  # pruned heads give visual queries no output
    h = h + attn.o_proj(out.transpose(1, 2).reshape(b, n, -1))
    mlp = layer.mlp
    hn = layer.post_attention_layernorm(h)
    act = mlp.act_fn(mlp.gate_proj(hn)) * mlp.up_proj(hn)
    assert lp.visual_ffn is not None  # YOPO's plans give the visual FFN width
    keep = ~vis[..., None] | (torch.arange(act.shape[-1], device=h.device) < lp.visual_ffn)
    return h + mlp.down_proj(act * keep.to(act.dtype))


def _attention_mass_loss(
    layer,
    h: torch.Tensor,
    mask: torch.Tensor,
    cos_sin,
    rows: torch.Tensor,
    targets: torch.Tensor,
    head: int | None = None,
) -> torch.Tensor:
    """Per query row (batch, row): -log of the attention mass onto its targets, of the best head
    (or of ``head``)."""
    attn = layer.self_attn
    if not len(rows):
        return h.new_zeros((0,))
    bi, ri = rows[:, 0], rows[:, 1]
    hn = layer.input_layernorm(h)
    b, n, _ = hn.shape
    hd = attn.head_dim
    q = attn.q_proj(hn[bi, ri]).view(len(bi), -1, hd)  # [Q, H, d]
    k = attn.k_proj(hn).view(b, n, -1, hd)  # [B, N, Hkv, d]
    cos, sin = cos_sin

    q = _rotate(q, cos[bi, ri][:, None], sin[bi, ri][:, None])
    k = _rotate(k, cos[:, :, None], sin[:, :, None])[bi]  # [Q, N, Hkv, d]
    rep = q.shape[1] // k.shape[2]
    k = k.repeat_interleave(rep, dim=2)
    logits = torch.einsum("qhd,qnhd->qhn", q, k) * attn.scaling
    allowed = mask[bi, 0, ri]  # [Q, N]
    probs = torch.softmax(logits.masked_fill(~allowed[:, None], float("-inf")), -1)
    mass = (probs * targets[:, None].to(probs.dtype)).sum(-1)  # [Q, H]
    return -torch.log((mass.max(-1).values if head is None else mass[:, head]) + 1e-6)
