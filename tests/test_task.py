"""A task (``deep/data/task.py``): ColoredMNIST as a ``Task`` is the experiment's arrays and
prompts, ``balanced`` draws class-balanced subsets, a ``Task`` refuses inconsistent parts naming
the problem, and ``folder_task`` builds a task of image folders (an evaluation set over a subset
of the classes, matched by name). The folders are generated here."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from tracer_theory.deep.data import prompts, task as task_module
from tracer_theory.deep.data.folders import FolderImages, image_folder
from tracer_theory.deep.data.images import UNNORMALIZED, Preprocessing, imagenet_templates
from tracer_theory.deep.data.task import ROLES, Split, Task, balanced, folder_split, folder_task
from tracer_theory.deep.models.clip import clip_tokens
from tracer_theory.deep.studies.arrays import ExperimentData
from tracer_theory.errors import InputError


def _words(texts):
    """The toy's word tokenizer over a list of texts: (n, MAX_TOKENS) ids."""
    return np.stack([prompts.tokenize(t) for t in texts])


@pytest.fixture(scope="module")
def data():
    return ExperimentData(quick=True)


# --- ColoredMNIST as a task -------------------------------------------------------------------

def test_colored_mnist_task_is_the_experiments_arrays_and_prompts(data):
    task = data.task()
    assert task.name == "colored_mnist" and task.classes == prompts.DIGIT_WORDS
    assert len(task.templates) == len(prompts.TRAIN_TEMPLATES)
    np.testing.assert_array_equal(task.prompts(_words), data.captions)
    assert task.prompts(_words).dtype == data.captions.dtype
    clip = ExperimentData(None, "tiny", True)  # CLIP's tokens: end-of-text after the words
    np.testing.assert_array_equal(task.prompts(lambda t: clip_tokens(_words(t))), clip.captions)
    # the splits are the arrays
    assert task.train.images is data.color_train and task.val.images is data.color_val
    np.testing.assert_array_equal(task.train.labels, data.train_labels)
    np.testing.assert_array_equal(task.val.labels, data.val_labels)
    assert {n: s.role for n, s in task.evals.items()} == {
        "id": "id", "ood_flipped": "shifted", "ood_neutral": "shifted", "gray": "proxy"}
    assert Counter(s.role for s in task.evals.values()) == {"id": 1, "shifted": 2, "proxy": 1}
    for name, array in (("id", data.color_test[0.95]), ("ood_flipped", data.color_test[0.05]),
                        ("ood_neutral", data.color_test[0.5]), ("gray", data.gray_test)):
        assert task.evals[name].images is array
        np.testing.assert_array_equal(task.evals[name].labels, data.test_labels)
        assert task.evals[name].classes is None
        np.testing.assert_array_equal(task.columns(task.evals[name]), np.arange(10))
    assert list(task.proxies()) == ["gray"]
    assert task.replay.images is data.gray_train
    np.testing.assert_array_equal(task.replay.labels, data.train_labels)
    gap, (zs_images, zs_labels) = task.probes()
    np.testing.assert_array_equal(gap, data.probe())
    np.testing.assert_array_equal(zs_images, data.gray_probe()[0])
    np.testing.assert_array_equal(zs_labels, data.gray_probe()[1])
    assert task.source == data.source
    assert task.fingerprint() == data.task().fingerprint()


@pytest.mark.parametrize("n", [1, 10, 37, 100, 490, 555, 600])
def test_sample_is_balanced_sorted_and_distinct(data, n):
    chosen = data.sample(n)
    np.testing.assert_array_equal(chosen, balanced(data.train_labels, n))
    assert len(chosen) == n and len(set(chosen.tolist())) == n
    assert np.all(np.diff(chosen) > 0) and 0 <= chosen.min() and chosen.max() < 600
    counts = np.bincount(data.train_labels[chosen], minlength=10)
    available = np.bincount(data.train_labels, minlength=10)
    if n <= 10 * available.min():  # every class has its share: each within 1 of n / 10
        assert np.all(np.abs(counts - n / 10) < 1), counts
    # as even as the classes allow: a class that is not used up holds at most one image fewer
    # than any other class
    open_classes = counts < available
    if open_classes.any():
        assert counts.max() - counts[open_classes].min() <= 1, (counts, available)


