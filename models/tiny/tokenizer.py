"""Word-level tokenizer, image processor and LLaVA processor of the tiny lab.

Vocabulary: the special tokens at fixed ids, then every word of the ``shapes`` suite
(:func:`harness.models.tiny.shapes.vocabulary`) and of the prompt template, sorted::

    0 <pad>   1 <unk>   2 <s> (bos)   3 </s> (eos)   4 <image>   5.. words

The pre-tokenizer splits on whitespace only (``WhitespaceSplit``), so ``top-left`` stays one token and
every punctuation mark must be written as its own space-separated word (the suite does so). Special
tokens are matched before splitting, so LLaVA's expanded ``<image><image>...`` (no spaces) is fine.
Encoding prepends ``<s>`` (like LLaMA's tokenizer); nothing is appended.

Prompt template (LLaVA's ``vicuna_v1`` layout, with the newline after the image dropped because a
whitespace pre-tokenizer cannot keep it)::

    <s> system : answer the question about the image . USER : <image> {question} ASSISTANT :

    S (system, 12 tokens incl. <s>): "<s> system : answer the question about the image . USER :"
    V (visual, 144 tokens after expansion): "<image>"
    T (text): "{question} ASSISTANT :"

so ``system`` tokens exist as a class, as in LLaVA-1.5 (docs/methods.md §2.1).

``<s>`` is added by the tokenizer, not written in the text (:func:`build_prompt` leaves it out). After
the processor expands ``<image>`` there are 144 visual tokens (12 x 12 patches of 8 px, CLS dropped by
``vision_feature_select_strategy="default"``), row-major. The answer is the single token that follows
``ASSISTANT :``; a training target may append ``</s>``.

Image processor: ``CLIPImageProcessor`` semantics (the PIL backend, which needs no torchvision and
gives the same numbers everywhere) at 96 x 96: resizing and cropping are no-ops on the suite's 96 px
images, then ``pixel / 255`` normalised with mean 0.5 and std 0.5 per channel, i.e. mapped to [-1, 1].
The saved config names ``CLIPImageProcessor``; where torchvision is installed that loads the torchvision
backend, for which a same-size resize and crop are no-ops as well.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import shapes

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN)  # ids 0..4

SYSTEM_PROMPT = "system : answer the question about the image ."
PROMPT_TEMPLATE = SYSTEM_PROMPT + " USER : " + IMAGE_TOKEN + " {question} ASSISTANT :"

PATCH_SIZE = 8
IMAGE_SIZE = shapes.IMAGE_SIZE  # 96
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 144
IMAGE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
IMAGE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
MODEL_MAX_LENGTH = 512


def prompt_words() -> list[str]:
    """Words of the prompt template (without the image token and the question placeholder)."""
    words = PROMPT_TEMPLATE.replace("{question}", " ").split()
    return sorted({w for w in words if w != IMAGE_TOKEN})


def vocabulary() -> list[str]:
    """The full token list in id order: special tokens, then all words sorted."""
    words = sorted(set(shapes.vocabulary()) | set(prompt_words()))
    return list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]


#: Jinja chat template that renders exactly :func:`build_prompt` (so generic code that calls
#: ``processor.apply_chat_template`` prompts the tiny model the way it was trained).
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}"
    + SYSTEM_PROMPT
    + " USER :{% for c in m['content'] %}{% if c['type'] == 'image' %} "
    + IMAGE_TOKEN
    + "{% endif %}{% endfor %}{% for c in m['content'] %}{% if c['type'] == 'text' %} {{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{% endfor %} ASSISTANT :"
)


def build_prompt(question: str) -> str:
    """The prompt text for one question (``<s>`` is added by the tokenizer)."""
    return PROMPT_TEMPLATE.format(question=question)


def build_tokenizer():
    """A ``PreTrainedTokenizerFast`` (word level, left padding) over :func:`vocabulary`."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    bos_id = vocab[BOS_TOKEN]
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A $B", special_tokens=[(BOS_TOKEN, bos_id)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )
    assert tok.pad_token_id == 0 and tok.convert_tokens_to_ids(IMAGE_TOKEN) == vocab[IMAGE_TOKEN]
    return tok


def build_image_processor():
    """CLIP-style image processor for 96 x 96 input, normalised to [-1, 1]."""
    try:
        from transformers.models.clip import CLIPImageProcessorPil as _Processor
    except ImportError:  # older transformers: the slow CLIPImageProcessor is the PIL one
        from transformers import CLIPImageProcessor as _Processor

    return _Processor(
        do_resize=True,
        size={"shortest_edge": IMAGE_SIZE},
        do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        do_convert_rgb=True,
    )


def build_processor():
    """``LlavaProcessor``: 144 ``<image>`` ids per image (patch 8, CLS counted then dropped)."""
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=build_image_processor(),
        tokenizer=build_tokenizer(),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )


def save_processor(path: str | os.PathLike[str]) -> Path:
    """Write the processor (tokenizer + image processor + processor config) with ``save_pretrained``."""
    out = Path(path)
    build_processor().save_pretrained(out)
    return out


def load_processor(path: str | os.PathLike[str]):
    """Load a saved processor from a local folder (never touches the network)."""
    from transformers import LlavaProcessor

    return LlavaProcessor.from_pretrained(str(path), local_files_only=True)
