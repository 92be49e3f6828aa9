"""A random-init backbone saved as a checkpoint folder laid out the way the hub ships one.

``save_hub_checkpoint("qwen2-vl", DIR)`` writes what a published checkpoint of the family holds:

- ``config.json``, ``generation_config.json``, ``model.safetensors`` (``save_pretrained``);
- ``tokenizer.json`` and ``tokenizer_config.json`` (a byte-level BPE tokenizer built offline: the
  256 byte symbols, no merges, and the family's special tokens at the ids its config uses, every id
  below the random model's vocabulary of 512; transformers 5 writes no ``special_tokens_map.json``);
- ``preprocessor_config.json``: the image processor of ``random.py`` (the sizes the random towers
  take), so the processor expands each image placeholder into the tokens the tower gives;
- ``processor_config.json``: the processor's own settings (patch size, feature strategy, image
  sequence length, ...), the flat file the hub ships (transformers 5's ``save_pretrained`` nests the
  image and video processors in it instead; both layouts load);
- ``chat_template.jinja``: a short template in the family's format (LLaVA-1.5 has none: its prompt
  is vicuna's ``USER: <image>\\n... ASSISTANT:``, ``models/verify.py: chat_prompt``);
- ``video_preprocessor_config.json`` where the processor takes a video processor (Qwen, OneVision,
  InternVL): what that class's ``save_pretrained`` writes.  The class needs torchvision, so its
  defaults are restated here (``_VIDEO_DEFAULTS``, checked against transformers 5.23) and the
  settings it shares with the image processor are taken from it.

``harness verify DIR`` loads such a folder through ``loading.py: load_backbone`` exactly as it would
a downloaded one (``tests/test_hub_folders.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import Backbone, BackboneError
from .processors import image_only_processor_class
from .random import IMG_END, IMG_START, RANDOM_FAMILIES, build_random
from .random import _image_processor as random_image_processor

#: first id of the 256 byte symbols (ids below it are the text specials)
_FIRST_BYTE_ID = 8

_CHATML = (
    "{%- for message in messages -%}\n"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}\n"
    "{%- if message['content'] is string -%}{{- message['content'] -}}\n"
    "{%- else -%}{%- for item in message['content'] -%}\n"
    "{%- if item['type'] == 'image' -%}{{- IMAGE -}}\n"
    "{%- elif item['type'] == 'video' -%}{{- VIDEO -}}\n"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}\n"
    "{%- endfor -%}{%- endif -%}\n"
    "{{- '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}\n"
)
_QWEN_SYSTEM = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}{%- endif -%}\n"
)


def _chatml(image: str, video: str, system: str = "") -> str:
    """A ChatML template: images and videos as ``image``/``video`` literals, then the text."""
    return system + _CHATML.replace("IMAGE", repr(image)).replace("VIDEO", repr(video))


@dataclass(frozen=True)
class _Text:
    """The text specials of a family's tokenizer: id -> token, and which of them play bos/eos/pad."""

    specials: dict[int, str]
    bos: str | None
    eos: str
    pad: str


_LLAMA = _Text({0: "<unk>", 1: "<s>", 2: "</s>", 3: "<pad>", 4: "<|im_start|>", 5: "<|im_end|>"},
               bos="<s>", eos="</s>", pad="<pad>")  # fmt: skip
_QWEN = _Text({0: "<|endoftext|>", 1: "<|im_start|>", 2: "<|im_end|>"}, bos=None, eos="<|im_end|>",
              pad="<|endoftext|>")  # fmt: skip


@dataclass(frozen=True)
class _Layout:
    """What a family's folder holds beyond the model: processor class, tokenizer, template."""

    processor: str  # the transformers processor class
    text: _Text
    #: visual special token -> its id: the config attribute holding it, a fixed id, or None (the next
    #: free id counting down from the top of the vocabulary)
    visual: dict[str, str | int | None]
    template: str | None
    #: tokenizer attributes the processor reads (``tokenizer.image_token``, ...): name -> token
    tokenizer_tokens: dict[str, str] = field(default_factory=dict)


_QWEN_VISUAL: dict[str, str | int | None] = {"<|image_pad|>": "image_token_id", "<|video_pad|>": "video_token_id",
                "<|vision_start|>": "vision_start_token_id", "<|vision_end|>": "vision_end_token_id"}  # fmt: skip
_QWEN_TEMPLATE = _chatml(
    "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>", _QWEN_SYSTEM
)

