"""The experiment's arrays, built once from the fixed splits: gray and colored images of every
split, labels, and the caption and prompt tokens (THEORY §6)."""

from __future__ import annotations

import hashlib

import numpy as np

from ..data.mnist import colorize, mnist_splits, to_rgb
from ..data.prompts import DIGIT_WORDS, HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, prompt_tokens
from ..data.task import Split, Task, balanced
from ..models import preset
from ..models.clip import clip_tokens, resize_images

#: ColoredMNIST's color–label agreement: finetuning and the ID test, flipped OOD, neutral OOD.
P_TRAIN, P_FLIPPED, P_NEUTRAL = 0.95, 0.05, 0.5
#: Split sizes of a quick run.
QUICK_SIZES = {"train": 600, "val": 200, "test": 200}


class ExperimentData:
    """Every array the experiment needs, built once from the fixed splits (split seed 0).

    ``mnist``: an MNIST path (``None``: the shipped subset); ``model``: ``"toy"`` or a CLIP
    preset, whose tokens (end-of-text) and image size the arrays take; ``quick``: subsets of
    ``QUICK_SIZES``."""

    def __init__(self, mnist: str | None = None, model: str = "toy", quick: bool = False):
        splits = mnist_splits(mnist, seed=0)
        if quick:
            splits = {k: _subset(v, QUICK_SIZES[k]) for k, v in splits.items()}
        self.source = splits["train"].source
        digest = hashlib.sha256()
        for split in (splits[k] for k in ("train", "val", "test")):
            digest.update(np.ascontiguousarray(split.images).tobytes())
            digest.update(np.ascontiguousarray(split.labels).tobytes())
        #: A fingerprint of the digits and labels of every split (what the results depend on).
        self.fingerprint = digest.hexdigest()[:16]
        train, val, test = splits["train"], splits["val"], splits["test"]
        self.train_labels, self.val_labels, self.test_labels = (
            np.asarray(s.labels) for s in (train, val, test))
        self.gray_train, self.gray_val, self.gray_test = (to_rgb(s.images)
                                                          for s in (train, val, test))
        self.color_train = colorize(train.images, train.labels, P_TRAIN, seed=1)[0]
        self.color_val = colorize(val.images, val.labels, P_TRAIN, seed=2)[0]
        self.color_test = {p: colorize(test.images, test.labels, p, seed=3)[0]
                           for p in (P_TRAIN, P_FLIPPED, P_NEUTRAL)}
        self.captions = prompt_tokens(TRAIN_TEMPLATES)
        self.held_out = prompt_tokens(HELD_OUT_TEMPLATES)
        if model != "toy":  # CLIP: end-of-text tokens, the preset's image size
            self.captions, self.held_out = clip_tokens(self.captions), clip_tokens(self.held_out)
            size = preset(model).image_size
            for name in ("gray_train", "gray_val", "gray_test", "color_train", "color_val"):
                setattr(self, name, resize_images(getattr(self, name), size))
            self.color_test = {p: resize_images(x, size) for p, x in self.color_test.items()}

    def sample(self, n: int) -> np.ndarray:
        """Indices (n,) of a fixed class-balanced subset of the training split
        (``task.balanced``: the splits are sorted by label, so a prefix ``[:n]`` would hold one
        or two classes)."""
        return balanced(self.train_labels, n)

    def task(self) -> Task:
        """ColoredMNIST as a ``Task``: finetuning on the colored training split, the ID
        (p = 0.95) and two shifted (flipped p = 0.05, neutral p = 0.5) colored test sets, the
        gray test digits as the pretraining proxy, the gray training digits as replay data, and
        the curves' fixed batches of ``probe`` and ``gray_probe``."""
        labels = self.test_labels
        return Task("colored_mnist", DIGIT_WORDS,
                    tuple(t.replace("{d}", "{}") for t in TRAIN_TEMPLATES),
                    Split(self.color_train, self.train_labels),
                    Split(self.color_val, self.val_labels),
                    {"id": Split(self.color_test[P_TRAIN], labels, role="id"),
                     "ood_flipped": Split(self.color_test[P_FLIPPED], labels, role="shifted"),
                     "ood_neutral": Split(self.color_test[P_NEUTRAL], labels, role="shifted"),
                     "gray": Split(self.gray_test, labels, role="proxy")},
                    replay=Split(self.gray_train, self.train_labels),
                    gap_probe=self.probe(), zero_shot_probe=Split(*self.gray_probe()),
                    source=self.source)

    def hybrid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The gray training images with their first caption and labels (replay batches)."""
        return self.task().replay_arrays(self.captions)

    def probe(self) -> np.ndarray:
        """The fixed batch on which the teacher–student gap is logged (256 colored val images)."""
        return self.color_val[:256]

    def gray_probe(self) -> tuple[np.ndarray, np.ndarray]:
        """The fixed gray batch (500 val images, labels) on which zero-shot accuracy is logged
        during finetuning (the forgetting curve)."""
        return self.gray_val[:500], self.val_labels[:500]


def _subset(split, n):
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(split.labels), size=min(n, len(split.labels)), replace=False))
    return split._replace(images=split.images[idx], labels=split.labels[idx])
