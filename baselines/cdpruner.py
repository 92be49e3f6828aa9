"""CDPruner: keep the visual tokens of maximal conditional diversity, chosen by a DPP (docs/baselines.md §3.6).

Kernel L = diag(r) . S . diag(r) over the visual tokens of one sample:
- S: cosine similarity of the projected visual tokens (LLM input space).
- r: instruction relevance, r_j = mean over instruction rows of (-cos(visual_j, row)), min-max
  normalised per sample as (r - min + 1e-6) / (max - min), as the released code does.  The minus sign is the authors'
  (CDPruner #9, #14, #19, #22); the 1e-6 keeps the least relevant token's kernel row non-zero, as
  in the released code.  No instruction rows: r = 1 (plain DPP on S).
Greedy MAP inference (Chen et al., 2018): keep every candidate's marginal gain d_i^2 (initially
L_ii) and one incremental Cholesky row per pick; pick argmax d_i^2 (ties: lower index), then
d_i^2 -= e_i^2 with e = (L_j - c_j . C) / d_j.  Exactly k distinct picks, no early stop; the
optional theta scaling exp(alpha r) is off, as in the released code.  Deviation, past the kernel's
rank only (k above the visual tokens' width, never on LLaVA-1.5's 576 x 4096): the released code's
gains turn to NaN there and it picks a token twice (fewer than k kept); here d_j^2 is clamped at
1e-12 and an unpicked token's gain at a floor, so the last picks go by the lowest index.

Relevance source (``relevance`` parameter, recorded in the record's params):
- ``clip`` (the released code's): the patch features LLaVA projects, through the CLIP checkpoint's
  ``post_layernorm`` and ``visual_projection`` (image embeddings), against the CLIP text tower's
  embeddings of the instruction (the prompt's text after the image, decoded with the backbone's
  tokenizer, CLIP-tokenised and cut into 77-token chunks, one text embedding per chunk).  HF LLaVA
  checkpoints ship only the vision tower, so the ``clip`` parameter names a local CLIP checkpoint
  with its text tower (the one the vision tower came from; ``harness convert`` folders can carry it
  as ``clip/``, found there when ``clip`` is not given).  LLaVA-1.5 backbones only.
- ``llm`` (the named fallback, seebench's): the projected visual tokens against the LLM input
  embeddings of the instruction rows (the T segment of the token-type map); needs no extra
  weights and works on every backbone (Qwen2-VL included).  Used when no CLIP checkpoint is found.

Published defaults: k = 192 / 128 / 64 of 576 (the ``budget`` knob).  Kept tokens in ascending
order; positions renumbered (pre-LLM policy, docs/methods.md §2.3).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from harness.models.method import MethodError
from harness.models.plan import ReducedVisual

from .clip_attention import clip_state, rows_of_type, visual_embeds
from .prellm import PreLLM

EPS = 1e-6
TEXT = 3  # TokenType.TEXT
CHUNK = 77  # CLIP's text context
FLOOR = -3e38  # lowest gain an unpicked token keeps (dpp_greedy)


@functools.lru_cache(maxsize=4)
def load_clip(path: str) -> tuple[Any, Any]:
    """(CLIPModel, its tokenizer) from a local folder, in eval mode."""
    import transformers

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise MethodError(
            f"method 'cdpruner': no CLIP checkpoint at '{path}'; give clip=DIR, a folder saved with "
            "CLIPModel.save_pretrained and its tokenizer"
        )
    model = transformers.CLIPModel.from_pretrained(folder).eval()
    return model, transformers.AutoTokenizer.from_pretrained(folder)


def relevance(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Min-max normalised mean negative cosine of each visual token [n, h] to the text rows [m, h]."""
    if text.shape[0] == 0:
        return visual.new_ones(visual.shape[0])
    rel = -(F.normalize(visual, dim=-1) @ F.normalize(text, dim=-1).T).mean(-1)
    return (rel - rel.min() + EPS) / (rel.max() - rel.min())