#: family (model_type) -> its folder's layout; a family is one entry
_LAYOUTS: dict[str, _Layout] = {
    "llava": _Layout("LlavaProcessor", _LLAMA, {"<image>": "image_token_index"}, None,
                     {"image_token": "<image>"}),
    "llava_next": _Layout("LlavaNextProcessor", _LLAMA, {"<image>": "image_token_index"},
                          _chatml("<image>\n", "<video>\n"), {"image_token": "<image>"}),
    "llava_onevision": _Layout("LlavaOnevisionProcessor", _QWEN, {"<image>": "image_token_index", "<video>": None},
                               _chatml("<image>\n", "<video>\n"),
                               {"image_token": "<image>", "video_token": "<video>"}),
    "qwen2_vl": _Layout("Qwen2VLProcessor", _QWEN, _QWEN_VISUAL, _QWEN_TEMPLATE),
    "qwen2_5_vl": _Layout("Qwen2_5_VLProcessor", _QWEN, _QWEN_VISUAL, _QWEN_TEMPLATE),
    "qwen3_vl": _Layout("Qwen3VLProcessor", _QWEN, _QWEN_VISUAL, _QWEN_TEMPLATE),
    "internvl": _Layout(
        "InternVLProcessor", _QWEN,
        {"<IMG_CONTEXT>": "image_token_id", "<img>": IMG_START, "</img>": IMG_END, "<video>": None},
        _chatml("<IMG_CONTEXT>\n", "<video>\n"),
        {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
         "video_token": "<video>"},
    ),
}  # fmt: skip

#: what each video processor class's ``save_pretrained`` writes when built with no arguments
#: (transformers 5.23); the keys it shares with the image processor take the image processor's values
_CLIP_MEAN, _CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
_VIDEO_COMMON: dict[str, Any] = {
    "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
    "do_sample_frames": False, "image_mean": _CLIP_MEAN, "image_std": _CLIP_STD, "resample": 3,
    "rescale_factor": 1 / 255, "return_metadata": False,
}  # fmt: skip
_QWEN_VIDEO = {"max_frames": 768, "max_video_tokens": 128000, "merge_size": 2, "min_frames": 4,
               "patch_size": 14, "temporal_patch_size": 2}  # fmt: skip
_VIDEO_DEFAULTS: dict[str, dict[str, Any]] = {
    "Qwen2VLVideoProcessor": {
        **_VIDEO_COMMON, **_QWEN_VIDEO, "size": {"longest_edge": 602112, "shortest_edge": 100352},
    },
    "Qwen3VLVideoProcessor": {
        **_VIDEO_COMMON, **_QWEN_VIDEO, "do_sample_frames": True, "fps": 2, "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3, "max_video_tokens": 768, "patch_size": 16,
        "size": {"longest_edge": 786432, "shortest_edge": 131072},
    },
    "LlavaOnevisionVideoProcessor": {**_VIDEO_COMMON, "size": {"height": 384, "width": 384}},
    "InternVLVideoProcessor": {**_VIDEO_COMMON, "initial_shift": True, "size": {"height": 384, "width": 384}},
}  # fmt: skip
_VIDEO_CLASS = {"llava_onevision": "LlavaOnevisionVideoProcessor", "qwen2_vl": "Qwen2VLVideoProcessor",
                "qwen2_5_vl": "Qwen2VLVideoProcessor", "qwen3_vl": "Qwen3VLVideoProcessor",
                "internvl": "InternVLVideoProcessor"}  # fmt: skip


