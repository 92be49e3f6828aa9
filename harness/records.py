"""Run records: one JSON file per cell, written atomically, keyed by a fingerprint.

Readable without seebench: top-level keys ``fingerprint``, ``backbone``, ``method`` (the stack as
a string, ``dense`` for none, e.g. ``vica+pdrop``), ``params``, ``task``, ``scenario``, ``metrics``
(flat name -> number; accuracy as ``accuracy`` in [0, 1]), ``environment``; plus ``status``,
``details`` (per-sample correctness, per-layer budgets, ...), timing and provenance.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = 1


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    fingerprint: str
    suite: str = ""
    backbone: str
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    task: str
    scenario: str
    status: Literal["ok", "failed", "skipped"] = "ok"
    error: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    backbone_info: dict[str, Any] = Field(default_factory=dict)
    cell: dict[str, Any] = Field(default_factory=dict)
    environment: dict[str, Any] = Field(default_factory=dict)
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    duration_s: float = 0.0

    @field_validator("metrics")
    @classmethod
    def _finite(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, x in v.items() if not math.isfinite(float(x))]
        if bad:
            raise ValueError(f"metrics must be finite numbers; not finite: {bad}")
        return {k: float(x) for k, x in v.items()}

    def file_name(self) -> str:
        return record_file_name(self.backbone, self.method, self.task, self.scenario, self.fingerprint)


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "-" for c in s)[:60]


def record_file_name(backbone: str, method: str, task: str, scenario: str, fingerprint: str) -> str:
    return f"{_slug(backbone)}__{_slug(method)}__{_slug(task)}__{_slug(scenario)}__{fingerprint[:12]}.json"


def fingerprint(payload: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of everything that determines a cell's result."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: a killed run leaves either the
    old file or the new one, never half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(record: Record, out_dir: Path) -> Path:
    path = Path(out_dir) / record.file_name()
    write_atomic(path, record.model_dump_json(indent=2))
    return path


def load(path: Path) -> Record:
    return Record.model_validate_json(Path(path).read_text())


def record_files(out_dir: Path) -> list[Path]:
    """The record files under a folder (recursively), sorted: every ``*.json`` except temporary
    files of a write in flight (``.tmp-*``) and anything under a hidden folder (a launcher's
    bookkeeping, e.g. ``.slurm/``)."""
    root = Path(out_dir)
    return [
        p for p in sorted(root.rglob("*.json"))
        if not p.name.startswith(".") and not any(part.startswith(".") for part in p.relative_to(root).parts[:-1])
    ]  # fmt: skip


def not_a_record(path: Path) -> str | None:
    """Why a JSON file under a records folder is not a record (None when it is one)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        return f"unreadable ({type(exc).__name__})"
    except json.JSONDecodeError as exc:
        return f"not valid JSON (line {exc.lineno})"
    if not isinstance(data, dict) or "fingerprint" not in data or "scenario" not in data:
        return "not a seebench record (no 'fingerprint' and 'scenario' keys)"
    try:
        Record.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "top level"
        return f"not a valid record ({where}: {err['msg']})"
    return None


_WARNED: set[Path] = set()


def load_dir(out_dir: Path) -> list[Record]:
    """Every record under a folder (recursively), sorted by file name.  A JSON file that is not a
    record (a benchmark's own output, a half-copied file) is skipped with one warning line on
    stderr naming it and why, once per process."""
    out = []
    for p in record_files(out_dir):
        try:
            out.append(load(p))
            continue
        except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
            pass
        why = not_a_record(p) or "unreadable"
        if p.resolve() not in _WARNED:
            _WARNED.add(p.resolve())
            print(f"harness: warning: skipped {p}: {why}", file=sys.stderr)
    return out


def finished_fingerprints(out_dir: Path, newer_than: float | None = None) -> set[str]:
    """Fingerprints of cells whose record exists with status ok (resume skips them); with
    ``newer_than`` (a time.time() value), only records written since then."""
    done: set[str] = set()
    root = Path(out_dir)
    if not root.exists():
        return done
    for p in record_files(root):
        try:
            if newer_than is not None and p.stat().st_mtime < newer_than:
                continue
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("status") == "ok" and "fingerprint" in data:
            done.add(data["fingerprint"])
    return done
