"""The `shapes` suite: determinism, balance, answer correctness (decoded from the pixels), splits, cache."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from functools import cache

import numpy as np
import pytest
from PIL import Image

from harness.models.tiny import shapes as S

# Golden values: change only together with a GENERATOR_VERSION bump.
GOLDEN_VERSION = "shapes-v1"
GOLDEN_CI_HASH = "07cba5c48e22dd3c24fb98b7d189bc50c2265d12906ab32f2ef11e50ce937ca7"
GOLDEN_EXIST_TEST_0_IMAGE = "508841b5381154dff61293495a9d691ab629b334827be5c2612224567cef4373"

# Independent knowledge used to decode scenes from pixels (not read from the generator's tables).
PALETTE = {
    (220, 40, 40): "red",
    (40, 170, 60): "green",
    (40, 80, 220): "blue",
    (235, 200, 30): "yellow",
    (150, 60, 190): "purple",
    (40, 190, 200): "cyan",
}
SHAPE_BY_PIXEL_COUNT = {36: "square", 32: "circle", 24: "triangle", 20: "cross"}
PLURAL = {"squares": "square", "circles": "circle", "triangles": "triangle", "crosses": "cross"}
NUMBERS = ["zero", "one", "two", "three", "four"]
INK = (16, 16, 16)


@cache
def split(task: str, name: str) -> tuple[S.Sample, ...]:
    return tuple(S.generate_split(task, name))


def all_eval_samples():
    for task in S.TASKS:
        for name in ("ci", "test"):
            yield from split(task, name)


def decode(image: np.ndarray) -> list[dict]:
    """Objects read back from the pixels: one per non-background cell, colour by exact palette match,
    shape by its number of coloured pixels, glyph boxes by a full-colour cell with ink pixels."""
    cells = image.reshape(12, 8, 12, 8, 3).transpose(0, 2, 1, 3, 4).reshape(144, 64, 3).astype(np.int32)
    grey = (cells[..., 0] == cells[..., 1]) & (cells[..., 1] == cells[..., 2])
    grey &= (cells[..., 0] >= 226) & (cells[..., 0] <= 238)
    objects = []
    for k in np.flatnonzero(~grey.all(axis=1)):
        r, c = divmod(int(k), 12)
        px = cells[k][~grey[k]]
        codes, n = np.unique(px[:, 0] * 65536 + px[:, 1] * 256 + px[:, 2], return_counts=True)
        counts = {
            (int(v) >> 16, (int(v) >> 8) & 255, int(v) & 255): int(m) for v, m in zip(codes, n, strict=True)
        }
        ink = counts.pop(INK, 0)
        assert len(counts) == 1, f"cell ({r},{c}) has colours {counts}"
        (rgb, count), *_ = counts.items()
        color = PALETTE[rgb]
        if ink:
            assert count + ink == 64, "a glyph box fills its whole cell"
            objects.append({"row": r, "col": c, "color": color, "shape": None, "ink": ink})
        else:
            objects.append({"row": r, "col": c, "color": color, "shape": SHAPE_BY_PIXEL_COUNT[count]})
    return objects


def quadrant(o) -> str:
    return ("bottom" if o["row"] >= 6 else "top") + "-" + ("right" if o["col"] >= 6 else "left")


def check_answer(s: S.Sample) -> None:
    """Re-derive the answer from the decoded image (plus meta for glyph identity) and check uniqueness."""
    objs = decode(s.image)
    meta = [o.to_dict() for o in s.meta]
    assert [(o["row"], o["col"], o["color"], o["shape"]) for o in objs] == [
        (o["row"], o["col"], o["color"], o["shape"]) for o in meta
    ]
    shapes_ = [o for o in objs if o["shape"]]
    boxes = [m for m in meta if m["glyph"]]
    q = s.question
    if s.task == "shapes_exist":
        if m := re.fullmatch(r"is there a (\w+) object \?", q):
            present = any(o["color"] == m[1] for o in shapes_)
        elif m := re.fullmatch(r"is there a (\w+) (\w+) \?", q):
            present = any((o["color"], o["shape"]) == (m[1], m[2]) for o in shapes_)
        else:
            m = re.fullmatch(r"is there a (\w+) \?", q)
            present = any(o["shape"] == m[1] for o in shapes_)
        assert s.answer == ("yes" if present else "no")
        return
    if s.task == "shapes_count":
        if m := re.fullmatch(r"how many (\w+) objects are there \?", q):
            n = sum(o["color"] == m[1] for o in shapes_)
        else:
            m = re.fullmatch(r"how many (\w+) are there \?", q)
            n = sum(o["shape"] == PLURAL[m[1]] for o in shapes_)
        assert s.answer == NUMBERS[n]
        return
    if s.task == "shapes_read":
        if m := re.fullmatch(r"what is written in the (\w+) box \?", q):
            hits = [b for b in boxes if b["color"] == m[1]]
        else:
            assert q == "what is written in the image ?"
            hits = boxes
        assert len(hits) == 1
        assert s.answer == hits[0]["glyph"]
        assert len({b["glyph"] for b in boxes}) == len(boxes)
        return
    base, options = q, None
    if s.task == "shapes_mc":
        m = re.fullmatch(
            r"(.+ \?) A \. (\S+) B \. (\S+) C \. (\S+) D \. (\S+) answer with the option letter \.", q
        )
        assert m, q
        base, options = m[1], [m[2], m[3], m[4], m[5]]
        assert tuple(options) == s.options and len(set(options)) == 4
    if m := re.fullmatch(r"what color is the (\w+) \?", base):
        hits = [o for o in shapes_ if o["shape"] == m[1]]
        value = lambda o: o["color"]  # noqa: E731
    elif m := re.fullmatch(r"what shape is the (\w+) object \?", base):
        hits = [o for o in shapes_ if o["color"] == m[1]]
        value = lambda o: o["shape"]  # noqa: E731
    elif m := re.fullmatch(r"where is the (\w+) (\w+) \?", base):
        hits = [o for o in shapes_ if (o["color"], o["shape"]) == (m[1], m[2])]
        value = quadrant
    else:
        raise AssertionError(f"unexpected question {q!r}")
    assert len(hits) == 1, f"{s.id}: the queried object must be unique"
    truth = value(hits[0])
    if options is None:
        assert s.answer == truth
    else:
        assert options.count(truth) == 1
        assert s.answer == "ABCD"[options.index(truth)]


def test_version_and_golden_hashes():
    assert S.GENERATOR_VERSION == GOLDEN_VERSION, "update the golden hashes when bumping the version"
    h = hashlib.sha256()
    for task in S.TASKS:
        h.update(S.content_hash(split(task, "ci")).encode())
    assert h.hexdigest() == GOLDEN_CI_HASH
    image = split("shapes_exist", "test")[0].image
    assert hashlib.sha256(image.tobytes()).hexdigest() == GOLDEN_EXIST_TEST_0_IMAGE


def test_determinism_same_and_different_seed():
    for task in S.TASKS:
        a, b = S.make_sample(task, "test", 7), S.make_sample(task, "test", 7)
        assert a.image.tobytes() == b.image.tobytes()
        assert (a.question, a.answer, a.options, a.meta, a.info) == (
            b.question,
            b.answer,
            b.options,
            b.meta,
            b.info,
        )
        c = S.make_sample(task, "test", 8)
        assert c.image.tobytes() != a.image.tobytes()
        assert S.make_sample(task, "ci", 7).image.tobytes() != a.image.tobytes()
    images = {s.image.tobytes() for s in split("shapes_attr", "test")}
    assert len(images) == 400
    with pytest.raises(ValueError):
        a.image[0, 0, 0] = 1  # read-only


def test_image_format_and_background():
    for s in split("shapes_count", "ci"):
        img = s.image
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        labels = s.cell_labels
        cells = img.reshape(12, 8, 12, 8, 3).transpose(0, 2, 1, 3, 4).reshape(144, 64, 3)
        bg = cells[labels.reshape(-1) == 0]
        assert (bg[..., 0] == bg[..., 1]).all() and (bg[..., 1] == bg[..., 2]).all()
        assert bg.min() >= 226 and bg.max() <= 238
        # background tokens are not all identical
        assert len({c.tobytes() for c in bg}) == len(bg)
        assert 2 <= len(s.meta) <= 8
        # objects never touch, not even diagonally
        for i, a in enumerate(s.meta):
            for b in s.meta[i + 1 :]:
                assert max(abs(a.row - b.row), abs(a.col - b.col)) >= 2


def test_answers_rederived_from_pixels_all_eval_splits():
    for s in all_eval_samples():
        check_answer(s)


def test_cell_labels_match_meta():
    for s in split("shapes_read", "ci") + split("shapes_spatial", "ci"):
        labels = s.cell_labels
        assert labels.shape == (12, 12)
        assert int((labels > 0).sum()) == len(s.meta)
        for o in s.meta:
            name = S.describe_label(int(labels[o.row, o.col]))
            assert name == (f"{o.color} {o.shape}" if o.shape else f"{o.color} box {o.glyph}")
        assert labels.max() < S.NUM_CELL_CLASSES
    names = {S.describe_label(i) for i in range(S.NUM_CELL_CLASSES)}
    assert len(names) == S.NUM_CELL_CLASSES == 1 + 6 * 4 + 6 * 10


def test_split_sizes_and_ids():
    for task in S.TASKS:
        for name, n in (("test", 400), ("ci", 40)):
            xs = split(task, name)
            assert len(xs) == n
            assert [x.id for x in xs] == [f"{task}/{name}/{i:06d}" for i in range(n)]
            assert all(x.task == task and x.split == name for x in xs)


def test_exist_balance_and_flavours():
    for name, n in (("test", 400), ("ci", 40)):
        xs = split("shapes_exist", name)
        assert Counter(x.answer for x in xs) == {"yes": n // 2, "no": n // 2}
        for form in ("color", "shape"):
            sub = [x for x in xs if x.info["form"] == form]
            assert Counter(x.answer for x in sub) == {"yes": n // 4, "no": n // 4}
        flav = Counter(x.info["flavour"] for x in xs if x.answer == "no")
        assert flav == {"random": n // 4, "adversarial": n // 4}
    # adversarial negatives: the absent attribute's nearest neighbour is present
    for x in split("shapes_exist", "test"):
        if x.info["flavour"] == "adversarial":
            t = x.info["target"]
            if "color" in t:
                assert any(o.color == S.NEAREST_COLOR[t["color"]] for o in x.meta)
            else:
                assert any(o.shape == S.NEAREST_SHAPE[t["shape"]] for o in x.meta)
    # no density shortcut: the number of objects does not predict the answer
    xs = split("shapes_exist", "test")
    yes_n = np.mean([len(x.meta) for x in xs if x.answer == "yes"])
    no_n = np.mean([len(x.meta) for x in xs if x.answer == "no"])
    assert abs(yes_n - no_n) < 0.6


def test_answer_distributions():
    mc = split("shapes_mc", "test")
    assert Counter(x.answer for x in mc) == {"A": 100, "B": 100, "C": 100, "D": 100}
    assert Counter(x.answer for x in split("shapes_mc", "ci")) == {"A": 10, "B": 10, "C": 10, "D": 10}
    assert set(Counter(x.info["form"] for x in mc)) == {"color", "shape", "where"}
    assert set(Counter(x.answer for x in split("shapes_spatial", "test")).values()) == {100}
    assert set(Counter(x.answer for x in split("shapes_count", "test")).values()) == {80}
    assert set(Counter(x.answer for x in split("shapes_attr", "test")).values()) == {40}
    assert set(Counter(x.answer for x in split("shapes_read", "test")).values()) == {40}
    counts = split("shapes_count", "test")
    assert {x.answer for x in counts} == set(NUMBERS)
    # counting scenes have 4..8 objects, independent of the count
    assert all(4 <= len(x.meta) <= 8 for x in counts)


def test_vocabulary_closed():
    vocab = set(S.vocabulary())
    assert S.vocabulary() == sorted(vocab)
    samples = list(all_eval_samples())
    samples += S.make_batch(0, 60, curriculum=S.Curriculum(exist_forms=("color_shape",)))
    samples += S.make_batch(1, 60, curriculum=S.Curriculum(spatial_forms=("shape", "color"), max_objects=3))
    for s in samples:
        words = s.question.split() + [s.answer] + list(s.options or ())
        assert set(words) <= vocab, s.question
        assert len(s.answer.split()) == 1
        assert s.question == " ".join(s.question.split())  # single spaces, no stray whitespace
        lower = [w for w in s.question.split() if w not in S.OPTION_LETTERS]
        assert all(w == w.lower() for w in lower)


def test_split_disjointness():
    test_seeds = {x.seed for t in S.TASKS for x in split(t, "test")}
    ci_seeds = {x.seed for t in S.TASKS for x in split(t, "ci")}
    batch = S.make_batch(0, 64) + S.make_batch(5, 64)
    train_seeds = {x.seed for x in batch}
    assert not (test_seeds & ci_seeds) and not (test_seeds & train_seeds) and not (ci_seeds & train_seeds)
    assert max(test_seeds) < S.SPLIT_SEED_BASE["ci"] <= min(ci_seeds)
    assert max(ci_seeds) < S.SPLIT_SEED_BASE["ci"] + S.EVAL_SEED_SPAN <= S.SPLIT_SEED_BASE["train"]
    assert min(train_seeds) >= S.SPLIT_SEED_BASE["train"]
    ids = [x.id for x in batch] + [x.id for x in all_eval_samples()]
    assert len(ids) == len(set(ids))
    eval_images = {x.image.tobytes() for x in all_eval_samples()}
    assert not eval_images & {x.image.tobytes() for x in batch}
    with pytest.raises(ValueError):
        S.sample_seed("test", S.EVAL_SEED_SPAN)
    with pytest.raises(ValueError):
        S.make_sample("shapes_exist", "test", 0, S.Curriculum(max_objects=3))


def test_train_batches_weights_and_curriculum():
    a, b = S.make_batch(3, 16), S.make_batch(3, 16)
    assert [x.id for x in a] == [x.id for x in b]
    assert all(x.image.tobytes() == y.image.tobytes() for x, y in zip(a, b, strict=True))
    stream = S.train_stream(start=48)
    assert [next(stream).id for _ in range(16)] == [x.id for x in a]
    assert all(x.split == "train" for x in a)

    only = S.make_batch(0, 32, tasks={"shapes_exist": 1.0, "shapes_count": 0.0})
    assert {x.task for x in only} == {"shapes_exist"}
    mixed = Counter(S.train_task_at(p, {"shapes_attr": 3, "shapes_read": 1}) for p in range(2000))
    assert set(mixed) == {"shapes_attr", "shapes_read"} and 0.70 < mixed["shapes_attr"] / 2000 < 0.80

    cur = S.Curriculum(min_objects=1, max_objects=3, exist_forms=("color_shape",), max_count=2)
    batch = S.make_batch(0, 120, curriculum=cur)
    assert all(1 <= len(x.meta) <= 3 for x in batch)
    assert all(x.info["form"] == "color_shape" for x in batch if x.task == "shapes_exist")
    assert all(x.answer in ("zero", "one", "two") for x in batch if x.task == "shapes_count")
    for x in batch:
        check_answer(x)
    imgs, labels = S.stack_images(batch), S.stack_cell_labels(batch)
    assert imgs.shape == (120, 96, 96, 3) and labels.shape == (120, 12, 12)
    with pytest.raises(ValueError):
        S.Curriculum(exist_forms=("colour",))


def test_generation_speed():
    t0 = time.perf_counter()
    S.generate_split("shapes_mc", "test")
    assert time.perf_counter() - t0 < 5.0  # ~0.15 s on an idle core


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def test_cache_materialize_and_regenerate(tmp_path, monkeypatch):
    monkeypatch.setenv("SEEBENCH_CACHE", str(tmp_path))
    folder = S.materialize("shapes_read", "ci")
    assert folder == tmp_path / "shapes" / S.GENERATOR_VERSION / "ci" / "shapes_read"
    man = _manifest(folder)
    samples = split("shapes_read", "ci")
    assert man["generator_version"] == S.GENERATOR_VERSION and man["count"] == 40
    assert man["seed_range"] == [S.SPLIT_SEED_BASE["ci"], S.SPLIT_SEED_BASE["ci"] + 40]
    assert man["content_hash"] == S.content_hash(samples) == S.expected_hash("shapes_read", "ci")
    lines = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]
    assert len(lines) == 40
    for rec, s in zip(lines, samples, strict=True):
        assert (rec["id"], rec["question"], rec["answer"], rec["options"]) == (
            s.id,
            s.question,
            s.answer,
            None,
        )
        assert np.array_equal(np.asarray(Image.open(folder / rec["image"])), s.image)

    def stamp():
        return (folder / "manifest.json").stat().st_mtime_ns, (folder / "000000.png").stat().st_ino

    before = stamp()
    assert S.materialize("shapes_read", "ci") == folder and stamp() == before  # valid: untouched

    # version mismatch -> regenerated
    bad = dict(man, generator_version="shapes-v0")
    (folder / "manifest.json").write_text(json.dumps(bad))
    S.materialize("shapes_read", "ci")
    assert _manifest(folder) == man

    # tampered image -> on-disk hash mismatch -> regenerated
    Image.fromarray(samples[1].image).save(folder / "000000.png")
    assert not S.cache_is_valid("shapes_read", "ci")
    S.materialize("shapes_read", "ci")
    assert np.array_equal(np.asarray(Image.open(folder / "000000.png")), samples[0].image)

    # wrong hash in the manifest -> regenerated
    (folder / "manifest.json").write_text(json.dumps(dict(man, content_hash="0" * 64)))
    S.materialize("shapes_read", "ci")
    assert _manifest(folder)["content_hash"] == man["content_hash"]

    # self-consistent but stale content (generator changed without a version bump): only verify=True sees it
    recs = (folder / "data.jsonl").read_text().splitlines()
    first = json.loads(recs[0])
    first["answer"] = "Z"
    (folder / "data.jsonl").write_text("\n".join([json.dumps(first)] + recs[1:]) + "\n")
    (folder / "manifest.json").write_text(json.dumps(dict(man, content_hash=S._disk_hash(folder))))
    assert S.cache_is_valid("shapes_read", "ci") and not S.cache_is_valid("shapes_read", "ci", verify=True)
    S.materialize("shapes_read", "ci", verify=True)
    assert S.cache_is_valid("shapes_read", "ci", verify=True)

    # missing files -> regenerated; explicit root wins over the env variable
    os.remove(folder / "000005.png")
    S.materialize("shapes_read", "ci")
    assert (folder / "000005.png").exists()
    other = S.materialize("shapes_mc", "ci", root=tmp_path / "elsewhere")
    assert other.is_relative_to(tmp_path / "elsewhere")
    records = S.load_records("shapes_mc", "ci", root=tmp_path / "elsewhere")
    assert len(records) == 40 and all(len(r["options"]) == 4 for r in records)
    assert all(os.path.exists(r["image_path"]) for r in records)
    assert not list(folder.parent.glob(".*tmp*"))
