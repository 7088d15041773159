"""``tracer-theory finetune`` and ``run_task``: any checkpoint, tasks from image folders.

References: the toy experiment's own evaluation (``evaluation.evaluate`` on the in-memory
ColoredMNIST arrays) for the generic per-set evaluation, hand-built folders with known labels,
and the CLI's documented exit codes (2 usage, 3 input)."""

from __future__ import annotations

import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tracer_theory.cli import main
from tracer_theory.deep.data.images import UNNORMALIZED, Preprocessing
from tracer_theory.deep.data.prompts import tokenize
from tracer_theory.deep.models import CLIP, make_model, save_clip
from tracer_theory.deep.models.clip import CLIPPreset
from tracer_theory.deep.studies.arrays import ExperimentData
from tracer_theory.deep.studies.evaluation import evaluate
from tracer_theory.deep.studies.finetune_task import (
    TaskRunConfig,
    evaluate_task,
    fresh_model,
    theory_bytes,
)

SIZE = 8
CLASSES = ("zero", "one", "two")  # words of the toolkit's vocabulary (its tokenizer.json)
PRESET = CLIPPreset(name="check", image_size=SIZE, patch_size=4, width=16, layers=1, heads=2,
                    text_width=16, text_layers=1, text_heads=2, dim=8)


def test_the_generic_evaluation_equals_the_toy_experiments_on_colored_mnist():
    data = ExperimentData(quick=True)
    key = jax.random.key(0)
    clip = make_model("toy", key=key, width=16, dim=8)
    model = fresh_model(clip, 10, seed=3)
    reference = evaluate(model, data, "head")
    task = data.task()
    words = lambda texts: np.stack([tokenize(t) for t in texts])  # noqa: E731
    ours = evaluate_task(model, task, task.prompts(words), "head")
    assert ours["gray_zs_acc"] == reference["gray_acc"]
    assert ours["gray_zs_ece"] == reference["gray_ece"]
    for name in ("id", "ood_flipped", "ood_neutral"):
        assert ours[f"{name}_acc"] == reference[f"{name}_acc"], name
        assert ours[f"{name}_ece"] == reference[f"{name}_ece"], name


def test_a_subset_evaluation_set_is_scored_over_its_own_classes():
    data = ExperimentData(quick=True)
    task = data.task()
    clip = make_model("toy", key=jax.random.key(1), width=16, dim=8)
    model = fresh_model(clip, 10, seed=0)
    words = lambda texts: np.stack([tokenize(t) for t in texts])  # noqa: E731
    emb = clip.class_embeddings(jnp.asarray(task.prompts(words)))
    gray = task.evals["gray"]
    keep = np.isin(gray.labels, [3, 7])
    from tracer_theory.deep.data.task import Split

    subset = Split(gray.images[keep], gray.labels[keep], ("three", "seven"), "proxy")
    import dataclasses

    only = dataclasses.replace(task, evals={"pair": subset})
    ours = evaluate_task(model, only, task.prompts(words), "head")
    # the reference: argmax over the two classes' logits only, by hand
    feats = np.asarray(clip.embed_images(jnp.asarray(subset.images)))
    logits = feats @ np.asarray(emb)[[3, 7]].T
    expected = 100 * np.mean(np.where(np.argmax(logits, 1) == 0, 3, 7) == subset.labels)
    assert ours["pair_zs_acc"] == pytest.approx(expected, abs=1e-4)
    head = np.asarray(jax.vmap(model.head)(clip.image_features(jnp.asarray(subset.images))))
    expected = 100 * np.mean(np.where(np.argmax(head[:, [3, 7]], 1) == 0, 3, 7) == subset.labels)
    assert ours["pair_acc"] == pytest.approx(expected, abs=1e-4)


def test_config_refuses_bad_values():
    from tracer_theory.deep.finetune.strategies import registered

    pair = tuple(registered(("direct",)).items())
    with pytest.raises(ValueError, match="strategies"):
        TaskRunConfig(())
    with pytest.raises(ValueError, match="distinct"):
        TaskRunConfig(pair + pair)
    with pytest.raises(TypeError, match="Strategy"):
        TaskRunConfig((("x", "direct"),))
    with pytest.raises(ValueError, match="seeds"):
        TaskRunConfig(pair, seeds=(0, 0))
    with pytest.raises(ValueError, match="source"):
        TaskRunConfig(pair, source="disk")
    with pytest.raises(ValueError, match="workers"):
        TaskRunConfig(pair, workers=-1)
    with pytest.raises(ValueError, match="theory_samples"):
        TaskRunConfig(pair, theory_samples=1)
    with pytest.raises(ValueError, match="wise_alphas"):
        TaskRunConfig(pair, wise_alphas=(1.5,))
    with pytest.raises(ValueError, match="save"):
        TaskRunConfig(pair, save="torch")


