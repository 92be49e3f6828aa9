"""``harness train tiny-llava``: a staged recipe like LLaVA's, at laptop scale.

Stages (each deterministic by seed; a progress bar and a JSON-lines log per step window):

1. ``vision``: pretrain the ViT alone on per-patch labels (background / colour x shape / colour x
   glyph of each cell, plus the cell's row and column) with linear heads on its last hidden state.
   The tiny-lab notes saw 100% per-patch accuracy within ~100 steps; it makes every visual token
   say what its cell holds and where it is.
2. ``align``: vision tower frozen; projector and decoder learn to answer questions, starting with
   a curriculum of fewer objects.
3. ``finetune``: everything trains (the vision tower at a lower learning rate) on the evaluation
   mix.

Why it learns where plain end-to-end training stalled (tiny-lab-notes.md): (a) visual tokens
arrive already separable by the vision pretraining, so the decoder only learns retrieval;
(b) every scene is asked several questions at once ("packed"): after the shared system+image
prefix, each question block attends to the prefix and to itself only (block-diagonal mask, every
block at the positions it would have alone), so one image forward serves several supervised
answers and the decoder sees the same scene from several angles (an auxiliary "answer every kind
on the same scene" loss); (c) the single-attribute existence form (POPE-like) replaces the
conjunctions the notes could not learn; (d) multiple choice is a two-hop question (find the object,
then the option that names its attribute, then that option's letter) and stayed at chance until
each hop had its own signal: in layer 0 every option word attends to its letter ("A . red":
red -> A) and its output names that letter, and in the last layer one fixed head attends from the
answer to the correct option word.  The earlier "best of the heads" form of that last loss was
gamed: each head sat on one option slot (A, B, C, D), so one of them always scored while none
compared the options with the object; (e) objects are read in layers 4-5 and the option in layer 7:
with both in layers 6-7 the answer token had to turn the object's attribute into a query for the
option word within one layer, and the same recipe, trained twice on different hardware, ended
once at 0.78 and once at 1.00 on multiple choice; with a layer in between every task was learned
by step 2000 of align (GPU exploration of four variants, 2026-11-22; see the model card).

Determinism: training runs under ``torch.use_deterministic_algorithms`` (``deterministic()``).
Without it, the backward of a gather with repeated indices (``h[rows, cols]``, ``k[batch_index]``)
is a parallel float atomic add on CPU whenever two threads are used: two same-seed runs of the
full recipe agreed bit for bit for 826 steps, then drifted by one float ulp at step 527 of align
and ended 10 points apart on counting.  Same seed and same thread count now give the same weights.

``--arch vica|saisa|yopo`` trains the same stages under that method's structure (``Structure``):
the equivalence tests check the training forward against the executor running the method.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import shapes
from . import tokenizer as tk
from .model import TinyConfig, build_model, pixel_values

VOCAB = {w: i for i, w in enumerate(tk.vocabulary())}
PREFIX_WORDS = (tk.BOS_TOKEN + " " + tk.SYSTEM_PROMPT + " USER :").split()
IMAGE_ID = VOCAB[tk.IMAGE_TOKEN]
EVAL_MIX = {t: 1.0 for t in shapes.TASKS}
ARCHES = ("dense", "vica", "saisa", "yopo")
VICA_T2V = (0, 1, 2, 3)  # ViCA-7B's shape on 8 layers: the first two and an early middle band


def ids(text: str) -> list[int]:
    return [VOCAB[w] for w in text.split()]


# ------------------------------------------------------------------ extra questions on a scene
Cells = tuple[tuple[int, int], ...]


def target_cells(sample: shapes.Sample) -> Cells:
    """Grid cells of the objects a generator question is about (empty for "no" answers)."""
    info, objs = sample.info, sample.meta
    target = info.get("target", {})
    if sample.task == "shapes_exist" and sample.answer == "no":
        return ()
    if sample.task == "shapes_read":
        boxes = [o for o in objs if o.glyph is not None]
        hit = [o for o in boxes if o.glyph == target.get("glyph")]
        return tuple((o.row, o.col) for o in hit)
    if sample.task in ("shapes_attr", "shapes_spatial", "shapes_mc"):
        hit = [o for o in objs if o.shape == target.get("shape") and o.color == target.get("color")]
        return tuple((o.row, o.col) for o in hit)
    hit = [o for o in objs if o.shape is not None and all(getattr(o, k) == v for k, v in target.items())]
    return tuple((o.row, o.col) for o in hit)


def extra_questions(sample: shapes.Sample, rng: random.Random, k: int) -> list[tuple[str, str, Cells]]:
    """Up to k more (question, answer, target cells) about the same scene, valid by construction.

    Training only: the evaluation splits are the generator's own questions."""
    objs = [o for o in sample.meta if o.shape is not None]
    boxes = [o for o in sample.meta if o.glyph is not None]
    T = shapes.TEMPLATES
    colors_all = [o.color for o in sample.meta]

    def cells(items) -> Cells:
        return tuple((o.row, o.col) for o in items)

    def exist_color():
        present = {o.color for o in objs}
        absent = [c for c in shapes.COLOR_NAMES if c not in colors_all]
        if rng.random() < 0.5 and present:
            c = rng.choice(sorted(present))
            return T["exist/color"].format(color=c), "yes", cells(o for o in objs if o.color == c)
        if absent:
            return T["exist/color"].format(color=rng.choice(absent)), "no", ()
        return None

    def exist_shape():
        present = {o.shape for o in objs}
        absent = [s for s in shapes.SHAPES if s not in present]
        if rng.random() < 0.5 and present:
            sh = rng.choice(sorted(present))
            return T["exist/shape"].format(shape=sh), "yes", cells(o for o in objs if o.shape == sh)
        if absent:
            return T["exist/shape"].format(shape=rng.choice(absent)), "no", ()
        return None

    def unique(key):
        counts: dict[Any, int] = {}
        for o in objs:
            counts[key(o)] = counts.get(key(o), 0) + 1
        return [o for o in objs if counts[key(o)] == 1]

    def attr_color():
        u = unique(lambda o: o.shape)
        if not u:
            return None
        o = rng.choice(u)
        return T["attr/color"].format(shape=o.shape), o.color, cells([o])

    def attr_shape():
        u = [o for o in unique(lambda o: o.color) if colors_all.count(o.color) == 1]
        if not u:
            return None
        o = rng.choice(u)
        return T["attr/shape"].format(color=o.color), o.shape, cells([o])

    def count():
        if boxes:
            return None
        if rng.random() < 0.5:
            sh = rng.choice(shapes.SHAPES)
            hit = [o for o in objs if o.shape == sh]
            q = T["count/shape"].format(shapes=shapes.SHAPE_PLURALS[sh])
        else:
            c = rng.choice(shapes.COLOR_NAMES)
            hit = [o for o in objs if o.color == c]
            q = T["count/color"].format(color=c)
        return (q, shapes.NUMBER_WORDS[len(hit)], cells(hit)) if len(hit) <= 4 else None

    def spatial():
        u = unique(lambda o: (o.color, o.shape))
        if not u:
            return None
        o = rng.choice(u)
        return T["spatial/color_shape"].format(color=o.color, shape=o.shape), o.quadrant, cells([o])

    def read():
        if not boxes:
            return None
        if len(boxes) == 1 and rng.random() < 0.5:
            return T["read/image"], boxes[0].glyph, cells(boxes)
        b = rng.choice(boxes)
        if colors_all.count(b.color) != 1:
            return None
        return T["read/box"].format(color=b.color), b.glyph, cells([b])

    def mc():
        kind = rng.choice(["color", "shape", "where"])
        base = {"color": attr_color, "shape": attr_shape, "where": spatial}[kind]()
        if base is None:
            return None
        q, correct, where = base
        pool = {"color": shapes.COLOR_NAMES, "shape": shapes.SHAPES, "where": shapes.QUADRANTS}[kind]
        options = rng.sample([v for v in pool if v != correct], 3)
        letter = rng.randrange(4)
        options.insert(letter, correct)
        text = T["mc"].format(question=q, a=options[0], b=options[1], c=options[2], d=options[3])
        return text, shapes.OPTION_LETTERS[letter], where

    makers = [exist_color, exist_shape, attr_color, attr_shape, count, spatial, read, mc, mc]  # mc: two hops
    out: list[tuple[str, str, Cells]] = []
    seen = {sample.question}
    for _ in range(4 * k):
        if len(out) >= k:
            break
        qa = rng.choice(makers)()
        if qa is not None and qa[0] not in seen:
            seen.add(qa[0])
            out.append(qa)
    return out


