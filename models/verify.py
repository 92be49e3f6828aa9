"""Executor-vs-HF checks: the figures ``harness verify`` prints.

Dense equivalence: the executor's logits equal the HF model's own forward (fp32) at batch 1 and
in a ragged batch (left padding, different prompt lengths and visual counts), and greedy
generations are identical.  Plan equivalence: ``drop`` and ``mask`` modes give the same logits
for a plan, and batched greedy answers equal batch-1 answers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .backbones.base import Backbone, collate
from .batch import TokenType
from .executor import Executor
from .plan import VisualPlan

TOLERANCE = 1e-4


@dataclass
class VerifyReport:
    backbone: str
    family: str
    weights: str
    samples: int
    visual_tokens: list[int]
    prompt_lengths: list[int]
    max_abs_diff_batch1: float
    max_abs_diff_batched: float
    greedy_tokens: int
    greedy_equal_batch1: bool
    greedy_equal_batched: bool
    tolerance: float = TOLERANCE
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.max_abs_diff_batch1 <= self.tolerance
            and self.max_abs_diff_batched <= self.tolerance
            and self.greedy_equal_batch1
            and self.greedy_equal_batched
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def verify_dense(bb: Backbone, samples: list[dict[str, Any]], max_new_tokens: int = 16) -> VerifyReport:
    """Compare the executor with the HF forward and HF generate on single-sample inputs."""
    ex = Executor(bb, "drop")
    diff1 = 0.0
    hf_logits = []
    for s in samples:
        ref = bb.hf_logits(s)[0]
        one = ex.prefill(bb.encode(s), all_logits=True).all_logits
        assert one is not None  # all_logits=True
        got = one[0]
        diff1 = max(diff1, float((ref - got).abs().max()))
        hf_logits.append(ref)
    batch_inputs = collate(bb, samples) if len(samples) > 1 else samples[0]
    batch = bb.encode(batch_inputs)
    out = ex.prefill(batch, all_logits=True)
    assert out.all_logits is not None
    diffb = 0.0
    for i, ref in enumerate(hf_logits):
        n = ref.shape[0]
        diffb = max(diffb, float((ref - out.all_logits[i, -n:]).abs().max()))
    hf_gen = [bb.hf_generate(s, max_new_tokens)[0] for s in samples]
    one = [ex.generate(bb.encode(s), max_new_tokens=max_new_tokens)[0] for s in samples]
    bat = ex.generate(batch, max_new_tokens=max_new_tokens)
    return VerifyReport(
        backbone=bb.source,
        family=bb.family,
        weights=bb.weights,
        samples=len(samples),
        visual_tokens=batch.visual_counts(),
        prompt_lengths=batch.lengths(),
        max_abs_diff_batch1=diff1,
        max_abs_diff_batched=diffb,
        greedy_tokens=max_new_tokens,
        greedy_equal_batch1=all(torch.equal(a, b) for a, b in zip(hf_gen, one, strict=True)),
        greedy_equal_batched=all(torch.equal(hf_gen[i], bat[i]) for i in range(len(samples))),
    )


@dataclass
class PlanReport:
    plan: str
    max_abs_diff_drop_mask: float
    greedy_equal_drop_mask: bool
    greedy_equal_batched_batch1: bool
    kv_bytes_drop: list[int]
    kv_bytes_mask: list[int]
    tolerance: float = TOLERANCE

    @property
    def ok(self) -> bool:
        return (
            self.max_abs_diff_drop_mask <= self.tolerance
            and self.greedy_equal_drop_mask
            and self.greedy_equal_batched_batch1
        )


def verify_plan(
    bb: Backbone, inputs: dict[str, Any], plan: VisualPlan, max_new_tokens: int = 8
) -> PlanReport:
    """drop == mask logits (last prompt token and every text position), equal greedy answers in
    both modes, and batched answers == batch-1 answers."""
    batch = bb.encode(inputs, tower=plan.tower)
    res = {}
    for mode in ("drop", "mask"):
        ex = Executor(bb, mode)
        res[mode] = (ex.prefill(batch, plan, all_logits=True, cache_extra=max_new_tokens),
                     ex.generate(batch, plan, max_new_tokens))  # fmt: skip
    (od, gd), (om, gm) = res["drop"], res["mask"]
    diff = float((od.logits - om.logits).abs().max())
    if plan.reducer is None:  # with a pre-LLM reducer the two layouts differ: compare the last token
        text = batch.token_type == TokenType.TEXT
        diff = max(diff, float((od.all_logits[text] - om.all_logits[text]).abs().max()))
    ex = Executor(bb, "drop")
    singles = torch.cat(
        [ex.generate(batch.select([i]), plan, max_new_tokens) for i in range(batch.batch_size)]
    )
    return PlanReport(
        plan=plan.name,
        max_abs_diff_drop_mask=diff,
        greedy_equal_drop_mask=torch.equal(gd, gm),
        greedy_equal_batched_batch1=torch.equal(gd, singles),
        kv_bytes_drop=od.cache.bytes_per_sample(),
        kv_bytes_mask=om.cache.bytes_per_sample(),
    )


def checkpoint_samples(bb: Backbone, n: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """Single-sample inputs for a real checkpoint, built with its own processor: noise images of
    different sizes and prompts of different lengths in the checkpoint's chat format."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(336, 336), (448, 336), (336, 560), (400, 400)]
    questions = [
        "What is in the image?",
        "Describe the colours you can see in this picture in detail, please.",
        "Count the objects.",
        "Is there anything unusual about this image? Answer briefly.",
    ]
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        img = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        prompt = chat_prompt(bb, questions[i % len(questions)])
        out.append(bb.build_inputs([prompt], [img]))
    return out


def chat_prompt(bb: Backbone, question: str) -> str:
    """The checkpoint's own chat template when it has one, else LLaVA's vicuna_v1 layout."""
    proc = bb.processor
    if proc is not None and getattr(proc, "chat_template", None):
        conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return proc.apply_chat_template(conv, add_generation_prompt=True)
    token = getattr(proc, "image_token", "<image>")
    return f"USER: {token}\n{question} ASSISTANT:"