# --- balanced ---------------------------------------------------------------------------------

def test_balanced_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2])  # sorted by class, as the splits are
    # the seeded draw visits 3 (class 1), 2 (class 0), 5 (class 2), 4 (1), 0 (0), 1 (0):
    # first of each class 3, 2, 5, then the second of each 4, 0, then the third 1
    np.testing.assert_array_equal(np.random.default_rng(0).permutation(6), [3, 2, 5, 4, 0, 1])
    want = {1: [3], 2: [2, 3], 3: [2, 3, 5], 4: [2, 3, 4, 5], 5: [0, 2, 3, 4, 5],
            6: [0, 1, 2, 3, 4, 5]}
    for n, indices in want.items():
        np.testing.assert_array_equal(balanced(labels, n), indices, err_msg=f"n = {n}")
    assert balanced(labels, 3).dtype.kind in "iu"
    # a prefix of a set sorted by class holds one class; the balanced three hold all three
    assert set(labels[:3]) == {0} and set(labels[balanced(labels, 3)]) == {0, 1, 2}
    # the seed draws another subset, still one of each class
    assert set(labels[balanced(labels, 3, seed=1)]) == {0, 1, 2}
    assert any(not np.array_equal(balanced(labels, 3, seed=s), balanced(labels, 3))
               for s in range(1, 6))
    # labels need not be sorted: the subset is of the positions
    shuffled = np.array([2, 1, 0, 1, 0, 0])
    assert sorted(shuffled[balanced(shuffled, 3)]) == [0, 1, 2]


@pytest.mark.parametrize("n", [0, -1, 7])
def test_balanced_refuses_n_out_of_range(n):
    with pytest.raises(ValueError, match=rf"n must be in \[1, 6\] images, got {n}"):
        balanced(np.array([0, 0, 0, 1, 1, 2]), n)


# --- Task validation --------------------------------------------------------------------------

def _split(labels, classes=None, role=None) -> Split:
    labels = np.asarray(labels, np.int64)
    return Split(np.zeros((len(labels), 3, 2, 2), np.float32), labels, classes, role)


def _task(**kw) -> Task:
    parts = dict(name="t", classes=("cat", "dog", "fox"), templates=("a {}",),
                 train=_split([0, 1, 2, 1]), val=_split([0, 1, 2]),
                 evals={"shift": _split([1, 2], ("dog", "fox"), "shifted"),
                        "proxy": _split([0, 2], role="proxy")})
    return Task(**{**parts, **kw})


def test_a_valid_task_and_its_columns():
    task = _task()
    assert task.classes == ("cat", "dog", "fox") and task.templates == ("a {}",)
    np.testing.assert_array_equal(task.columns(task.evals["shift"]), [1, 2])
    np.testing.assert_array_equal(task.columns(task.val), [0, 1, 2])
    # the columns follow the split's own order, as indices into the task's classes
    np.testing.assert_array_equal(task.columns(_split([0], ("fox", "cat"), "id")), [2, 0])
    assert list(task.proxies()) == ["proxy"]
    assert ROLES == ("id", "shifted", "proxy")
    # prompts: every class in every template, with the given tokenizer
    ids = task.prompts(lambda texts: np.asarray([[len(t), ord(t[-1])] for t in texts]))
    np.testing.assert_array_equal(ids, [[[5, ord("t")]], [[5, ord("g")]], [[5, ord("x")]]])
    # classes and templates are stored as tuples whatever they were given as
    listed = _task(classes=["cat", "dog", "fox"], templates=["a {}", "{}!"])
    assert listed.classes == ("cat", "dog", "fox") and listed.templates == ("a {}", "{}!")


