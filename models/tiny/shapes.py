"""`shapes`: the procedural image-question suite of the tiny lab.

Every sample is a 96 x 96 RGB scene on a 12 x 12 grid of 8 x 8 px cells, so one cell is exactly one
visual token of a patch-8 vision tower (144 visual tokens). Most cells are background (a light grey
with faint per-pixel grey noise, so background tokens differ but are clearly background); a few cells
hold one object each: a coloured shape, or (reading task) a coloured box with a black glyph in it.
Object cells never touch (not even diagonally).

Task families (each a separate task name; every answer is one whitespace token):

==================  =============================================================  ====================
task                question templates                                             answers
==================  =============================================================  ====================
``shapes_exist``    ``is there a {color} object ?`` / ``is there a {shape} ?``     ``yes`` / ``no``
``shapes_attr``     ``what color is the {shape} ?`` (shape unique) /               colour / shape
                    ``what shape is the {color} object ?`` (colour unique)
``shapes_count``    ``how many {shape}s are there ?`` /                            ``zero`` .. ``four``
                    ``how many {color} objects are there ?``
``shapes_spatial``  ``where is the {color} {shape} ?`` (colour+shape unique)       ``top-left`` ...
``shapes_read``     ``what is written in the {color} box ?`` (1-3 boxes) /         glyph (``A``, ``7``)
                    ``what is written in the image ?`` (exactly one box)
``shapes_mc``       an attr / spatial question + ``A . x B . y C . z D . w``       ``A`` .. ``D``
                    ``answer with the option letter .``
==================  =============================================================  ====================

Text is lower case (except glyph answers and the option letters) with every token, punctuation
included, separated by single spaces, so a word-level tokenizer with a whitespace pre-tokenizer
covers the closed vocabulary (:func:`vocabulary`) exactly.

Existence (POPE-like) asks about ONE attribute (a colour or a shape) per question. Answers are exactly
50/50 per split; half of the negatives are "random" (the absent attribute is drawn uniformly) and half
"adversarial" (the absent attribute's nearest neighbour -- the most similar colour by RGB distance or
the most similar shape by mask overlap -- is present in the scene). A "popular" flavour is not
generated: attributes are drawn uniformly, so frequency carries no signal here. The number of objects
is drawn independently of the answer (no density shortcut); for counting it is drawn from
``[max_count, max_objects]`` so that the count is independent of the scene size too.

Determinism. A sample is a pure function of ``(GENERATOR_VERSION, task, split, index)``. Its integer
seed is ``SPLIT_SEED_BASE[split] + index``; the seed ranges are disjoint by construction::

    test  : [0,             10_000_000)    (400 samples used:  seeds 0 .. 399)
    ci    : [10_000_000,    20_000_000)    (40 samples used:   seeds 10_000_000 .. 10_000_039)
    train : [1_000_000_000, infinity)      (stream position p -> seed 1_000_000_000 + p)

All randomness comes from a PCG64 bit generator (whose raw stream NumPy guarantees across versions
and platforms) seeded with ``SeedSequence([crc32(version), crc32(task), seed])``; integers are drawn
from raw 64-bit words with our own rejection sampling, never from NumPy's distribution methods (which
may change between NumPy versions). Images are drawn pixel by pixel from bitmaps defined in this file
(no anti-aliasing, no font rendering), so the same seed gives byte-identical images everywhere. Answer
balance comes from a block schedule: within every block of ``k`` consecutive indices each of the ``k``
(form, answer) cells appears once, in a seeded order.

Any change to what is generated must bump :data:`GENERATOR_VERSION` (the cached splits and the golden
hashes in the tests are keyed by it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

GENERATOR_VERSION = "shapes-v1"

IMAGE_SIZE = 96
CELL = 8
GRID = IMAGE_SIZE // CELL  # 12
NUM_CELLS = GRID * GRID  # 144 = visual tokens at patch 8

# -- the world -----------------------------------------------------------------------------------------

# Well-separated colours (names avoid a leading vowel so "a {color} object" is always grammatical).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (150, 60, 190),
    "cyan": (40, 190, 200),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

BACKGROUND: tuple[int, int, int] = (232, 232, 232)
NOISE_AMPLITUDE = 6  # background pixels are BACKGROUND + the same integer in [-6, 6] on all channels
GLYPH_INK: tuple[int, int, int] = (16, 16, 16)


def _bitmap(rows: Sequence[str]) -> np.ndarray:
    return np.array([[ch == "#" for ch in row] for row in rows], dtype=bool)


# 8 x 8 shape masks (one cell), each with a 1 px margin so neighbouring objects never merge.
SHAPE_MASKS: dict[str, np.ndarray] = {
    "square": _bitmap(
        [
            "........",
            ".######.",
            ".######.",
            ".######.",
            ".######.",
            ".######.",
            ".######.",
            "........",
        ]
    ),
    "circle": _bitmap(
        [
            "........",
            "..####..",
            ".######.",
            ".######.",
            ".######.",
            ".######.",
            "..####..",
            "........",
        ]
    ),
    "triangle": _bitmap(
        [
            "........",
            "...##...",
            "...##...",
            "..####..",
            "..####..",
            ".######.",
            ".######.",
            "........",
        ]
    ),
    "cross": _bitmap(
        [
            "........",
            "...##...",
            "...##...",
            ".######.",
            ".######.",
            "...##...",
            "...##...",
            "........",
        ]
    ),
}
SHAPES: tuple[str, ...] = tuple(SHAPE_MASKS)
SHAPE_PLURALS: dict[str, str] = {
    "square": "squares",
    "circle": "circles",
    "triangle": "triangles",
    "cross": "crosses",
}

# A 5 x 7 font for the reading task (our own bitmaps), a subset that stays distinct at this size.
GLYPH_BITMAPS: dict[str, np.ndarray] = {
    "A": _bitmap([".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"]),
    "C": _bitmap([".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."]),
    "E": _bitmap(["#####", "#....", "#....", "####.", "#....", "#....", "#####"]),
    "H": _bitmap(["#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"]),
    "K": _bitmap(["#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"]),
    "L": _bitmap(["#....", "#....", "#....", "#....", "#....", "#....", "#####"]),
    "P": _bitmap(["####.", "#...#", "#...#", "####.", "#....", "#....", "#...."]),
    "T": _bitmap(["#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."]),
    "4": _bitmap(["...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."]),
    "7": _bitmap(["#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."]),
}
GLYPHS: tuple[str, ...] = tuple(GLYPH_BITMAPS)
GLYPH_ROW0, GLYPH_COL0 = 1, 1  # the glyph occupies rows 1-7, columns 1-5 of its (fully coloured) box cell

QUADRANTS: tuple[str, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
YES_NO: tuple[str, ...] = ("yes", "no")
OPTION_LETTERS: tuple[str, ...] = ("A", "B", "C", "D")

# Per-cell label grid (for vision-tower pretraining on per-patch labels):
#   0                                       background
#   1 + color_index * 4 + shape_index       coloured shape          (1 .. 24)
#   25 + color_index * 10 + glyph_index     coloured box with glyph (25 .. 84)
NUM_SHAPE_CLASSES = len(COLORS) * len(SHAPES)
GLYPH_LABEL_OFFSET = 1 + NUM_SHAPE_CLASSES
NUM_CELL_CLASSES = GLYPH_LABEL_OFFSET + len(COLORS) * len(GLYPHS)

# -- tasks, templates, splits ----------------------------------------------------------------------------

TASKS: tuple[str, ...] = (
    "shapes_exist",
    "shapes_attr",
    "shapes_count",
    "shapes_spatial",
    "shapes_read",
    "shapes_mc",
)

TEMPLATES: dict[str, str] = {
    "exist/color": "is there a {color} object ?",
    "exist/shape": "is there a {shape} ?",
    "exist/color_shape": "is there a {color} {shape} ?",  # conjunction: train-only curriculum option
    "attr/color": "what color is the {shape} ?",
    "attr/shape": "what shape is the {color} object ?",
    "count/shape": "how many {shapes} are there ?",
    "count/color": "how many {color} objects are there ?",
    "spatial/color_shape": "where is the {color} {shape} ?",
    "spatial/shape": "where is the {shape} ?",  # simpler forms: train-only curriculum options
    "spatial/color": "where is the {color} object ?",
    "read/box": "what is written in the {color} box ?",
    "read/image": "what is written in the image ?",
    "mc": "{question} A . {a} B . {b} C . {c} D . {d} answer with the option letter .",
}

SPLITS: tuple[str, ...] = ("test", "ci", "train")
SPLIT_SIZES: dict[str, int] = {"test": 400, "ci": 40}
SPLIT_SEED_BASE: dict[str, int] = {"test": 0, "ci": 10_000_000, "train": 1_000_000_000}
EVAL_SEED_SPAN = 10_000_000  # an evaluation split may use indices [0, EVAL_SEED_SPAN)


def vocabulary() -> list[str]:
    """Every word of every question template and every answer, sorted (no special tokens)."""
    words: set[str] = set()
    fill = {
        "color": COLOR_NAMES,
        "shape": SHAPES,
        "shapes": tuple(SHAPE_PLURALS.values()),
        "a": (),
        "b": (),
        "c": (),
        "d": (),
        "question": (),
    }
    for template in TEMPLATES.values():
        for token in template.split():
            if token.startswith("{") and token.endswith("}"):
                words.update(fill[token[1:-1]])
            else:
                words.add(token)
    words.update(YES_NO, COLOR_NAMES, SHAPES, NUMBER_WORDS[:5], QUADRANTS, GLYPHS, OPTION_LETTERS)
    return sorted(words)


@dataclass(frozen=True)
class Curriculum:
    """Knobs for training streams. Evaluation splits always use :data:`DEFAULT_CURRICULUM`."""

    min_objects: int = 2
    max_objects: int = 8
    exist_forms: tuple[str, ...] = ("color", "shape")  # add "color_shape" for conjunctions
    exist_negatives: tuple[str, ...] = ("random", "adversarial")
    attr_forms: tuple[str, ...] = ("color", "shape")
    count_forms: tuple[str, ...] = ("shape", "color")
    max_count: int = 4
    spatial_forms: tuple[str, ...] = ("color_shape",)  # or the simpler "shape" / "color"
    read_forms: tuple[str, ...] = ("box", "image")
    mc_forms: tuple[str, ...] = ("color", "shape", "where")

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects <= 8:
            raise ValueError("need 1 <= min_objects <= max_objects <= 8")
        if not 1 <= self.max_count <= 4:
            raise ValueError("max_count must be in 1..4")
        allowed = {
            "exist_forms": {"color", "shape", "color_shape"},
            "exist_negatives": {"random", "adversarial"},
            "attr_forms": {"color", "shape"},
            "count_forms": {"shape", "color"},
            "spatial_forms": {"color_shape", "shape", "color"},
            "read_forms": {"box", "image"},
            "mc_forms": {"color", "shape", "where"},
        }
        for name, ok in allowed.items():
            value = getattr(self, name)
            if not value or not set(value) <= ok or len(set(value)) != len(value):
                raise ValueError(f"{name} must be a non-empty tuple of distinct values from {sorted(ok)}")


DEFAULT_CURRICULUM = Curriculum()

# -- records ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    """One object in one cell. Exactly one of ``shape`` / ``glyph`` is set."""

    row: int
    col: int
    color: str
    shape: str | None = None
    glyph: str | None = None

    @property
    def quadrant(self) -> str:
        return quadrant_of(self.row, self.col)

    @property
    def label(self) -> int:
        ci = COLOR_NAMES.index(self.color)
        if self.shape is not None:
            return 1 + ci * len(SHAPES) + SHAPES.index(self.shape)
        assert self.glyph is not None
        return GLYPH_LABEL_OFFSET + ci * len(GLYPHS) + GLYPHS.index(self.glyph)

    def to_dict(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "col": self.col,
            "color": self.color,
            "shape": self.shape,
            "glyph": self.glyph,
        }


@dataclass(frozen=True, eq=False)
class Sample:
    """One image-question pair. ``image`` is a read-only uint8 array of shape (96, 96, 3)."""

    id: str
    task: str
    split: str
    index: int
    seed: int
    image: np.ndarray
    question: str
    answer: str
    options: tuple[str, ...] | None
    meta: tuple[SceneObject, ...]
    info: dict[str, Any] = field(default_factory=dict)

    def pil(self):
        from PIL import Image

        return Image.fromarray(self.image)

    @property
    def cell_labels(self) -> np.ndarray:
        """(12, 12) int64 grid of per-cell classes (see NUM_CELL_CLASSES), row-major like the patches."""
        return cell_labels(self.meta)

    def to_record(self) -> dict[str, Any]:
        """JSON-able description (everything but the pixels)."""
        return {
            "id": self.id,
            "task": self.task,
            "split": self.split,
            "index": self.index,
            "seed": self.seed,
            "question": self.question,
            "answer": self.answer,
            "options": list(self.options) if self.options is not None else None,
            "meta": [o.to_dict() for o in self.meta],
            "info": self.info,
        }


def quadrant_of(row: int, col: int) -> str:
    return QUADRANTS[(2 if row >= GRID // 2 else 0) + (1 if col >= GRID // 2 else 0)]


def cell_labels(objects: Sequence[SceneObject]) -> np.ndarray:
    grid = np.zeros((GRID, GRID), dtype=np.int64)
    for o in objects:
        grid[o.row, o.col] = o.label
    return grid


def describe_label(label: int) -> str:
    """Human-readable name of a cell class: ``background``, ``red circle``, ``blue box A``."""
    if label == 0:
        return "background"
    if 1 <= label < GLYPH_LABEL_OFFSET:
        c, s = divmod(label - 1, len(SHAPES))
        return f"{COLOR_NAMES[c]} {SHAPES[s]}"
    if GLYPH_LABEL_OFFSET <= label < NUM_CELL_CLASSES:
        c, g = divmod(label - GLYPH_LABEL_OFFSET, len(GLYPHS))
        return f"{COLOR_NAMES[c]} box {GLYPHS[g]}"
    raise ValueError(f"no cell class {label}")


# -- deterministic randomness ----------------------------------------------------------------------------


def _code(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


_TWO64 = 1 << 64


class _Rng:
    """Integers from PCG64's raw stream with our own rejection sampling (stable across NumPy versions)."""

    def __init__(self, *key: int) -> None:
        self._bits = np.random.PCG64(np.random.SeedSequence([int(k) for k in key]))

    def raw(self, n: int) -> np.ndarray:
        return self._bits.random_raw(n)

    def below(self, n: int) -> int:
        if n <= 0:
            raise ValueError("below() needs n >= 1")
        limit = _TWO64 - (_TWO64 % n)
        while True:
            x = int(self._bits.random_raw())
            if x < limit:
                return x % n

    def randint(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi] (inclusive)."""
        return lo + self.below(hi - lo + 1)

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self.below(len(seq))]

    def shuffle(self, items: list[Any]) -> list[Any]:
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]
        return items

    def sample(self, seq: Sequence[Any], k: int) -> list[Any]:
        return self.shuffle(list(seq))[:k]

    def uniform(self) -> float:
        return int(self._bits.random_raw()) / _TWO64


def _schedule(task: str, split: str, index: int, purpose: str, k: int) -> int:
    """Balanced assignment: each block of k consecutive indices is a seeded permutation of range(k)."""
    block, pos = divmod(index, k)
    rng = _Rng(_code(GENERATOR_VERSION), _code(task), _code(split), _code(purpose), block)
    return rng.shuffle(list(range(k)))[pos]


def _nearest(values: Sequence[str], similarity: dict[tuple[str, str], float]) -> dict[str, str]:
    return {
        v: max((w for w in values if w != v), key=lambda w: (similarity[v, w], -values.index(w)))
        for v in values
    }


def _color_similarity() -> dict[tuple[str, str], float]:
    out = {}
    for a, ca in COLORS.items():
        for b, cb in COLORS.items():
            out[a, b] = -float(np.linalg.norm(np.subtract(ca, cb, dtype=np.float64)))
    return out


def _shape_similarity() -> dict[tuple[str, str], float]:
    out = {}
    for a, ma in SHAPE_MASKS.items():
        for b, mb in SHAPE_MASKS.items():
            out[a, b] = float((ma & mb).sum()) / float((ma | mb).sum())
    return out


# The adversarial neighbour of each attribute value (the most similar other value).
NEAREST_COLOR: dict[str, str] = _nearest(COLOR_NAMES, _color_similarity())
NEAREST_SHAPE: dict[str, str] = _nearest(SHAPES, _shape_similarity())

# -- scenes ----------------------------------------------------------------------------------------------

_QUADRANT_CELLS: dict[str, tuple[tuple[int, int], ...]] = {
    q: tuple((r, c) for r in range(GRID) for c in range(GRID) if quadrant_of(r, c) == q) for q in QUADRANTS
}
_ALL_CELLS: tuple[tuple[int, int], ...] = tuple((r, c) for r in range(GRID) for c in range(GRID))


@dataclass
class _Spec:
    """An object before placement: attributes plus an optional quadrant constraint."""

    color: str
    shape: str | None = None
    glyph: str | None = None
    quadrant: str | None = None


def _place(rng: _Rng, specs: Sequence[_Spec]) -> tuple[SceneObject, ...]:
    """Put each spec in its own cell; no two objects touch (8-neighbourhood). Constrained specs first."""
    blocked = np.zeros((GRID + 2, GRID + 2), dtype=bool)  # padded by one cell on every side
    order = sorted(range(len(specs)), key=lambda i: specs[i].quadrant is None)
    placed: list[SceneObject] = []
    for i in order:
        spec = specs[i]
        cells = _QUADRANT_CELLS[spec.quadrant] if spec.quadrant else _ALL_CELLS
        free = [rc for rc in cells if not blocked[rc[0] + 1, rc[1] + 1]]
        r, c = rng.choice(free)
        blocked[r : r + 3, c : c + 3] = True
        placed.append(SceneObject(r, c, spec.color, spec.shape, spec.glyph))
    return tuple(sorted(placed, key=lambda o: (o.row, o.col)))


def render(objects: Sequence[SceneObject], rng: _Rng) -> np.ndarray:
    """Draw a scene: noisy background, then each object into its cell. Returns (96, 96, 3) uint8."""
    noise = (rng.raw(IMAGE_SIZE * IMAGE_SIZE) % np.uint64(2 * NOISE_AMPLITUDE + 1)).astype(np.int16)
    noise = noise.reshape(IMAGE_SIZE, IMAGE_SIZE, 1) - NOISE_AMPLITUDE
    img = (np.asarray(BACKGROUND, dtype=np.int16) + noise).astype(np.uint8)
    for o in objects:
        cell = img[o.row * CELL : (o.row + 1) * CELL, o.col * CELL : (o.col + 1) * CELL]
        if o.shape is not None:
            cell[SHAPE_MASKS[o.shape]] = COLORS[o.color]
        else:
            cell[:, :] = COLORS[o.color]
            assert o.glyph is not None  # exactly one of shape / glyph is set
            glyph = GLYPH_BITMAPS[o.glyph]
            h, w = glyph.shape
            cell[GLYPH_ROW0 : GLYPH_ROW0 + h, GLYPH_COL0 : GLYPH_COL0 + w][glyph] = GLYPH_INK
    img.flags.writeable = False
    return img


_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOR_NAMES for s in SHAPES)


def _shapes_from(rng: _Rng, n: int, allowed: Sequence[tuple[str, str]]) -> list[_Spec]:
    return [_Spec(*rng.choice(allowed)) for _ in range(n)]


def _n_objects(rng: _Rng, cur: Curriculum, at_least: int = 1) -> int:
    return rng.randint(max(cur.min_objects, at_least), max(cur.max_objects, at_least))


def _product(*axes: Sequence[Any]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = [()]
    for axis in axes:
        out = [prev + (v,) for prev in out for v in axis]
    return out


# -- task generators: each returns (specs, question, answer, options, info) ------------------------------


def _gen_exist(rng: _Rng, task: str, split: str, index: int, cur: Curriculum):
    outcomes = ["yes"] * len(cur.exist_negatives) + [f"no/{neg}" for neg in cur.exist_negatives]
    cells = _product(cur.exist_forms, outcomes)
    form, outcome = cells[_schedule(task, split, index, "cell", len(cells))]
    n = _n_objects(rng, cur)
    color, shape = rng.choice(COLOR_NAMES), rng.choice(SHAPES)

    def has(pair: tuple[str, str]) -> bool:
        return {"color": pair[0] == color, "shape": pair[1] == shape, "color_shape": pair == (color, shape)}[
            form
        ]

    if outcome == "yes":
        specs = _shapes_from(rng, n, _PAIRS)
        j = rng.below(n)
        if form in ("color", "color_shape"):
            specs[j].color = color
        if form in ("shape", "color_shape"):
            specs[j].shape = shape
    else:
        specs = _shapes_from(rng, n, [p for p in _PAIRS if not has(p)])
        if outcome == "no/adversarial":
            # make the most similar absent-attribute neighbour present (one attribute away)
            j = rng.below(n)
            if form == "color":
                specs[j].color = NEAREST_COLOR[color]
            elif form == "shape":
                specs[j].shape = NEAREST_SHAPE[shape]
            else:
                specs[j].color, specs[j].shape = color, NEAREST_SHAPE[shape]
                if n >= 2:
                    k = (j + 1 + rng.below(n - 1)) % n
                    specs[k].color, specs[k].shape = NEAREST_COLOR[color], shape
    question = TEMPLATES[f"exist/{form}"].format(color=color, shape=shape)
    answer = "yes" if outcome == "yes" else "no"
    target = {"color": color} if form == "color" else {"shape": shape} if form == "shape" else {}
    if form == "color_shape":
        target = {"color": color, "shape": shape}
    info = {"form": form, "target": target, "flavour": outcome.split("/")[1] if "/" in outcome else None}
    return specs, question, answer, None, info


def _unique_target(rng: _Rng, cur: Curriculum, form: str, color: str, shape: str, quadrant: str | None):
    """A target object plus distractors such that the queried attribute(s) identify it uniquely."""
    n = _n_objects(rng, cur)
    if form == "color":  # the target's colour is unique
        allowed = [p for p in _PAIRS if p[0] != color]
    elif form == "shape":  # the target's shape is unique
        allowed = [p for p in _PAIRS if p[1] != shape]
    else:  # the (colour, shape) combination is unique
        allowed = [p for p in _PAIRS if p != (color, shape)]
    return [_Spec(color, shape, quadrant=quadrant)] + _shapes_from(rng, n - 1, allowed)


def _gen_attr(rng: _Rng, task: str, split: str, index: int, cur: Curriculum):
    # one schedule cell per (form, answer): every answer word is equally frequent
    cells = [(f, v) for f in cur.attr_forms for v in (COLOR_NAMES if f == "color" else SHAPES)]
    form, answer = cells[_schedule(task, split, index, "cell", len(cells))]
    if form == "color":  # "what color is the {shape} ?": the shape is unique
        color, shape = answer, rng.choice(SHAPES)
        specs = _unique_target(rng, cur, "shape", color, shape, None)
        question = TEMPLATES["attr/color"].format(shape=shape)
    else:  # "what shape is the {color} object ?": the colour is unique
        color, shape = rng.choice(COLOR_NAMES), answer
        specs = _unique_target(rng, cur, "color", color, shape, None)
        question = TEMPLATES["attr/shape"].format(color=color)
    info = {"form": form, "target": {"color": color, "shape": shape}}
    return specs, question, answer, None, info


def _gen_count(rng: _Rng, task: str, split: str, index: int, cur: Curriculum):
    kmax = min(cur.max_count, cur.max_objects)
    cells = _product(cur.count_forms, range(kmax + 1))
    form, k = cells[_schedule(task, split, index, "cell", len(cells))]
    n = _n_objects(rng, cur, at_least=kmax)  # n in [max(min_objects, kmax), max_objects]: independent of k
    if form == "shape":
        value = rng.choice(SHAPES)
        specs = [_Spec(rng.choice(COLOR_NAMES), value) for _ in range(k)]
        specs += _shapes_from(rng, n - k, [p for p in _PAIRS if p[1] != value])
        question = TEMPLATES["count/shape"].format(shapes=SHAPE_PLURALS[value])
    else:
        value = rng.choice(COLOR_NAMES)
        specs = [_Spec(value, rng.choice(SHAPES)) for _ in range(k)]
        specs += _shapes_from(rng, n - k, [p for p in _PAIRS if p[0] != value])
        question = TEMPLATES["count/color"].format(color=value)
    info = {"form": form, "target": {form: value}, "count": k}
    return specs, question, NUMBER_WORDS[k], None, info


def _gen_spatial(rng: _Rng, task: str, split: str, index: int, cur: Curriculum):
    cells = _product(cur.spatial_forms, QUADRANTS)
    form, quadrant = cells[_schedule(task, split, index, "cell", len(cells))]
    color, shape = rng.choice(COLOR_NAMES), rng.choice(SHAPES)
    specs = _unique_target(rng, cur, form, color, shape, quadrant)
    question = TEMPLATES[f"spatial/{form}"].format(color=color, shape=shape)
    info = {"form": form, "target": {"color": color, "shape": shape}}
    return specs, question, quadrant, None, info


def _gen_read(rng: _Rng, task: str, split: str, index: int, cur: Curriculum):
    cells = _product(cur.read_forms, GLYPHS)
    form, glyph = cells[_schedule(task, split, index, "cell", len(cells))]
    n_boxes = 1 if form == "image" else rng.randint(1, min(3, cur.max_objects))
    colors = rng.sample(COLOR_NAMES, n_boxes)
    glyphs = [glyph] + rng.sample([g for g in GLYPHS if g != glyph], n_boxes - 1)
    specs = [_Spec(c, glyph=g) for c, g in zip(colors, glyphs, strict=True)]
    n_shapes = rng.randint(0, max(0, min(3, cur.max_objects - n_boxes)))
    specs += _shapes_from(rng, n_shapes, _PAIRS)
    question = TEMPLATES[f"read/{form}"].format(color=colors[0])
    info = {"form": form, "target": {"color": colors[0], "glyph": glyph}}
    return specs, question, glyph, None, info


def _gen_mc(rng: _Rng, task: str, split: str, index: int, cur: Curriculum):
    letter = _schedule(task, split, index, "letter", len(OPTION_LETTERS))
    form = cur.mc_forms[_schedule(task, split, index, "form", len(cur.mc_forms))]
    color, shape = rng.choice(COLOR_NAMES), rng.choice(SHAPES)
    if form == "color":
        specs = _unique_target(rng, cur, "shape", color, shape, None)
        base, correct, pool = TEMPLATES["attr/color"].format(shape=shape), color, COLOR_NAMES
    elif form == "shape":
        specs = _unique_target(rng, cur, "color", color, shape, None)
        base, correct, pool = TEMPLATES["attr/shape"].format(color=color), shape, SHAPES
    else:
        quadrant = rng.choice(QUADRANTS)
        specs = _unique_target(rng, cur, "color_shape", color, shape, quadrant)
        base = TEMPLATES["spatial/color_shape"].format(color=color, shape=shape)
        correct, pool = quadrant, QUADRANTS
    options = rng.sample([v for v in pool if v != correct], len(OPTION_LETTERS) - 1)
    options.insert(letter, correct)
    question = TEMPLATES["mc"].format(question=base, a=options[0], b=options[1], c=options[2], d=options[3])
    info = {"form": form, "target": {"color": color, "shape": shape}, "correct": correct}
    return specs, question, OPTION_LETTERS[letter], tuple(options), info


_GENERATORS = {
    "shapes_exist": _gen_exist,
    "shapes_attr": _gen_attr,
    "shapes_count": _gen_count,
    "shapes_spatial": _gen_spatial,
    "shapes_read": _gen_read,
    "shapes_mc": _gen_mc,
}

# -- public generation API -------------------------------------------------------------------------------


def sample_seed(split: str, index: int) -> int:
    """The integer seed of sample ``index`` of ``split`` (ranges of the splits are disjoint)."""
    if split not in SPLIT_SEED_BASE:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if index < 0 or (split != "train" and index >= EVAL_SEED_SPAN):
        raise ValueError(f"index {index} out of range for split {split!r}")
    return SPLIT_SEED_BASE[split] + index


def make_sample(task: str, split: str, index: int, curriculum: Curriculum | None = None) -> Sample:
    """Sample ``index`` of ``task`` in ``split``: a pure function of (version, task, split, index)."""
    if task not in _GENERATORS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    cur = DEFAULT_CURRICULUM if curriculum is None else curriculum
    if split != "train" and cur != DEFAULT_CURRICULUM:
        raise ValueError("evaluation splits always use the default curriculum")
    seed = sample_seed(split, index)
    rng = _Rng(_code(GENERATOR_VERSION), _code(task), seed)
    specs, question, answer, options, info = _GENERATORS[task](rng, task, split, index, cur)
    objects = _place(rng, specs)
    image = render(objects, rng)
    return Sample(
        id=f"{task}/{split}/{index:06d}",
        task=task,
        split=split,
        index=index,
        seed=seed,
        image=image,
        question=question,
        answer=answer,
        options=options,
        meta=objects,
        info=info,
    )


def generate_split(task: str, split: str) -> list[Sample]:
    """The fixed evaluation split (``test``: 400, ``ci``: 40 samples), in index order."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"{split!r} is not a fixed split; use train_stream / make_batch for training")
    return [make_sample(task, split, i) for i in range(SPLIT_SIZES[split])]


