"""A task: what a finetuning experiment runs on, as one value.

A ``Task`` holds a training split, a validation split, named evaluation sets each marked with a
``role`` (``"id"``: in-distribution, ``"shifted"``: a distribution shift, ``"proxy"``: a
pretraining proxy, on which the zero-shot accuracy before and after finetuning measures
forgetting), the class names and caption templates (tokenized with the model's tokenizer at run
time, ``Task.prompts``), and optionally replay data (pretraining-like images for strategies that
mix them into their batches). Images are arrays (N, C, H, W) float32 held in memory or
``folders.FolderImages`` decoded from disk on demand; labels index the task's ``classes``.

An evaluation set may hold a subset of the task's classes (``Split.classes``): it is scored over
its own classes only, matched by name (``Task.columns``). ColoredMNIST is one instance
(``studies.arrays.ExperimentData.task``), a user's image folders another (``folder_task``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np
from jaxtyping import Int

from ...errors import InputError
from .folders import FolderImages, ImageSet
from .images import Preprocessing, zero_shot_prompts

#: The roles an evaluation set plays.
Role = Literal["id", "shifted", "proxy"]
ROLES: tuple[str, ...] = ("id", "shifted", "proxy")

#: How many images the curves' fixed batches hold by default (teacher–student gap, zero-shot).
GAP_PROBE, ZERO_SHOT_PROBE = 256, 500


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """Images (N, C, H, W) (an array or ``FolderImages``) with ``labels`` (N,) indexing the
    task's classes; ``classes``: the class names this set is scored over (``None``: all of the
    task's); ``role``: an evaluation set's role (``ROLES``)."""

    images: np.ndarray | FolderImages
    labels: Int[np.ndarray, " N"]
    classes: tuple[str, ...] | None = None
    role: Role | None = None

    def __post_init__(self):
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} "
                             f"{labels.shape}")
        if np.ndim(self.images) != 4 and len(getattr(self.images, "shape", ())) != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got "
                             f"{getattr(self.images, 'shape', None)}")
        if len(self.images) != len(labels):
            raise ValueError(f"{len(self.images)} images but {len(labels)} labels")
        if self.role is not None and self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        object.__setattr__(self, "labels", labels.astype(np.int64))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        """A digest of the images (a folder's by its files and preprocessing) and labels."""
        h = hashlib.sha256()
        if isinstance(self.images, FolderImages):
            h.update(self.images.fingerprint().encode())
        else:
            arr = np.ascontiguousarray(self.images)
            h.update(f"{arr.dtype}{arr.shape}".encode() + arr.tobytes())
        h.update(self.labels.tobytes() + repr((self.classes, self.role)).encode())
        return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """What an experiment runs on (see the module). ``evals``: ``{name: Split}`` with roles;
    ``gap_probe`` / ``zero_shot_probe``: the fixed batches the curves log the teacher–student
    gap and the zero-shot accuracy on (default: class-balanced samples of ``GAP_PROBE``
    validation images and ``ZERO_SHOT_PROBE`` images of the first proxy set)."""

    name: str
    classes: tuple[str, ...]
    templates: tuple[str, ...]
    train: Split
    val: Split
    evals: Mapping[str, Split]
    replay: Split | None = None
    gap_probe: np.ndarray | None = None
    zero_shot_probe: Split | None = None
    source: str = ""

    def __post_init__(self):
        classes = tuple(self.classes)
        if not classes or not all(isinstance(c, str) and c for c in classes):
            raise ValueError("classes must be a non-empty list of non-empty names")
        if len(set(classes)) != len(classes):
            raise ValueError(f"class names must be distinct, got {list(classes)}")
        templates = tuple(self.templates)
        if not templates or not all(isinstance(t, str) and t.count("{}") == 1
                                    for t in templates):
            raise ValueError("templates must be a non-empty list of strings with one '{}' each, "
                             f"got {list(templates)[:3]}")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "templates", templates)
        object.__setattr__(self, "evals", dict(self.evals))
        for name, split in (("train", self.train), ("val", self.val),
                            *(("replay", s) for s in [self.replay] if s is not None),
                            *((f"evals[{n!r}]", s) for n, s in self.evals.items())):
            if not isinstance(split, Split):
                raise TypeError(f"{name} must be a Split, got {type(split).__name__}")
            if len(split) and not 0 <= split.labels.min() <= split.labels.max() < len(classes):
                raise ValueError(f"{name}: labels must index the {len(classes)} classes")
            unknown = [c for c in split.classes or () if c not in classes]
            if unknown:
                raise InputError(f"{name}: classes not among the task's {len(classes)}: "
                                 f"{unknown[:20]}")
            if split.classes is not None and len(split):
                own = {classes.index(c) for c in split.classes}
                outside = sorted({classes[i] for i in split.labels.tolist()} -
                                 {classes[i] for i in own})
                if outside:
                    raise ValueError(f"{name}: labels of classes it is not scored over: "
                                     f"{outside[:20]} (its classes: {list(split.classes)})")
        for name, split in self.evals.items():
            if split.role is None:
                raise ValueError(f"evals[{name!r}] needs a role, one of {ROLES}")
        if len(self.train) == 0:
            raise InputError(f"{self.name}: the training split holds no images")

    def proxies(self) -> dict[str, Split]:
        """The pretraining-proxy evaluation sets, in order."""
        return {n: s for n, s in self.evals.items() if s.role == "proxy"}

    def columns(self, split: Split) -> Int[np.ndarray, " K"]:
        """The indices into ``classes`` that ``split`` is scored over (its own classes)."""
        if split.classes is None:
            return np.arange(len(self.classes))
        index = {c: i for i, c in enumerate(self.classes)}
        return np.asarray([index[c] for c in split.classes])

    def prompts(self, tokenize: Callable[[Sequence[str]], np.ndarray]) -> np.ndarray:
        """Token ids (C, P, L) of every class in every template, with the model's
        ``tokenize`` (texts → (n, L) ids)."""
        return zero_shot_prompts(tokenize, self.classes, self.templates)

    def replay_arrays(self, prompts: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The replay data as the loop mixes it in: (images, the first template's tokens of each
        image's class, labels), with ``prompts`` (C, P, L) from ``Task.prompts``; ``None``
        without replay data."""
        if self.replay is None:
            return None
        labels = self.replay.labels
        return np.asarray(self.replay.images), np.asarray(prompts)[labels, 0], labels

    def probes(self) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """The curves' fixed batches as arrays: gap images (B, C, H, W) and (zero-shot images,
        labels) or ``None`` when the task has no proxy set. The logged zero-shot curve scores
        over all of the task's classes (a proxy set of a subset of them is scored over its own
        classes only in the final evaluation)."""
        if "_probes" not in self.__dict__:  # read once per task: every run logs on them
            self.__dict__["_probes"] = self._read_probes()
        return self.__dict__["_probes"]

    def _read_probes(self) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        gap = self.gap_probe
        if gap is None:
            gap = self.val.images[balanced(self.val.labels, min(GAP_PROBE, len(self.val)))]
        zs = self.zero_shot_probe
        if zs is None:
            proxies = list(self.proxies().values())
            if not proxies:
                return np.asarray(gap), None
            first = proxies[0]
            index = balanced(first.labels, min(ZERO_SHOT_PROBE, len(first)))
            zs = Split(first.images[index], first.labels[index])
        return np.asarray(gap), (np.asarray(zs.images), zs.labels)

    def fingerprint(self) -> str:
        """A digest of every split, the classes and the templates."""
        h = hashlib.sha256(repr((self.classes, self.templates)).encode())
        for name, split in (("train", self.train), ("val", self.val),
                            ("replay", self.replay), *self.evals.items(),
                            ("zero_shot_probe", self.zero_shot_probe)):
            h.update(f"{name}:{None if split is None else split.fingerprint()}".encode())
        if self.gap_probe is not None:
            h.update(np.ascontiguousarray(self.gap_probe).tobytes())
        return h.hexdigest()[:16]


def balanced(labels: Int[np.ndarray, " N"], n: int, seed: int = 0) -> Int[np.ndarray, " n"]:
    """Indices (n,) of a fixed class-balanced subset of ``labels``, sorted: a seeded draw in
    each class, the classes taken in turn (a prefix ``[:n]`` of a set sorted by class would hold
    one or two classes)."""
    labels = np.asarray(labels)
    total = len(labels)
    if not 1 <= n <= total:
        raise ValueError(f"n must be in [1, {total}] images, got {n}")
    perm = np.random.default_rng(seed).permutation(total)
    rank = np.empty(total, int)  # position of each image among its class in the draw
    for c in np.unique(labels):
        members = perm[labels[perm] == c]
        rank[members] = np.arange(len(members))
    return np.sort(perm[np.argsort(rank[perm], kind="stable")][:n])


def folder_split(images: ImageSet, classes: Sequence[str], preprocessing: Preprocessing,
                 role: Role | None = None) -> Split:
    """A ``Split`` of an ``ImageSet`` scored over its own classes (restricted to ``classes``,
    the task's, by name; an ``InputError`` names classes the task lacks)."""
    own = tuple(c for c, n in images.counts().items() if n)  # classes with images
    restricted = images.restrict(classes)
    return Split(restricted.array(preprocessing), np.asarray(restricted.labels, np.int64),
                 None if len(own) == len(classes) else own, role)


def folder_task(train: ImageSet, val: ImageSet, evals: Mapping[str, tuple[ImageSet, Role]],
                preprocessing: Preprocessing, *, templates: Sequence[str] | None = None,
                replay: ImageSet | None = None, name: str = "images") -> Task:
    """A task of image sets on disk (``folders.image_folder`` / ``image_csv``): the classes are
    the training set's, the templates CLIP's 80 ImageNet ones unless given, every other set
    matched to them by class name."""
    from .images import imagenet_templates

    classes = train.classes
    return Task(name, classes, tuple(templates or imagenet_templates()),
                folder_split(train, classes, preprocessing),
                folder_split(val, classes, preprocessing),
                {n: folder_split(s, classes, preprocessing, role)
                 for n, (s, role) in evals.items()},
                None if replay is None else folder_split(replay, classes, preprocessing),
                source=train.source)


__all__ = ["ROLES", "Role", "Split", "Task", "balanced", "folder_split", "folder_task"]
