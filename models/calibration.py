"""What a method's calibration needs of the model, and the checkpoint's ``seebench.json`` section
that keeps the result.

A method that calibrates (ShortV's layer order, YOPO's head masks) declares ``calibration_key``
(the key it stores) and implements ``calibrate(backbone, batches, **options)``; ``harness calibrate
METHOD`` feeds it encoded calibration batches and saves what it returns under
``seebench.json["calibration"][METHOD]``, where the method's default reads it back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from .backbones.base import collate
from .batch import Batch
from .executor import Executor
from .method import MethodError
from .plan import VisualPlan


def batches(bb: Any, inputs: list[dict[str, Any]], size: int = 8) -> Iterator[Batch]:
    """Encoded batches of at most ``size`` calibration samples, in order."""
    for i in range(0, len(inputs), size):
        chunk = inputs[i : i + size]
        yield bb.encode(collate(bb, chunk) if len(chunk) > 1 else chunk[0])


def executor(bb: Any) -> Executor:
    """The executor calibration prefills run on (drop mode, no cache kept)."""
    return Executor(bb)


def last_logits(executor: Executor, batch: Batch, plan: VisualPlan | None = None) -> torch.Tensor:
    """Logits at each sample's last prompt position for one prefill (dense when ``plan`` is None)."""
    return executor.prefill(batch, plan, cache_extra=None).logits


def observe_attention(bb: Any, batches: Iterable[Batch], observer: Callable[..., None]) -> int:
    """Run dense prefills calling ``observer(layer, q, k, v, mask, q_meta, k_meta)`` in every
    attention; returns the number of samples seen."""
    ex = Executor(bb, observer=observer)
    n = 0
    for batch in batches:
        ex.prefill(batch, cache_extra=None)
        n += batch.batch_size
    return n


def stored(backbone: Any, method: str, key: str) -> Any:
    """A calibration result saved in the checkpoint's seebench.json (None when there is none)."""
    meta = Path(str(backbone.source)) / "seebench.json"
    if meta.exists():
        return json.loads(meta.read_text()).get("calibration", {}).get(method, {}).get(key)
    return None


def save(model_dir: str, method: str, value: dict[str, Any]) -> Path:
    """Write ``value`` as the method's calibration section of ``model_dir/seebench.json``."""
    meta_path = Path(model_dir) / "seebench.json"
    if not meta_path.exists():
        raise MethodError(
            f"--save needs a local checkpoint directory with seebench.json; '{model_dir}' has none"
        )
    meta = json.loads(meta_path.read_text())
    meta.setdefault("calibration", {})[method] = value
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta_path
