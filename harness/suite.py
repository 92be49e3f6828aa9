"""Suite YAML: backbones x methods x tasks x scenarios, validated, expanded into cells.

A suite is a file or a name of a bundled suite (``harness/suites/NAME.yaml``).  Unknown keys and
impossible settings fail with one line that names the key.  Example::

    name: smoke
    backbones:
      - {name: llava-1.5-random, model: "random:llava-1.5"}
    methods: [dense]
    scenarios:
      - {kind: verify, batch_size: 4}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import HarnessError

SUITES_DIR = Path(__file__).resolve().parent / "suites"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackboneSpec(_Strict):
    name: str = Field(description="label used in records and tables")
    model: str = Field(
        description="'random:FAMILY', 'synthetic:GEOMETRY', a local checkpoint directory, or a hub id"
    )
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "cpu"
    geometry: str | None = Field(
        None, description="paper geometry for analytic FLOPs when weights are absent"
    )
    requires_gpu: bool = Field(False, description="accuracy/latency cells need a GPU (7B+ checkpoints)")
    reference: str | None = Field(
        None,
        description="the backbone whose dense rows are this one's retention reference "
        "(a variant trained with its own structure, e.g. ViCA, against the dense model of the same budget)",
    )


class MethodSpec(_Strict):
    name: str = Field(description="a registered method or a stack such as 'vica+pdrop'; 'dense' for none")
    params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per stack member")
    backbones: list[str] | None = Field(None, description="only these backbone names (default: all)")

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, v: Any) -> Any:
        return v or {}


class ScenarioSpec(_Strict):
    kind: str
    batch_size: int = Field(default=1, ge=1)
    max_new_tokens: int = Field(default=16, ge=1)
    limit: int | None = Field(default=None, ge=1)
    seed: int = 0
    warmup: int = Field(default=2, ge=0, description="latency: warm-up calls")
    min_repeats: int = Field(default=5, ge=1, description="latency: minimum timed calls")
    min_time_s: float = Field(default=2.0, ge=0, description="latency: minimum timed seconds")
    cuda_graphs: bool | None = Field(
        default=None, description="latency: time CUDA-graph replays (default: on when the device is CUDA)"
    )

    def dump(self) -> dict[str, Any]:
        """The scenario as records and fingerprints hold it ('cuda_graphs' only when set, so the
        fingerprints of suites without it stay as they were)."""
        return self.model_dump(exclude=None if self.cuda_graphs is not None else {"cuda_graphs"})


class Suite(_Strict):
    name: str
    description: str = ""
    mode: Literal["drop", "mask"] = "drop"
    backbones: list[BackboneSpec] = Field(min_length=1)
    methods: list[MethodSpec] = Field(default_factory=lambda: [MethodSpec(name="dense")])
    tasks: list[str] = Field(default_factory=list)
    scenarios: list[ScenarioSpec] = Field(min_length=1)

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, v: Any) -> Any:
        return [{"name": m} if isinstance(m, str) else m for m in (v or [])]

    @model_validator(mode="after")
    def _check(self) -> Suite:
        from . import scenarios

        for i, sc in enumerate(self.scenarios):
            if sc.kind not in scenarios.SCENARIOS:
                raise ValueError(
                    f"scenarios[{i}].kind: unknown scenario '{sc.kind}'; known: {', '.join(scenarios.SCENARIOS)}"
                )
            if scenarios.SCENARIOS[sc.kind].needs_tasks and not self.tasks:
                raise ValueError(
                    f"scenarios[{i}]: scenario '{sc.kind}' needs 'tasks' but the suite lists none"
                )
        labels = [b.name for b in self.backbones]
        if len(set(labels)) != len(labels):
            raise ValueError("backbones: two backbones share a name; give each a distinct 'name'")
        for i, m in enumerate(self.methods):
            unknown = sorted(set(m.backbones or []) - set(labels))
            if unknown:
                raise ValueError(
                    f"methods[{i}].backbones: unknown backbone name(s) {unknown}; known: {labels}"
                )
        from harness.models.geometry import PAPER_GEOMETRIES

        for i, b in enumerate(self.backbones):
            if b.reference is not None and b.reference not in labels:
                raise ValueError(
                    f"backbones[{i}].reference: unknown backbone name '{b.reference}'; known: {labels}"
                )
            if b.geometry is not None and b.geometry not in PAPER_GEOMETRIES:
                raise ValueError(
                    f"backbones[{i}].geometry: unknown '{b.geometry}'; known: {sorted(PAPER_GEOMETRIES)}"
                )
        return self


@dataclass(frozen=True)
class Cell:
    """One (backbone, method stack, task, scenario) measurement."""

    index: int
    suite: str
    mode: str
    backbone: BackboneSpec
    method: MethodSpec
    task: str
    scenario: ScenarioSpec

    def spec(self) -> dict[str, Any]:
        return {
            # 'reference' only when set: the fingerprints of suites without it stay as they were
            "backbone": self.backbone.model_dump(exclude=None if self.backbone.reference else {"reference"}),
            "method": self.method.model_dump(),
            "task": self.task,
            "scenario": self.scenario.dump(),
            "mode": self.mode,
        }

    def label(self) -> str:
        return f"{self.backbone.name} | {self.method.name} | {self.task} | {self.scenario.kind}"


def _one_line(exc: ValidationError, source: str) -> str:
    errors = exc.errors()
    # a misspelt key shows up as "unknown" and "missing"; the unknown one names the real mistake
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in err["loc"]).replace(".[", "[")
    if err["type"] == "extra_forbidden":
        parent, _, key = loc.rpartition(".")
        where = parent or "top level"
        model = _model_at(err["loc"][:-1])
        allowed = ", ".join(model.model_fields) if model else "see the README"
        return f"{source}: unknown key '{key}' at {where}; allowed keys: {allowed}"
    if err["type"] == "value_error":
        return f"{source}: {err['msg'].removeprefix('Value error, ')}"
    if err["type"] == "missing":
        return f"{source}: missing required key '{loc}'"
    return f"{source}: {loc}: {err['msg']} (got {err.get('input')!r})"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Suite
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        inner = getattr(ann, "__args__", (ann,))[0]
        model = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None
    return model


def resolve_path(name_or_file: str) -> Path:
    p = Path(name_or_file)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise HarnessError(f"suite file '{name_or_file}' does not exist")
        return p
    bundled = SUITES_DIR / f"{name_or_file}.yaml"
    if not bundled.exists():
        known = ", ".join(sorted(q.stem for q in SUITES_DIR.glob("*.yaml")))
        raise HarnessError(f"unknown suite '{name_or_file}': give a YAML file or one of: {known}")
    return bundled


def load_suite(name_or_file: str) -> Suite:
    path = resolve_path(name_or_file)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise HarnessError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise HarnessError(
            f"{path}: a suite is a mapping with keys name, backbones, methods, tasks, scenarios"
        )
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        raise HarnessError(_one_line(exc, str(path))) from None
    _check_methods(suite, str(path))
    return suite


def _check_methods(suite: Suite, source: str) -> None:
    from harness.baselines.registry import build_stack
    from harness.models.method import MethodError

    for i, m in enumerate(suite.methods):
        try:
            build_stack(m.name, m.params)
        except MethodError as exc:
            raise HarnessError(f"{source}: methods[{i}]: {exc}") from None


def expand(suite: Suite) -> list[Cell]:
    """Cells in a fixed order: backbone, method, scenario, task."""
    from .scenarios import SCENARIOS

    cells: list[Cell] = []
    for b in suite.backbones:
        for m in suite.methods:
            if m.backbones is not None and b.name not in m.backbones:
                continue
            for sc in suite.scenarios:
                tasks = suite.tasks if SCENARIOS[sc.kind].needs_tasks else ["none"]
                for t in tasks:
                    cells.append(Cell(len(cells), suite.name, suite.mode, b, m, t, sc))
    return cells