def _normalise_weights(tasks: Mapping[str, float] | Sequence[str] | None) -> list[tuple[str, float]]:
    if tasks is None:
        items = [(t, 1.0) for t in TASKS]
    elif isinstance(tasks, Mapping):
        items = [(t, float(w)) for t, w in tasks.items() if w > 0]
    else:
        items = [(t, 1.0) for t in tasks]
    for t, _ in items:
        if t not in _GENERATORS:
            raise ValueError(f"unknown task {t!r}")
    if not items:
        raise ValueError("no task with positive weight")
    total = sum(w for _, w in items)
    return [(t, w / total) for t, w in items]


def train_task_at(position: int, tasks: Mapping[str, float] | Sequence[str] | None = None) -> str:
    """The task drawn for training-stream position ``position`` under the given weights."""
    weights = _normalise_weights(tasks)
    u = _Rng(_code(GENERATOR_VERSION), _code("train-mix"), SPLIT_SEED_BASE["train"] + position).uniform()
    acc = 0.0
    for t, w in weights:
        acc += w
        if u < acc:
            return t
    return weights[-1][0]


def make_batch(
    step: int,
    batch_size: int,
    tasks: Mapping[str, float] | Sequence[str] | None = None,
    curriculum: Curriculum | None = None,
) -> list[Sample]:
    """Training batch ``step``: positions ``step * batch_size + j``; task drawn per position by weight.

    A position p always maps to seed ``1_000_000_000 + p`` of the train split (disjoint from test/ci);
    the same (step, batch_size, tasks, curriculum) always gives the same batch.
    """
    out = []
    for j in range(batch_size):
        p = step * batch_size + j
        out.append(make_sample(train_task_at(p, tasks), "train", p, curriculum))
    return out