# ------------------------------------------------------------------ packed batches
@dataclass
class Packed:
    input_ids: torch.Tensor  # [B, N]
    positions: torch.Tensor  # [B, N]
    mask: torch.Tensor  # [B, 1, N, N] bool
    answer_rows: torch.Tensor  # [Q, 2] (batch, row) of each question's last token
    answers: torch.Tensor  # [Q]
    targets: torch.Tensor | None = None  # [Q, N] bool: visual tokens the question is about
    captions: torch.Tensor | None = None  # [B, 144, 3] word ids (colour, shape/glyph, quadrant), -100 = none
    is_answer: torch.Tensor | None = None  # [Q] True: answer row; False: the EOS row after an answer
    options: torch.Tensor | None = None  # [Q, N] multiple choice: position of the correct option word
    copies: torch.Tensor | None = None  # [M, 3] (batch, option-word row, its letter's row) of every option
    tasks: list[str] = field(default_factory=list)
    pixels: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Packed:
        """The same batch with every tensor on ``device``."""
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}
        return Packed(**moved)


def pack(
    samples: Sequence[shapes.Sample], extras: Sequence[list[tuple[str, str, Cells]]], eos: bool = False
) -> Packed:
    """Scenes with their question blocks after one shared system+image prefix.  With ``eos``, each
    block also holds its answer and the row after it learns to stop (``</s>``)."""
    prefix = [VOCAB[w] for w in PREFIX_WORDS] + [IMAGE_ID] * tk.NUM_IMAGE_TOKENS
    p = len(prefix)
    img0 = len(PREFIX_WORDS)
    rows, blocks_all = [], []
    for s, ex in zip(samples, extras, strict=True):
        tail = (lambda a: " ASSISTANT : " + a) if eos else (lambda a: " ASSISTANT :")
        blocks = [(ids(s.question + tail(s.answer)), s.answer, s.task, target_cells(s))]
        blocks += [(ids(q + tail(a)), a, "extra", c) for q, a, c in ex]
        rows.append(blocks)
        blocks_all.append(p + sum(len(b[0]) for b in blocks))
    n = max(blocks_all)
    b = len(samples)
    input_ids = torch.zeros(b, n, dtype=torch.long)
    positions = torch.zeros(b, n, dtype=torch.long)
    block_id = torch.full((b, n), -2, dtype=torch.long)  # -1 prefix, >=0 question block, -2 pad
    answer_rows, answers, tasks, targets, is_answer, option, copies = [], [], [], [], [], [], []
    letters = {VOCAB[x] for x in shapes.OPTION_LETTERS}
    dot = VOCAB["."]
    for i, blocks in enumerate(rows):
        input_ids[i, :p] = torch.tensor(prefix)
        positions[i, :p] = torch.arange(p)
        block_id[i, :p] = -1
        at = p
        for j, (toks, ans, task, where) in enumerate(blocks):
            m = len(toks)
            input_ids[i, at : at + m] = torch.tensor(toks)
            positions[i, at : at + m] = torch.arange(p, p + m)
            block_id[i, at : at + m] = j
            last = at + m - (2 if eos else 1)  # the ":" of "ASSISTANT :"
            answer_rows.append((i, last))
            answers.append(VOCAB[ans])
            tasks.append(task)
            is_answer.append(True)
            tgt = torch.zeros(n, dtype=torch.bool)
            for r, c in where:
                tgt[img0 + r * shapes.GRID + c] = True
            targets.append(tgt)
            opt = torch.zeros(n, dtype=torch.bool)
            # "A . red": the option word's row, and its letter's row (only options have this pattern)
            copies += [
                (i, at + k + 2, at + k) for k in range(m - 2) if toks[k] in letters and toks[k + 1] == dot
            ]
            if VOCAB[ans] in letters:  # multiple choice: the correct option's word ("A . red" -> red)
                for k in range(m - 2):
                    if toks[k] == VOCAB[ans] and toks[k + 1] == dot:
                        opt[at + k + 2] = True
                        break
            option.append(opt)
            if eos:
                answer_rows.append((i, last + 1))
                answers.append(VOCAB[tk.EOS_TOKEN])
                tasks.append("eos")
                is_answer.append(False)
                targets.append(torch.zeros(n, dtype=torch.bool))
                option.append(torch.zeros(n, dtype=torch.bool))
            at += m
    captions = torch.full((b, tk.NUM_IMAGE_TOKENS, 3), -100, dtype=torch.long)
    for i, s in enumerate(samples):
        for o in s.meta:
            j = o.row * shapes.GRID + o.col
            captions[i, j, 0] = VOCAB[o.color]
            captions[i, j, 1] = VOCAB[o.shape if o.shape is not None else o.glyph]
            captions[i, j, 2] = VOCAB[o.quadrant]
    idx = torch.arange(n)
    causal = idx[None, :] <= idx[:, None]
    q_blk, k_blk = block_id[:, :, None], block_id[:, None, :]
    allowed = causal[None] & ((k_blk == -1) | (k_blk == q_blk)) & (q_blk != -2)
    allowed = allowed | torch.eye(n, dtype=torch.bool)[None]  # pads attend to themselves (finite)
    return Packed(
        input_ids=input_ids, positions=positions, mask=allowed[:, None], answer_rows=torch.tensor(answer_rows),
        answers=torch.tensor(answers), targets=torch.stack(targets), captions=captions,
        is_answer=torch.tensor(is_answer), options=torch.stack(option),
        copies=torch.tensor(copies, dtype=torch.long).reshape(-1, 3), tasks=tasks, pixels=pixel_values(shapes.stack_images(samples)),
    )  # fmt: skip