@pytest.mark.parametrize(("kw", "error", "message"), [
    (dict(classes=()), ValueError, r"classes must be a non-empty list of non-empty names"),
    (dict(classes=("cat", "", "fox")), ValueError, r"classes must be a non-empty list"),
    (dict(classes=("cat", "dog", "cat")), ValueError,
     r"class names must be distinct, got \['cat', 'dog', 'cat'\]"),
    (dict(templates=()), ValueError, r"templates must be a non-empty list of strings with one"),
    (dict(templates=("a photo",)), ValueError, r"one '\{\}' each, got \['a photo'\]"),
    (dict(templates=("a {}", "{} and {}")), ValueError, r"one '\{\}' each"),
    (dict(train=_split([0, 3])), ValueError, r"train: labels must index the 3 classes"),
    (dict(val=_split([-1, 0])), ValueError, r"val: labels must index the 3 classes"),
    (dict(replay=_split([5])), ValueError, r"replay: labels must index the 3 classes"),
    (dict(evals={"x": _split([0, 7], role="id")}), ValueError,
     r"evals\['x'\]: labels must index the 3 classes"),
    (dict(evals={"x": _split([0])}), ValueError, r"evals\['x'\] needs a role, one of"),
    (dict(evals={"x": _split([1], ("dog", "owl"), "shifted")}), InputError,
     r"evals\['x'\]: classes not among the task's 3: \['owl'\]"),
    (dict(train=_split([])), InputError, r"t: the training split holds no images"),
    (dict(train=(np.zeros((2, 3, 2, 2)), np.zeros(2, int))), TypeError,
     r"train must be a Split, got tuple"),
    (dict(evals={"x": np.zeros((2, 3, 2, 2))}), TypeError,
     r"evals\['x'\] must be a Split, got ndarray"),
    (dict(replay=[1, 2]), TypeError, r"replay must be a Split, got list"),
])
def test_task_refuses_inconsistent_parts_naming_the_problem(kw, error, message):
    with pytest.raises(error, match=message):
        _task(**kw)


def test_split_refuses_bad_parts():
    images = np.zeros((2, 3, 2, 2), np.float32)
    with pytest.raises(ValueError, match=r"role must be one of \('id', 'shifted', 'proxy'\), "
                                         r"got 'ood'"):
        Split(images, np.array([0, 1]), role="ood")
    with pytest.raises(ValueError, match=r"labels must be a 1-D integer array, got float64"):
        Split(images, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"labels must be a 1-D integer array"):
        Split(images, np.array([[0, 1]]))
    with pytest.raises(ValueError, match=r"images must have shape \(N, C, H, W\)"):
        Split(np.zeros((2, 4), np.float32), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"3 images but 2 labels"):
        Split(np.zeros((3, 3, 2, 2), np.float32), np.array([0, 1]))
    split = Split(images, np.array([0, 1], np.int32), ["a", "b"], "id")
    assert split.labels.dtype == np.int64 and split.classes == ("a", "b") and len(split) == 2


# --- a task of image folders ------------------------------------------------------------------

SEE = Preprocessing(8, **UNNORMALIZED)


def _folder(root, counts: dict[str, int], seed: int):
    """Class folders under ``root`` with ``counts[class]`` small random PNGs each."""
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (6 + i, 7, 3), np.uint8)
            Image.fromarray(pixels, "RGB").save(root / name / f"{i}.png")
    return root


@pytest.fixture
def folders(tmp_path):
    three = {"cat": 3, "dog": 3, "fox": 3}
    return dict(train=_folder(tmp_path / "train", {"cat": 4, "dog": 4, "fox": 4}, 0),
                val=_folder(tmp_path / "val", three, 1),
                shift=_folder(tmp_path / "shift", {"dog": 2, "fox": 3}, 2),
                proxy=_folder(tmp_path / "proxy", three, 3))


def _folder_task(folders, **kw) -> Task:
    sets = {k: image_folder(v) for k, v in folders.items()}
    return folder_task(sets["train"], sets["val"],
                       {"shift": (sets["shift"], "shifted"), "proxy": (sets["proxy"], "proxy")},
                       SEE, **kw)


