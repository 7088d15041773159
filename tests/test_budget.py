"""The error budget (``tracer-theory budget``): the last-layer and tangent models train through
the unchanged ``finetune``, the summary and verdicts against hand-computed rows, the quick
study end to end through the CLI (and its resume), and its bad input."""

import json

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from tracer_theory import cli
from tracer_theory.deep.finetune import REGISTRY, FinetuneConfig, Finetunee, Restricted
from tracer_theory.deep.finetune.loop import finetune
from tracer_theory.deep.models import ToyCLIP
from tracer_theory.deep.models.tangent import Linearized, linearize
from tracer_theory.deep.studies.arrays import ExperimentData
from tracer_theory.deep.studies.budget import RUNGS, BudgetConfig, summarize, verdicts


@pytest.fixture(scope="module")
def small():
    """A fresh toy model (float32), the quick data and its class embeddings."""
    key = jax.random.key(0)
    clip = ToyCLIP(width=16, dim=8, key=key)
    model = Finetunee(clip, eqx.nn.Linear(16, 10, dtype=jnp.float32, key=key))
    data = ExperimentData(quick=True)
    return model, data, clip.class_embeddings(jnp.asarray(data.captions))


def _train(model, strategy, small, steps=3, lr=3e-3):
    _, data, class_emb = small
    config = FinetuneConfig(objective="prompts", steps=steps, batch_size=16, log_every=steps,
                            lr=lr)
    return finetune(model, data.color_train[:32], data.train_labels[:32], strategy, config,
                    class_emb=class_emb, probe=data.probe(), hybrid=data.hybrid(), seed=0).model


def _leaves(tree):
    return jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))


def _moved(a, b):
    return [not np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True)]


@pytest.mark.parametrize("name", ["direct", "wma_sd"])
def test_restricted_strategy_trains_only_the_projection_and_head(small, name):
    model = small[0]
    trained = _train(model, Restricted(REGISTRY[name].strategy), small)
    assert not any(_moved(model.clip.image, trained.clip.image))  # features fixed
    assert all(_moved(model.clip.image_proj, trained.clip.image_proj))
    assert not any(_moved(model.clip.text, trained.clip.text))
    # the unrestricted strategy moves the encoder (the restriction is what froze it)
    assert any(_moved(model.clip.image, _train(model, REGISTRY[name].strategy, small).clip.image))


@pytest.mark.parametrize("name", ["direct", "static_sd", "wma_sd"])
def test_tangent_model_trains_through_finetune_unchanged(small, name):
    model = small[0]
    tangent = eqx.tree_at(lambda m: m.clip, model, linearize(model.clip))
    trained = _train(tangent, REGISTRY[name].strategy, small, lr=1e-5)
    image = trained.clip.image
    assert isinstance(image, Linearized)
    assert not any(_moved(tangent.clip.image.primal, image.primal))  # θ⁰ stays
    assert any(np.any(leaf != 0) for leaf in jax.tree.leaves(image.delta))  # θ moved
    # to first order it is the real encoder at θ⁰ + Δθ: after a few small Adam steps the real
    # features move and the tangent model follows them to within a small second-order part
    x = jnp.asarray(small[1].gray_test[:16])
    real = eqx.combine(image.params, image.rest)
    f0, f_lin, f = (jax.vmap(m)(x) for m in (image.at_primal(), image, real))
    assert float(jnp.linalg.norm(f - f0)) > 1e-3
    assert float(jnp.linalg.norm(f - f_lin)) < 0.1 * float(jnp.linalg.norm(f - f0))


def _row(objective, point, seed, values, strategy=None):
    """A hand-made result row: ``values`` {rung: forgetting}."""
    return {"objective": objective, "seed": seed, "point": point,
            "strategy": strategy or point, "lam": None,
            **{r: {"forgetting": v, "logit_change": 0.0} for r, v in values.items()}}


