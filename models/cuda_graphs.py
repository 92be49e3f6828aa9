"""CUDA-graph replays of the executor's prefill and decode step (GPU only).

At batch 1 a 7B decoder layer that runs on a few dozen rows is bound by reading its weights, and
the ~50 kernel launches per layer cost more than that read; replaying a captured graph removes the
launches (gpt-fast, vLLM, HF's static cache + ``torch.compile(mode="reduce-overhead")`` do the same).

The executor is made for it: a compiled plan's constants are built once per (plan, layout, device)
and cached, the prefill reads nothing back on the host, and a decode step advances its write slots,
masks and positions in place on the device (``Executor.run_decode``).  So:

- **decode**: ``GraphedDecode`` captures one ``run_decode`` on a static token buffer for one cache
  (batch size and capacity fixed); each replay is the next step.  The host-side step counter the
  capture skipped is advanced per replay.
- **prefill**: ``GraphedPrefill`` captures ``Executor.prefill`` on the batch (its tensors are the
  static inputs; refill them in place to replay other inputs of the same layout).  A plan whose
  preparation uploads host data on every call (a pre-LLM reducer's new layout) cannot be captured:
  ``capture`` raises ``GraphError``, and ``harness latency`` then times that call eagerly and
  records why.

Capture follows the CUDA rules: warm-up calls on a side stream first, then capture into a private
memory pool.  Nothing here runs on a CPU: ``require_cuda`` says so in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .errors import SeebenchError


class GraphError(SeebenchError):
    """A call that cannot be captured as a CUDA graph (the reason in one line)."""


def require_cuda(device: torch.device | str) -> None:
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise GraphError(
            f"CUDA graphs need a CUDA device, and this run is on '{dev}'; use --no-cuda-graphs "
            "(eager timing) or run with --device cuda on a GPU machine"
        )


def _warm(fn: Callable[[], Any], calls: int) -> None:  # pragma: no cover - needs a GPU
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(calls):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()


def _capture(fn: Callable[[], Any]) -> tuple[Any, Any]:  # pragma: no cover - needs a GPU
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            out = fn()
    except RuntimeError as exc:  # e.g. a host upload or a sync inside the captured call
        torch.cuda.synchronize()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GraphError(f"the call cannot be captured as a CUDA graph: {first}") from None
    return graph, out


class GraphedPrefill:
    """``executor.prefill(batch, plan)`` captured once; ``__call__`` replays it."""

    def __init__(self, executor: Any, batch: Any, plan: Any, warmup: int = 2) -> None:
        require_cuda(batch.embeds.device)
        self.executor, self.batch, self.plan = executor, batch, plan
        _warm(self._run, max(1, warmup))  # pragma: no cover - needs a GPU
        self.graph, self.out = _capture(self._run)  # pragma: no cover - needs a GPU

    def _run(self):  # pragma: no cover - needs a GPU
        return self.executor.prefill(self.batch, self.plan, cache_extra=None)

    def __call__(self):  # pragma: no cover - needs a GPU
        self.graph.replay()
        return self.out


class GraphedDecode:
    """One decode step on ``cache`` captured once; each ``__call__`` replays the next step.

    ``tokens`` [B] is copied into a static buffer (``feed`` refills it).  The cache must have room
    for every replay (``cache_extra`` at prefill): the capture does not grow buffers."""

    def __init__(
        self, executor: Any, cache: Any, tokens: torch.Tensor, plan: Any = None, warmup: int = 2
    ) -> None:
        require_cuda(tokens.device)
        self.executor, self.cache = executor, cache
        self.tokens = tokens.clone()
        # the first (eager) steps build the decode scratch and warm the kernels
        _warm(lambda: executor.decode_step(self.tokens, cache, plan), max(1, warmup))  # pragma: no cover
        steps = cache.steps  # pragma: no cover - needs a GPU
        self.graph, self.logits = _capture(
            lambda: executor.run_decode(self.tokens, cache)
        )  # pragma: no cover
        cache.steps = steps  # pragma: no cover - the capture recorded a step it did not run

    def feed(self, tokens: torch.Tensor) -> None:  # pragma: no cover - needs a GPU
        self.tokens.copy_(tokens)

    def __call__(self) -> torch.Tensor:  # pragma: no cover - needs a GPU
        if self.cache.steps >= self.cache.extra:
            raise GraphError(
                "the captured decode step ran out of cache room; prefill with a larger cache_extra"
            )
        self.graph.replay()
        self.cache.steps += 1
        return self.logits