def test_folder_task_matches_every_set_to_the_training_classes_by_name(folders):
    task = _folder_task(folders)
    assert task.classes == ("cat", "dog", "fox")
    assert task.templates == imagenet_templates() and task.name == "images"
    assert task.source == str(folders["train"])
    assert task.train.classes is None and task.val.classes is None
    assert isinstance(task.train.images, FolderImages) and len(task.train) == 12
    assert {n: s.role for n, s in task.evals.items()} == {"shift": "shifted", "proxy": "proxy"}
    shift = task.evals["shift"]
    assert shift.classes == ("dog", "fox") and len(shift) == 5
    # the labels index the task's classes: each file's folder names its class
    named = [task.classes[label] for label in shift.labels]
    assert named == [p.parent.name for p in shift.images.images.paths]
    assert named == ["dog"] * 2 + ["fox"] * 3
    np.testing.assert_array_equal(task.columns(shift), [1, 2])
    for i, path in enumerate(shift.images.images.paths):
        np.testing.assert_array_equal(shift.images[i], SEE(path))
    # custom templates and a name
    named_task = _folder_task(folders, templates=["a {} photo"], name="pets")
    assert named_task.templates == ("a {} photo",) and named_task.name == "pets"


def test_an_evaluation_folder_with_an_unknown_class_is_named(folders, tmp_path):
    owl = _folder(tmp_path / "owl", {"dog": 1, "owl": 2}, 4)
    sets = {k: image_folder(v) for k, v in folders.items()}
    with pytest.raises(InputError, match=r"classes not among the 3 given: \['owl'\]"):
        folder_task(sets["train"], sets["val"], {"birds": (image_folder(owl), "shifted")}, SEE)
    with pytest.raises(InputError, match=r"owl"):
        folder_split(image_folder(owl), ("cat", "dog", "fox"), SEE, "shifted")


def test_the_fingerprint_follows_one_file(folders):
    first = _folder_task(folders).fingerprint()
    assert _folder_task(folders).fingerprint() == first  # read again: the same
    path = folders["shift"] / "fox" / "1.png"
    Image.fromarray(np.zeros((30, 30, 3), np.uint8), "RGB").save(path)
    assert _folder_task(folders).fingerprint() != first
    # and the preprocessing counts: the same files seen at another size are other images
    sets = {k: image_folder(v) for k, v in folders.items()}
    other = folder_task(sets["train"], sets["val"], {}, Preprocessing(9, **UNNORMALIZED))
    assert other.fingerprint() != folder_task(sets["train"], sets["val"], {}, SEE).fingerprint()


def test_default_probes_are_class_balanced(folders, monkeypatch):
    monkeypatch.setattr(task_module, "GAP_PROBE", 6)
    monkeypatch.setattr(task_module, "ZERO_SHOT_PROBE", 3)
    task = _folder_task(folders)
    gap, (zs_images, zs_labels) = task.probes()
    val = np.asarray(task.val.images)
    chosen = balanced(task.val.labels, 6)
    np.testing.assert_array_equal(gap, val[chosen])
    assert gap.shape == (6, 3, 8, 8) and gap.dtype == np.float32
    assert Counter(task.val.labels[chosen].tolist()) == {0: 2, 1: 2, 2: 2}
    proxy = task.evals["proxy"]
    picked = balanced(proxy.labels, 3)
    np.testing.assert_array_equal(zs_images, np.asarray(proxy.images)[picked])
    np.testing.assert_array_equal(zs_labels, proxy.labels[picked])
    assert sorted(zs_labels.tolist()) == [0, 1, 2]
    # at the defaults the probes hold every image (fewer than GAP_PROBE, ZERO_SHOT_PROBE)
    monkeypatch.undo()
    assert task.probes()[0] is gap  # read once per task
    task = _folder_task(folders)
    gap, (zs_images, _) = task.probes()
    np.testing.assert_array_equal(gap, val)
    assert len(zs_images) == len(proxy)
    # no proxy set: no zero-shot probe
    sets = {k: image_folder(v) for k, v in folders.items()}
    bare = folder_task(sets["train"], sets["val"], {"shift": (sets["shift"], "shifted")}, SEE)
    assert bare.probes()[1] is None


def test_a_subset_split_with_labels_outside_its_classes_is_refused():
    z = np.zeros((3, 3, 2, 2), np.float32)
    train = Split(z, np.array([0, 1, 2]))
    bad = Split(z[:2], np.array([0, 2]), ("dog", "fox"), "shifted")  # 'cat' is not its class
    with pytest.raises(ValueError, match="cat"):
        Task("t", ("cat", "dog", "fox"), ("a {}",), train, train, {"s": bad})
