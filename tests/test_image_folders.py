"""A user's images on disk (``image_folder``, ``image_csv``): labels, class order, counts, the
report of bad files, and evaluation sets scored over a subset of the classes. The folders are
generated here: PNG and JPEG, RGB, grayscale and RGBA, odd sizes, a corrupt file, an empty
class folder and a file that is not an image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tracer_theory.deep.data import preprocess
from tracer_theory.deep.data.folders import image_csv, image_folder
from tracer_theory.errors import InputError


def _image(path, mode, size, seed):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), np.uint8)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "train"
    for name in ("cat", "dog", "empty", "zebra"):
        (root / name).mkdir(parents=True)
    _image(root / "cat" / "b.png", "RGB", (17, 23), 0)
    _image(root / "cat" / "a.jpg", "L", (40, 9), 1)
    (root / "dog" / "nested").mkdir()
    _image(root / "dog" / "nested" / "c.PNG", "RGBA", (8, 8), 2)
    _image(root / "zebra" / "d.jpeg", "RGB", (31, 30), 3)
    (root / "zebra" / "notes.txt").write_text("not an image")
    (root / "zebra" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return root


def test_folder_classes_labels_counts_and_the_bad_file(folder):
    with pytest.raises(InputError, match=r"(?s)1 unreadable image file\(s\).*skip_bad=True.*"
                                         r"zebra/broken\.png"):
        image_folder(folder)
    data = image_folder(folder, skip_bad=True)
    assert data.classes == ("cat", "dog", "empty", "zebra")
    assert [p.relative_to(folder).as_posix() for p in data.paths] == [
        "cat/a.jpg", "cat/b.png", "dog/nested/c.PNG", "zebra/d.jpeg"]
    assert data.labels == (0, 0, 1, 3)
    assert data.counts() == {"cat": 2, "dog": 1, "empty": 0, "zebra": 1}
    assert [b for b, _ in data.bad] == [str(folder / "zebra" / "broken.png")]
    assert data.ignored == 1
    report = data.report()
    assert "4 images in 4 classes (1 empty: empty)" in report
    assert "1 unreadable file(s) left out" in report and "broken.png" in report
    assert "1 file(s) that are not images ignored" in report
    # every mode and size comes out as CLIP sees it, equal to preprocessing the file itself
    images = data.images(16)
    assert images.shape == (4, 3, 16, 16) and images.dtype == np.float32
    for row, path in zip(images, data.paths, strict=True):
        np.testing.assert_array_equal(row, preprocess(path, 16))


def test_classes_txt_gives_the_order_and_the_names(folder):
    (folder / "zebra" / "broken.png").unlink()
    (folder / "classes.txt").write_text("zebra striped horse\ncat\n\ndog  good dog\n")
    data = image_folder(folder)
    assert data.classes == ("striped horse", "cat", "good dog")
    assert data.labels == (0, 1, 1, 2) and data.counts()["striped horse"] == 1
    (folder / "classes.txt").write_text("zebra\nwolf\n")
    with pytest.raises(InputError, match=r"classes\.txt, line 2: no class folder .*wolf"):
        image_folder(folder)


def test_an_evaluation_set_is_scored_over_a_subset_of_the_classes_by_name(folder):
    (folder / "zebra" / "broken.png").unlink()
    data = image_folder(folder)
    model_classes = ("ant", "zebra", "dog", "cat", "empty")
    scored = data.restrict(model_classes)
    assert scored.classes == model_classes
    assert [model_classes[i] for i in scored.labels] == [data.classes[i] for i in data.labels]
    with pytest.raises(InputError, match=r"classes not among the 2 given: \['dog', 'empty'\]"):
        data.restrict(["cat", "zebra"])


def test_csv_in_open_clip_format(tmp_path, folder):
    (folder / "zebra" / "broken.png").unlink()
    tab = tmp_path / "train.csv"
    tab.write_text("filepath\tlabel\tcaption\n"
                   f"{folder}/cat/a.jpg\tcat\ta gray cat\n"
                   "train/dog/nested/c.PNG\tdog\ta dog\n"
                   "train/zebra/d.jpeg\tzebra\ta zebra\n")
    data = image_csv(tab)
    assert data.classes == ("cat", "dog", "zebra") and data.labels == (0, 1, 2)
    assert data.captions == ("a gray cat", "a dog", "a zebra")
    assert data.paths[1] == tmp_path / "train/dog/nested/c.PNG"
    comma = tmp_path / "indices.csv"
    comma.write_text("filepath,label\ntrain/cat/b.png,2\ntrain/zebra/d.jpeg,zebra\n")
    data = image_csv(comma, classes=["dog", "cat", "zebra"])
    assert data.labels == (2, 2) and data.captions is None
    ints = tmp_path / "ints.csv"
    ints.write_text("filepath,label\ntrain/cat/b.png,0\n")
    with pytest.raises(InputError, match=r"integer labels need the class names"):
        image_csv(ints)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("filepath,caption\ntrain/cat/b.png,a cat\n")
    assert image_csv(pairs).classes == ("(captions)",)


@pytest.mark.parametrize(("content", "message"), [
    ("path,label\nx.png,cat\n", r"has no 'filepath' column \(columns: \['path', 'label'\]\)"),
    ("filepath,kind\nx.png,cat\n", r"needs a 'label' or a 'caption' column"),
    ("filepath,label\n", r"lists no images"),
    ("filepath,label\nmissing.png,cat\n", r"1 listed file\(s\) do not exist: line 2: .*missing"),
    ("filepath,label\ntrain/cat/b.png,7\n", r"not a class name or an index .*line 2: '7'"),
])
def test_bad_csvs_are_named(tmp_path, folder, content, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    with pytest.raises(InputError, match=message) as info:
        image_csv(bad, classes=["cat", "dog"])
    assert "bad.csv" in str(info.value)


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(InputError, match=r"no image folder at .*nowhere"):
        image_folder(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    _image(tmp_path / "flat" / "a.png", "RGB", (4, 4), 0)
    with pytest.raises(InputError, match=r"flat has no class sub-folders"):
        image_folder(tmp_path / "flat")
    with pytest.raises(InputError, match=r"no CSV file at"):
        image_csv(tmp_path / "none.csv")


def test_the_fingerprint_follows_the_files_and_labels(folder):
    (folder / "zebra" / "broken.png").unlink()
    first = image_folder(folder).fingerprint()
    assert image_folder(folder).fingerprint() == first
    _image(folder / "cat" / "b.png", "RGB", (18, 23), 9)  # rewritten: size and mtime change
    assert image_folder(folder).fingerprint() != first
