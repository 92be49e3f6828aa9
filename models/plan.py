"""Visual plans: what happens to the visual tokens in every decoder layer.

A method is a rule about the visual tokens; the executor (``executor.py``) carries the rule out.
A :class:`VisualPlan` is one :class:`LayerPlan` per decoder layer.  Each field answers one
question about layer ``l`` (docs/design.md §3; docs/seed-methods.md §1):

==================  ===========================================================================
field               meaning
==================  ===========================================================================
visual_query        visual tokens are attention queries (their state gets an attention update)
visual_kv           non-visual queries (system, text, generated) can read visual keys/values
visual_attn         which visual keys a visual query sees: ``causal`` (dense), ``none`` (only
                    the system prefix), ``window`` (k x k neighbours on the image grid,
                    non-causal inside the window, plus the system prefix)
window              k for ``visual_attn="window"`` (odd, >= 1)
visual_ffn          width of the FFN for visual rows: ``None`` = full, ``0`` = no FFN,
                    ``k`` = the first k intermediate channels
visual_heads        query heads that serve visual tokens (others: see ``head_mode``); None = all
head_mode           for heads outside ``visual_heads``: ``drop_keys`` = they see no visual keys
                    (renormalised softmax, ``yopo_textonly``); ``zero_values`` = visual weights
                    zeroed after the softmax without renormalisation (``yopo`` reference)
kv_source           where the visual state comes from before the layer: ``state`` (carried),
                    ``fixed`` (the layer-0 input, ViCA), ``projector`` (a per-layer projector of
                    the raw vision features, SAISA; see ``projector``)
system_query        system-prefix tokens are queries (ViCA-7B checkpoints: never; FFN kept)
drop_before         a :class:`Selector` choosing the visual tokens kept from this layer on,
                    scored on the states entering the layer (FastV-style K, PDrop)
drop_after          a :class:`Selector` scored inside this layer; the layer itself still runs
                    on the full set and the drop applies to its output (SparseVLM, DART)
==================  ===========================================================================

Positions: a selector carries its position policy (``keep`` original ids, or ``renumber`` the
surviving tokens 0..n-1 per sample), docs/methods.md §2.3.  Plans are plain frozen dataclasses so
that they hash, compare and print.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from .errors import SeebenchError
from .selection import SampleCounts, SelectContext, top_k_slots

if TYPE_CHECKING:  # pragma: no cover
    import torch

VisualAttn = Literal["causal", "none", "window"]
HeadMode = Literal["drop_keys", "zero_values"]
KVSource = Literal["state", "fixed", "projector"]
PositionPolicy = Literal["keep", "renumber"]
ScoreNeed = Literal["attn_last", "attn_rows", "keys", "hidden_out", "hidden_in"]


class PlanError(SeebenchError):
    """A plan that cannot be executed; the message names the layer and the field."""


@runtime_checkable
class Selector(Protocol):
    """Chooses which present visual tokens survive (``selection.py`` has the contract).

    ``kept(counts)`` runs on the host when a plan is compiled against a batch layout and says how
    many tokens a sample keeps; ``select(ctx)`` runs on the device and returns slots [B, k] into
    the present visual tokens (row i's first ``kept[i]`` entries, in any order; the executor sorts
    them).  Optional parts: with the ``attn_rows`` need (``drop_after`` only) the selector has
    ``rows``, a hashable object whose ``choose(batch)`` gives a [B, T] bool mask over each sample's
    text tokens T: the query rows whose attention scores the visual tokens (evaluated once per
    prefill, shared by selectors with equal ``rows``).  ``recycled(counts, kept)`` and
    ``recycle(ctx, chosen)`` merge dropped tokens into new ones placed right after the kept visual
    tokens (SparseVLM).  ``host_reads`` (default 0): host reads ``select`` declares.
    """

    needs: frozenset[str]
    positions: PositionPolicy

    def kept(self, counts: SampleCounts) -> int: ...

    def select(self, ctx: SelectContext) -> torch.Tensor: ...


@dataclass(frozen=True)
class KeepVisual:
    """A static selector for hand-written plans: keep the first ``count`` present visual tokens.
    Needs no scores."""

    count: int
    positions: PositionPolicy = "keep"
    needs: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.count < 0:
            raise PlanError(f"KeepVisual count must be >= 0, got {self.count}")

    def kept(self, counts: SampleCounts) -> int:
        return min(self.count, counts.present)

    def select(self, ctx: SelectContext) -> torch.Tensor:
        import torch

        return torch.arange(ctx.k, device=ctx.valid.device).expand(ctx.batch_size, -1)


@dataclass(frozen=True)
class TopKByLastAttention:
    """Keep the ``k`` present visual tokens with the largest attention from the last prompt
    token (mean over heads).  Ties break toward the lower index (docs/methods.md §2.4 rule 4)."""

    k: int
    positions: PositionPolicy = "keep"
    needs: frozenset[str] = frozenset({"attn_last"})

    def kept(self, counts: SampleCounts) -> int:
        return min(self.k, counts.present)

    def select(self, ctx: SelectContext) -> torch.Tensor:
        assert ctx.scores is not None
        return top_k_slots(ctx.scores, ctx.k)


@dataclass
class ReducedVisual:
    """A pre-LLM reducer's output for one sample: new visual embeddings (LLM input space) and, per
    token, the original visual index it stands for (its position and grid coordinate)."""

    embeds: torch.Tensor  # [k, h]
    anchors: torch.Tensor  # [k] long, original visual indices


@dataclass(frozen=True)
class Roles:
    """What the visual tokens and the system prefix do in one layer.  The one statement of that
    rule: the executors' row sets, the FLOPs schedule and the tiny lab's training masks read it."""

    visual_query: bool  # visual rows are attention queries
    visual_key: bool  # visual rows are keys/values of the layer's attention (for some query)
    text_reads_visual: bool  # non-visual queries may attend to the visual keys
    visual_ffn: Literal["full", "partial", "none"]  # the FFN on visual rows (partial: first m channels)
    system_query: bool  # system-prefix rows are queries (their FFN runs either way)


@dataclass(frozen=True)
class LayerPlan:
    visual_query: bool = True
    visual_kv: bool = True
    visual_attn: VisualAttn = "causal"
    window: int = 0
    visual_ffn: int | None = None
    visual_heads: tuple[int, ...] | None = None
    head_mode: HeadMode = "drop_keys"
    kv_source: KVSource = "state"
    system_query: bool = True
    drop_before: Any = None
    drop_after: Any = None

    @property
    def is_dense(self) -> bool:
        return self == DENSE_LAYER

    @property
    def roles(self) -> Roles:
        """What visual tokens do here (a visual query with attention sees visual keys too)."""
        ffn = "full" if self.visual_ffn is None else "none" if self.visual_ffn == 0 else "partial"
        return Roles(
            visual_query=self.visual_query,
            visual_key=self.visual_kv or (self.visual_query and self.visual_attn != "none"),
            text_reads_visual=self.visual_kv,
            visual_ffn=ffn,
            system_query=self.system_query,
        )

    @property
    def visual_rows_needed(self) -> bool:
        """Whether visual hidden states take part in this layer at all."""
        return self.visual_query or self.visual_kv or self.visual_ffn != 0

    def describe(self) -> str:
        """A short label such as ``q,kv,ffn`` / ``kv`` / ``-`` for tables and logs."""
        if self.is_dense:
            return "dense"
        parts = []
        if self.visual_query:
            parts.append("q" if self.visual_attn == "causal" else f"q[{self.visual_attn}{self.window or ''}]")
        if self.visual_kv:
            parts.append("kv" if self.kv_source == "state" else f"kv[{self.kv_source}]")
        if self.visual_ffn is None:
            parts.append("ffn")
        elif self.visual_ffn > 0:
            parts.append(f"ffn[{self.visual_ffn}]")
        if self.visual_heads is not None:
            parts.append(f"heads[{len(self.visual_heads)},{self.head_mode}]")
        if not self.system_query:
            parts.append("sys-noq")
        if self.drop_before is not None:
            parts.append(f"drop<{type(self.drop_before).__name__}")
        if self.drop_after is not None:
            parts.append(f"drop>{type(self.drop_after).__name__}")
        return ",".join(parts) or "-"


DENSE_LAYER = LayerPlan()
#: visual tokens are keys/values only: no query, no FFN (ShortV's layers, ViCA's T2V layers)
KV_ONLY = LayerPlan(visual_query=False, visual_ffn=0)
#: visual tokens take no part: not queried, not visible, no FFN (ViCA's other layers, VTW)
INVISIBLE = LayerPlan(visual_query=False, visual_kv=False, visual_ffn=0)


@dataclass(frozen=True)
class VisualPlan:
    """One :class:`LayerPlan` per decoder layer plus a name for records."""

    layers: tuple[LayerPlan, ...]
    name: str = "custom"
    #: pre-LLM reducer: ``reduce(backbone, batch) -> list[ReducedVisual]`` (one per sample), applied
    #: before layer 0; the reduced tokens are renumbered (docs/methods.md §2.3) and, in mask mode, laid out in
    #: the full-length sequence with the freed visual slots masked; ``kept(n_visual)`` says how many
    #: of a sample's n visual tokens it feeds to layer 0
    reducer: Any = None

    @classmethod
    def dense(cls, num_layers: int) -> VisualPlan:
        return cls(tuple([DENSE_LAYER] * num_layers), name="dense")

    @classmethod
    def from_layers(cls, layers: Sequence[LayerPlan], name: str = "custom") -> VisualPlan:
        return cls(tuple(layers), name=name)

    def with_reducer(self, reducer: Any) -> VisualPlan:
        return replace(self, reducer=reducer)

    @property
    def tower(self) -> Any:
        """The reducer when it runs inside the vision tower's forward (``in_tower``), else None:
        pass it to ``Backbone.encode(inputs, tower=...)`` so one tower pass does the merging."""
        return self.reducer if getattr(self.reducer, "in_tower", False) else None

    def with_layer(self, index: int, layer: LayerPlan) -> VisualPlan:
        layers = list(self.layers)
        layers[index] = layer
        return replace(self, layers=tuple(layers))

    @property
    def is_dense(self) -> bool:
        return self.reducer is None and all(lp.is_dense for lp in self.layers)

    def validate(self, num_layers: int, num_heads: int, ffn_width: int) -> None:
        """Raise :class:`PlanError` (one line naming the layer and field) for impossible plans."""
        if self.reducer is not None and not all(
            callable(getattr(self.reducer, f, None)) for f in ("reduce", "kept")
        ):
            raise PlanError(
                f"plan '{self.name}': reducer must have reduce(backbone, batch) and kept(n_visual)"
            )
        if len(self.layers) != num_layers:
            raise PlanError(
                f"plan '{self.name}' has {len(self.layers)} layers but the backbone has {num_layers}; "
                "build it with the backbone's layer count"
            )
        for i, lp in enumerate(self.layers):
            where = f"plan '{self.name}' layer {i}"
            if lp.visual_attn == "window" and (lp.window < 1 or lp.window % 2 == 0):
                raise PlanError(f"{where}: window must be odd and >= 1, got {lp.window}")
            if lp.visual_ffn is not None and not 0 <= lp.visual_ffn <= ffn_width:
                raise PlanError(f"{where}: visual_ffn must be in [0, {ffn_width}], got {lp.visual_ffn}")
            if lp.visual_heads is not None:
                bad = [h for h in lp.visual_heads if not 0 <= h < num_heads]
                if bad:
                    raise PlanError(f"{where}: visual_heads {bad} out of range [0, {num_heads})")
            if lp.kv_source not in ("state", "fixed", "projector"):
                raise PlanError(f"{where}: unknown kv_source '{lp.kv_source}'")
            if lp.visual_attn not in ("causal", "none", "window"):
                raise PlanError(f"{where}: unknown visual_attn '{lp.visual_attn}'")
            for name in ("drop_before", "drop_after"):
                sel = getattr(lp, name)
                if sel is not None and not isinstance(sel, Selector):
                    raise PlanError(
                        f"{where}: {name} must be a Selector (needs, positions, kept(), select())"
                    )
                if sel is not None and sel.positions not in ("keep", "renumber"):
                    raise PlanError(f"{where}: {name}.positions must be 'keep' or 'renumber'")
                if sel is not None and "attn_rows" in sel.needs:
                    if name == "drop_before":
                        raise PlanError(
                            f"{where}: 'attn_rows' scores are computed inside a layer: use drop_after"
                        )
                    if not callable(getattr(getattr(sel, "rows", None), "choose", None)):
                        raise PlanError(f"{where}: an 'attn_rows' selector needs rows with choose(batch)")

    def describe(self) -> list[str]:
        pre = [f"pre-llm {type(self.reducer).__name__}"] if self.reducer is not None else []
        return pre + [lp.describe() for lp in self.layers]
