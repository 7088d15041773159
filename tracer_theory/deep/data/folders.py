"""A user's images on disk: class folders and open_clip-style CSV files, as ``ImageSet`` values.

``image_folder(root)``: one sub-folder per class; the classes are the sub-folders in sorted order,
named by the folder, or listed in label order by a ``classes.txt`` in ``root`` (one line per
class: the folder, then optionally whitespace and the class's name, e.g. ``n01440764 tench``).
``image_csv(path)``: a table in open_clip's format (tab- or comma-separated, detected from the
header) with a ``filepath`` column (relative to the CSV's folder unless absolute) and a ``label``
column (class names, or integer indices into ``classes``) and/or a ``caption`` column.

Every image file is opened and checked (``check=True``); an unreadable or corrupt file is an
``InputError`` naming every such file, or with ``skip_bad=True`` it is left out and listed in
``ImageSet.bad`` and in ``report()``: never dropped silently. Files whose extension is not an
image's are counted in ``ignored``. ``ImageSet.restrict(classes)`` scores an evaluation set over
a model's classes, matched by name (a shifted set may hold a subset of them).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ...errors import InputError
from .images import Preprocessing

#: File extensions read as images (case-insensitive).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """Images on disk with labels: ``paths[i]`` shows class ``labels[i]`` (an index into
    ``classes``), with ``captions[i]`` when the source has captions. ``bad``: the files left
    out as unreadable (path, reason); ``ignored``: files that are not images; ``source``: where
    it was read from."""

    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    captions: tuple[str, ...] | None = None
    bad: tuple[tuple[str, str], ...] = ()
    ignored: int = 0
    source: str = ""

    def __post_init__(self):
        if len(self.paths) != len(self.labels):
            raise ValueError(f"paths ({len(self.paths)}) and labels ({len(self.labels)}) "
                             "must have the same length")
        if self.captions is not None and len(self.captions) != len(self.paths):
            raise ValueError(f"captions ({len(self.captions)}) and paths ({len(self.paths)}) "
                             "must have the same length")
        if len(set(self.classes)) != len(self.classes):
            dup = sorted(c for c, n in Counter(self.classes).items() if n > 1)
            raise ValueError(f"class names must be distinct, repeated: {dup}")
        if any(not 0 <= label < len(self.classes) for label in self.labels):
            raise ValueError(f"labels must be in [0, {len(self.classes)})")

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        """Images per class, every class (0 for an empty one), in class order."""
        found = Counter(self.labels)
        return {name: found.get(i, 0) for i, name in enumerate(self.classes)}

    def report(self) -> str:
        """One paragraph: images, classes (empty ones named), files left out and ignored."""
        empty = [c for c, n in self.counts().items() if n == 0]
        lines = [f"{self.source}: {len(self):,} images in {len(self.classes)} classes"
                 + (f" ({len(empty)} empty: {', '.join(empty[:10])})" if empty else "")]
        if self.bad:
            lines.append(f"{len(self.bad)} unreadable file(s) left out: " + "; ".join(
                f"{p} ({r})" for p, r in self.bad[:10]) + (" …" if len(self.bad) > 10 else ""))
        if self.ignored:
            lines.append(f"{self.ignored} file(s) that are not images ignored")
        return "\n".join(lines)

    def restrict(self, classes: Sequence[str]) -> ImageSet:
        """This set scored over ``classes`` (e.g. the model's or the training task's): the same
        images with labels re-indexed into ``classes`` by name. Every class of this set must be
        one of ``classes`` (an ``InputError`` names the others)."""
        classes = tuple(classes)
        index = {c: i for i, c in enumerate(classes)}
        unknown = [c for c in self.classes if c not in index]
        if unknown:
            raise InputError(f"{self.source}: classes not among the {len(classes)} given: "
                             f"{unknown[:20]}")
        labels = tuple(index[self.classes[label]] for label in self.labels)
        return dataclasses.replace(self, labels=labels, classes=classes)

    def images(self, size: int, indices: Sequence[int] | None = None) -> np.ndarray:
        """The images (all, or those at ``indices``) as CLIP sees them: (n, 3, size, size)
        float32 (``preprocess``)."""
        chosen = range(len(self)) if indices is None else indices
        return self.array(Preprocessing(size))[np.asarray(chosen, np.int64)]

    def array(self, preprocessing: Preprocessing) -> FolderImages:
        """The images as a lazily decoded (N, 3, size, size) float32 array (``FolderImages``)
        under ``preprocessing`` (e.g. ``load_preprocessing(checkpoint)``)."""
        return FolderImages(self, preprocessing)

    def fingerprint(self) -> str:
        """A digest of the files (paths, sizes, modification times), labels and classes: what
        a cache of results on this set is keyed by."""
        h = hashlib.sha256()
        for path, label in zip(self.paths, self.labels, strict=True):
            stat = path.stat()
            h.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n".encode())
        h.update("\0".join(self.classes).encode())
        if self.captions is not None:
            h.update("\0".join(self.captions).encode())
        return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True, eq=False)
class FolderImages:
    """The images of an ``ImageSet`` as an array (N, 3, size, size) float32 that decodes on
    demand: ``x[indices]`` reads, decodes and preprocesses only the images at ``indices``
    (an int gives one (3, size, size) image), ``np.asarray(x)`` all of them. What the training
    loop streams from, and what an evaluation reads in chunks."""

    images: ImageSet
    preprocessing: Preprocessing
    dtype = np.dtype(np.float32)
    ndim = 4

    def __post_init__(self):
        if not isinstance(self.images, ImageSet):
            raise TypeError(f"images must be an ImageSet, got {type(self.images).__name__}")
        if not isinstance(self.preprocessing, Preprocessing):
            raise TypeError("preprocessing must be a Preprocessing, got "
                            f"{type(self.preprocessing).__name__}")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        size = self.preprocessing.size
        return (len(self.images), 3, size, size)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, int | np.integer):
            return self.preprocessing(self.images.paths[_in_range(int(index), len(self))])
        chosen = np.arange(len(self))[index]  # slices, boolean masks and index arrays alike
        out = np.empty((len(chosen), *self.shape[1:]), np.float32)
        for row, i in enumerate(chosen.tolist()):
            out[row] = self.preprocessing(self.images.paths[i])
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def fingerprint(self) -> str:
        """The set's fingerprint and the preprocessing: what results on these images depend
        on."""
        text = f"{self.images.fingerprint()}\0{self.preprocessing}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _in_range(index: int, n: int) -> int:
    if not -n <= index < n:
        raise IndexError(f"image index {index} out of range for {n} images")
    return index % n


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be read as an image, or ``None`` if it can."""
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:  # verify() leaves the image unusable; decode for real
            image.load()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        return f"{type(err).__name__}: {str(err)[:80]}"
    return None


