"""DART: keep visual tokens that duplicate the pivots least (docs/baselines.md §2.4).

Follows the released code (``get_retained_image_token`` in
``llava/model/language_model/modeling_llama_self.py`` of the public fork ``xqy1111111/DART``,
commit 0247657060a42dd329d6f273455bfad05d5b2c74).  After layer K-1: pivots = the 4 visual tokens
and the 4 text tokens (after the image) with the largest L1 norm of their post-RoPE key (each in
descending-norm order, as ``topk`` returns them).  Each of the 8 pivots once, in the official
iteration order (below), takes among the visual tokens not yet kept (visual pivots excluded) the
``floor(B / 8)`` with the lowest cosine similarity to the pivot's final-normed hidden state.
Kept = 4 + 8 x floor(B / 8) visual tokens (e.g. 132 at B = 128; the paper's "B tokens" is the
code's ``max_num_trunction``, which the code divides by 8 without first subtracting the 4 visual
pivots: where the paper's budget and the code's count differ, this follows the code).  No
attention scores needed; positions keep.

Pivot order.  The code iterates ``list(set(image_indices + query_indices))``: the order CPython
gives a set of 8 small ints, i.e. the slots of its hash table (hash(n) = n; an 8-slot table,
resized to 32 slots on the 5th insert, linear probing of 9 then perturbation), keyed by the
pivots' absolute sequence positions ``image_token_start_index + i`` (visual) and
``image_token_start_index + image_token_length + t`` (text).  :func:`set_order` replays that table
on the device with static shapes.  The positions start at the sample's own image start (its tokens
before the image, from the host layout), which is the official constant 35 on LLaVA-1.5 with
``vicuna_v1``; the parameter ``image_token_start_index`` fixes it as the official knob does.  A greedy pick depends on this order only when two pivots want the same
token.  The replay was checked against CPython 3.11's ``set`` (``setobject.c``: the table layout
has no hash randomisation for ints).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from harness.models.method import Method, MethodError
from harness.models.plan import VisualPlan
from harness.models.selection import SampleCounts, SelectContext, slots_of, top_k_slots

from .common import kept_count

PIVOTS = 4
LINEAR_PROBES = 9  # CPython setobject.c
PERTURB_SHIFT = 5
JUMPS = 48  # probe rounds replayed: the 5i+1 recurrence visits every slot of a <= 32-slot table


def _probes(h: torch.Tensor, mask: int) -> torch.Tensor:
    """[B, n, JUMPS * 10] the slots CPython's set probes, in order, for int keys ``h`` [B, n]."""
    i, perturb = h & mask, h.clone()
    run = torch.arange(LINEAR_PROBES + 1, device=h.device)
    out = []
    for _ in range(JUMPS):
        linear = (i + LINEAR_PROBES <= mask)[..., None]
        out.append(torch.where(linear, i[..., None] + run, i[..., None]))
        perturb = perturb >> PERTURB_SHIFT
        i = (i * 5 + 1 + perturb) & mask
    return torch.cat(out, -1)


