"""Streamed finetuning batches (``deep/finetune/stream.py``) against independent references: the
host's step indices are the on-device sampler's, a streamed run (arrays or images on disk,
threads or worker processes) is bit-identical to the on-device run of the same seed, a streamed
run resumes from its own or an on-device run's checkpoint, ``"auto"`` chooses by size, bad
arguments are named; and ``FolderImages`` (the lazily decoded images a run streams from)
indexes like the array it stands for."""

from __future__ import annotations

import dataclasses
import inspect
from types import SimpleNamespace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from runs import assert_identical_runs, leaves

from tracer_theory.deep.data.export import write_colored_mnist
from tracer_theory.deep.data.folders import FolderImages, image_folder
from tracer_theory.deep.data.images import UNNORMALIZED, Preprocessing
from tracer_theory.deep.finetune import FinetuneConfig, Finetunee, loop, stream
from tracer_theory.deep.finetune.checkpoints import run_header
from tracer_theory.deep.finetune.loop import (
    TrainingData,
    batch_indices,
    draw_batch,
    finetune,
    finetune_seeds,
    step_key,
)
from tracer_theory.deep.finetune.strategies import registered
from tracer_theory.deep.finetune.stream import check_workers, step_indices, streamed
from tracer_theory.deep.models import make_model
from tracer_theory.deep.studies.arrays import ExperimentData

#: A small run: 6 steps, curves logged at steps 3 and 6.
CONFIG = FinetuneConfig(steps=6, batch_size=32, log_every=3)
SEE = Preprocessing(28, **UNNORMALIZED)  # reads ColoredMNIST's PNGs back bit-identically


@pytest.fixture(scope="module")
def toy():
    """The quick arrays, a tiny pretrained toy model and its class embeddings."""
    data = ExperimentData(quick=True)
    clip = make_model("toy", key=jax.random.key(0), width=16, dim=8)
    head = eqx.nn.Linear(clip.image_proj.in_features, 10, dtype=jnp.float32,
                         key=jax.random.key(1))
    model = Finetunee(clip, head)
    class_emb = clip.class_embeddings(jnp.asarray(data.captions))
    return SimpleNamespace(data=data, model=model, class_emb=class_emb)


@pytest.fixture(scope="module")
def folder_train(toy, tmp_path_factory):
    """The quick ColoredMNIST training split written as PNG class folders and read back lazily:
    ``(FolderImages, labels)``."""
    written = write_colored_mnist(tmp_path_factory.mktemp("colored"), quick=True)
    found = image_folder(written["train"])
    images = found.array(SEE)
    labels = np.asarray(found.labels)
    # the files are the experiment's arrays (class by class), so the runs below train on them
    order = np.argsort(toy.data.train_labels, kind="stable")
    np.testing.assert_array_equal(labels, toy.data.train_labels[order])
    return images, labels


def _args(toy, seed: int = 0) -> dict:
    data = toy.data
    return dict(class_emb=toy.class_emb, probe=data.probe()[:16],
                gray_probe=(data.gray_val[:50], data.val_labels[:50]), hybrid=data.hybrid(),
                seed=seed)


def _run(toy, name, images=None, labels=None, config=CONFIG, **kw):
    data = toy.data
    images = data.color_train if images is None else images
    labels = data.train_labels if labels is None else labels
    return finetune(toy.model, images, labels, registered()[name], config, **_args(toy), **kw)


def _assert_identical(a, b):
    """Bit-identical runs (``runs.assert_identical_runs``) logged at steps 3 and 6."""
    assert_identical_runs(a, b)
    np.testing.assert_array_equal(a.curves["steps"], [3, 6])


def _moved(run, start) -> bool:
    return any(not np.array_equal(x, y) for x, y in zip(leaves(run.model), leaves(start),
                                                        strict=True))


def _spy_loaders(monkeypatch) -> list[dict]:
    """Record every ``StepImages`` the loop builds (its steps and readers): whether, and from
    where, a run streamed."""
    made = []

    class Recorded(stream.StepImages):
        def __init__(self, images, key, first, last, **kw):
            made.append(dict(images=images, first=first, last=last, workers=kw["workers"],
                             threads=kw["threads"]))
            super().__init__(images, key, first, last, **kw)

    monkeypatch.setattr(loop, "StepImages", Recorded)
    return made


def _spy_step_images(monkeypatch) -> dict[int, np.ndarray]:
    """Record the host-read images each jitted step is fed (``{step: images}``; none when the
    batch is drawn on the device)."""
    fed, original = {}, loop._run_step

    def recorded(state, step, fixed, schedule, seeds, images=None):
        if images is not None:
            fed[int(step)] = np.asarray(images)
        return original(state, step, fixed, schedule, seeds, images)

    monkeypatch.setattr(loop, "_run_step", recorded)
    return fed


