"""Open the backbone a suite or a command names, and say what identifies it for fingerprints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from harness.baselines.registry import build_stack
from harness.baselines.registry import names as method_names
from harness.models.backbones.base import Backbone, BackboneError
from harness.models.backbones.loading import load_backbone
from harness.models.backbones.random import RANDOM_FAMILIES, build_random

from .errors import HarnessError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def open_backbone(model: str, dtype: str = "float32", device: str = "cpu") -> Backbone:
    """``random:FAMILY`` (random init of a small geometry), a local directory or a hub id."""
    try:
        if model == "embedded" or model.startswith("embedded:"):
            from harness.models.tiny.model import CheckpointError, default_checkpoint

            try:
                path = default_checkpoint(model.split(":", 1)[1] if ":" in model else "dense")
            except CheckpointError as exc:
                raise BackboneError(str(exc)) from None
            return load_backbone(str(path), dtype=DTYPES[dtype], device=device)
        if model.startswith("synthetic:"):
            from harness.models.backbones.synthetic import SYNTHETIC_TOKEN_LAYOUTS as GEOMETRIES
            from harness.models.backbones.synthetic import synthetic_backbone

            geometry, *opts = model.split(":")[1:]
            if geometry not in GEOMETRIES:
                raise BackboneError(
                    f"unknown backbone '{model}': synthetic geometries are "
                    + ", ".join(f"synthetic:{g}" for g in GEOMETRIES)
                )
            size, brings = {"L": 8, "h": 1024}, []
            # synthetic:llava-1.5:L4:h256 -> 4 layers, width 256; a method's name adds the modules it
            # brings at random (:saisa, per-layer projectors)
            for o in opts:
                if o[:1] in size and o[1:].isdigit():
                    size[o[0]] = int(o[1:])
                elif o in method_names():
                    brings.append(o)
                else:
                    raise BackboneError(
                        f"bad synthetic option '{o}' in '{model}': use L<layers>, h<width> or the name of "
                        "a method that brings its own modules"
                    )
            bb = synthetic_backbone(
                geometry, layers=size["L"], hidden=size["h"], heads=max(1, size["h"] // 128)
            )
            return build_stack("+".join(brings)).prepare_backbone(bb) if brings else bb
        if model.startswith("random:"):
            family = model.split(":", 1)[1]
            if family not in RANDOM_FAMILIES:
                raise BackboneError(
                    f"unknown backbone '{model}': random backbones are "
                    + ", ".join(f"random:{f}" for f in RANDOM_FAMILIES)
                )
            bb = build_random(family)
            return bb if dtype == "float32" else _cast(bb, dtype)
        return load_backbone(model, dtype=DTYPES[dtype], device=device)
    except BackboneError as exc:
        raise HarnessError(str(exc)) from None


def _cast(bb: Backbone, dtype: str) -> Backbone:
    bb.model.to(DTYPES[dtype])
    return bb


def model_identity(model: str) -> dict[str, Any]:
    """What pins a checkpoint's content without loading it: config + per-file size and head/tail
    hashes of the weight files (fast even for 7B checkpoints)."""
    if model.startswith(("random:", "synthetic:")):
        return {"model": model, "weights": "random-init", "seed": 0}
    if model == "embedded" or model.startswith("embedded:"):
        from harness.models.tiny.model import CHECKPOINT_DIR

        arch = model.split(":", 1)[1] if ":" in model else "dense"
        model = str(CHECKPOINT_DIR / ("tiny-llava" if arch == "dense" else f"tiny-llava-{arch}"))
    path = Path(model)
    if not path.exists():
        return {"model": model}
    ident: dict[str, Any] = {"model": path.name}
    cfg = path / "config.json"
    if cfg.exists():
        ident["config"] = hashlib.sha256(
            json.dumps(json.loads(cfg.read_text()), sort_keys=True).encode()
        ).hexdigest()[:16]
    files = {}
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        h = hashlib.sha256()
        size = f.stat().st_size
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(size - (1 << 20))
                h.update(fh.read(1 << 20))
        files[f.name] = f"{size}:{h.hexdigest()[:16]}"
    ident["files"] = files
    return ident
