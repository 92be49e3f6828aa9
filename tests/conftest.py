import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def random_backbones():
    """One random-init backbone per family, built once per test session."""
    from harness.models.backbones.random import RANDOM_FAMILIES, build_random

    return {name: build_random(name) for name in RANDOM_FAMILIES}


@pytest.fixture(scope="session")
def llava576():
    """A random-init LLaVA-1.5 whose CLIP sees 336-pixel images: LLaVA-1.5's 576 patches (feature
    layer -2, CLS dropped), with the small widths of the other random models."""
    from harness.models.backbones.random import build_random

    return build_random("llava-1.5", image_size=336)


@pytest.fixture(scope="session")
def tiny_llava():
    """The committed tiny checkpoint (trained weights, CLIP feature layer -1, 144 visual tokens)."""
    from harness.backbones import open_backbone
    from harness.models.tiny.model import default_checkpoint

    return open_backbone(str(default_checkpoint()))


def tiny_inputs(bb, indices=(3,), task="shapes_mc"):
    """Processor inputs of tiny shapes samples (one sample per index), ready for ``bb.encode``."""
    from harness.models.tiny.shapes import make_sample
    from harness.models.tiny.tokenizer import build_prompt

    samples = [make_sample(task, "ci", i) for i in indices]
    return [bb.build_inputs([build_prompt(s.question)], [s.pil()]) for s in samples]


def tiny_prompt_text(bb, inputs):
    """The instruction of tiny inputs as text: the prompt's tokens after the image, decoded."""
    ids = inputs["input_ids"][0].tolist()
    image = bb.image_token_id
    last = max(i for i, t in enumerate(ids) if t == image)
    tok = getattr(bb.processor, "tokenizer", bb.processor)
    return tok.decode(ids[last + 1 :], skip_special_tokens=True)


def of_576(budget: float, n_visual: int) -> int:
    """A budget given "of 576" on a sample with ``n_visual`` visual tokens (the same fraction),
    restated for the tests from the budget convention."""
    return max(1, min(n_visual, round(budget / 576 * n_visual)))


def kept_after(bb, batch, plan, layer):
    """Original visual indices present when ``layer`` starts, per sample (a spy selector that
    keeps everything, placed before that layer)."""
    from dataclasses import replace

    from harness.models.executor import Executor
    from harness.models.plan import KeepVisual

    seen = {}

    class Spy(KeepVisual):
        def select(self, ctx):
            seen["kept"] = [v[ok].tolist() for v, ok in zip(ctx.visual_index, ctx.valid, strict=True)]
            return super().select(ctx)

    spied = plan.with_layer(layer, replace(plan.layers[layer], drop_before=Spy(count=10_000)))
    Executor(bb).prefill(batch, spied)
    return seen["kept"]