def test_summary_and_verdicts_by_hand():
    config = BudgetConfig(objectives=("prompts", "head"), seeds=(0, 1),
                          strategies=("direct", "static_sd", "wma_sd"), lambda_grid=False)
    prompts = {"direct": [(10, 11, 30, 40, 45, 50), (12, 13, 34, 44, 47, 50)],
               "static_sd": [(30, 10, 12, 14, 20, 24), (30, 12, 14, 16, 22, 26)],
               "wma_sd": [(8, 2, 4, 6, 9, 12), (8, 4, 6, 8, 11, 14)]}
    rows = [_row("prompts", name, seed, dict(zip(RUNGS, values, strict=True)))
            for name, per in prompts.items() for seed, values in enumerate(per)]
    head = {"direct": (10, 11, 50, 60, 62), "static_sd": (30, 10, 10, 20, 21),
            "wma_sd": (8, 2, 2, 6, 3)}
    head_rungs = ("R0", "R0'", "R2", "R3", "R4")
    rows += [_row("head", name, seed, dict(zip(head_rungs, values, strict=True)))
             for name, values in head.items() for seed in (0, 1)]
    summary = summarize(rows, config)
    p = summary["prompts"]
    assert p["rungs"] == list(RUNGS)
    assert p["points"]["direct"]["R1"]["forgetting"] == [32.0, 2.0]  # mean, std of 30 and 34
    # mean over points of |R0 − R4| with means (11, 30, 8) vs (50, 25, 13): (39 + 5 + 5)/3
    assert p["mean_abs_error"]["R0"] == pytest.approx(49 / 3)
    # |R3 − R4| steps: (50 − 46, 25 − 21, 13 − 10): 11/3; R0→R1: (21, 17, 3): 41/3
    assert p["mean_abs_step"]["R3->R4"] == pytest.approx(11 / 3)
    assert p["mean_abs_step"]["R0->R1"] == pytest.approx(41 / 3)
    assert p["spearman_with_R4"]["R0"] == pytest.approx(0.5)  # ranks (2,3,1) vs (3,2,1)
    assert p["spearman_with_R4"]["R3"] == pytest.approx(1.0)
    h = summary["head"]
    assert h["rungs"] == list(head_rungs)  # R1 is undefined for the head objective
    assert h["mean_abs_step"]["R0->R2"] == pytest.approx((40 + 20 + 6) / 3)
    lines = verdicts(summary)
    # prompts steps: R0→R1 41/3, R1→R2 (10, 2, 2) 14/3, R2→R3 (4, 6, 3) 13/3, R3→R4 11/3
    assert "largest is R0→R1" in lines[1]
    assert "largest is R0→R2" in lines[3]
    assert "R0 16.3" in lines[0]


#: Images of the end-to-end budget's eNTK Gram: the quick preset's 8 halved (the Gram's rows
#: were the largest part of the run); with 4 the gradient-descent control still keeps > 99.9%
#: of its change in the row space, and every assertion below reads the same.
N_QUICK = 4