def save_hub_checkpoint(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build ``random.py: build_random(family, seed)`` and save it with its processor files as the
    hub lays a checkpoint out (module docstring); returns the folder."""
    if family not in RANDOM_FAMILIES:
        raise BackboneError(f"unknown backbone '{family}': choose one of {', '.join(RANDOM_FAMILIES)}")
    bb = build_random(family, seed=seed)
    if bb.family not in _LAYOUTS:
        raise BackboneError(f"no hub layout for family '{bb.family}': add it to hub_layout.py: _LAYOUTS")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bb.model.save_pretrained(out)
    save_processor_files(bb, out)
    # seebench's own note beside the hub files: records then say random-init, not pretrained
    _write_json(out / "seebench.json", {"weights": "random-init", "random": family, "seed": seed})
    return out


def save_processor_files(bb: Backbone, out: Path) -> None:
    """The tokenizer, image processor, processor config, chat template and (where the processor
    takes one) video processor config of ``bb``'s family, written into ``out``."""
    import transformers

    layout = _LAYOUTS[bb.family]
    tok = build_tokenizer(layout, bb.config)
    image_processor = _image_processor(bb)
    cls = getattr(transformers, layout.processor)
    takes_video = "video_processor" in cls.get_attributes()
    if takes_video:  # no torchvision here: the family's class with its video part left out
        cls = image_only_processor_class(cls)
    proc = cls(image_processor=image_processor, tokenizer=tok, chat_template=layout.template,
               **_processor_kwargs(bb))  # fmt: skip
    proc.save_pretrained(out)  # tokenizer files (naming the processor class) and chat_template.jinja
    image_processor.save_pretrained(out)  # preprocessor_config.json
    image_dict = image_processor.to_dict()
    flat = {k: v for k, v in proc.to_dict().items() if k not in ("image_processor", "video_processor")}
    _write_json(out / "processor_config.json", flat)
    if takes_video:
        video_class = _VIDEO_CLASS[bb.family]
        video = dict(_VIDEO_DEFAULTS[video_class])
        video.update({k: image_dict[k] for k in video if k in image_dict})
        _write_json(out / "video_preprocessor_config.json", {**video, "video_processor_type": video_class})


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _image_processor(bb: Backbone) -> Any:
    """``random.py``'s image processor of the family (LLaVA-1.5's CLIP one at the tower's side)."""
    proc = random_image_processor(bb)
    if proc is None and bb.family == "llava":
        from transformers.models.clip import CLIPImageProcessorPil

        side = bb.config.vision_config.image_size
        proc = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    if proc is None:
        raise BackboneError(f"random.py has no image processor for family '{bb.family}'")
    return proc


def _processor_kwargs(bb: Backbone) -> dict[str, Any]:
    """The processor's own settings, from the model config (what the hub's processor_config.json says)."""
    cfg = bb.config
    vc = cfg.vision_config
    if bb.family in ("llava", "llava_next"):
        cls_token = 1 if vc.model_type == "clip_vision_model" else 0
        return {"patch_size": vc.patch_size, "vision_feature_select_strategy": cfg.vision_feature_select_strategy,
                "num_additional_image_tokens": cls_token, "image_token": "<image>"}  # fmt: skip
    if bb.family == "llava_onevision":
        return {"num_image_tokens": (vc.image_size // vc.patch_size) ** 2,
                "vision_feature_select_strategy": cfg.vision_feature_select_strategy,
                "vision_aspect_ratio": cfg.vision_aspect_ratio, "image_token": "<image>", "video_token": "<video>"}  # fmt: skip
    if bb.family == "internvl":
        side = vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size
        patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
        per_tile = int((side // patch) ** 2 * cfg.downsample_ratio**2)  # pixel shuffle of the patch grid
        return {"image_seq_length": getattr(cfg, "image_seq_length", None) or per_tile}
    return {}


def _special_ids(layout: _Layout, config: Any, vocab: int) -> dict[int, str]:
    """id -> token of every special token: the text ones, then the visual ones (``_Layout.visual``)."""
    ids = dict(layout.text.specials)
    unplaced = []
    for token, attr in layout.visual.items():
        at = getattr(config, attr, None) if isinstance(attr, str) else attr
        if isinstance(at, int) and 0 <= at < vocab:
            if at in ids:
                raise BackboneError(f"token id {at} of '{token}' is taken by '{ids[at]}'")
            ids[at] = token
        else:
            unplaced.append(token)
    free = (i for i in range(vocab - 1, _FIRST_BYTE_ID + 255, -1) if i not in ids)
    for token in unplaced:
        ids[next(free)] = token
    return ids


def build_tokenizer(layout: _Layout, config: Any) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast``: ids 0-7 text specials, 8-263 the 256 byte
    symbols (no merges: one token per byte), the visual specials at their config ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab_size = config.get_text_config().vocab_size
    specials = _special_ids(layout, config, vocab_size)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {sym: _FIRST_BYTE_ID + i for i, sym in enumerate(alphabet)}
    vocab.update({tok: i for i, tok in specials.items()})
    assert max(vocab.values()) < vocab_size and len(set(vocab.values())) == len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials.values()])
    text = layout.text
    if text.bos is not None:
        bos_id = next(i for i, t in specials.items() if t == text.bos)
        core.post_processor = processors.TemplateProcessing(
            single=f"{text.bos} $A", pair=f"{text.bos} $A $B", special_tokens=[(text.bos, bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=text.bos, eos_token=text.eos, pad_token=text.pad,
        unk_token=text.specials[0] if text.specials[0] == "<unk>" else None,
        extra_special_tokens=dict(layout.tokenizer_tokens), model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )  # fmt: skip
