"""Count what a call dispatches: ATen ops (about one GPU kernel launch each) and host reads.

A *host read* is device data read back on the host: on a GPU each one is a synchronisation that
stalls the launch queue and breaks CUDA-graph capture.  On the CPU nothing stalls, so they are
counted instead:

* ops whose output shape or value depends on the data (``nonzero``, boolean-mask indexing,
  ``masked_select``, ``unique``, ``repeat_interleave`` without ``output_size``,
  ``_local_scalar_dense`` / ``is_nonzero`` = ``.item()`` / ``bool()``), seen by a
  :class:`~torch.utils._python_dispatch.TorchDispatchMode`;
* Python conversions of a tensor (``item``, ``tolist``, ``numpy``, ``int()``, ``float()``,
  ``bool()``, ``operator.index``), seen by temporary wrappers on :class:`torch.Tensor`: under
  ``torch.inference_mode`` (where the executor runs) ``.item()`` never reaches a dispatch mode, and
  ``.tolist()`` dispatches nothing at all.

``ops`` counts non-view ATen ops, leaving out those that launch no kernel (views, ``detach``,
allocation-only ``empty``): a CPU proxy for eager kernel launches.  Counting runs in separate,
untimed calls.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

#: ops that launch no kernel: metadata, aliasing and bare allocation
_NO_KERNEL = {
    "aten::detach",
    "aten::alias",
    "aten::lift_fresh",
    "aten::_unsafe_view",
    "aten::empty",
    "aten::empty_strided",
    "aten::empty_like",
    "aten::_to_copy_noop",
    "aten::sym_size",
    "aten::sym_stride",
    "aten::sym_numel",
    "aten::sym_storage_offset",
    "aten::resolve_conj",
    "aten::resolve_neg",
}
#: ops that always read device data on the host
_READS = {
    "aten::nonzero",
    "aten::nonzero_numpy",
    "aten::argwhere",
    "aten::masked_select",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::unique_dim_consecutive",
    "aten::_local_scalar_dense",
    "aten::is_nonzero",
    "aten::equal",
}
_CONVERSIONS = ("item", "tolist", "numpy", "__int__", "__float__", "__bool__", "__index__")


@dataclass
class Counts:
    ops: int = 0
    host_reads: int = 0
    uploads: int = 0  # host data turned into tensors (``torch.tensor(list)``), not reads
    reads: Counter = field(default_factory=Counter)  # what read, by name
    by_op: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"ops": self.ops, "host_reads": self.host_reads, "uploads": self.uploads,
                "reads": dict(self.reads)}  # fmt: skip


def _has_bool_index(args: tuple) -> bool:
    return any(
        isinstance(a, list | tuple)
        and any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in a)
        for a in args
    )


class _Mode(TorchDispatchMode):
    def __init__(self, counts: Counts, state: threading.local) -> None:
        super().__init__()
        self.counts = counts
        self.state = state

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        c = self.counts
        if not func.is_view and name not in _NO_KERNEL:
            c.ops += 1
            c.by_op[name] += 1
        read = name in _READS
        if name in ("aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"):
            read = _has_bool_index(args)
        elif name == "aten::repeat_interleave":  # tensor repeats: the output length is data
            read = func._overloadname != "self_int" and kwargs.get("output_size") is None
        if name == "aten::lift_fresh" and args and isinstance(args[0], torch.Tensor) and args[0].dim() > 0:
            c.uploads += 1
        if read and not getattr(self.state, "inside", False):
            c.host_reads += 1
            c.reads[name.removeprefix("aten::")] += 1
        return func(*args, **kwargs)


@contextlib.contextmanager
def counting() -> Iterator[Counts]:
    """Count ops and host reads of everything run inside the block (this thread)."""
    counts = Counts()
    state = threading.local()
    originals = {name: getattr(torch.Tensor, name) for name in _CONVERSIONS}

    def wrap(name: str, fn: Callable) -> Callable:
        def wrapper(self, *a, **kw):
            if getattr(state, "inside", False):
                return fn(self, *a, **kw)
            counts.host_reads += 1
            counts.reads[name.strip("_")] += 1
            state.inside = True
            try:
                return fn(self, *a, **kw)
            finally:
                state.inside = False

        return wrapper

    for name, fn in originals.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    try:
        with _Mode(counts, state):
            yield counts
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def count_call(fn: Callable[[], Any]) -> Counts:
    """Run ``fn`` once under :func:`counting`."""
    with counting() as c:
        fn()
    return c