def test_quick_budget_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "b"
    argv = ["budget", "--quick", "--objectives", "prompts", "--strategies", "direct",
            "static_sd", "--n", str(N_QUICK), "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    payload = json.loads((out / "budget_toy_quick.json").read_text())
    assert [r["point"] for r in payload["rows"]] == ["direct", "static_sd"]
    for row in payload["rows"]:
        for rung in RUNGS:
            assert np.isfinite(row[rung]["forgetting"]), rung
            assert row[rung]["logit_change"] >= 0, rung
        for rung in ("R2", "R3"):
            assert 0 <= row[rung]["task_fraction"] <= 1 + 1e-9, rung
        assert row["R0'"]["task_fraction"] == 1.0
        # gradient descent keeps the tangent model's change in the row space of J (up to the
        # product of the projection's and the encoder's changes); AdamW does not
        assert row["R2gd"]["task_fraction"] > 0.99
        assert row["R2gd"]["task_fraction"] > row["R2"]["task_fraction"]
        assert row["R2gd"]["curvature"] > 0
        assert row["R1"] != row["R3"]  # a frozen encoder changes the outcome
    spectrum = payload["spectra"]["0"]
    assert spectrum["size"] == N_QUICK * 64 and 0 < spectrum["rank"] <= spectrum["size"]
    assert payload["verdicts"] and "mean |rung − R4|" in text
    assert (out / "figures" / "budget_toy_quick.png").exists()
    # resuming reads every finished run and the closed forms: no file is rewritten
    stamps = sorted(p.stat().st_mtime_ns for p in (out / "budget_toy_quick").rglob("*.json"))
    assert cli.main(argv) == 0
    again = json.loads((out / "budget_toy_quick.json").read_text())
    assert again["summary"] == payload["summary"]
    assert sorted(p.stat().st_mtime_ns
                  for p in (out / "budget_toy_quick").rglob("*.json")) == stamps


@pytest.mark.parametrize(("argv", "flag"), [
    (["--n", "1"], "--n"), (["--block", "0"], "--block"), (["--memory-gb", "0.0001"],
                                                           "--memory-gb"),
    (["--strategies", "nope"], "--strategies"), (["--model", "huge"], "--model"),
    (["--memory-gb", "-1"], "--memory-gb")])
def test_cli_bad_input_is_a_usage_error(argv, flag, tmp_path, capsys):
    code = cli.main(["budget", "--quick", "--out", str(tmp_path), "--quiet", *argv])
    assert code == cli.EXIT_USAGE
    assert flag in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.json"))  # refused before any work


def test_gradient_descent_strategy_takes_plain_gradient_steps(small):
    """One step of ``GradientDescent(Direct, s)`` is ``θ − s·lr·∇L`` on the trained leaves,
    with ``∇L`` from ``jax.grad`` of the same loss (an independent reference)."""
    from tracer_theory.deep.finetune import GradientDescent
    from tracer_theory.deep.finetune.step import finetune_loss, start, train_step
    from tracer_theory.deep.finetune.strategies import image_side
    from tracer_theory.deep.studies.budget import _batch

    model, data, class_emb = small
    base = REGISTRY["direct"].strategy
    strategy = GradientDescent(base, lr_scale=2.5)
    config = FinetuneConfig(objective="prompts", steps=1, batch_size=16, lr=1e-2)
    batch = _batch(data.color_train[data.sample(16)], data.train_labels[data.sample(16)])
    state, optimizer, schedule = start(model, strategy, config)
    after = train_step(state, batch, strategy, schedule, config, optimizer, model, class_emb,
                       model.head)[0].model
    grads = jax.grad(lambda m: finetune_loss(m, batch, base, "prompts", pretrained=model,
                                             teacher_tower=None, class_emb=class_emb,
                                             teacher_head=model.head)[0])(model)
    for before_leaf, after_leaf, grad in zip(_leaves(image_side(model)), _leaves(
            image_side(after)), _leaves(image_side(grads)), strict=True):
        np.testing.assert_allclose(after_leaf, before_leaf - 2.5 * 1e-2 * grad, rtol=1e-4,
                                   atol=1e-7)
    assert not any(_moved(model.clip.text, after.clip.text))
    with pytest.raises(ValueError, match="lr_scale"):
        GradientDescent(base, lr_scale=0.0)


def test_curvature_is_the_largest_hessian_eigenvalue(small):
    """Power iteration against the eigenvalues of the explicit Hessian (``jax.hessian``) of
    the loss over the head and the projection (the leaves ``Restricted`` trains)."""
    from tracer_theory.deep.finetune.step import finetune_loss
    from tracer_theory.deep.studies.budget import _batch, curvature

    model, data, class_emb = small
    strategy = Restricted(REGISTRY["direct"].strategy)
    index = data.sample(32)
    batch = _batch(data.color_train[index], data.train_labels[index])
    params = (model.head, model.clip.image_proj)
    flat, unravel = jax.flatten_util.ravel_pytree(eqx.filter(params, eqx.is_inexact_array))

    def loss(v):
        head, proj = eqx.combine(unravel(v), eqx.filter(params, eqx.is_inexact_array,
                                                        inverse=True))
        m = eqx.tree_at(lambda m: (m.head, m.clip.image_proj), model, (head, proj))
        return finetune_loss(m, batch, strategy, "prompts", pretrained=model,
                             teacher_tower=None, class_emb=class_emb,
                             teacher_head=model.head)[0]

    eigenvalues = np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(flat), np.float64))
    expected = np.abs(eigenvalues).max()
    got = curvature(model, strategy, batch, class_emb, "prompts", iters=300)
    assert got == pytest.approx(expected, rel=1e-3)
