"""ColoredMNIST written as image folders, so the toy task runs through the same path as a user's
images (``folders.image_folder``).

``write_colored_mnist(out)`` writes the experiment's own arrays (``studies.arrays.
ExperimentData``: the same splits, colors and seeds) as 28×28 RGB PNG files, one folder per
split (``SPLITS``), each with one sub-folder per digit and a ``classes.txt`` naming the classes
by their words (``zero`` … ``nine``, the words of the prompts). Pixel values are the arrays'
intensities × 255, exactly: reading a file back and dividing by 255 gives the array.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import InputError
from .prompts import DIGIT_WORDS

#: The folders written, with the array of ``ExperimentData`` each holds and its role in the
#: forgetting experiment: finetuning (train, val), in-distribution and shifted test sets, and
#: the pretraining proxy (gray digits: zero-shot accuracy before and after finetuning).
SPLITS = {"train": ("color_train", "train"), "val": ("color_val", "val"),
          "test_id": (("color_test", 0.95), "id"), "test_flipped": (("color_test", 0.05),
                                                                    "shifted"),
          "test_neutral": (("color_test", 0.5), "shifted"), "gray_val": ("gray_val", "proxy"),
          "gray_test": ("gray_test", "proxy"), "gray_train": ("gray_train", "replay")}


def _array(data, source) -> np.ndarray:
    if isinstance(source, tuple):
        name, p = source
        return getattr(data, name)[p]
    return getattr(data, source)


def _labels(data, split: str) -> np.ndarray:
    part = "train" if split in ("train", "gray_train") else "val" if "val" in split else "test"
    return getattr(data, f"{part}_labels")


def write_colored_mnist(out: str | os.PathLike, *, mnist: str | None = None,
                        quick: bool = False, overwrite: bool = False) -> dict[str, Path]:
    """Write every split of ``SPLITS`` under ``out`` (see the module); returns ``{split:
    folder}``. Each folder is written whole into a temporary sibling and renamed into place; an
    existing one is an ``InputError`` unless ``overwrite``."""
    from ..studies.arrays import ExperimentData  # the studies build on the data, not back

    out = Path(out)
    existing = [name for name in SPLITS if (out / name).exists()]
    if existing and not overwrite:
        raise InputError(f"{out} already holds {existing}; pass overwrite=True (--overwrite) "
                         "to replace them")
    data = ExperimentData(mnist, "toy", quick)
    out.mkdir(parents=True, exist_ok=True)
    listing = "".join(f"{i} {word}\n" for i, word in enumerate(DIGIT_WORDS))
    written = {}
    for split, (source, _) in SPLITS.items():
        images = _array(data, source)  # (n, 3, 28, 28) float32 in [0, 1], intensities / 255
        pixels = np.rint(images * 255).astype(np.uint8).transpose(0, 2, 3, 1)
        labels = _labels(data, split)
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{split}."))
        try:
            for digit in range(len(DIGIT_WORDS)):
                (tmp / str(digit)).mkdir()
            for i, (image, label) in enumerate(zip(pixels, labels, strict=True)):
                Image.fromarray(image, "RGB").save(tmp / str(label) / f"{i:05d}.png")
            (tmp / "classes.txt").write_text(listing)
            if (out / split).exists():
                shutil.rmtree(out / split)
            os.replace(tmp, out / split)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        written[split] = out / split
    return written


__all__ = ["SPLITS", "write_colored_mnist"]