def test_theory_bytes_counts_each_term():
    assert theory_bytes(2, 3, 5, 7) == 8 * (5 * 5 + 7 * 2 + 4 * (4 + 25))


# --- the command, end to end on a generated task ----------------------------------------------


def _folder(root: Path, counts: dict[str, int], seed: int) -> Path:
    """Class folders of random RGB PNGs (odd sizes), each class a different mean color."""
    rng = np.random.default_rng(seed)
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            base = np.zeros((SIZE + 3, SIZE + 1, 3))
            base[..., c % 3] = 180
            pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def task_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    clip = CLIP(PRESET, key=jax.random.key(0))
    save_clip(clip, root / "ckpt", "hf", preprocessing=Preprocessing(SIZE, **UNNORMALIZED))
    every = dict.fromkeys(CLASSES, 12)
    _folder(root / "train", every, 0)
    _folder(root / "val", dict.fromkeys(CLASSES, 4), 1)
    _folder(root / "proxy", dict.fromkeys(CLASSES, 6), 2)
    _folder(root / "shifted", {"one": 5, "two": 5}, 3)  # a subset of the classes
    _folder(root / "odd", {"one": 2, "seven": 2}, 4)  # a class the task lacks
    (root / "templates.txt").write_text("the digit {}\nnumber {}\n")
    return root


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", "--checkpoint", str(root / "ckpt"), "--train", str(root / "train"),
            "--val", str(root / "val"), "--eval", f"gray={root / 'proxy'}:proxy",
            "--eval", f"shift={root / 'shifted'}", "--templates", str(root / "templates.txt"),
            "--steps", "3", "--batch-size", "8", "--log-every", "3", "--out", str(out),
            "--quiet", *extra]


def test_finetune_end_to_end_with_the_theory_and_resume(task_dirs, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(_args(task_dirs, out, "--strategy", "direct", "wma_sd", "--theory",
                      "--wise-alphas", "0.5"))
    printed = capsys.readouterr().out
    assert code == 0, printed
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"direct", "wma_sd", "wise_ft(0.5)"}
    record = summary["runs"]["direct"]["0"]
    assert record["forgetting"] == pytest.approx(
        summary["pretrained"]["0"]["gray_zs_acc"] - record["gray_zs_acc"])
    assert {"shift_acc", "shift_ece", "gray_acc", "gray_zs_ece"} <= set(record)
    assert summary["task"]["evals"] == {"gray": "proxy", "shift": "shifted"}
    assert {p["strategy"] for p in summary["theory"]["points"]} == {"direct", "wma_sd"}
    # the state each strategy holds per device: the WMA teacher, and none for Direct FT
    memory = summary["memory"]
    assert memory["direct"]["teacher"] == 0 < memory["wma_sd"]["teacher"]
    assert memory["direct"]["parameters"] == memory["wma_sd"]["parameters"] > 0
    assert "state per device" in printed
    assert (out / "figures" / "finetune.png").is_file()
    assert "Spearman" in printed and "wma_sd" in printed
    # a rerun resumes: nothing is trained again, the results are the same
    stamp = (out / "runs" / "seed0_direct.json").stat().st_mtime_ns
    assert main(_args(task_dirs, out, "--strategy", "direct", "wma_sd", "--theory",
                      "--wise-alphas", "0.5")) == 0
    assert (out / "runs" / "seed0_direct.json").stat().st_mtime_ns == stamp
    again = json.loads((out / "summary.json").read_text())
    assert again["summary"] == summary["summary"]
    # other settings in the same folder are refused, naming the file
    capsys.readouterr()
    assert main(_args(task_dirs, out, "--strategy", "direct", "--lr", "0.01")) == 3
    assert "seed0_direct.json" in capsys.readouterr().err


def test_streamed_and_held_runs_give_the_same_results(task_dirs, tmp_path):
    results = {}
    for source in ("device", "stream"):
        out = tmp_path / source
        assert main(_args(task_dirs, out, "--strategy", "direct", "--source", source)) == 0
        results[source] = json.loads((out / "summary.json").read_text())["runs"]["direct"]["0"]
    for key, value in results["device"].items():
        if key != "config":
            assert json.dumps(results["stream"][key]) == json.dumps(value), key