def _insert(occ: torch.Tensor, probes: torch.Tensor, ok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Insert one key per row (``ok`` [B]) along its ``probes`` [B, P]; (occupancy, slot)."""
    free = ~torch.gather(occ, 1, probes)
    slot = torch.gather(probes, 1, free.to(torch.int8).argmax(1, keepdim=True))[:, 0]
    occ = occ | (F.one_hot(slot, occ.shape[1]).bool() & ok[:, None])
    return occ, slot


def set_order(
    h: torch.Tensor, ok: torch.Tensor, resize: torch.Tensor, trigger: list[torch.Tensor]
) -> torch.Tensor:
    """Iteration order of ``set(keys)`` for int keys ``h`` [B, n] inserted left to right (``ok``
    marks real keys), as [B, n] indices into the keys (absent keys last).  ``resize`` [B] (host:
    the row has >= 5 keys) and ``trigger[j]`` [B] bool (the insert at j is the row's 5th key) come
    from the host counts.  CPython: an 8-slot table grows to 32 slots once fill*5 >= mask*3, by
    re-inserting its keys in slot order."""
    b, n = h.shape
    dev = h.device
    big = torch.full((b,), 1 << 20, dtype=torch.long, device=dev)
    p8, p32 = _probes(h, 7), _probes(h, 31)
    occ8 = torch.zeros(b, 8, dtype=torch.bool, device=dev)
    slot8 = torch.empty(b, n, dtype=torch.long, device=dev)
    small = ok.clone()  # keys in the 8-slot table: up to and including the row's 5th key
    after = torch.zeros_like(ok)  # keys inserted into the 32-slot table after the resize
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    for j in range(n):
        small[:, j] = ok[:, j] & ~done
        after[:, j] = ok[:, j] & done
        occ8, s = _insert(occ8, p8[:, j], small[:, j])
        slot8[:, j] = torch.where(small[:, j], s, big)
        done = done | trigger[j]
    # resize: re-insert the 8-slot table in slot order, then the keys that came after
    moved = torch.sort(slot8, dim=1, stable=True).indices  # keys by their 8-table slot
    occ32 = torch.zeros(b, 32, dtype=torch.bool, device=dev)
    slot32 = torch.full((b, n), 1 << 20, dtype=torch.long, device=dev)
    for j in range(n):
        key = moved[:, j : j + 1]
        take = torch.gather(small, 1, key)[:, 0] & resize
        probes = torch.gather(p32, 1, key[..., None].expand(-1, -1, p32.shape[-1]))[:, 0]
        occ32, s = _insert(occ32, probes, take)
        slot32 = slot32.scatter(1, key, torch.where(take, s, torch.gather(slot32, 1, key)[:, 0])[:, None])
    for j in range(n):
        occ32, s = _insert(occ32, p32[:, j], after[:, j])
        slot32[:, j] = torch.where(after[:, j], s, slot32[:, j])
    final = torch.where(resize[:, None], slot32, slot8)
    return torch.sort(final, dim=1, stable=True).indices


@dataclass(frozen=True)
class DuplicationPivots:
    budget: float
    image_token_start_index: int | None = None  # None: each sample's own image start
    positions: str = "keep"
    needs: frozenset = frozenset({"keys", "hidden_out"})

    def overhead_macs(self, n_visual: int, hidden: int) -> float:
        """Cosine similarities of every present visual token to the 8 pivots (counted as overhead)."""
        return float(2 * PIVOTS * n_visual * hidden)

    def start(self, c: SampleCounts) -> int:
        """The image's first position the pivot order is keyed by (the official knob, else the
        sample's own: its tokens before the image, 35 on LLaVA-1.5 with ``vicuna_v1``)."""
        return c.n_system if self.image_token_start_index is None else self.image_token_start_index

    def plan_counts(self, c: SampleCounts) -> tuple[int, int, list[int]]:
        """(visual pivots, text pivots, tokens the j-th pivot visited adds) for one sample, on the
        host: floor(B / 8) each (``TOKEN_TOPK = max_num_trunction // 8`` in the code)."""
        per = kept_count(self.budget, c.n_visual) // (2 * PIVOTS)
        n_vp, n_tp = min(PIVOTS, c.present), min(PIVOTS, c.n_text)
        untaken = c.present - n_vp
        adds = []
        for _ in range(n_vp + n_tp):
            adds.append(min(per, untaken))
            untaken -= adds[-1]
        return n_vp, n_tp, adds

    def kept(self, counts: SampleCounts) -> int:
        n_vp, _, adds = self.plan_counts(counts)
        return n_vp + sum(adds)

    def select(self, ctx: SelectContext):
        norm = ctx.extra["final_norm"]
        assert ctx.keys is not None and ctx.text_keys is not None and ctx.text_valid is not None  # "keys"
        b, v = ctx.valid.shape
        t = ctx.text_valid.shape[1]
        dev = ctx.valid.device
        nv, nt = min(PIVOTS, v), min(PIVOTS, t)
        n = nv + nt
        plans = [self.plan_counts(c) for c in ctx.counts]
        widths = [max([0, *(adds[j] for _, _, adds in plans if j < len(adds))]) for j in range(n)]
        # host counts, uploaded once: real pivots, the 5th-key insert, picks per visit, text offset
        host = np.zeros((3 + n, b, max([n, *widths])), dtype=bool)
        offset = np.zeros((b, 1), dtype=np.int64)
        start = np.zeros((b, 1), dtype=np.int64)
        for i, (n_vp, n_tp, adds) in enumerate(plans):
            host[0, i, :n_vp] = True
            host[0, i, nv : nv + n_tp] = True
            real = [*range(n_vp), *range(nv, nv + n_tp)]  # the keys in insertion order
            if len(real) >= 5:  # CPython grows the 8-slot table on the 5th insert
                host[1, i, real[4]] = True
                host[2, i, 0] = True
            for j, a in enumerate(adds):
                host[3 + j, i, :a] = True
            start[i, 0] = self.start(ctx.counts[i])
            offset[i, 0] = start[i, 0] + ctx.counts[i].n_visual
        masks = torch.from_numpy(host).to(dev)  # one upload of host counts
        text_pos = torch.from_numpy(offset).to(dev) + torch.arange(t, device=dev)
        image_pos = torch.from_numpy(start).to(dev)
        ok = masks[0, :, :n]
        v_piv = top_k_slots(ctx.keys.float().abs().sum(-1).masked_fill(~ctx.valid, float("-inf")), nv)
        t_piv = top_k_slots(
            ctx.text_keys.float().abs().sum(-1).masked_fill(~ctx.text_valid, float("-inf")), nt
        )
        # the pivots' absolute positions, visual (descending key norm) then text: the set's keys
        h = torch.cat(
            [
                image_pos + torch.gather(ctx.visual_index, 1, v_piv),
                torch.gather(text_pos, 1, t_piv),
            ],
            1,
        )
        order = set_order(h, ok, masks[2, :, 0], [masks[1, :, j] for j in range(n)])
        hv = F.normalize(norm(ctx.hidden).float(), dim=-1)
        ht = F.normalize(norm(ctx.text_hidden).float(), dim=-1)
        pv = torch.gather(hv, 1, v_piv[..., None].expand(-1, -1, hv.shape[-1]))
        pt = torch.gather(ht, 1, t_piv[..., None].expand(-1, -1, ht.shape[-1]))
        piv = torch.gather(torch.cat([pv, pt], 1), 1, order[..., None].expand(-1, -1, hv.shape[-1]))
        taken = (~ctx.valid) | torch.zeros_like(ctx.valid).scatter(1, v_piv, ok[:, :nv])
        for j in range(n):
            if not widths[j]:
                continue
            sim = (hv @ piv[:, j, :, None])[..., 0].masked_fill(taken, float("inf"))
            pick = torch.sort(sim, dim=1, stable=True).indices[:, : widths[j]]
            taken = taken | torch.zeros_like(taken).scatter(1, pick, masks[3 + j, :, : widths[j]])
        return slots_of(taken & ctx.valid, ctx.k)


class DART(Method):
    name: ClassVar[str] = "dart"
    stage: ClassVar = "in-llm"
    description: ClassVar[str] = "keep the visual tokens least similar to key-norm pivots (duplication-aware)"
    reference: ClassVar[dict[str, str]] = {
        "repository": "xqy1111111/DART",
        "commit": "0247657060a42dd329d6f273455bfad05d5b2c74",
        "file": "llava/model/language_model/modeling_llama_self.py",
        "rule": "get_retained_image_token",
    }
    k: int = Field(2, ge=1, description="first layer that runs on the kept tokens")
    budget: float = Field(
        128, gt=0, description="B of 576: keeps 4 + 8 x floor(B/8) visual tokens from layer K on"
    )
    image_token_start_index: int | None = Field(
        None, ge=0, description="first image position the official pivot order is keyed by "
        "(default: each sample's own; the official code fixes 35, LLaVA-1.5 with vicuna_v1)"
    )  # fmt: skip

    def validate_for(self, backbone: Any) -> None:
        if self.k >= backbone.num_layers:
            raise MethodError(f"method 'dart': k={self.k} must be < the {backbone.num_layers} layers")

    def apply(self, plan: VisualPlan, backbone: Any) -> VisualPlan:
        li = self.k - 1
        sel = DuplicationPivots(self.budget, self.image_token_start_index)
        return plan.with_layer(li, replace(plan.layers[li], drop_after=sel))