@dataclass
class Structure:
    """How visual tokens move through the decoder in training (the same rules the executor runs for
    the ``vica`` and ``saisa`` methods, here as masks on the packed batch).

    ``dense``: every token is a query and goes through every sublayer.  ``vica``: visual states stay
    the projector output in every layer (no self-attention or FFN update); text reads them, through
    each layer's own input norm and K/V projections, only in ``t2v`` layers.  ``saisa``: before every
    layer the visual states are re-projected from the raw vision features by that layer's projector
    (``projectors[l]``); they are keys and values only (their outputs are never read).  ``yopo``
    (the released code's semantics, the ``yopo`` method): before ``k_cut`` visual queries attend to
    the system prefix and their ``window`` x ``window`` grid neighbours (non-causal), heads outside
    ``head_mask[l]`` give visual queries no output and give text queries zeroed visual values (no
    renormalisation); from ``k_cut`` on no head serves visual tokens; visual rows use the first
    ``ffn_width`` FFN channels in every layer."""

    kind: str = "dense"
    t2v: tuple[int, ...] = ()
    projectors: torch.nn.ModuleList | None = None
    window: int = 5
    k_cut: int = 0
    ffn_width: int = 0
    head_mask: tuple[tuple[int, ...], ...] | None = None  # None: every head serves visual tokens