@pytest.mark.parametrize(("extra", "code", "words"), [
    (["--eval", "bad"], 2, "--eval must be NAME=DIR"),
    (["--eval", "x={train}:sideways"], 2, "role must be one of"),
    (["--strategy", "nope"], 2, "unknown strategies"),
    (["--strategy", "data_hybrid"], 3, "--replay"),
    (["--eval", "odd={odd}:shifted"], 3, "seven"),
    (["--theory", "--theory-memory-gb", "1e-9"], 2, "--theory-samples"),
    (["--source", "disk"], 2, "--source"),
    (["--workers", "-1"], 2, "workers"),
    (["--batch-size", "100"], 3, "--batch-size"),
    (["--devices", "2", "--fsdp", "3"], 2, "fsdp"),
    (["--coordinator", "nowhere", "--num-processes", "2", "--process-id", "0"], 2,
     "coordinator"),
    (["--coordinator", "localhost:1", "--num-processes", "2", "--process-id", "2"], 2,
     "process_id"),
    (["--coordinator", "localhost:1", "--num-processes", "0", "--process-id", "0"], 2,
     "num_processes"),
])
def test_bad_flags_are_one_line_errors(task_dirs, tmp_path, capsys, extra, code, words):
    extra = [e.format(train=task_dirs / "train", odd=task_dirs / "odd") for e in extra]
    assert main(_args(task_dirs, tmp_path / "out", *extra)) == code
    err = capsys.readouterr().err
    assert words in err
    assert "Traceback" not in err


def test_missing_folders_and_wrong_checkpoints_name_the_flag(task_dirs, tmp_path, capsys):
    args = _args(task_dirs, tmp_path / "out")
    missing = [a if a != str(task_dirs / "val") else str(tmp_path / "nowhere") for a in args]
    assert main(missing) == 3
    assert "--val" in capsys.readouterr().err
    (tmp_path / "notclip").mkdir()
    (tmp_path / "notclip" / "weights.bin").write_bytes(b"\0" * 8)
    wrong = [a if a != str(task_dirs / "ckpt") else str(tmp_path / "notclip") for a in args]
    assert main(wrong) == 3
    assert "notclip" in capsys.readouterr().err
    empty = tmp_path / "empty_train"
    for name in CLASSES:
        (empty / name).mkdir(parents=True)
    no_images = [a if a != str(task_dirs / "train") else str(empty) for a in args]
    assert main(no_images) == 3
    assert "training split" in capsys.readouterr().err


def test_a_corrupt_image_is_reported_or_skipped(task_dirs, tmp_path, capsys):
    import shutil

    train = tmp_path / "train"
    shutil.copytree(task_dirs / "train", train)
    (train / "one" / "broken.png").write_bytes(b"not a png")
    args = [a if a != str(task_dirs / "train") else str(train)
            for a in _args(task_dirs, tmp_path / "out", "--strategy", "direct")]
    assert main(args) == 3
    assert "broken.png" in capsys.readouterr().err
    assert main([*args, "--skip-bad"]) == 0
    assert "1 unreadable file(s) left out" in capsys.readouterr().out


def test_fresh_model_head_equals_the_toy_experiments_head(tmp_path, monkeypatch):
    """The head ``fresh_model`` puts on a CLIP is the one the toy experiment puts on its
    pretrained model of the same seed (read here from ``pretrained_model``, its checkpoint
    loader short-cut to return the untrained model it would fill; the data only name the
    checkpoint)."""
    from types import SimpleNamespace

    from tracer_theory.deep.finetune import PretrainConfig
    from tracer_theory.deep.studies import experiment

    monkeypatch.setattr(experiment, "load_model", lambda path, skeleton, *a, **k: skeleton)
    config = experiment.quick_config(pretrain=PretrainConfig(width=16, dim=8))
    data = SimpleNamespace(fingerprint="0123456789abcdef")
    toy = {seed: experiment.pretrained_model(config, data, tmp_path, seed, progress=False)
           for seed in (5, 6)}
    for seed, model in toy.items():
        ours = fresh_model(model.clip, 10, seed)
        assert eqx.tree_equal(ours, fresh_model(model.clip, 10, seed))  # deterministic
        np.testing.assert_array_equal(ours.head.weight, model.head.weight)
        np.testing.assert_array_equal(ours.head.bias, model.head.bias)
    assert not np.array_equal(toy[5].head.weight, toy[6].head.weight)  # the seed matters


# --- FLYP ----------------------------------------------------------------------------------


def _flyp_inputs(objective: str):
    from tracer_theory.deep.finetune.finetunee import Batch, logits_from_features
    from tracer_theory.deep.finetune.strategies import LossInputs

    data = ExperimentData(quick=True)
    clip = make_model("toy", key=jax.random.key(2), width=16, dim=8)
    model = fresh_model(clip, 10, seed=1)
    y = data.train_labels  # repeated classes: three 0s, two 1s and a 2
    index = np.r_[np.flatnonzero(y == 0)[:3], np.flatnonzero(y == 1)[:2],
                  np.flatnonzero(y == 2)[:1]]
    images, labels = jnp.asarray(data.color_train[index]), jnp.asarray(data.train_labels[index])
    empty = jnp.zeros((0, 3, 28, 28))
    batch = Batch(images, labels, empty, jnp.zeros((0, 8), jnp.int32), jnp.zeros((0,), jnp.int32))
    emb = clip.class_embeddings(jnp.asarray(data.captions))
    features = clip.image_features(images)
    logits = logits_from_features(model, features, emb, objective)
    return data, model, batch, LossInputs(model, batch, features, logits, model, None,
                                          model.head, emb, objective)


