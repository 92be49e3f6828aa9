"""lmms-eval hooks of the shapes tasks: documents from the seebench generator, exact-match scoring."""

from __future__ import annotations

from functools import cache

import datasets
from PIL import Image

from harness.models.tiny import shapes


@cache
def _records(task: str, split: str) -> tuple[dict, ...]:
    shapes.materialize(task, split)
    return tuple(shapes.load_records(task, split))


def _docs(task: str, split: str):
    def process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
        recs = _records(task, split)
        rows = [
            {
                "id": r["id"],
                "index": int(r["index"]),
                "task": task,
                "split": split,
                "question": r["question"],
                "answer": r["answer"],
                "image_path": r["image_path"],
            }
            for r in recs[: len(dataset)]
        ]
        return datasets.Dataset.from_list(rows)

    return process_docs


for _t in shapes.TASKS:
    for _s in ("test", "ci"):
        globals()[f"docs_{_t.removeprefix('shapes_')}_{_s}"] = _docs(_t, _s)


def doc_to_visual(doc: dict) -> list[Image.Image]:
    try:
        return [Image.open(doc["image_path"]).convert("RGB")]
    except OSError:  # cache removed after the documents were built: regenerate the sample
        return [shapes.make_sample(doc["task"], doc["split"], int(doc["index"])).pil()]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['question']}{kw.get('post_prompt', '')}"


def doc_to_target(doc: dict) -> str:
    return doc["answer"]


def normalise(text: str) -> str:
    """The first word of a generation, without trailing punctuation (answers are one word)."""
    words = str(text).strip().split()
    return words[0].rstrip(".,;:!?") if words else ""


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    pred = results[0] if results else ""
    return {"exact_match": float(normalise(pred) == doc["answer"])}
