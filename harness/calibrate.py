"""Calibration commands: ShortV's Layer Contribution order and YOPO's visual head masks.

ShortV (docs/seed-methods.md §4.4): for each calibration sample, the last-prompt-position logits of the
dense model and of the model with visual tokens frozen (K/V-only) in layer i alone;
LC_i = KL(P_frozen,i || P_dense), averaged over samples; layers sorted by ascending LC.

YOPO (docs/seed-methods.md §3.4): per sample, layer and head, the attention mass on visual keys over the
mass on system + text keys, summed over all prefill query rows (computed with one extra SDPA call
whose values are the visual-key indicator, no eager attention); a head is active on a sample if the
ratio exceeds tau, and kept if active on more than ``vote`` of the samples; layers 0-1 keep all heads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from harness.models.backbones.base import Backbone, collate
from harness.models.batch import TokenType
from harness.models.executor import Executor
from harness.models.plan import KV_ONLY, VisualPlan

from .errors import HarnessError


def calibration_inputs(bb: Backbone, tasks: list[str], limit: int) -> tuple[list[dict[str, Any]], list[str]]:
    """``limit`` samples per task from lmms-eval tasks (seebench's shapes tasks included), in order,
    as single-sample model inputs built with the checkpoint's chat template; plus their ids."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    from harness.models.verify import chat_prompt

    from .accuracy import quiet_lmms_logging
    from .lmms_entry import TASKS_DIR

    quiet_lmms_logging()
    tm = TaskManager(
        "ERROR", include_path=TASKS_DIR, include_defaults=not all(t.startswith("shapes") for t in tasks)
    )
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        raise HarnessError(
            f"unknown calibration task(s) {unknown}: give lmms-eval task names, e.g. shapes_exist_ci"
        )
    inputs, ids = [], []
    for name, task in get_task_dict(tasks, tm).items():
        docs = task.test_docs() if task.has_test_docs() else task.validation_docs()
        for i, doc in enumerate(docs):
            if i >= limit:
                break
            images = task.doc_to_visual(doc)
            prompt = chat_prompt(bb, task.doc_to_text(doc))
            inputs.append(bb.build_inputs([prompt], [images[0]]))
            ids.append(f"{name}/{doc.get('id', i) if isinstance(doc, dict) else i}")
    return inputs, ids


def _batches(bb: Backbone, inputs: list[dict[str, Any]], size: int = 8):
    for i in range(0, len(inputs), size):
        chunk = inputs[i : i + size]
        yield bb.encode(collate(bb, chunk) if len(chunk) > 1 else chunk[0])


def shortv_layer_contribution(bb: Backbone, inputs: list[dict[str, Any]]) -> list[float]:
    """LC per layer, averaged over the samples (KL(P_frozen || P_dense) at the last position)."""
    ex = Executor(bb)
    lc = torch.zeros(bb.num_layers)
    n = 0
    for batch in _batches(bb, inputs):
        dense = F.log_softmax(ex.prefill(batch, cache_extra=None).logits, -1)
        for i in range(bb.num_layers):
            plan = VisualPlan.dense(bb.num_layers).with_layer(i, KV_ONLY)
            frozen = F.log_softmax(ex.prefill(batch, plan, cache_extra=None).logits, -1)
            lc[i] += (frozen.exp() * (frozen - dense)).sum(-1).sum()
        n += batch.batch_size
    return (lc / max(n, 1)).tolist()


def yopo_head_masks(
    bb: Backbone, inputs: list[dict[str, Any]], tau: float, vote: float
) -> tuple[list[list[int]], list[list[float]]]:
    active = torch.zeros(bb.num_layers, bb.num_heads)
    n = 0

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

    ex = Executor(bb, observer=observe)
    for batch in _batches(bb, inputs):
        ex.prefill(batch, cache_extra=None)
        n += batch.batch_size
    share = active / max(n, 1)
    masks = []
    for li in range(bb.num_layers):
        keep = (
            list(range(bb.num_heads)) if li < 2 else [h for h in range(bb.num_heads) if share[li, h] > vote]
        )
        masks.append(keep)
    return masks, share.tolist()


def save_calibration(model_dir: str, key: str, value: dict[str, Any]) -> Path:
    meta_path = Path(model_dir) / "seebench.json"
    if not meta_path.exists():
        raise HarnessError(
            f"--save needs a local checkpoint directory with seebench.json; '{model_dir}' has none"
        )
    meta = json.loads(meta_path.read_text())
    meta.setdefault("calibration", {})[key] = value
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta_path


def calibrate(method: str, bb: Backbone, tasks: list[str], limit: int, **kw: Any) -> dict[str, Any]:
    inputs, ids = calibration_inputs(bb, tasks, limit)
    if not inputs:
        raise HarnessError("no calibration samples: check --tasks and --limit")
    if method == "shortv":
        lc = shortv_layer_contribution(bb, inputs)
        order = sorted(range(bb.num_layers), key=lambda i: (lc[i], i))
        return {"method": "shortv", "layers": order, "lc": lc, "samples": ids}
    if method == "yopo":
        masks, share = yopo_head_masks(bb, inputs, kw.get("tau", 0.1), kw.get("vote", 0.4))
        return {"method": "yopo", "head_mask": masks, "active_share": share, "tau": kw.get("tau", 0.1),
                "vote": kw.get("vote", 0.4), "samples": ids}  # fmt: skip
    raise HarnessError(f"harness calibrate knows shortv and yopo, got '{method}'")
