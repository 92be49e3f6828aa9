"""``harness train tiny-llava``: the training loops, ``train_tiny`` and the model card.

``train_vision`` pretrains the vision tower on per-patch labels, ``train_qa`` trains on packed
question batches (``packing.py``) under a training structure (``structures.py``), ``evaluate``
scores greedy first-token accuracy; ``train_tiny`` runs a ``Recipe`` (``recipe.py``) under
``deterministic()`` and saves the checkpoint.  What the recipe is and how it was found:
``docs/tiny-lab.md``."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from . import shapes
from . import tokenizer as tk
from .model import build_model, file_sha256, pixel_values
from .packing import pack
from .questions import extra_questions
from .recipe import Recipe, StageSpec
from .structures import ARCH_BY_NAME, DENSE, Structure, forward_packed, vision_features


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
        feats = vision_features(model, pixel_values(shapes.stack_images(samples)).to(device))
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
            # without auxiliary losses forward_packed returns the logits alone
            logits = cast(torch.Tensor, forward_packed(model, batch, structure=structure))
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
                pred = cast(torch.Tensor, forward_packed(model, packed, structure=structure)).argmax(-1)
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
    """Run every stage and save the checkpoint (HF save_pretrained) plus processor, log, model card
    and ``seebench.json``; the recipe's architecture adds its own files and entries (``Arch.save``:
    SAISA's per-layer projectors, ViCA's T2V layers, YOPO's rules), where the loader and methods
    read them."""
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
    arch = ARCH_BY_NAME[recipe.arch]
    structure = arch.structure(recipe.model, tuple(recipe.t2v_layers))
    arch.add_parameters(structure, model, recipe.seed, device)
    model.to(device)  # pyright: ignore[reportArgumentType]  # transformers' wrapped Module.to
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
    model.to("cpu")  # pyright: ignore[reportArgumentType]
    model.save_pretrained(out_dir)
    tk.save_processor(out_dir)
    meta: dict[str, Any] = {
        "weights": "pretrained",
        "trained_by": "harness train tiny-llava"
        + ("" if recipe.arch == "dense" else f" --arch {recipe.arch}"),
        "generator": shapes.GENERATOR_VERSION,
        "sha256": {"model.safetensors": file_sha256(out_dir / "model.safetensors")},
    }
    arch.save(out_dir, structure, meta)
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
    note = ARCH_BY_NAME[arch].card(rec, meta)
    if note:
        title += "\n\n" + note
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