@pytest.mark.parametrize("objective", ["prompts", "head"])
def test_flyp_task_loss_is_the_contrastive_loss_against_class_captions(objective):
    from tracer_theory.deep.finetune.strategies import FLYP

    data, model, batch, inputs = _flyp_inputs(objective)
    flyp = FLYP().with_prompts(data.captions)
    ours = float(flyp.task_loss(inputs))
    # by hand (NumPy): unit image embeddings, unit caption embeddings of the first template of
    # each label, logits scale · cos; targets uniform over the pairs of one label; ½(rows + cols)
    clip = model.clip
    img = np.asarray(jax.vmap(clip.image_proj)(inputs.features), np.float64)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    labels = np.asarray(batch.labels)
    txt = np.asarray(jax.vmap(clip.text_proj)(jax.vmap(clip.text)(
        jnp.asarray(data.captions[labels, 0]))), np.float64)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    z = float(clip.scale) * img @ txt.T
    same = (labels[:, None] == labels[None, :]).astype(float)
    targets = same / same.sum(1, keepdims=True)

    def soft_ce(x, t):
        log_p = x - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)) \
            - x.max(1, keepdims=True)
        return -np.mean(np.sum(t * log_p, axis=1))

    expected = 0.5 * (soft_ce(z, targets) + soft_ce(z.T, targets.T))
    if objective == "head":
        head = np.asarray(jax.vmap(model.head)(inputs.features), np.float64)
        expected += soft_ce(head, np.eye(10)[labels])
    assert ours == pytest.approx(expected, rel=1e-5)


def test_flyp_trains_the_text_tower_and_its_probe_does_not_move_the_encoder():
    from tracer_theory.deep.finetune.strategies import FLYP, both_towers, image_side

    data, model, batch, inputs = _flyp_inputs("head")
    flyp = FLYP().with_prompts(data.captions)
    assert flyp.phases(10)[0].trainable is both_towers
    assert any(t is model.clip.text for t in both_towers(model))
    assert not any(t is model.clip.text for t in image_side(model))

    def loss(clip, objective):
        from tracer_theory.deep.finetune.finetunee import logits_from_features

        m = eqx.tree_at(lambda x: x.clip, model, clip)
        features = clip.image_features(batch.images)
        logits = logits_from_features(m, features, inputs.class_emb, objective)
        return flyp.task_loss(inputs._replace(model=m, features=features, logits=logits,
                                              objective=objective))

    with_head = eqx.filter_grad(lambda c: loss(c, "head"))(model.clip)
    without = eqx.filter_grad(lambda c: loss(c, "prompts"))(model.clip)
    for a, b in zip(jax.tree.leaves(with_head), jax.tree.leaves(without), strict=True):
        assert np.allclose(a, b, atol=1e-7)  # the probe's loss reaches the head alone
    assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(without.text))


def test_flyp_without_prompts_says_how_to_bind_them():
    from tracer_theory.deep.finetune.strategies import FLYP

    _, _, _, inputs = _flyp_inputs("prompts")
    with pytest.raises(ValueError, match="with_prompts"):
        FLYP().task_loss(inputs)


def test_prompts_objective_runs_flyp_rung_r1_and_saves_models(task_dirs, tmp_path, capsys):
    from tracer_theory.deep.models import load_clip

    out = tmp_path / "out"
    assert main(_args(task_dirs, out, "--strategy", "flyp", "direct", "l2sp", "--objective",
                      "prompts", "--theory", "--theory-samples", "12", "--save-models", "hf",
                      "--wise-alphas")) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    # rung R1 for the strategies with a linear counterpart (FLYP has none)
    assert set(summary["theory"]["R1"]) == {"direct", "l2sp"}
    assert summary["theory"]["samples"] == 12
    assert summary["config"]["strategies"]["flyp"]["tokens"]  # the captions were bound
    before = load_clip(task_dirs / "ckpt")
    flyp, direct = (load_clip(out / "models" / f"seed0_{n}") for n in ("flyp", "direct"))
    # the finetuned weights were written: FLYP moved the text tower, Direct FT the image side
    assert not np.array_equal(flyp.text_proj.weight, before.text_proj.weight)
    assert np.array_equal(direct.text_proj.weight, before.text_proj.weight)
    assert not np.array_equal(direct.image_proj.weight, before.image_proj.weight)