# --- the host's indices are the on-device sampler's ------------------------------------------

@pytest.mark.parametrize("n_hybrid", [0, 4])
def test_step_indices_are_the_batches_the_device_draws(n_hybrid):
    n, n_replay, size = 50, 20, 12
    key = jax.random.key(3)
    last = stream._INDEX_BLOCK + 4  # more steps than one index program computes
    rows = step_indices(key, 1, last, n=n, n_replay=n_replay, size=size, n_hybrid=n_hybrid)
    assert rows.shape == (last, size - n_hybrid)
    # images and labels encode their index, so a batch drawn on the device names its indices
    images = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * np.ones((1, 1, 2, 2),
                                                                           np.float32)
    hybrid = (np.zeros((n_replay, 1, 2, 2), np.float32), np.zeros((n_replay, 8), np.int32),
              np.arange(n_replay, dtype=np.int32))
    data = TrainingData.of(images, np.arange(n), hybrid)
    draw = eqx.filter_jit(draw_batch)
    for s in range(1, last + 1):
        k = step_key(key, jnp.int32(s))
        want = np.asarray(batch_indices(k, n, n_replay, size, n_hybrid)[0])
        np.testing.assert_array_equal(rows[s - 1], want, err_msg=f"step {s}")
        batch = draw(data, k, size, n_hybrid)
        np.testing.assert_array_equal(np.asarray(batch.labels), rows[s - 1])
        np.testing.assert_array_equal(np.asarray(batch.images)[:, 0, 0, 0], rows[s - 1])
        assert batch.hybrid_labels.shape == (n_hybrid,)
        assert len(set(rows[s - 1].tolist())) == size - n_hybrid  # without replacement
    assert len({r.tobytes() for r in rows}) == last  # every step its own batch
    # any range of steps is the same rows: a resumed run reads on where it stopped
    part = step_indices(key, 5, stream._INDEX_BLOCK + 2, n=n, n_replay=n_replay, size=size,
                        n_hybrid=n_hybrid)
    np.testing.assert_array_equal(part, rows[4:stream._INDEX_BLOCK + 2])
    empty = step_indices(key, 3, 2, n=n, n_replay=n_replay, size=size, n_hybrid=n_hybrid)
    assert empty.shape == (0, size - n_hybrid)
    # another seed, other batches
    other = step_indices(jax.random.key(4), 1, 2, n=n, n_replay=n_replay, size=size,
                         n_hybrid=n_hybrid)
    assert not np.array_equal(other, rows[:2])


# --- a streamed run is the on-device run ------------------------------------------------------

@pytest.mark.parametrize("name", ["direct", "data_hybrid", "wma_sd"])
def test_streamed_run_is_the_device_run(toy, monkeypatch, name):
    # Direct FT; a replay strategy (the replay images stay on the device, drawn with the same
    # step key); and WMA SD (a teacher averaged over the steps)
    device = _run(toy, name, source="device")
    loaders, fed = _spy_loaders(monkeypatch), _spy_step_images(monkeypatch)
    streamed_run = _run(toy, name, source="stream", chunk=4)
    assert [(d["first"], d["last"]) for d in loaders] == [(1, 4), (5, 6)]
    _assert_identical(streamed_run, device)
    assert _moved(device, toy.model)
    # every step was fed the images of the batch the device draws for that step
    n_hybrid = registered()[name].hybrid_size(CONFIG.batch_size)
    assert (n_hybrid > 0) == (name == "data_hybrid")
    data = toy.data
    held = TrainingData.of(data.color_train, data.train_labels, data.hybrid())
    assert sorted(fed) == list(range(1, CONFIG.steps + 1))
    for s, images in fed.items():
        batch = draw_batch(held, step_key(jax.random.key(0), jnp.int32(s)), CONFIG.batch_size,
                           n_hybrid)
        assert images.shape == (CONFIG.batch_size - n_hybrid, 3, 28, 28)
        np.testing.assert_array_equal(images, np.asarray(batch.images), err_msg=f"step {s}")


def test_seed_sets_the_streamed_batches(toy, monkeypatch):
    fed = _spy_step_images(monkeypatch)
    _run(toy, "direct", source="stream", config=dataclasses.replace(CONFIG, steps=1))
    first = fed.pop(1)
    finetune(toy.model, toy.data.color_train, toy.data.train_labels, registered()["direct"],
             dataclasses.replace(CONFIG, steps=1), **{**_args(toy), "seed": 1}, source="stream")
    assert not np.array_equal(first, fed[1])


