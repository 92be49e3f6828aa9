"""A checkpoint's processor, with torchvision or without it.

In transformers 5 every video processor needs torchvision, and the processors of Qwen2-VL,
Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision and InternVL take one: without torchvision
``AutoProcessor.from_pretrained`` fails for them (``ImportError`` or ``ValueError``) although their
image path needs nothing but PIL.  ``load_processor`` tries ``AutoProcessor`` first and, when that
failed for exactly this reason, builds the folder's own processor class (``processor_class`` of its
processor config, else the one transformers maps the model type to) from the folder's tokenizer,
image processor (the PIL backend), chat template and processor settings, with the video part left
out (``image_only_processor_class``): images work as with the full processor, a video is a one-line
error.  That is said once in the log (logger ``harness.models``).

A folder without processor configs (``preprocessor_config.json``, ``processor_config.json``) has no
processor (``None``: inputs must then come from elsewhere); a folder whose processor files fail to
load for any other reason is a one-line ``BackboneError`` naming the file.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any

from .base import BackboneError

log = logging.getLogger("harness.models")

#: a folder holding any of these has a processor (a tokenizer alone does not make one)
PROCESSOR_CONFIGS = ("processor_config.json", "preprocessor_config.json")
#: where transformers reads a processor's class name, in its order
_CLASS_SOURCES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
#: errors transformers raises for a processor it cannot build from the files it found
_LOAD_ERRORS = (OSError, ValueError, TypeError, KeyError, ImportError, AttributeError)

_warned: set[str] = set()
_image_only: dict[type, type] = {}


def torchvision_available() -> bool:
    """Whether transformers sees torchvision (what its video processors need)."""
    from transformers.utils.import_utils import is_torchvision_available

    return bool(is_torchvision_available())


def load_processor(name_or_dir: str, model_type: str | None = None) -> Any:
    """The processor of a checkpoint folder or hub id (``None`` for a folder without one).

    ``AutoProcessor`` first; when it fails because the processor's video processor cannot be
    built (torchvision missing), the image-only processor of the same class (module docstring)."""
    import transformers

    path = Path(name_or_dir)
    if path.is_dir() and not any((path / f).is_file() for f in PROCESSOR_CONFIGS):
        return None
    try:
        return transformers.AutoProcessor.from_pretrained(name_or_dir)
    except _LOAD_ERRORS as exc:
        cls = processor_class(name_or_dir, model_type)
        if not _video_processor_missing(exc, cls):
            raise _file_error(name_or_dir, "processor", exc, _first_processor_file(path)) from None
    assert cls is not None  # _video_processor_missing says so
    proc = _build_image_only(cls, name_or_dir)
    if cls.__name__ not in _warned:
        _warned.add(cls.__name__)
        log.warning(
            "%s loaded for images only: its video processor needs torchvision, which is not installed "
            "(pip install torchvision for videos)",
            cls.__name__,
        )
    return proc


def processor_class(name_or_dir: str, model_type: str | None = None) -> type | None:
    """The transformers processor class of a checkpoint: ``processor_class`` in its processor,
    image processor or tokenizer config, else the class transformers maps ``model_type`` to."""
    import transformers
    from transformers.models.auto.auto_mappings import PROCESSOR_MAPPING_NAMES

    name = None
    path = Path(name_or_dir)
    for file in _CLASS_SOURCES:
        try:
            data = json.loads((path / file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("processor_class"), str):
            name = data["processor_class"]
            break
    if name is None and model_type is not None:
        name = PROCESSOR_MAPPING_NAMES.get(model_type)
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    return cls if isinstance(cls, type) else None


def _video_processor_missing(exc: Exception, cls: type | None) -> bool:
    """True when ``exc`` is AutoProcessor failing on the video processor of ``cls`` only: the class
    takes one, torchvision is not importable, and the error is the kind that gives (``ImportError``:
    a torchvision-only class; ``ValueError``/``AttributeError``: no video processor class at all)."""
    if cls is None or "video_processor" not in _attributes(cls) or torchvision_available():
        return False
    text = str(exc).lower()
    return isinstance(exc, (ImportError, ValueError, AttributeError)) and (
        "video" in text or "torchvision" in text
    )


def _attributes(cls: type) -> list[str]:
    get = getattr(cls, "get_attributes", None)
    if not callable(get):
        return []
    names: Any = get()
    return [str(n) for n in names]


def _build_image_only(cls: type, source: str) -> Any:
    """``cls`` without its video part, from the folder's tokenizer, image processor, processor
    settings and chat template (each failure one line naming its file)."""
    import transformers

    tokenizer = _part(source, "tokenizer", "tokenizer.json / tokenizer_config.json",
                      lambda: transformers.AutoTokenizer.from_pretrained(source))  # fmt: skip
    image_processor = _part(source, "image processor", "preprocessor_config.json",
                            lambda: transformers.AutoImageProcessor.from_pretrained(source))  # fmt: skip
    settings, _ = _part(source, "processor config", "processor_config.json / chat_template.jinja",
                        lambda: cls.get_processor_dict(source))  # type: ignore[attr-defined]  # fmt: skip
    image_only = image_only_processor_class(cls)
    params = inspect.signature(image_only.__init__).parameters
    own = {"self", "image_processor", "tokenizer", "chat_template"}
    kwargs = {k: v for k, v in settings.items() if k in params and k not in own}
    template = settings.get("chat_template") or getattr(tokenizer, "chat_template", None)
    return _part(source, "processor", "processor_config.json",
                 lambda: image_only(image_processor=image_processor, tokenizer=tokenizer, chat_template=template,
                                    **kwargs))  # fmt: skip


def _part(source: str, what: str, files: str, load: Any) -> Any:
    try:
        return load()
    except _LOAD_ERRORS as exc:
        raise _file_error(source, what, exc, files) from None


def _file_error(source: str, what: str, exc: Exception, files: str) -> BackboneError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return BackboneError(
        f"cannot load the {what} of '{source}' ({files}): {first}; fix or remove that file, or save the "
        "processor again with processor.save_pretrained(DIR)"
    )


def _first_processor_file(path: Path) -> str:
    files = [f for f in PROCESSOR_CONFIGS if (path / f).is_file()]
    return " / ".join(files) if files else "processor files"


def image_only_processor_class(base: type) -> type:
    """``base`` (a processor class whose ``__init__`` takes a ``video_processor``) without it: the
    same name, settings and image path; its ``__init__`` has no ``video_processor`` parameter (so
    transformers sees image processor and tokenizer as its only parts), and passing a video is a
    one-line ``BackboneError``.  Saving it writes the base class's files minus the video processor."""
    if base in _image_only:
        return _image_only[base]
    sig = inspect.signature(base.__init__)
    if "video_processor" not in sig.parameters:
        raise BackboneError(f"{base.__name__} takes no video processor; use it as it is")
    signature = sig.replace(parameters=[p for name, p in sig.parameters.items() if name != "video_processor"])
    base_init: Any = base.__init__
    var_kw = next((p.name for p in signature.parameters.values() if p.kind == p.VAR_KEYWORD), None)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        named = dict(signature.bind(self, *args, **kwargs).arguments)
        named.pop("self")
        extra = named.pop(var_kw, {}) if var_kw else {}
        base_init(self, video_processor=None, **named, **extra)

    def __call__(self: Any, images: Any = None, text: Any = None, videos: Any = None, **kwargs: Any) -> Any:
        if videos is not None:
            raise BackboneError(
                f"{base.__name__} was loaded for images only (torchvision is not installed): install "
                "torchvision to pass videos"
            )
        return base.__call__(self, images=images, text=text, **kwargs)

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    cls = type(base.__name__, (base,), {"__init__": __init__, "__call__": __call__, "images_only": True,
                                        "__module__": __name__, "__doc__": image_only_processor_class.__doc__})  # fmt: skip
    _image_only[base] = cls
    return cls