DENSE = Structure()


def forward_packed(
    model,
    batch: Packed,
    aux_layers: Sequence[int] = (),
    caption: bool = False,
    copy_layer: int | None = None,
    option_layer: int | None = None,
    structure: Structure = DENSE,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Logits at every question's last token [Q, V] (HF submodules, our block mask).

    With ``aux_layers``, also the attention-supervision loss: in each listed layer, the best head's
    attention mass from the answer token onto the question's target cells, as -log(mass), averaged
    over questions that have targets (training only).  With ``copy_layer``, in that layer every
    multiple-choice option word also learns to attend to its own letter ("A . red": red -> A), so
    that its state carries the letter the last supervised layer must read out."""
    lm = model.model.language_model
    emb = lm.embed_tokens(batch.input_ids)
    vis = batch.input_ids == IMAGE_ID
    img0 = len(PREFIX_WORDS)
    if structure.kind == "saisa":  # the global projector's output would be overwritten in layer 0
        raw = _vision_features(model, batch.pixels)  # [B, 144, d_vis]
    else:
        feats = model.model.get_image_features(pixel_values=batch.pixels).pooler_output
        feats = torch.stack(list(feats))  # [B, 144, h]
        emb = emb.masked_scatter(vis[..., None], feats.to(emb.dtype))
    h = emb
    cos_sin = lm.rotary_emb(h, batch.positions)
    aux = h.new_zeros(())
    # text rows cannot read visual columns (ViCA outside its T2V layers); visual rows still see the
    # system prefix, so no row is empty
    blind = batch.mask & ~vis[:, None, None, :] if structure.kind == "vica" else batch.mask
    if structure.kind == "yopo":  # before the cut, visual queries see the prefix and their window
        vv = vis[:, None, :, None] & vis[:, None, None, :]
        windowed = torch.where(vv, _yopo_window(vis, structure.window)[:, None], batch.mask)
    fixed_states: list[torch.Tensor] = []  # the visual states layers read (caption loss of vica/saisa)
    opt_layer = option_layer if option_layer is not None else (max(aux_layers) if aux_layers else None)
    for li, layer in enumerate(lm.layers):
        mask = batch.mask
        if structure.kind == "vica":
            h = torch.where(vis[..., None], emb, h)
            mask = batch.mask if li in structure.t2v else blind
            if li == 0:
                fixed_states.append(emb[:, img0 : img0 + tk.NUM_IMAGE_TOKENS])
        elif structure.kind == "saisa":
            pv = structure.projectors[li](raw).to(h.dtype)
            h = h.masked_scatter(vis[..., None], pv)
            fixed_states.append(pv)
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
        if structure.kind == "yopo":
            h = _yopo_layer(layer, li, h, windowed if li < structure.k_cut else mask, vis, cos_sin, structure)
        else:
            h = layer(h, attention_mask=mask, position_embeddings=cos_sin)
    rows = h[batch.answer_rows[:, 0], batch.answer_rows[:, 1]]
    logits = model.lm_head(lm.norm(rows))
    if aux_layers:
        aux = aux / len(set(aux_layers) | {opt_layer})
    if caption:
        # every object token names its colour, shape/glyph and quadrant: for dense the decoder's
        # last visual states, for vica/saisa the states the layers read (their outputs are unused)
        states = fixed_states or [h[:, img0 : img0 + tk.NUM_IMAGE_TOKENS]]
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


def _yopo_layer(layer, li: int, h, allowed, vis, cos_sin, structure: Structure) -> torch.Tensor:
    """One decoder layer under YOPO's rules, from the layer's own submodules (no HF forward);
    ``allowed`` [B, 1, N, N] is the layer's mask (windowed visual queries before the cut)."""
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
    before_cut = li < structure.k_cut
    served = torch.zeros(heads, dtype=torch.bool, device=h.device)
    if before_cut:
        served[list(structure.head_mask[li]) if structure.head_mask is not None else slice(None)] = True
    pruned = ~served[None, :, None, None]  # [1, H, 1, 1]
    qv = vis[:, None, :, None]  # [B, 1, N, 1]: visual rows (as queries, and as keys of v)
    v = v.masked_fill(pruned & qv, 0.0)  # pruned heads: visual values zeroed
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=attn.scaling)
    out = out.masked_fill(pruned & qv, 0.0)  # pruned heads give visual queries no output
    h = h + attn.o_proj(out.transpose(1, 2).reshape(b, n, -1))
    mlp = layer.mlp
    hn = layer.post_attention_layernorm(h)
    act = mlp.act_fn(mlp.gate_proj(hn)) * mlp.up_proj(hn)
    keep = ~vis[..., None] | (torch.arange(act.shape[-1], device=h.device) < structure.ffn_width)
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


