"""ToMe inside the CLIP ViT: bipartite soft matching merges in the layers LLaVA uses (docs/baselines.md §3.7).

Token Merging (Bolya et al., ICLR 2023), per CLIP encoder layer l = 0 .. w-1 (w = LLaVA's feature
layer: 0..22 on LLaVA-1.5, whose last layer is unused):
1. x = x + attn(ln1(x)) with proportional attention: log(size) added to every key's logits.
2. Bipartite soft matching on the layer's keys (mean over heads, L2-normalised): the tokens, in
   their current order (CLS first), alternate into A (even) and B (odd); each a in A finds its most
   similar b in B (CLS is protected: never merged); the r_l edges with the highest similarity merge
   a into b (ties: lower a first).  A merged token is the size-weighted average
   x_b = (s_b x_b + sum s_a x_a) / (s_b + sum s_a); sizes add.  The new order is the official
   code's (``tome/merge.py`` ``bipartite_soft_matching`` with a class token): the unmerged A tokens
   in A order (CLS first), then every B token in B order; the next layer splits that order again.
3. x = x + mlp(ln2(x)).
Schedule (seebench, published for LightCompress only as r = 16 per layer): n - k merges spread as
evenly as possible over the w layers, earlier layers taking the remainder: on LLaVA-1.5 budget 192
-> 384 merges (17 x 16 + 16 x 7), 128 -> 448, 64 -> 512.  A layer whose quota exceeds one round
(|A| - 1 merges) repeats the matching on the merged tokens (their keys merged size-weighted too);
this happens only in shallow test ViTs, never on the LLaVA-1.5 schedules.

Output: the merged patch features of layer w-1 (CLS dropped, as LLaVA does), sorted once at the
end by the smallest original patch index of each group, which is also the token's anchor (grid coordinate); then the
projector.  Positions renumbered (pre-LLM policy); token sizes are not passed to the LLM.

The merging runs inside the vision tower's own forward: the plan exposes the method as its tower
(``VisualPlan.tower``), the backbone's ``encode(inputs, tower=...)`` calls ``run_tower`` in place of
its dense layer loop, with the HF layer modules (``layer_norm1``, ``self_attn`` with the log-size
additive mask, ``layer_norm2``, ``mlp``), and projects the merged tokens with its own projector.  So
one tower pass, with merging, replaces the dense one, and its FLOPs are the tower's (per-layer token
counts in ``tower_tokens``); the matching itself is the method's overhead.  A batch encoded without
the hook (a dense ``encode``) still works: ``reduce`` then runs the merged tower from the layer-0
input the backbone kept (``batch.extras["clip"]``), a second tower pass counted as overhead.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from harness.models.method import MethodError
from harness.models.plan import ReducedVisual

from .clip_attention import clip_state, project
from .prellm import PreLLM


def schedule(merges: int, layers: int) -> list[int]:
    """Merges per layer: as even as possible, earlier layers get the remainder."""
    return [merges // layers + (1 if i < merges % layers else 0) for i in range(layers)]


def bipartite_merge(x, size, metric, first, r):
    """One round of bipartite soft matching (CLS at position 0, ``first`` -1).

    x [t, d] states, size [t] token sizes, metric [t, c] keys, first [t] smallest original index.
    Merges r tokens of A into B; returns the four tensors for the t - r tokens in the official
    order: the unmerged A tokens in A order, then the B tokens.
    """
    m = F.normalize(metric, dim=-1)
    scores = m[0::2] @ m[1::2].T  # [|A|, |B|]
    scores[0] = -float("inf")  # CLS (position 0, in A) is never merged
    best, dst = scores.max(-1)  # first maximum: ties toward the lower b
    order = torch.sort(best, descending=True, stable=True).indices
    src, stay = order[:r], torch.sort(order[r:]).values  # unmerged A kept in A order
    dst = dst[src]

    def merged(t, reduce="sum"):
        a, b = t[0::2], t[1::2]
        idx = dst.view(-1, *[1] * (t.dim() - 1)).expand_as(a[src])
        if reduce == "amin":
            b = b.scatter_reduce(0, idx, a[src], "amin")
        else:
            b = b.scatter_add(0, idx, a[src])
        return torch.cat([a[stay], b])

    w = size[:, None]
    size_new = merged(size)
    x_new = merged(x * w) / size_new[:, None]
    metric_new = merged(metric * w) / size_new[:, None]
    return x_new, size_new, metric_new, merged(first, "amin")


class ToMe(PreLLM):
    name: ClassVar[str] = "tome"
    description: ClassVar[str] = "token merging (bipartite soft matching) inside the CLIP ViT layers"
    reference: ClassVar[dict[str, str]] = {
        "repository": "facebookresearch/ToMe",
        "commit": "af95e4b1befa172dadccd8c81e223b10090f9579",
        "file": "tome/merge.py",
        "rule": "bipartite_soft_matching, merge_wavg",
    }
    in_tower: ClassVar[bool] = True  # runs inside the backbone's tower forward (``run_tower``)

    def run_tower(self, bb, h: torch.Tensor, layers) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """The tower's layer loop with merging, per image: h [n_img, t, d] (layer-0 input, CLS
        first) -> per image (merged patch states [k, d] of the last layer, anchors [k], matching
        MACs).  Called by the backbone inside its own vision forward."""
        if bb.family != "llava":
            raise MethodError(
                "method 'tome' merges inside the vision tower: it needs a LLaVA-1.5 backbone with a CLIP tower"
            )
        k = self.kept(int(h.shape[1]) - 1)
        return [_merged_tower(layers, x, k, modules=True) for x in h]

    def tower_tokens(self, n_patches: int, n_layers: int) -> list[tuple[int, int]]:
        """(attention tokens, MLP tokens) per tower layer for ``n_patches`` patches (CLS counted)."""
        t, out = n_patches + 1, []
        for r in schedule(n_patches - self.kept(n_patches), n_layers):
            out.append((t, t - r))
            t -= r
        return out

    def reduce(self, bb, batch):
        done = batch.extras.get("tower")
        if done is not None and all(d is not None for d in done):  # merged inside the tower forward
            return [ReducedVisual(*d) for d in done]
        return super().reduce(bb, batch)

    def overhead_macs(self, bb, batch):
        done = batch.extras.get("tower_macs")
        if done is not None:  # the tower pass is the tower's; only the matching is the method's
            return float(done[0])
        return super().overhead_macs(bb, batch)

    def reduce_one(self, bb, batch, i, k):
        state = clip_state(batch, i, self.name)
        layers = bb.model.model.vision_tower.encoder.layers[: state["layer"] + 1]
        x, first, macs = _merged_tower(layers, state["h_embed"], k, modules=False)
        tokens, pmacs = project(bb, x)
        return ReducedVisual(tokens, first), macs + pmacs


def _merged_tower(layers, x, k: int, modules: bool):
    """Run ``layers`` on one image's tokens x [t, d] (CLS first) merging down to k patches.

    ``modules``: through the layer modules (inside the tower forward: the tower's own FLOPs, and
    the returned MACs are the matching alone); else with ``F.linear`` on their weights (a second
    pass: every MAC returned).  Returns (patch states [k, d], anchors [k], MACs)."""
    t = x.shape[0]
    size = x.new_ones(t)
    first = torch.arange(-1, t - 1, device=x.device)
    macs = 0.0
    for layer, r in zip(layers, schedule(t - 1 - k, len(layers)), strict=True):
        x, metric, cost = (_module_attention if modules else _attention)(layer, x, size)
        macs += 0.0 if modules else cost
        while r > 0:  # one round unless the quota exceeds |A| - 1 (shallow test ViTs)
            n_a, n_b = (x.shape[0] + 1) // 2, x.shape[0] // 2
            step = min(r, n_a - 1)  # CLS is in A and never merges
            macs += float(n_a * n_b * metric.shape[1])
            x, size, metric, first = bipartite_merge(x, size, metric, first, step)
            r -= step
        if modules:
            x = x + layer.mlp(layer.layer_norm2(x[None]))[0]
        else:
            x, cost = _mlp(layer, x)
            macs += cost
    o = torch.argsort(first[1:]) + 1  # the output in patch order (of each group's first patch)
    return x[o], first[o], macs


def _module_attention(layer, x, size):
    """x + the layer's own self-attention module on ln1(x), log(size) added to the key logits;
    the keys (its ``k_proj`` output, read by a forward hook) averaged over heads [t, d_head]."""
    attn = layer.self_attn
    seen = []
    hook = attn.k_proj.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        o, _ = attn(hidden_states=layer.layer_norm1(x[None]), attention_mask=size.log().view(1, 1, 1, -1))
    finally:
        hook.remove()
    t = x.shape[0]
    keys = seen[0][0].view(t, attn.num_heads, -1).mean(1)
    return x + o[0], keys, 0.0


def _attention(layer, x, size):
    """x + self-attention(ln1(x)) with log(size) added to the key logits; also the keys averaged over
    heads [t, d_head] and the MACs."""
    attn = layer.self_attn
    h = layer.layer_norm1(x)
    t, d = x.shape
    heads = attn.num_heads

    def split(w):
        return F.linear(h, w.weight, w.bias).view(t, heads, d // heads).transpose(0, 1)[None]

    q, k, v = split(attn.q_proj), split(attn.k_proj), split(attn.v_proj)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=size.log().view(1, 1, 1, t), scale=attn.scale)
    o = F.linear(o[0].transpose(0, 1).reshape(t, d), attn.out_proj.weight, attn.out_proj.bias)
    return x + o, k[0].mean(0), float(4 * t * d * d + 2 * t * t * d)


def _mlp(layer, x):
    mlp = layer.mlp
    h = F.linear(layer.layer_norm2(x), mlp.fc1.weight, mlp.fc1.bias)
    h = F.linear(mlp.activation_fn(h), mlp.fc2.weight, mlp.fc2.bias)
    return x + h, float(2 * x.shape[0] * mlp.fc1.in_features * mlp.fc1.out_features)
