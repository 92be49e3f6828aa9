"""The method protocol: a method is declared once and contributes to a visual plan.

A method has a registry name, a stage (``pre-llm`` reducers change the visual tokens before
layer 0, ``structural`` methods change what visual tokens do inside layers, ``in-llm`` methods
drop visual tokens at chosen layers), validated parameters with defaults, and says whether it
needs its own weights.  Stacks compose in the order pre-llm -> structural -> in-llm
(docs/design.md §4).  ``baselines/registry.py`` maps names to these classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import SeebenchError
from .plan import VisualPlan

Stage = Literal["pre-llm", "structural", "in-llm"]
STAGE_ORDER: dict[str, int] = {"pre-llm": 0, "structural": 1, "in-llm": 2}


class MethodError(SeebenchError):
    """Bad method name, parameter or stack; one line naming it and the fix."""


@dataclass(frozen=True)
class PaperRow:
    """One row of the published FLOPs table (``harness flops --suite paper``): a setting a paper
    reports, as the knobs of the method that owns it, and the values the paper printed.

    ``stack`` is the stack whose plan gives the paper's arithmetic when it is not the method alone
    (e.g. YOPO's published figures follow its stated intent, ``yopo_textonly``); ``label`` the name
    the row carries; ``visual_tokens_label`` a row whose schedule the paper does not give, only a
    FLOPs-equivalent visual token count."""

    setting: str
    knobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    stack: str | None = None
    label: str | None = None
    visual_convention: Literal["vica", "yopo"] = "vica"
    visual_tokens_label: float | None = None
    published: dict[str, float] = field(default_factory=dict)
    source: str = ""
    note: str = ""


class Method(BaseModel):
    """Base class: a method is one pydantic model whose fields are its knobs (``FastV(k=2,
    budget=64)``); subclasses set the class variables and override :meth:`apply`."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: ClassVar[str]
    stage: ClassVar[Stage]
    description: ClassVar[str] = ""
    needs_weights: ClassVar[bool] = False
    #: device values the method reads on the host per prefill (a data-dependent count it cannot
    #: cap); 0 for every method whose counts follow from the layout
    host_reads: ClassVar[int] = 0
    #: the official code its rule follows: repository, commit, file and the function or rule
    #: (``harness methods --json``); ``repository`` says "seebench" for the project's own rules
    reference: ClassVar[dict[str, str] | None] = None
    #: what the method does to Qwen3-VL's DeepStack features when its stage's default
    #: (:meth:`deepstack_effect`) does not say it (docs/methods.md §2.9)
    deepstack: ClassVar[str | None] = None

    @classmethod
    def deepstack_effect(cls) -> str:
        """What happens to Qwen3-VL's DeepStack features under this method (``harness methods``)."""
        if cls.deepstack:
            return cls.deepstack
        return {
            "pre-llm": "a kept or merged token receives its anchor's DeepStack features after layers 0-2",
            "in-llm": "a token dropped before or at a DeepStack layer receives nothing from it on; kept "
            "tokens receive theirs",
            "structural": "every visual token receives its DeepStack features after layers 0-2, as in HF",
        }.get(cls.stage, "as in HF")

    def __init__(self, **knobs: Any) -> None:
        try:
            super().__init__(**knobs)
        except ValidationError as exc:
            raise MethodError(format_param_error(self.name, type(self), exc)) from None

    @property
    def label(self) -> str:
        """How the method appears in a stack string (``fastv``, ``plan:kv_only=0-18``)."""
        return self.name

    def settings(self) -> dict[str, Any]:
        """The knobs as set (what records store as the method's params)."""
        return self.model_dump()

    def __hash__(self) -> int:  # plans hold their reducer and are hashed (equal knobs, equal hash)
        return hash((type(self), self.model_dump_json()))

    def apply(self, plan: VisualPlan, backbone: Any) -> VisualPlan:
        """Return the plan with this method's per-layer rules added."""
        return plan

    def validate_for(self, backbone: Any) -> None:
        """Raise :class:`MethodError` when the knobs do not fit the backbone."""

    def prepare_backbone(self, backbone: Any) -> Any:
        """The backbone this method runs on, given a random-init one (``harness latency --random``,
        synthetic geometries): a method with its own modules adds random ones of the right shape.
        Checkpoints that ship the method's weights are opened as they are."""
        return backbone

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "stage": self.stage, "params": self.settings()}

    @classmethod
    def paper_rows(cls, backbone: Any) -> list[PaperRow]:
        """The settings the papers report FLOPs for, at a published checkpoint's weightless
        stand-in (``models/geometry.py: GeometryBackbone``); [] when none."""
        return []

    # ---- calibration (``harness calibrate METHOD``; models/calibration.py)
    #: the key a calibrating method stores in seebench.json and reads back as its default
    calibration_key: ClassVar[str | None] = None
    #: calibration options and their defaults (``harness calibrate METHOD --tau 0.2``)
    calibration_options: ClassVar[dict[str, float]] = {}

    @classmethod
    def calibration_settings(cls, **options: float) -> dict[str, float]:
        """The options a calibration runs with (defaults filled in); one error for a wrong one."""
        if cls.calibration_key is None:
            raise MethodError(f"method '{cls.name}' has no calibration")
        unknown = sorted(set(options) - set(cls.calibration_options))
        if unknown:
            known = ", ".join(cls.calibration_options) or "none"
            raise MethodError(
                f"method '{cls.name}' takes no calibration option {unknown}; its options: {known}"
            )
        return {**cls.calibration_options, **options}

    @classmethod
    def calibrate(cls, backbone: Any, batches: list[Any], **options: float) -> dict[str, Any]:
        """Calibrate on encoded batches; returns the result, holding at least ``cls.calibration_key``."""
        return cls._calibrate(backbone, batches, **cls.calibration_settings(**options))

    @classmethod
    def _calibrate(cls, backbone: Any, batches: list[Any], **options: float) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def calibration_summary(cls, result: dict[str, Any]) -> str:
        """A few lines for the terminal (``harness calibrate`` without ``--json``)."""
        return f"{cls.calibration_key}: {result[cls.calibration_key or '']}"

    @classmethod
    def knobs(cls) -> dict[str, Any]:
        """Knob name -> default (and description) for ``harness methods``."""
        out = {}
        for name, f in cls.model_fields.items():
            default = None if f.is_required() else f.get_default(call_default_factory=True)
            out[name] = {"default": default, "help": f.description or ""}
        return out


def format_param_error(method: str, params: type[BaseModel], exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "?"
    if err["type"] == "extra_forbidden":
        known = ", ".join(params.model_fields) or "none"
        return f"method '{method}': unknown parameter '{key}'; known parameters: {known}"
    return f"method '{method}': parameter '{key}': {err['msg']} (got {err.get('input')!r})"
