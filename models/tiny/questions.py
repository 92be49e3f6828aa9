"""Training questions on a scene: the target cells of a generator question, and extra questions.

Training only: the evaluation splits are the generator's own questions.  Every extra question is
valid by construction (its answer is read off the scene's objects).  The makers draw from the
caller's ``random.Random`` in a fixed order, so the same seed gives the same questions."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from . import shapes

Cells = tuple[tuple[int, int], ...]
QA = tuple[str, str, Cells]  # (question, answer, target cells)


def cells(items: Iterable[shapes.SceneObject]) -> Cells:
    """The (row, column) grid cells of ``items``."""
    return tuple((o.row, o.col) for o in items)


def target_cells(sample: shapes.Sample) -> Cells:
    """Grid cells of the objects a generator question is about (empty for "no" answers)."""
    info, objs = sample.info, sample.meta
    target = info.get("target", {})
    if sample.task == "shapes_exist" and sample.answer == "no":
        return ()
    if sample.task == "shapes_read":
        boxes = [o for o in objs if o.glyph is not None]
        hit = [o for o in boxes if o.glyph == target.get("glyph")]
        return cells(hit)
    if sample.task in ("shapes_attr", "shapes_spatial", "shapes_mc"):
        hit = [o for o in objs if o.shape == target.get("shape") and o.color == target.get("color")]
        return cells(hit)
    hit = [o for o in objs if o.shape is not None and all(getattr(o, k) == v for k, v in target.items())]
    return cells(hit)


@dataclass
class Scene:
    """What the question makers read: the scene's shapes, its text boxes, every object's colour,
    and the random stream they draw from."""

    objs: list[shapes.SceneObject]  # objects with a shape
    boxes: list[shapes.SceneObject]  # text boxes (objects with a glyph)
    colors: list[str]  # the colour of every object, shapes and boxes
    rng: random.Random

    @classmethod
    def of(cls, sample: shapes.Sample, rng: random.Random) -> Scene:
        objs = [o for o in sample.meta if o.shape is not None]
        boxes = [o for o in sample.meta if o.glyph is not None]
        return cls(objs, boxes, [o.color for o in sample.meta], rng)

    def unique(self, key: Callable[[shapes.SceneObject], Any]) -> list[shapes.SceneObject]:
        """The shapes whose ``key`` no other shape shares."""
        counts: dict[Any, int] = {}
        for o in self.objs:
            counts[key(o)] = counts.get(key(o), 0) + 1
        return [o for o in self.objs if counts[key(o)] == 1]


T = shapes.TEMPLATES


def exist_color(s: Scene) -> QA | None:
    """Existence of a colour ("Is there a red object?"): half the time a present one, else absent."""
    present = {o.color for o in s.objs}
    absent = [c for c in shapes.COLOR_NAMES if c not in s.colors]
    if s.rng.random() < 0.5 and present:
        c = s.rng.choice(sorted(present))
        return T["exist/color"].format(color=c), "yes", cells(o for o in s.objs if o.color == c)
    if absent:
        return T["exist/color"].format(color=s.rng.choice(absent)), "no", ()
    return None


def exist_shape(s: Scene) -> QA | None:
    """Existence of a shape ("Is there a circle?"): half the time a present one, else an absent one."""
    present = {o.shape for o in s.objs if o.shape is not None}  # every one of Scene.objs has a shape
    absent = [sh for sh in shapes.SHAPES if sh not in present]
    if s.rng.random() < 0.5 and present:
        sh = s.rng.choice(sorted(present))
        return T["exist/shape"].format(shape=sh), "yes", cells(o for o in s.objs if o.shape == sh)
    if absent:
        return T["exist/shape"].format(shape=s.rng.choice(absent)), "no", ()
    return None


def attr_color(s: Scene) -> QA | None:
    """The colour of the only object of its shape."""
    u = s.unique(lambda o: o.shape)
    if not u:
        return None
    o = s.rng.choice(u)
    return T["attr/color"].format(shape=o.shape), o.color, cells([o])


def attr_shape(s: Scene) -> QA | None:
    """The shape of the only object of its colour (no text box of that colour either)."""
    u = [o for o in s.unique(lambda o: o.color) if s.colors.count(o.color) == 1]
    if not u:
        return None
    o = s.rng.choice(u)
    assert o.shape is not None  # Scene.objs have a shape
    return T["attr/shape"].format(color=o.color), o.shape, cells([o])


def count(s: Scene) -> QA | None:
    """How many objects of a shape, or of a colour (scenes without text boxes, at most four)."""
    if s.boxes:
        return None
    if s.rng.random() < 0.5:
        sh = s.rng.choice(shapes.SHAPES)
        hit = [o for o in s.objs if o.shape == sh]
        q = T["count/shape"].format(shapes=shapes.SHAPE_PLURALS[sh])
    else:
        c = s.rng.choice(shapes.COLOR_NAMES)
        hit = [o for o in s.objs if o.color == c]
        q = T["count/color"].format(color=c)
    return (q, shapes.NUMBER_WORDS[len(hit)], cells(hit)) if len(hit) <= 4 else None


def spatial(s: Scene) -> QA | None:
    """The quadrant of the only object of its colour and shape."""
    u = s.unique(lambda o: (o.color, o.shape))
    if not u:
        return None
    o = s.rng.choice(u)
    return T["spatial/color_shape"].format(color=o.color, shape=o.shape), o.quadrant, cells([o])


def read(s: Scene) -> QA | None:
    """The glyph of the image's only box, or of the box of a colour no other object has."""
    if not s.boxes:
        return None
    if len(s.boxes) == 1 and s.rng.random() < 0.5:
        glyph = s.boxes[0].glyph
        assert glyph is not None  # Scene.boxes have a glyph
        return T["read/image"], glyph, cells(s.boxes)
    b = s.rng.choice(s.boxes)
    if s.colors.count(b.color) != 1:
        return None
    assert b.glyph is not None
    return T["read/box"].format(color=b.color), b.glyph, cells([b])


def multiple_choice(s: Scene) -> QA | None:
    """A colour, shape or quadrant question with four options (the correct one at a random letter);
    the answer is the letter."""
    kind = s.rng.choice(["color", "shape", "where"])
    base = {"color": attr_color, "shape": attr_shape, "where": spatial}[kind](s)
    if base is None:
        return None
    q, correct, where = base
    pool = {"color": shapes.COLOR_NAMES, "shape": shapes.SHAPES, "where": shapes.QUADRANTS}[kind]
    options = s.rng.sample([v for v in pool if v != correct], 3)
    letter = s.rng.randrange(4)
    options.insert(letter, correct)
    text = T["mc"].format(question=q, a=options[0], b=options[1], c=options[2], d=options[3])
    return text, shapes.OPTION_LETTERS[letter], where


# drawn uniformly; multiple choice twice (two hops: find the object, then its option)
MAKERS = (
    exist_color,
    exist_shape,
    attr_color,
    attr_shape,
    count,
    spatial,
    read,
    multiple_choice,
    multiple_choice,
)


def extra_questions(sample: shapes.Sample, rng: random.Random, k: int) -> list[QA]:
    """Up to k more (question, answer, target cells) about the same scene, valid by construction:
    at most 4k draws of a maker, skipping failed makers and repeated questions."""
    scene = Scene.of(sample, rng)
    out: list[QA] = []
    seen = {sample.question}
    for _ in range(4 * k):
        if len(out) >= k:
            break
        qa = rng.choice(MAKERS)(scene)
        if qa is not None and qa[0] not in seen:
            seen.add(qa[0])
            out.append(qa)
    return out
