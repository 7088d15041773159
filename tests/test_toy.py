"""The toy CLIP experiment (THEORY §6): model, training invariants, and the pipeline end to end
in quick mode."""

import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracer_theory import cli
from tracer_theory.deep.experiment import (
    TABLE_COLUMNS,
    ToyData,
    quick_config,
    run_toy,
    wise_ft,
)
from tracer_theory.deep.model import ToyCLIP
from tracer_theory.deep.prompts import MAX_TOKENS, TRAIN_TEMPLATES, prompt_tokens, tokenize
from tracer_theory.deep.train import STRATEGIES, FinetuneConfig, Finetunee, finetune

METRICS = ("gray_acc", "gray_ece", "id_acc", "id_ece", "ood_flipped_acc", "ood_flipped_ece",
           "ood_neutral_acc", "ood_neutral_ece", "zs_id_images_id_prompts",
           "zs_id_images_ood_prompts", "zs_ood_images_id_prompts", "zs_ood_images_ood_prompts",
           "forgetting", "proj_task_change", "proj_orthogonal_change", "dense_task_change",
           "dense_orthogonal_change")


def test_pipeline_json_holds_every_strategy_and_metric(quick_run):
    config, out, payload = quick_run
    on_disk = json.loads((out / f"{config.name}.json").read_text())
    assert on_disk["summary"] == payload["summary"]
    for strategy in STRATEGIES:
        record = on_disk["runs"][strategy]["0"]
        missing = [m for m in METRICS if m not in record]
        assert not missing, f"{strategy} lacks {missing}"
    for alpha in config.wise_alphas:
        assert f"wise_ft({alpha:g})" in on_disk["runs"]
    for strategy in ("ema_sd", "wma_sd", "static_sd"):
        gap = on_disk["runs"][strategy]["0"]["gap"]
        assert {"param_distance", "logit_kl", "curves"} <= set(gap)


def test_forgetting_is_computed_from_the_measured_accuracies(quick_run):
    _, _, payload = quick_run
    before = payload["pretrained"]["0"]["gray_acc"]
    for strategy, per_seed in payload["runs"].items():
        record = per_seed["0"]
        assert record["forgetting"] == pytest.approx(before - record["gray_acc"]), strategy


def test_static_teacher_stays_at_the_pretrained_model(quick_run):
    _, _, payload = quick_run
    curves = payload["runs"]["static_sd"]["0"]["gap"]["curves"]
    direct = payload["runs"]["direct"]["0"]
    assert direct["proj_task_change"] == pytest.approx(0.0, abs=1e-7)  # head objective
    assert curves["param_distance"][-1] > 0  # the student moved away from the fixed teacher


def test_resume_reuses_finished_runs(quick_run):
    config, out, payload = quick_run
    files = sorted((out / config.name).glob("seed0_*.json"))
    stamps = [f.stat().st_mtime_ns for f in files]
    again = run_toy(config, out, progress=False)
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert again["summary"] == payload["summary"]
    assert not list(out.rglob("*.tmp"))


def test_cli_toy_quick_prints_the_table_and_writes_figures(quick_run, tmp_path, capsys):
    _, out, payload = quick_run  # the CLI resumes the fixture's finished runs
    code = cli.main(["toy", "--quick", "--protocol", "fair", "--objective", "head", "--out",
                     str(out), "--figures", str(tmp_path / "f"), "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    for column in TABLE_COLUMNS:
        assert column in text
    assert f"{payload['summary']['direct']['forgetting'][0]:.2f}" in text
    assert (tmp_path / "f" / "toy_fair_head_quick.png").exists()
    assert (tmp_path / "f" / "toy_fair_head_quick.pdf").exists()


def test_paper_protocol_recipe():
    from tracer_theory.deep.experiment import PAPER_STRATEGIES, ToyConfig, strategy_config

    config = ToyConfig(protocol="paper")
    steps_per_epoch = 3000 // 128
    direct = strategy_config(config, "direct", 3000)
    assert (direct.lr, direct.weight_decay, direct.steps) == (1e-4, 0.1, 20 * steps_per_epoch)
    l2 = strategy_config(config, "l2sp", 3000)
    assert (l2.l2_lam, l2.penalize_head, l2.steps) == (1e-3, True, 2 * steps_per_epoch)
    sd = strategy_config(config, "static_sd", 3000)
    assert (sd.distill, sd.temperature, sd.lam) == ("kl", 0.2, 2.0)
    ema = strategy_config(config, "ema_sd", 3000)
    assert (ema.momentum, ema.temperature) == (0.99999, 1.1)
    assert config.strategies() == PAPER_STRATEGIES


def test_text_tower_is_frozen_and_wise_ft_interpolates():
    config = quick_config()
    data = ToyData(config)
    key = jax.random.key(0)
    model = Finetunee(ToyCLIP(key=key), eqx.nn.Linear(128, 10, dtype=jnp.float32, key=key))
    class_emb = model.clip.class_embeddings(jnp.asarray(data.captions))
    tuned, _ = finetune(model, data.color_train, data.train_labels,
                        dataclasses.replace(config.finetune, strategy="wma_sd"),
                        class_emb=class_emb, probe=data.color_val[:16], hybrid=None, seed=0)
    for a, b in zip(jax.tree.leaves((model.clip.text, model.clip.text_proj)),
                    jax.tree.leaves((tuned.clip.text, tuned.clip.text_proj)), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(model.clip.image.dense.weight, tuned.clip.image.dense.weight)
    half = wise_ft(model, tuned, 0.5)
    np.testing.assert_allclose(half.clip.image.dense.weight, 0.5 * (
        model.clip.image.dense.weight + tuned.clip.image.dense.weight), rtol=1e-6)
    np.testing.assert_array_equal(half.head.weight, tuned.head.weight)


def test_prompts_and_model_shapes():
    tokens = prompt_tokens(TRAIN_TEMPLATES)
    assert tokens.shape == (10, len(TRAIN_TEMPLATES), MAX_TOKENS)
    model = ToyCLIP(key=jax.random.key(1))
    emb = model.class_embeddings(jnp.asarray(tokens))
    np.testing.assert_allclose(jnp.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    images = jnp.zeros((3, 3, 28, 28), jnp.float32)
    assert model.zero_shot_logits(images, jnp.asarray(tokens)).shape == (3, 10)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenize("a picture of seven")


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(strategy="nope"), "strategy must be one of"),
    (dict(objective="both"), "objective must be 'head' or 'prompts'"),
    (dict(steps=0), "steps must be >= 1"),
    (dict(lr=0.0), "lr must be > 0"),
    (dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
    (dict(lam=-1.0), "lam must be >= 0"),
    (dict(hybrid=1.0), r"hybrid must be in \[0, 1\)"),
])
def test_finetune_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**kwargs)
