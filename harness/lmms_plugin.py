"""seebench as an lmms-eval model: any backbone + method stack, run by the executor.

From the shell::

    lmms-eval --model seebench --model_args pretrained=embedded,method=dense \\
        --tasks shapes_exist --include_path "$(harness tasks-path)" --limit 20

``pretrained``: ``embedded`` (the committed tiny LLaVA), a local checkpoint directory, a hub id or
``random:FAMILY``; ``method``: a registered method stack (``dense``, ``plan:SPEC``, ...);
``mode``: ``drop`` or ``mask``; ``batch_size``.  Prompts use the checkpoint's chat template.
A batch that fails is answered with :data:`FAILED` for each of its requests, and the accuracy
scenario counts those samples as failed rather than wrong.
"""

from __future__ import annotations

import atexit
import logging
from typing import Any

import torch
from lmms_eval import utils as lmms_utils
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from harness.models.backbones.base import Backbone
from harness.models.executor import Executor
from harness.models.verify import chat_prompt

FAILED = "<seebench-failed>"
log = logging.getLogger("seebench")


def _destroy_process_group() -> None:
    """Close a data-parallel run's process group before the interpreter tears down: a gloo group
    left to the destructors at exit sometimes aborts a rank ("terminate called without an active
    exception", exit -6) after every result was written."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


atexit.register(_destroy_process_group)


class SeebenchLMM(lmms):
    is_simple = True

    def __init__(
        self,
        pretrained: str = "embedded",
        method: str = "dense",
        mode: str = "drop",
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        device: str | None = None,
        dtype: str = "float32",
        backbone: Backbone | None = None,
        plan: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        from harness.baselines.registry import build_stack

        from .backbones import open_backbone

        self._device = "cpu" if device in (None, "", "auto") else str(device)
        self.backbone = backbone or open_backbone(resolve_pretrained(str(pretrained)), dtype, self._device)
        self.stack = build_stack(str(method))
        self.plan = plan if plan is not None else self.stack.plan(self.backbone)
        self.mode = str(mode)
        self.executor = Executor(self.backbone, self.mode)
        self.batch_size_per_gpu = int(batch_size) if str(batch_size).isdigit() else 1
        self.failed: list[tuple[str, int]] = []  # (task, doc_id) of requests whose batch failed

    @property
    def device(self) -> str:  # lmms-eval's data-parallel path reads it
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def _tokenizer(self):
        proc = self.backbone.processor
        return getattr(proc, "tokenizer", proc)

    def _generate(self, contexts: list[str], visuals: list[list[Any]], max_new_tokens: int) -> list[str]:
        prompts = [chat_prompt(self.backbone, c) for c in contexts]
        images = [v[0] for v in visuals]
        inputs = self.backbone.build_inputs(prompts, images)
        batch = self.backbone.encode(inputs, tower=self.plan.tower)
        tok = self._tokenizer()
        eos = getattr(tok, "eos_token_id", None)
        out = self.executor.generate(batch, self.plan, max_new_tokens=max_new_tokens, eos_token_id=eos)
        return [tok.decode(row, skip_special_tokens=True).strip() for row in out]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        coll = lmms_utils.Collator([r.args for r in requests], lambda a: (-len(a[0]), a[0]), grouping=True)
        answers: list[str] = []
        for chunk in coll.get_batched(n=self.batch_size, batch_fn=None):
            ctxs, gen_kwargs, doc_to_visual, doc_ids, tasks, splits = zip(*chunk, strict=True)
            visuals = [
                d2v(self.task_dict[t][s][i])
                for d2v, t, s, i in zip(doc_to_visual, tasks, splits, doc_ids, strict=True)
            ]
            kw = dict(gen_kwargs[0] or {})
            max_new = int(kw.get("max_new_tokens", 16))
            try:
                with torch.inference_mode():
                    texts = self._generate(list(ctxs), visuals, max_new)
                for stop in kw.get("until", []) or []:
                    texts = [t.split(stop)[0] for t in texts]
            except (RuntimeError, ValueError) as exc:
                log.warning(
                    "seebench: a batch of %d failed (%s); its samples are counted as failed", len(chunk), exc
                )
                texts = [FAILED] * len(chunk)
                self.failed.extend(zip(tasks, doc_ids, strict=True))
            answers.extend(texts)
        return coll.get_original(answers)

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "seebench answers generate_until tasks; loglikelihood (multiple-choice scoring) is not implemented"
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("seebench does not run multi-round tasks")


def resolve_pretrained(name: str) -> str:
    if name == "embedded":
        from harness.models.tiny.model import default_checkpoint

        return str(default_checkpoint())
    return name