def _checked(paths: list[Path], labels: list[int], captions: list[str] | None, classes,
             *, check: bool, skip_bad: bool, ignored: int, source: str) -> ImageSet:
    bad = [(str(p), why) for p in paths if check and (why := _unreadable(p)) is not None]
    if bad and not skip_bad:
        shown = "\n  ".join(f"{p}: {r}" for p, r in bad[:20])
        raise InputError(f"{source}: {len(bad)} unreadable image file(s) (pass skip_bad=True, "
                         f"or --skip-bad, to leave them out and list them):\n  {shown}"
                         + ("\n  …" if len(bad) > 20 else ""))
    keep = [i for i, p in enumerate(paths) if str(p) not in {b for b, _ in bad}]
    return ImageSet(tuple(paths[i] for i in keep), tuple(labels[i] for i in keep),
                    tuple(classes), None if captions is None else tuple(captions[i] for i in keep),
                    tuple(bad), ignored, source)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def image_folder(root: str | os.PathLike, *, check: bool = True, skip_bad: bool = False
                 ) -> ImageSet:
    """The images of ``root``, one sub-folder per class (see the module); files found
    recursively inside each class folder, in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"no image folder at {root} (expected one sub-folder per class)")
    listing = root / "classes.txt"
    if listing.is_file():
        folders, classes = [], []
        for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            folder, _, name = line.strip().partition(" ")
            folders.append(folder)
            classes.append(name.strip() or folder)
            if not (root / folder).is_dir():
                raise InputError(f"{listing}, line {number}: no class folder {root / folder}")
    else:
        folders = sorted(p.name for p in root.iterdir() if p.is_dir()
                         and not p.name.startswith("."))
        classes = list(folders)
    if not folders:
        raise InputError(f"{root} has no class sub-folders (one folder of images per class)")
    paths, labels, ignored = [], [], 0
    for label, folder in enumerate(folders):
        for file in sorted((root / folder).rglob("*")):
            if not file.is_file() or file.name.startswith("."):
                continue
            if _is_image(file):
                paths.append(file)
                labels.append(label)
            else:
                ignored += 1
    return _checked(paths, labels, None, classes, check=check, skip_bad=skip_bad,
                    ignored=ignored, source=str(root))


def image_csv(path: str | os.PathLike, *, classes: Sequence[str] | None = None,
              image_column: str = "filepath", label_column: str = "label",
              caption_column: str = "caption", check: bool = True, skip_bad: bool = False
              ) -> ImageSet:
    """The images a CSV lists (see the module). Labels are class names (``classes``: their
    order, default sorted) or integer indices into ``classes``; a CSV with captions and no
    labels (image-caption pairs) has the one class ``"(captions)"``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no CSV file at {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not a readable UTF-8 text file: {err}") from None
    header = text.splitlines()[0] if text.strip() else ""
    reader = csv.DictReader(text.splitlines(), delimiter="\t" if "\t" in header else ",")
    columns = reader.fieldnames or []
    if image_column not in columns:
        raise InputError(f"{path} has no {image_column!r} column (columns: {columns})")
    if label_column not in columns and caption_column not in columns:
        raise InputError(f"{path} needs a {label_column!r} or a {caption_column!r} column "
                         f"(columns: {columns})")
    rows = list(reader)
    if not rows:
        raise InputError(f"{path} lists no images")
    files = [Path(r[image_column]) if Path(r[image_column]).is_absolute()
             else path.parent / r[image_column] for r in rows]
    missing = [(n + 2, str(f)) for n, f in enumerate(files) if not f.is_file()]
    if missing:
        raise InputError(f"{path}: {len(missing)} listed file(s) do not exist: "
                         + "; ".join(f"line {n}: {f}" for n, f in missing[:10]))
    captions = [r[caption_column] for r in rows] if caption_column in columns else None
    if label_column in columns:
        raw = [r[label_column].strip() for r in rows]
        if classes is None:
            if all(v.lstrip("-").isdigit() for v in raw):
                raise InputError(f"{path}: integer labels need the class names (classes=...)")
            classes = sorted(set(raw))
        classes = list(classes)
        index = {c: i for i, c in enumerate(classes)}
        labels, unknown = [], []
        for n, value in enumerate(raw):
            if value in index:
                labels.append(index[value])
            elif value.lstrip("-").isdigit() and 0 <= int(value) < len(classes):
                labels.append(int(value))
            else:
                unknown.append(f"line {n + 2}: {value!r}")
        if unknown:
            raise InputError(f"{path}: labels that are not a class name or an index into the "
                             f"{len(classes)} classes: {unknown[:10]}")
    else:
        classes, labels = ["(captions)"], [0] * len(rows)
    return _checked(files, labels, captions, classes, check=check, skip_bad=skip_bad,
                    ignored=0, source=str(path))


__all__ = ["IMAGE_EXTENSIONS", "FolderImages", "ImageSet", "image_csv", "image_folder"]
