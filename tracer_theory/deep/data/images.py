"""CLIP's image preprocessing and zero-shot prompts (Radford et al. 2021).

``preprocess``: decode with Pillow, convert to RGB, resize the short side to the model's
resolution with bicubic filtering, center crop, scale to [0, 1] and normalize with CLIP's mean
and std, giving a (3, size, size) float32 array. ``imagenet_templates``: CLIP's 80 ImageNet
prompt templates, shipped as data (``clip_assets/imagenet_templates.json``, MIT notice beside
it). ``zero_shot_prompts``: the token ids of every class name in every template, the input of
``DualEncoder.class_embeddings``.
"""

from __future__ import annotations

import dataclasses
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


def preprocess(image: Image.Image | str | os.PathLike, size: int, *,
               mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
               ) -> np.ndarray:
    """One image (a Pillow image or a file path) as CLIP sees it: (3, size, size) float32.

    The short side is resized to ``size`` (bicubic; the long side to ``int(size · long/short)``,
    truncated, as torchvision's ``Resize`` that CLIP uses), the center ``size × size`` square
    cropped (offset ``round((side − size)/2)``, as ``CenterCrop``), values scaled to [0, 1] and
    normalized by ``mean``/``std`` per RGB channel (CLIP's by default)."""
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    mean, std = _channels(mean, "mean"), _channels(std, "std")
    if np.any(std <= 0):
        raise ValueError(f"std must be positive, got {std.tolist()}")
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
    pixels = (pixels - mean) / std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _channels(values: Sequence[float], name: str) -> np.ndarray:
    try:
        out = np.asarray(values, np.float32)
    except (TypeError, ValueError):
        out = np.zeros(0, np.float32)
    if out.shape != (3,) or not np.all(np.isfinite(out)):
        raise ValueError(f"{name} must be three finite numbers (R, G, B), got {values!r}")
    return out


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How a model sees an image: ``preprocess`` at ``size`` with ``mean``/``std``; call it on
    a Pillow image or a path to get (3, size, size) float32."""

    size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self):
        preprocess(Image.new("RGB", (1, 1)), self.size, mean=self.mean, std=self.std)  # checks
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def __call__(self, image: Image.Image | str | os.PathLike) -> np.ndarray:
        return preprocess(image, self.size, mean=self.mean, std=self.std)


#: The toolkit's own CLIPs see intensities / 255, unnormalized (``mnist.to_rgb``/``colorize``).
UNNORMALIZED = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


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


__all__ = ["CLIP_MEAN", "CLIP_STD", "UNNORMALIZED", "Preprocessing", "imagenet_templates",
           "preprocess", "zero_shot_prompts"]
