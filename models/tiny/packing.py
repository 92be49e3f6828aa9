"""Packed batches: several question blocks per scene after one shared system+image prefix.

Each question block attends to the prefix and to itself only (a block-diagonal causal mask), at the
positions it would have alone, so one image forward serves several supervised answers.  A batch
also carries what the auxiliary losses read: each question's target cells, the correct option
word of a multiple-choice question, every option word with its letter, and per-token captions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import shapes
from . import tokenizer as tk
from .model import pixel_values
from .questions import QA, target_cells

VOCAB = {w: i for i, w in enumerate(tk.vocabulary())}
PREFIX_WORDS = (tk.BOS_TOKEN + " " + tk.SYSTEM_PROMPT + " USER :").split()
IMAGE_ID = VOCAB[tk.IMAGE_TOKEN]


def ids(text: str) -> list[int]:
    """The word ids of a whitespace-separated text."""
    return [VOCAB[w] for w in text.split()]


@dataclass
class Packed:
    input_ids: torch.Tensor  # [B, N]
    positions: torch.Tensor  # [B, N]
    mask: torch.Tensor  # [B, 1, N, N] bool
    answer_rows: torch.Tensor  # [Q, 2] (batch, row) of each question's last token
    answers: torch.Tensor  # [Q]
    targets: torch.Tensor  # [Q, N] bool: visual tokens the question is about
    captions: torch.Tensor  # [B, 144, 3] word ids (colour, shape/glyph, quadrant), -100 = none
    is_answer: torch.Tensor  # [Q] True: answer row; False: the EOS row after an answer
    options: torch.Tensor  # [Q, N] multiple choice: position of the correct option word
    copies: torch.Tensor  # [M, 3] (batch, option-word row, its letter's row) of every option
    pixels: torch.Tensor
    tasks: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str) -> Packed:
        """The same batch with every tensor on ``device``."""
        moved: dict[str, Any] = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()
        }
        return Packed(**moved)


def pack(samples: Sequence[shapes.Sample], extras: Sequence[list[QA]], eos: bool = False) -> Packed:
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
            name = o.shape if o.shape is not None else o.glyph
            assert name is not None  # exactly one of shape / glyph is set
            captions[i, j, 1] = VOCAB[name]
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