def test_streaming_images_on_disk_is_the_device_run_on_their_array(toy, folder_train,
                                                                   monkeypatch):
    images, labels = folder_train
    held = np.asarray(images)
    assert isinstance(images, FolderImages) and held.shape == (len(labels), 3, 28, 28)
    device = _run(toy, "direct", held, labels, source="device")
    assert _moved(device, toy.model)
    loaders = _spy_loaders(monkeypatch)
    # "auto": a set this small is decoded once and held on the device
    _assert_identical(_run(toy, "direct", images, labels), device)
    assert loaders == []
    for readers in (dict(threads=1), dict(threads=3), dict(workers=1)):
        loaders.clear()
        got = _run(toy, "direct", images, labels, source="stream", **readers)
        assert len(loaders) == 1 and loaders[0]["images"] is images, readers
        assert (loaders[0]["workers"], loaders[0]["threads"]) == (readers.get("workers", 0),
                                                                  readers.get("threads", 2))
        _assert_identical(got, device)
    # "auto" streams a set larger than DEVICE_BYTES, to the same result
    monkeypatch.setattr(stream, "DEVICE_BYTES", images.nbytes - 1)
    loaders.clear()
    _assert_identical(_run(toy, "direct", images, labels), device)
    assert len(loaders) == 1


# --- checkpoint and resume --------------------------------------------------------------------

def _interrupt_at(monkeypatch, call: int) -> list:
    """Make the ``call``-th step program raise ``KeyboardInterrupt`` (counting every call)."""
    calls, original = [], loop._run_step

    def interrupted(*args, **kwargs):
        calls.append(None)
        if len(calls) == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "_run_step", interrupted)
    return calls


@pytest.mark.parametrize("first", ["stream", "device"])
def test_interrupted_run_resumes_streamed_to_the_uninterrupted_result(toy, tmp_path,
                                                                      monkeypatch, first):
    # chunks of 2 steps, each followed by a checkpoint: interrupting step 5 leaves the
    # checkpoint of step 4 (with the curve logged at step 3); the streamed run resumes there,
    # reading steps 5 and 6 only. The first run streams, or holds the images on the device:
    # the batches depend on the seed and the step alone, not on where the images were.
    if first == "device" and not loop.stepwise():
        pytest.skip("counts the one-step programs of the on-device loop on CPU")
    path = tmp_path / "run.ckpt"
    whole = _run(toy, "wma_sd", source="device")
    calls = _interrupt_at(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        _run(toy, "wma_sd", source=first, chunk=2, checkpoint=path)
    assert run_header(path)[0] == 4
    calls.clear()
    loaders = _spy_loaders(monkeypatch)
    resumed = _run(toy, "wma_sd", source="stream", chunk=2, checkpoint=path)
    assert len(calls) == 2 and [(d["first"], d["last"]) for d in loaders] == [(5, 6)]
    assert run_header(path)[0] == 6
    _assert_identical(resumed, whole)


# --- "auto" and bad arguments -----------------------------------------------------------------

def test_auto_streams_only_images_on_disk_larger_than_device_bytes(toy, folder_train,
                                                                   monkeypatch):
    images, _ = folder_train
    array = toy.data.color_train
    assert images.nbytes == len(images) * 3 * 28 * 28 * 4 < stream.DEVICE_BYTES
    assert streamed(array, "auto") is False
    assert streamed(images, "auto") is False
    assert streamed(images, "device") is False and streamed(array, "stream") is True
    monkeypatch.setattr(stream, "DEVICE_BYTES", 1)
    assert streamed(images, "auto") is True
    assert streamed(array, "auto") is False  # an array is in memory already: never streamed
    assert streamed(images, "device") is False
    monkeypatch.setattr(stream, "DEVICE_BYTES", images.nbytes)  # at the limit: held
    assert streamed(images, "auto") is False
    with pytest.raises(ValueError, match=r"source must be one of .*'disk'"):
        streamed(array, "disk")


@pytest.mark.parametrize(("kw", "message"), [
    (dict(source="disk"), r"source must be one of \('auto', 'device', 'stream'\), got 'disk'"),
    (dict(source=None), r"source must be one of"),
    (dict(workers=-1), r"workers must be an integer >= 0, got -1"),
    (dict(workers=True), r"workers must be an integer >= 0, got True"),
    (dict(workers=1.0), r"workers must be an integer >= 0, got 1\.0"),
    (dict(threads=0), r"threads must be an integer >= 1, got 0"),
    (dict(threads=False), r"threads must be an integer >= 1, got False"),
    (dict(threads="2"), r"threads must be an integer >= 1, got '2'"),
])
def test_bad_source_and_readers_are_named(toy, monkeypatch, kw, message):
    calls = _interrupt_at(monkeypatch, 0)  # counts the steps (none may run)
    with pytest.raises(ValueError, match=message):
        _run(toy, "direct", **{"source": "stream", **kw})
    assert calls == []


def test_check_workers_and_read_batches():
    assert check_workers(np.int64(2), 3) == (2, 3)
    assert all(type(v) is int for v in check_workers(np.int64(2), np.int32(3)))
    with pytest.raises(ValueError, match="threads"):
        stream.read_batches(np.zeros((4, 3, 2, 2), np.float32), np.zeros((1, 2), int),
                            threads=0)
    # the reader gives the rows' images in order
    images = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1) * np.ones((1, 3, 2, 2),
                                                                             np.float32)
    table = np.array([[3, 1], [0, 9], [4, 4]])
    got = list(stream.read_batches(images, table, threads=2, prefetch=1))
    assert len(got) == 3
    for batch, row in zip(got, table, strict=True):
        np.testing.assert_array_equal(batch, images[row])