# ------------------------------------------------------------------ recipe
@dataclass
class StageSpec:
    name: str
    steps: int
    lr: float
    batch: int
    extras: int = 0
    curriculum: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, float] = field(default_factory=lambda: dict(EVAL_MIX))
    vision_lr: float = 0.0  # 0 = vision tower frozen
    warmup: int = 50
    aux_layers: tuple[int, ...] = ()  # attention supervision (train-only auxiliary loss)
    aux_weight: float = 0.0
    caption: bool = False  # per-object-token caption loss (train-only auxiliary loss)
    copy_layer: int | None = None  # option word -> its letter attention supervision (train-only)
    option_layer: int | None = None  # where MC reads its correct option (None: the last aux layer)
    eos: bool = True  # learn to stop after the one-word answer


@dataclass
class Recipe:
    seed: int = 0
    model: TinyConfig = field(default_factory=TinyConfig)
    stages: list[StageSpec] = field(default_factory=list)
    eval_every: int = 500
    arch: str = "dense"  # dense | vica | saisa (Structure)
    t2v_layers: tuple[int, ...] = ()  # vica: the layers where text reads visual K/V

    @classmethod
    def default(cls, seed: int = 0, scale: float = 1.0, arch: str = "dense") -> Recipe:
        """The committed recipe (about 50 minutes on 2 idle cores); ``scale`` shortens every stage.

        ``arch`` trains the same stages, steps and data under another structure (same budget):
        ``vica`` reads objects in its T2V layers (ViCA-7B's shape: the first layers and an early
        middle band), ``saisa`` adds one projector per layer, ``yopo`` runs the ``yopo`` method's
        defaults (5 x 5 window, half-width visual FFN, cut at 3/4 of the depth, every head serving
        visual tokens: the dense model's calibration keeps them all)."""
        if arch not in ARCHES:
            raise ValueError(f"unknown arch '{arch}': use one of {', '.join(ARCHES)}")

        def n(steps: int) -> int:
            return max(1, int(round(steps * scale)))

        # objects are read in layers 4-5, the correct option in layer 7 (a layer in between to turn
        # the object's attribute into a query for the option word): on the GPU this learned every
        # task by step 2000 of align, where reading both in layers 6-7 took until 2500 (MC last)
        qa = dict(extras=5, aux_layers=(4, 5), aux_weight=1.0, caption=True, copy_layer=0, option_layer=7)
        t2v: tuple[int, ...] = ()
        if arch == "vica":  # objects can only be read in T2V layers
            t2v = VICA_T2V
            qa.update(aux_layers=VICA_T2V[-2:])
        glyph_heavy = {t: (3.0 if t == "shapes_read" else 1.0) for t in shapes.TASKS}
        return cls(
            seed=seed,
            stages=[
                StageSpec("vision", n(300), 2e-3, 32, tasks=glyph_heavy),
                StageSpec("align", n(3000), 1e-3, 16, **qa),
                StageSpec("finetune", n(600), 4e-4, 16, vision_lr=1e-4, warmup=20, **qa),
            ],
            eval_every=500 if scale >= 1 else 10**9,
            arch=arch,
            t2v_layers=t2v,
        )

    def as_dict(self) -> dict[str, Any]:
        out = {"seed": self.seed, "model": self.model.as_dict(), "stages": [asdict(st) for st in self.stages]}
        if self.arch != "dense":
            out["arch"] = self.arch
        if self.t2v_layers:
            out["t2v_layers"] = list(self.t2v_layers)
        return out


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    prog = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))


