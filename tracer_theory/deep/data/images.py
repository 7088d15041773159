"""CLIP's image preprocessing and zero-shot prompts (Radford et al. 2021).

``preprocess``: decode with Pillow, convert to RGB, resize the short side to the model's
resolution with bicubic filtering, center crop, scale to [0, 1] and normalize with CLIP's mean
and std, giving a (3, size, size) float32 array. ``imagenet_templates``: CLIP's 80 ImageNet
prompt templates, shipped as data (``clip_assets/imagenet_templates.json``, MIT notice beside
it). ``zero_shot_prompts``: the token ids of every class name in every template, the input of
``DualEncoder.class_embeddings``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from importlib import resources

import numpy as np
from PIL import Image, UnidentifiedImageError

from ...errors import InputError

#: CLIP's per-channel mean and standard deviation (RGB, of its pretraining images in [0, 1]).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess(image: Image.Image | str | os.PathLike, size: int) -> np.ndarray:
    """One image (a Pillow image or a file path) as CLIP sees it: (3, size, size) float32.

    The short side is resized to ``size`` (bicubic; the long side to ``int(size · long/short)``,
    truncated, as torchvision's ``Resize`` that CLIP uses), the center ``size × size`` square
    cropped (offset ``round((side − size)/2)``, as ``CenterCrop``), values scaled to [0, 1] and
    normalized by ``CLIP_MEAN``/``CLIP_STD``."""
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if not isinstance(image, Image.Image):
        try:
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise InputError(f"cannot read the image {image}: {err}") from None
    image = image.convert("RGB")
    w, h = image.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if new != (w, h):
        image = image.resize(new, Image.BICUBIC)
    left, top = round((new[0] - size) / 2), round((new[1] - size) / 2)
    image = image.crop((left, top, left + size, top + size))
    pixels = np.asarray(image, np.float32) / 255.0  # (size, size, 3)
    pixels = (pixels - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


@lru_cache(maxsize=1)
def imagenet_templates() -> tuple[str, ...]:
    """CLIP's 80 ImageNet prompt templates, each with one ``{}`` for the class name."""
    data = resources.files(__package__) / "clip_assets" / "imagenet_templates.json"
    return tuple(json.loads(data.read_text(encoding="utf-8"))["templates"])


def zero_shot_prompts(tokenize: Callable[[Sequence[str]], np.ndarray],
                      class_names: Sequence[str], templates: Sequence[str] | None = None
                      ) -> np.ndarray:
    """Token ids of every class name in every template: (C, P, context) int32, with
    ``tokenize`` (e.g. ``clip_tokenizer()``) and ``templates`` (default
    ``imagenet_templates()``), for ``DualEncoder.class_embeddings``."""
    templates = imagenet_templates() if templates is None else tuple(templates)
    if isinstance(class_names, str) or not class_names or not all(
            isinstance(c, str) and c for c in class_names):
        raise ValueError(f"class_names must be a non-empty list of non-empty strings, "
                         f"got {class_names!r:.80}")
    if not templates or not all(isinstance(t, str) and t.count("{}") == 1 for t in templates):
        raise ValueError("templates must be a non-empty list of strings with one '{}' each")
    ids = tokenize([t.format(c) for c in class_names for t in templates])
    return ids.reshape(len(class_names), len(templates), -1)


__all__ = ["CLIP_MEAN", "CLIP_STD", "imagenet_templates", "preprocess", "zero_shot_prompts"]