def train_stream(
    tasks: Mapping[str, float] | Sequence[str] | None = None,
    curriculum: Curriculum | None = None,
    start: int = 0,
) -> Iterator[Sample]:
    """Endless stream of mixed-task training samples from position ``start`` (same as make_batch)."""
    p = start
    while True:
        yield make_sample(train_task_at(p, tasks), "train", p, curriculum)
        p += 1


def stack_images(samples: Sequence[Sample]) -> np.ndarray:
    """(B, 96, 96, 3) uint8."""
    return np.stack([s.image for s in samples])


def stack_cell_labels(samples: Sequence[Sample]) -> np.ndarray:
    """(B, 12, 12) int64 per-cell classes, in the visual tokens' row-major order after reshape(B, 144)."""
    return np.stack([s.cell_labels for s in samples])


def answer_counts(samples: Sequence[Sample]) -> dict[str, int]:
    return dict(sorted(Counter(s.answer for s in samples).items()))


# -- on-disk cache ---------------------------------------------------------------------------------------


def cache_root(root: str | os.PathLike[str] | None = None) -> Path:
    """``root``, else ``$SEEBENCH_CACHE``, else ``~/.cache/seebench``."""
    if root is not None:
        return Path(root)
    env = os.environ.get("SEEBENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "seebench"


def split_dir(task: str, split: str, root: str | os.PathLike[str] | None = None) -> Path:
    return cache_root(root) / "shapes" / GENERATOR_VERSION / split / task


def _record_line(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _hash_update(h: Any, line: str, pixels: np.ndarray) -> None:
    h.update(line.encode("utf-8"))
    h.update(b"\n")
    h.update(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())


def _file_record(sample: Sample) -> dict[str, Any]:
    record = sample.to_record()
    record["image"] = f"{sample.index:06d}.png"
    return record


def content_hash(samples: Sequence[Sample]) -> str:
    """sha256 over the version, each record's canonical JSON line and its raw pixels (not PNG bytes,
    which depend on the zlib build), so the hash is the same on every machine."""
    h = hashlib.sha256(GENERATOR_VERSION.encode("utf-8"))
    for s in samples:
        _hash_update(h, _record_line(_file_record(s)), s.image)
    return h.hexdigest()


@lru_cache(maxsize=32)
def expected_hash(task: str, split: str) -> str:
    """The content hash of a fixed split as this code generates it (memoised per process)."""
    return content_hash(generate_split(task, split))


def _disk_hash(folder: Path) -> str | None:
    from PIL import Image

    try:
        lines = (folder / "data.jsonl").read_text(encoding="utf-8").splitlines()
        h = hashlib.sha256(GENERATOR_VERSION.encode("utf-8"))
        for line in lines:
            record = json.loads(line)
            with Image.open(folder / record["image"]) as im:
                pixels = np.asarray(im.convert("RGB"))
            if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
                return None
            _hash_update(h, _record_line(record), pixels)
        return h.hexdigest()
    except (OSError, ValueError, KeyError):
        return None


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cache_is_valid(
    task: str, split: str, root: str | os.PathLike[str] | None = None, verify: bool = False
) -> bool:
    """True if the cached split exists, its manifest names this version/task/split/size and the files on
    disk hash to the manifest's hash. ``verify=True`` also regenerates in memory and compares, which
    catches a generator change made without bumping GENERATOR_VERSION."""
    folder = split_dir(task, split, root)
    manifest = _read_manifest(folder)
    if not manifest:
        return False
    wanted = {
        "generator_version": GENERATOR_VERSION,
        "task": task,
        "split": split,
        "count": SPLIT_SIZES[split],
    }
    if any(manifest.get(k) != v for k, v in wanted.items()):
        return False
    if _disk_hash(folder) != manifest.get("content_hash"):
        return False
    return not verify or manifest.get("content_hash") == expected_hash(task, split)


def materialize(
    task: str, split: str, root: str | os.PathLike[str] | None = None, *, verify: bool = False
) -> Path:
    """Write the fixed split to ``<cache>/shapes/<GENERATOR_VERSION>/<split>/<task>/`` unless a valid copy
    is there; returns the folder. It holds ``NNNNNN.png`` images, ``data.jsonl`` (one record per line:
    id, image file name, question, answer, options, meta, info) and ``manifest.json`` (version, task,
    split, seed range, count, answer counts, content hash)."""
    if task not in _GENERATORS or split not in SPLIT_SIZES:
        raise ValueError(f"unknown task/split {task!r}/{split!r}")
    folder = split_dir(task, split, root)
    if cache_is_valid(task, split, root, verify=verify):
        return folder
    from PIL import Image

    samples = generate_split(task, split)
    digest = content_hash(samples)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{task}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    lines = []
    for s in samples:
        record = _file_record(s)
        Image.fromarray(s.image).save(tmp / record["image"], format="PNG", compress_level=1)
        lines.append(_record_line(record))
    (tmp / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    base = SPLIT_SEED_BASE[split]
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "task": task,
        "split": split,
        "count": len(samples),
        "seed_range": [base, base + len(samples)],
        "content_hash": digest,
        "answer_counts": answer_counts(samples),
        "image_size": IMAGE_SIZE,
        "grid": GRID,
    }
    (tmp / "manifest.json").write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def load_records(task: str, split: str, root: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Materialize (if needed) and read ``data.jsonl``; each record gets ``image_path`` (absolute)."""
    folder = materialize(task, split, root)
    records = []
    for line in (folder / "data.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        record["image_path"] = str(folder / record["image"])
        records.append(record)
    return records