class VisionHeads(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.cls = torch.nn.Linear(width, shapes.NUM_CELL_CLASSES)
        self.row = torch.nn.Linear(width, shapes.GRID)
        self.col = torch.nn.Linear(width, shapes.GRID)


def _vision_features(model, pixels: torch.Tensor) -> torch.Tensor:
    vt = model.model.vision_tower
    out = vt(pixels, output_hidden_states=True)
    return out.hidden_states[model.config.vision_feature_layer][:, 1:]


def train_vision(
    model, st: StageSpec, seed: int, log, bar, device: torch.device | str = "cpu"
) -> dict[str, float]:
    heads = VisionHeads(model.config.vision_config.hidden_size).to(device)
    params = list(model.model.vision_tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=st.lr, weight_decay=0.0)
    grid = torch.arange(shapes.NUM_CELLS, device=device)
    acc = 0.0
    for step in range(st.steps):
        samples = shapes.make_batch(10_000_000 + step, st.batch, tasks=st.tasks)
        labels = torch.as_tensor(shapes.stack_cell_labels(samples)).reshape(len(samples), -1).to(device)
        feats = _vision_features(model, pixel_values(shapes.stack_images(samples)).to(device))
        loss = F.cross_entropy(heads.cls(feats).flatten(0, 1), labels.flatten())
        loss = loss + 0.2 * F.cross_entropy(
            heads.row(feats).flatten(0, 1), (grid // shapes.GRID).repeat(len(samples))
        )
        loss = loss + 0.2 * F.cross_entropy(
            heads.col(feats).flatten(0, 1), (grid % shapes.GRID).repeat(len(samples))
        )
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, st.steps, st.lr, min(st.warmup, st.steps // 5 + 1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            obj = labels != 0
            pred = heads.cls(feats).argmax(-1)
            acc = float((pred[obj] == labels[obj]).float().mean()) if obj.any() else 1.0
        log({"stage": st.name, "step": step, "loss": float(loss.detach()), "object_patch_acc": acc})
        bar.update(1)
        bar.set_postfix(stage=st.name, loss=f"{float(loss.detach()):.3f}", patch_acc=f"{acc:.3f}")
    return {"object_patch_acc": acc}


def train_qa(
    model, st: StageSpec, seed: int, log, bar, evaluate_fn=None, eval_every: int = 0,
    structure: Structure = DENSE, device: torch.device | str = "cpu",
) -> None:  # fmt: skip
    for p in model.parameters():
        p.requires_grad_(False)
    extra = list(structure.projectors.parameters()) if structure.projectors is not None else []
    groups = [
        {"params": list(model.model.multi_modal_projector.parameters()) + list(model.model.language_model.parameters())
         + list(model.lm_head.parameters()) + extra, "lr": st.lr, "base": st.lr},
    ]  # fmt: skip
    if st.vision_lr > 0:
        groups.append(
            {"params": list(model.model.vision_tower.parameters()), "lr": st.vision_lr, "base": st.vision_lr}
        )
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    opt = torch.optim.AdamW(groups, weight_decay=0.01, betas=(0.9, 0.98))
    cur = shapes.Curriculum(**st.curriculum) if st.curriculum else None
    offset = {"align": 20_000_000, "finetune": 40_000_000}.get(st.name, 60_000_000)
    window: list[float] = []
    for step in range(st.steps):
        samples = shapes.make_batch(offset + step, st.batch, tasks=st.tasks, curriculum=cur)
        extras = [extra_questions(s, random.Random(seed * 1_000_003 + s.seed), st.extras) for s in samples]
        batch = pack(samples, extras, eos=st.eos).to(device)
        if st.aux_weight > 0:
            logits, aux = forward_packed(
                model, batch, st.aux_layers, st.caption, st.copy_layer, st.option_layer, structure
            )
            loss = F.cross_entropy(logits, batch.answers) + st.aux_weight * aux
        else:
            logits = forward_packed(model, batch, structure=structure)
            loss = F.cross_entropy(logits, batch.answers)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, st.steps, g["base"], st.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        with torch.no_grad():
            ans = batch.is_answer
            acc = float((logits[ans].argmax(-1) == batch.answers[ans]).float().mean())
        window.append(acc)
        log(
            {
                "stage": st.name,
                "step": step,
                "loss": float(loss.detach()),
                "train_acc": acc,
                "questions": len(batch.answers),
            }
        )
        bar.update(1)
        bar.set_postfix(stage=st.name, loss=f"{float(loss.detach()):.3f}", acc=f"{np.mean(window[-50:]):.3f}")
        if evaluate_fn is not None and eval_every and (step + 1) % eval_every == 0:
            model.eval()
            res = evaluate_fn(model)
            model.train()
            log({"stage": st.name, "step": step, "eval": res})
            bar.write(
                f"[{st.name} {step + 1}] "
                + " ".join(f"{k.removeprefix('shapes_')}={v:.3f}" for k, v in res.items())
            )


def evaluate(
    model,
    split: str = "ci",
    tasks: Sequence[str] = shapes.TASKS,
    batch: int = 40,
    structure: Structure = DENSE,
) -> dict[str, float]:
    """Greedy first-token accuracy per task (the answer is one token)."""
    out = {}
    was = model.training
    model.eval()
    with torch.no_grad():
        for task in tasks:
            samples = shapes.generate_split(task, split)
            correct = 0
            for i in range(0, len(samples), batch):
                chunk = samples[i : i + batch]
                packed = pack(chunk, [[] for _ in chunk]).to(model.device)
                pred = forward_packed(model, packed, structure=structure).argmax(-1)
                correct += int((pred == packed.answers).sum())
            out[task] = correct / len(samples)
    model.train(was)
    return out


@contextlib.contextmanager
def deterministic():
    """Deterministic kernels for the duration (serial accumulation in the backward of indexing on
    CPU; on CUDA the cuBLAS workspace setting that deterministic mode needs)."""
    before = torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def train_tiny(
    out_dir: Path,
    recipe: Recipe | None = None,
    progress: bool = True,
    eval_split: str = "ci",
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Run every stage and save the checkpoint (HF save_pretrained) plus processor and log; a
    ``saisa`` recipe also saves its per-layer projectors (``saisa_projectors.safetensors``), a
    ``vica`` recipe names its T2V layers in ``seebench.json``: the loader and methods read both."""
    from tqdm import tqdm

    recipe = recipe or Recipe.default()
    torch.manual_seed(recipe.seed)
    random.seed(recipe.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "training_log.jsonl"
    log_f = log_path.open("w")
    t0 = time.time()

    def log(entry: dict[str, Any]) -> None:
        entry["time_s"] = round(time.time() - t0, 2)
        log_f.write(json.dumps(entry) + "\n")

    model = build_model(recipe.model, seed=recipe.seed)
    structure = Structure(recipe.arch, tuple(recipe.t2v_layers))
    if recipe.arch == "yopo":
        structure = yopo_structure(recipe.model)
    if recipe.arch == "saisa":
        from harness.models.saisa import make_projectors

        torch.manual_seed(recipe.seed + 1)
        cfg = model.config
        structure.projectors = make_projectors(
            cfg.vision_config.hidden_size, cfg.text_config.hidden_size, cfg.text_config.num_hidden_layers
        )
        structure.projectors.to(device)
    model.to(device)
    model.train()
    total = sum(st.steps for st in recipe.stages)
    summary: dict[str, Any] = {"recipe": recipe.as_dict(), "device": str(torch.device(device))}

    def evaluate_fn(m):
        return evaluate(m, eval_split, structure=structure)

    with (
        deterministic(),
        tqdm(total=total, disable=not progress, desc="train tiny-llava", dynamic_ncols=True) as bar,
    ):
        for st in recipe.stages:
            if st.name == "vision":
                summary["vision"] = train_vision(model, st, recipe.seed, log, bar, device)
            else:
                train_qa(model, st, recipe.seed, log, bar, evaluate_fn, recipe.eval_every, structure, device)
    model.eval()
    summary["wall_time_s"] = round(time.time() - t0, 1)
    summary["eval_" + eval_split] = evaluate_fn(model)
    log({"final": summary["eval_" + eval_split]})
    log_f.close()
    model.to("cpu")
    model.save_pretrained(out_dir)
    tk.save_processor(out_dir)
    from .model import file_sha256

    meta: dict[str, Any] = {
        "weights": "pretrained",
        "trained_by": "harness train tiny-llava"
        + ("" if recipe.arch == "dense" else f" --arch {recipe.arch}"),
        "generator": shapes.GENERATOR_VERSION,
        "sha256": {"model.safetensors": file_sha256(out_dir / "model.safetensors")},
    }
    if recipe.arch == "saisa":
        from harness.models.saisa import save_projectors

        save_projectors(out_dir / "saisa_projectors.safetensors", structure.projectors)
        meta["architecture"] = "saisa"
        meta["sha256"]["saisa_projectors.safetensors"] = file_sha256(out_dir / "saisa_projectors.safetensors")
    elif recipe.arch == "vica":
        meta["architecture"] = "vica"
        meta["vica"] = {"t2v_layers": list(recipe.t2v_layers)}
    elif recipe.arch == "yopo":  # plain LLaVA weights; the yopo method's defaults are these rules
        meta["architecture"] = "yopo"
        meta["yopo"] = {"window": structure.window, "k_cut": structure.k_cut, "ffn_width": structure.ffn_width,
                        "head_mask": None}  # fmt: skip
    meta.update(summary)
    (out_dir / "seebench.json").write_text(json.dumps(meta, indent=2))
    (out_dir / "README.md").write_text(model_card(meta))
    return summary


def model_card(meta: dict[str, Any]) -> str:
    """A short model card: what it is, how it was made, what it scores."""
    rec = meta["recipe"]
    stages = "\n".join(
        f"| {st['name']} | {st['steps']} | {st['batch']} | {st['lr']} | {st.get('extras', 0)} | "
        f"{'yes' if st.get('aux_weight', 0) > 0 else 'no'} | {'yes' if st.get('caption') else 'no'} |"
        for st in rec["stages"]
    )
    evals = meta.get("eval_ci", {})
    acc = "\n".join(f"| {t} | {v:.3f} |" for t, v in evals.items())
    arch = rec.get("arch", "dense")
    title = "tiny-llava (seebench embedded default)" if arch == "dense" else f"tiny-llava-{arch} (seebench)"
    if arch == "vica":
        title += f"\n\nThe {arch.upper()} structure in training: text reads visual K/V only in layers {rec['t2v_layers']}."
    elif arch == "saisa":
        title += "\n\nThe SAISA structure in training: one projector per decoder layer (`saisa_projectors.safetensors`)."
    elif arch == "yopo":
        y = meta["yopo"]
        title += (
            f"\n\nThe YOPO structure in training (the `yopo` method's rules): {y['window']} x {y['window']} visual"
            f" window, visual FFN of the first {y['ffn_width']} channels, no head serving visual tokens"
            f" from layer {y['k_cut']} on, every head serving them before."
        )
    return f"""# {title}

A `LlavaForConditionalGeneration` trained from scratch on the procedural `shapes` suite
({meta["generator"]}) by `{meta["trained_by"]}` (seed {rec["seed"]}, on {meta.get("device", "cpu")}, wall time {meta["wall_time_s"]} s).
Model: {rec["model"]}.

| stage | steps | batch (scenes) | lr | extra questions / scene | attention supervision | caption loss |
|---|---|---|---|---|---|---|
{stages}

Accuracy on the `ci` split at the end of training (greedy first token; the evaluation figures of
record come from `harness run --suite tiny` on the 400-question `test` splits):

| task | accuracy |
|---|---|
{acc}

Weights sha256: `{meta["sha256"]["model.safetensors"]}`.
"""