def test_finetune_seeds_cannot_stream(toy):
    # finetune_seeds takes no source: its runs hold the images on the device. The runner that
    # both share refuses a streamed run of several seeds before any work.
    assert "source" not in inspect.signature(finetune_seeds).parameters
    runner = loop._Runner(registered()["direct"], CONFIG, 2, (), None, None, n_seeds=2,
                          source="stream")
    data = toy.data
    with pytest.raises(ValueError, match=r"finetune_seeds holds the images on the device"):
        runner(toy.model, data.color_train, data.train_labels, toy.class_emb, data.probe(),
               None, jnp.stack([jax.random.key(0), jax.random.key(1)]), None, None)


# --- FolderImages -----------------------------------------------------------------------------

def _png(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path)


@pytest.fixture
def small(tmp_path):
    """Six PNGs of odd sizes in two class folders, read as (6, 3, 8, 8) images."""
    rng = np.random.default_rng(0)
    for i in range(6):
        shape = (5 + i, 9 + 2 * i, 3)
        _png(tmp_path / "set" / ("ab"[i % 2]) / f"{i}.png", rng.integers(0, 256, shape, np.uint8))
    found = image_folder(tmp_path / "set")
    return found, Preprocessing(8, **UNNORMALIZED)


def test_folder_images_index_like_their_array(small):
    found, see = small
    x = found.array(see)
    assert isinstance(x, FolderImages) and x.images is found and x.preprocessing is see
    assert x.shape == (6, 3, 8, 8) and len(x) == 6 and x.ndim == 4
    assert x.dtype == np.float32 and x.nbytes == 6 * 3 * 8 * 8 * 4
    whole = np.asarray(x)
    assert whole.shape == x.shape and whole.dtype == np.float32
    for i, path in enumerate(found.paths):  # each image is its file, preprocessed
        np.testing.assert_array_equal(whole[i], see(path))
    np.testing.assert_array_equal(x[3], see(found.paths[3]))
    assert x[3].shape == (3, 8, 8)
    np.testing.assert_array_equal(x[np.int64(4)], whole[4])
    np.testing.assert_array_equal(x[-1], whole[5])
    np.testing.assert_array_equal(x[-6], whole[0])
    mask = np.array([True, False, False, True, True, False])
    for index in ([0, 2], np.array([5, 0, 5]), slice(1, 4), slice(None, None, -2), mask, []):
        got = x[index]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, whole[index], err_msg=repr(index))
    np.testing.assert_array_equal(np.asarray(x, np.float64), whole.astype(np.float64))
    for bad in (6, -7, 100):
        with pytest.raises(IndexError, match=rf"image index {bad} out of range for 6 images"):
            x[bad]
    with pytest.raises(IndexError):
        x[[0, 6]]


def test_folder_images_fingerprint_follows_files_and_preprocessing(small, tmp_path):
    found, see = small
    first = found.array(see).fingerprint()
    assert image_folder(tmp_path / "set").array(see).fingerprint() == first  # read again
    assert found.array(Preprocessing(8)).fingerprint() != first  # CLIP's normalization
    assert found.array(Preprocessing(9, **UNNORMALIZED)).fingerprint() != first
    # one file rewritten with other pixels (a flat image: another size on disk)
    path = found.paths[2]
    before = see(path)
    _png(path, np.full((7, 13, 3), 17, np.uint8))
    assert not np.array_equal(see(path), before)
    assert image_folder(tmp_path / "set").array(see).fingerprint() != first


def test_folder_images_constructor_checks_its_arguments(small):
    found, see = small
    with pytest.raises(TypeError, match=r"images must be an ImageSet, got ndarray"):
        FolderImages(np.zeros((1, 3, 8, 8), np.float32), see)
    with pytest.raises(TypeError, match=r"preprocessing must be a Preprocessing, got int"):
        FolderImages(found, 8)