def dpp_greedy(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy MAP picks of a DPP with kernel [n, n], in pick order (k distinct tokens)."""
    gain = kernel.diagonal().clone()
    rows = kernel.new_zeros(k, kernel.shape[0])
    picked = torch.zeros(kernel.shape[0], dtype=torch.bool, device=kernel.device)
    picks = []
    for t in range(k):
        # first maximum: ties toward the lower index; a 1-element index, never read on the host
        j = torch.argmax(gain).view(1)
        picks.append(j)
        if t == k - 1:  # the last update would serve no further pick
            break
        e = (kernel[j][0] - rows[:t, j][:, 0] @ rows[:t]) / torch.sqrt(gain[j].clamp_min(EPS * EPS))
        rows[t] = e
        picked[j] = True
        # past the kernel's rank the gains are float noise and blow up (to -inf, then NaN); the
        # released code then picks a token twice.  Here an unpicked token's gain never falls below
        # FLOOR (picked ones are -inf), so the picks stay distinct and go by the lowest index.
        gain = torch.where(picked, -float("inf"), torch.nan_to_num(gain - e * e, nan=FLOOR).clamp_min(FLOOR))
    return torch.cat(picks)


def clip_relevance(clip: Any, tokenizer: Any, patches: torch.Tensor, text: str) -> tuple[torch.Tensor, float]:
    """Min-max normalised mean negative cosine of CLIP image embeddings of ``patches`` [n, d_vis]
    (post-layernorm + visual projection) to the CLIP text embeddings of ``text`` (77-token chunks);
    also the MACs spent (text tower, projections, cosines)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
    body = CHUNK - 2
    chunks = [
        [tokenizer.bos_token_id, *ids[i : i + body], tokenizer.eos_token_id] for i in range(0, len(ids), body)
    ]
    width = max(len(c) for c in chunks)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([c + [pad] * (width - len(c)) for c in chunks])
    mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunks])
    dev = patches.device
    text_out = clip.text_model(input_ids=input_ids.to(dev), attention_mask=mask.to(dev))
    t_emb = clip.text_projection(text_out.pooler_output)  # [chunks, p]
    v_emb = clip.visual_projection(clip.vision_model.post_layernorm(patches.to(clip.dtype)))  # [n, p]
    rel = -(F.normalize(v_emb.float(), dim=-1) @ F.normalize(t_emb.float(), dim=-1).T).mean(-1)
    rel = (rel - rel.min() + EPS) / (rel.max() - rel.min())
    tc = clip.text_model.config
    text_macs = tc.num_hidden_layers * (
        4 * width * len(chunks) * tc.hidden_size**2 + 2 * width * len(chunks) * tc.hidden_size * tc.intermediate_size
        + 2 * len(chunks) * width * width * tc.hidden_size
    )  # fmt: skip
    n, p = v_emb.shape
    macs = (
        text_macs
        + len(chunks) * t_emb.shape[1] * tc.hidden_size
        + n * patches.shape[1] * p
        + n * len(chunks) * p
    )
    return rel, float(macs)


class CDPruner(PreLLM):
    name: ClassVar[str] = "cdpruner"
    description: ClassVar[str] = "DPP over projected visual tokens, conditioned on instruction relevance"
    reference: ClassVar[dict[str, str]] = {
        "repository": "Theia-4869/CDPruner",
        "commit": "9541616c40fcd5625de1cdb8ea6c33c129eb7864",
        "file": "llava/model/llava_arch.py",
        "rule": "LlavaMetaForCausalLM.encode_images",
    }
    budget: float = Field(128, gt=0, description="visual tokens fed to the LLM, of 576")
    relevance: Literal["auto", "clip", "llm"] = Field(
        "auto", description="instruction relevance: CLIP space (the released code's), LLM input space "
        "(fallback), or auto (clip when a CLIP checkpoint is found)"
    )  # fmt: skip
    clip: str | None = Field(
        None, description="local CLIP checkpoint with its text tower (default: DIR/clip)"
    )

    def clip_folder(self, bb: Any) -> str | None:
        """The CLIP checkpoint relevance reads, or None for the LLM-space fallback."""
        p = self
        if p.relevance == "llm":
            return None
        if p.clip is not None:
            return p.clip
        beside = Path(str(getattr(bb, "source", ""))) / "clip"
        if (beside / "config.json").is_file():
            return str(beside)
        if p.relevance == "clip":
            raise MethodError(
                "method 'cdpruner': relevance='clip' needs a CLIP checkpoint with its text tower; "
                "give clip=DIR (or put it in the backbone folder as clip/)"
            )
        return None

    def relevance_source(self, bb: Any) -> str:
        return "clip" if self.clip_folder(bb) else "llm"

    def validate_for(self, bb: Any) -> None:
        """Resolves ``auto`` to the source used, so the record's params say which it was."""
        folder = self.clip_folder(bb)
        self.relevance, self.clip = ("clip" if folder else "llm"), folder
        if folder is not None and bb.family != "llava":
            raise MethodError(
                "method 'cdpruner': CLIP-space relevance needs a LLaVA-1.5 backbone with a CLIP tower"
            )

    def reduce_one(self, bb, batch, i, k):
        x = visual_embeds(batch, i)
        z = F.normalize(x.float(), dim=-1)
        n, h = x.shape
        folder = self.clip_folder(bb)
        if folder is None:
            text = rows_of_type(batch, i, TEXT).float()  # located on the host layout
            rel = relevance(x.float(), text)
            rel_macs = n * text.shape[0] * h
        else:
            clip, tokenizer = load_clip(folder)
            state = clip_state(batch, i, self.name)
            instruction = _instruction(bb, batch, i)
            rel, rel_macs = clip_relevance(clip, tokenizer, state["h_out"][1:], instruction)
        kernel = rel[:, None] * (z @ z.T) * rel[None, :]
        keep = torch.sort(dpp_greedy(kernel, k)).values
        macs = n * n * h + rel_macs + n * (k - 1) * (k - 2) // 2  # S, relevance, DPP
        return ReducedVisual(x[keep], keep), float(macs)


def _instruction(bb: Any, batch: Any, i: int) -> str:
    """Sample i's instruction text: its TEXT rows' token ids decoded with the backbone's tokenizer."""
    ids = (batch.extras.get("text_ids") or [None] * (i + 1))[i]
    tok = getattr(bb.processor, "tokenizer", bb.processor)
    if ids is None or tok is None or not hasattr(tok, "decode"):
        raise MethodError(
            "method 'cdpruner': CLIP-space relevance reads the instruction text, so the backbone needs "
            "its tokenizer; use relevance='llm' for a checkpoint without one"
        )
    return tok.decode(ids, skip_special_tokens=True)
