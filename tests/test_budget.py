"""The error budget (``tracer-theory budget``): every rung against its definition, computed
here independently on the quick study run end to end through the CLI with a narrow tower: the
closed forms R0 and R0', the measured forgetting and task fractions (NumPy, the tower's explicit
Jacobian, ``jax.jvp``), what each trained rung trains and on which images, and its numbers from
the models it trained; the summary and verdicts against hand-computed rows, the resume, and
bad input."""

import contextlib
import dataclasses
import io
import json
import types

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from tracer_theory import cli
from tracer_theory.deep.finetune import (
    REGISTRY,
    FinetuneConfig,
    Finetunee,
    GradientDescent,
    Restricted,
)
from tracer_theory.deep.models import ToyCLIP
from tracer_theory.deep.models.tangent import Linearized, linearize
from tracer_theory.deep.studies import budget
from tracer_theory.deep.studies.arrays import ExperimentData
from tracer_theory.deep.studies.budget import RUNGS, BudgetConfig, summarize, verdicts
from tracer_theory.deep.studies.experiment import ExperimentConfig, pretrained_model
from tracer_theory.linear.closed_forms import solve
from tracer_theory.linear.problem import LinearProblem

#: The quick finetuning's steps: the horizon of the closed forms (a teacher's schedule).
STEPS = 6
#: The end-to-end budget: one strategy (WMA-SD: an evolving teacher, whose closed forms' step
#: follows each problem's curvature σ_max² over the ``STEPS`` of the run) on 2 images, the
#: fewest a budget takes, with the quick toy's tower narrowed to ``width`` 16 and ``dim`` 8
#: (the float64 eNTK Gram was the largest part of the run, and the references below build the
#: tower's Jacobian whole); the gradient-descent control still keeps > 99% of its change in
#: the row space of J.
E2E_STRATEGY, N_QUICK, WIDTH, DIM = "wma_sd", 2, 16, 8


@pytest.fixture(scope="module")
def small():
    """A fresh toy model (float32), the quick data and its class embeddings."""
    key = jax.random.key(0)
    clip = ToyCLIP(width=16, dim=8, key=key)
    model = Finetunee(clip, eqx.nn.Linear(16, 10, dtype=jnp.float32, key=key))
    data = ExperimentData(quick=True)
    return model, data, clip.class_embeddings(jnp.asarray(data.captions))


def _leaves(tree):
    return jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))


def _moved(a, b):
    return [not np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True)]


def _zero_shot(features, w, class_emb):
    """NumPy cosine zero-shot logits (N, 10): image ``features`` (N, width) through the
    projection ``w`` (dim, width), against the ``class_emb`` (10, dim)."""
    emb = np.asarray(features, np.float64) @ np.asarray(w, np.float64).T
    return emb / np.linalg.norm(emb, axis=1, keepdims=True) @ np.asarray(class_emb, np.float64).T


def _change(labels, before, after):
    """``(accuracy drop in points, ‖after − before‖/‖before‖)`` of zero-shot logits, NumPy."""
    acc = [100 * np.mean(np.argmax(x, 1) == labels) for x in (before, after)]
    return acc[0] - acc[1], np.linalg.norm(after - before) / np.linalg.norm(before)


def _check_rung(got, expected):
    """A rung's forgetting (exact: a count of flipped argmaxes) and logit change."""
    assert got["forgetting"] == pytest.approx(expected[0], abs=1e-9)
    assert got["logit_change"] == pytest.approx(expected[1], rel=1e-6)


def _quick_tiny(patch, data):
    """The toy's quick budget with its tower narrowed to ``WIDTH``/``DIM`` (``quick_config``
    as the budget calls it) and its arrays answered with ``data`` (``small``'s: the same
    constructor's arrays, built once for the file)."""
    real_config, real_data = budget.quick_config, ExperimentConfig.data

    def narrow(**overrides):
        config = real_config(**overrides)
        return dataclasses.replace(config, pretrain=dataclasses.replace(
            config.pretrain, width=WIDTH, dim=DIM))

    def shared(config):
        quick = (config.mnist, config.pretrain.model, config.quick) == (None, "toy", True)
        return data if quick else real_data(config)

    patch.setattr(budget, "quick_config", narrow)
    patch.setattr(ExperimentConfig, "data", shared)


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory, small):
    """The quick budget through the CLI (``_quick_tiny``), once for this file, with every
    trained rung recorded on the way (``runs[rung]``: what ``finetune`` was given and the model
    it trained, as ``_Seed.measured`` received it) and the seed's ``_Seed`` (``side``):
    ``(out, argv, payload, text, runs, side, experiment)``."""
    out = tmp_path_factory.mktemp("budget") / "b"
    argv = ["budget", "--quick", "--objectives", "prompts", "--strategies", E2E_STRATEGY,
            "--n", str(N_QUICK), "--out", str(out), "--quiet"]
    runs, given, sides = {}, [], []
    real_finetune, real_measured = budget.finetune, budget._Seed.measured

    def finetune(model, images, labels, strategy, training, **kwargs):
        run = real_finetune(model, images, labels, strategy, training, **kwargs)
        given.append(types.SimpleNamespace(model=model, images=np.asarray(images),
                                           labels=np.asarray(labels), strategy=strategy,
                                           training=training, trained=run.model))
        return run

    def measured(self, model, rung):
        assert given and given[-1].trained is model, rung  # the model it just trained
        runs[rung] = given.pop()
        sides.append(self)
        return real_measured(self, model, rung)

    text = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(text):
        _quick_tiny(patch, small[1])
        patch.setattr(budget, "finetune", finetune)
        patch.setattr(budget._Seed, "measured", measured)
        assert cli.main(argv) == 0
        experiment = budget.quick_budget_config(objectives=("prompts",)).experiment("prompts")
    payload = json.loads((out / "budget_toy_quick.json").read_text())
    assert all(side is sides[0] for side in sides)
    return types.SimpleNamespace(out=out, argv=argv, payload=payload, text=text.getvalue(),
                                 runs=runs, side=sides[0], experiment=experiment)


@pytest.fixture(scope="module")
def ref(budget_run, small):
    """The references of the end-to-end budget, built here: its pretrained model read back
    from its checkpoint (not from the runs), the float64 tower flattened (``theta0``,
    ``embed(v, images)``), the explicit Jacobian ``J`` (n·k, P) of its scaled embeddings on
    the closed forms' n images (``jax.jacrev``) and J's SVD, the residual ``R = Y − E⁰`` from
    the captions, and the gray probe's pretrained logits (NumPy)."""
    data = small[1]
    assert budget_run.experiment.finetune.steps == STEPS  # the closed forms' horizon
    model = pretrained_model(budget_run.experiment, data, budget_run.out, 0, False)
    clip = model.clip
    index = data.sample(N_QUICK)
    scale = 1 / np.sqrt(N_QUICK)
    params, static = eqx.partition((clip.image, clip.image_proj), eqx.is_inexact_array)
    theta0, unravel = jax.flatten_util.ravel_pytree(
        jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params))

    @jax.jit
    def embed(v, images):
        image, proj = eqx.combine(unravel(v), static)
        return jax.vmap(lambda x: proj(image(x)))(images.astype(jnp.float64))

    images = data.color_train[index]
    jac = np.asarray(jax.jit(jax.jacrev(lambda v: scale * embed(v, images).reshape(-1)))(
        theta0))
    u, s, vt = np.linalg.svd(jac, full_matrices=False)
    keep = s**2 > jac.shape[0] * np.finfo(np.float64).eps * s[0] ** 2
    # the contrastive target: the centred projected captions, in the scaled units
    text = scale * np.asarray(jax.vmap(clip.text)(
        jnp.asarray(data.captions[data.train_labels[index], 0])), np.float64)
    w_txt = np.asarray(clip.text_proj.weight, np.float64)
    target = (text - text.mean(axis=0)) @ w_txt.T  # (n, k)
    residual = (target - scale * np.asarray(embed(theta0, images))).reshape(-1)
    features = np.asarray(clip.image_features(jnp.asarray(images)), np.float64)  # (n, width)
    gray = np.asarray(clip.image_features(jnp.asarray(data.gray_test)), np.float64)
    class_emb = np.asarray(clip.class_embeddings(jnp.asarray(data.captions)), np.float64)
    w0 = np.asarray(clip.image_proj.weight, np.float64)
    return types.SimpleNamespace(
        row=budget_run.payload["rows"][0], side=budget_run.side, data=data, model=model,
        params=params, static=static, theta0=theta0, unravel=unravel, embed=embed, jac=jac,
        u=u[:, keep], s=s[keep], vt=vt[keep], residual=residual, target=target, text=text,
        w_txt=w_txt, w0=w0, features=features, gray=gray, class_emb=class_emb,
        before=_zero_shot(gray, w0, class_emb), labels=data.test_labels, scale=scale)


def _row_share(ref, delta):
    """``‖PΔθ‖²/‖Δθ‖²``, ``P`` the projector on the row space of the explicit ``J`` (NumPy)."""
    inside = ref.vt @ np.asarray(delta, np.float64)
    return float(inside @ inside / (delta @ delta))


def _filtered(matrix, residual, name=None):
    """``Σ f_i (u_iᵀ r)/σ_i v_i`` for the SVD ``U diag(σ) Vᵀ`` of ``matrix`` (NumPy; the rank
    tolerance of ``np.linalg.matrix_rank`` on its smaller Gram): the change of the
    per-direction closed form that fits ``matrix · change ≈ residual`` (column by column when
    ``residual`` is a matrix), with the filter of the registered strategy ``name``'s linear
    twin at the matrix's own σ_max² over ``STEPS`` (``None``: Direct FT's, 1)."""
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    keep = s**2 > min(matrix.shape) * np.finfo(np.float64).eps * s[0] ** 2
    u, s, vt = u[:, keep], s[keep], vt[keep]
    f = np.ones_like(s)
    if name is not None:
        twin = REGISTRY[name].strategy.linear(types.SimpleNamespace(sigma_max_sq=s[0] ** 2),
                                              STEPS)
        f = np.asarray(twin.filter(jnp.asarray(s**2)), np.float64)
        assert not np.allclose(f, 1.0)  # a filter that shrinks: not Direct FT's
    change = vt.T @ ((f / s)[:, None] * (u.T @ residual.reshape(len(u), -1)))
    return change.reshape(vt.shape[1], *residual.shape[1:])


def test_filtered_reference_at_filter_1_is_the_minimum_norm_least_squares_fit(ref):
    """The reference ``_filtered`` at Direct FT's filter (1) against ``np.linalg.lstsq``'s
    minimum-norm least-squares solution: on the explicit ``J`` and the residual ``R``, and on
    the last layer's ``Xᵀ`` with a matrix of residuals."""
    lstsq = np.linalg.lstsq(ref.jac, ref.residual, rcond=None)[0]
    np.testing.assert_allclose(_filtered(ref.jac, ref.residual), lstsq,
                               atol=1e-10 * np.abs(lstsq).max())
    x = ref.scale * ref.features  # (n, width)
    residual = ref.target - x @ ref.w0.T  # (n, k)
    lstsq = np.linalg.lstsq(x, residual, rcond=None)[0]
    np.testing.assert_allclose(_filtered(x, residual), lstsq, atol=1e-10 * np.abs(lstsq).max())


def test_r0_is_the_last_layer_closed_form_on_a_numpy_probe(ref):
    """R0 against the last-layer problem built here from the n images' features and captions:
    ``W = W⁰ + Σ f_i (Y − W⁰X) v_i/σ_i u_iᵀ`` by NumPy's SVD of ``X`` (and the same by
    ``solve``), through the gray probe in NumPy."""
    x = ref.scale * ref.features.T  # (width, n)
    residual = ref.target.T - ref.w0 @ x  # (k, n)
    w = ref.w0 + _filtered(x.T, residual.T, E2E_STRATEGY).T
    problem = LinearProblem(x, ref.text.T, ref.w0, ref.w_txt, contrast="centered")
    with jax.enable_x64(True):
        by_solve = solve(problem, REGISTRY[E2E_STRATEGY].strategy.linear(problem, STEPS))
    np.testing.assert_allclose(w, by_solve, rtol=1e-9, atol=1e-12)
    expected = _change(ref.labels, ref.before, _zero_shot(ref.gray, w, ref.class_emb))
    assert expected[1] > 0.1  # the closed form moves the probe
    _check_rung(ref.row["R0"], expected)


def test_r0_prime_is_the_tangent_closed_form_through_a_jvp(ref):
    """R0' against the tangent model's first-order embeddings ``E⁰(x) + J(x)Δθ`` of the gray
    digits (``jax.jvp`` of the float64 tower at θ⁰ along Δθ from the SVD of the explicit ``J``,
    ``_filtered``) through the gray probe in NumPy; its task fraction against the share of
    that Δθ in J's row space (NumPy)."""
    delta = _filtered(ref.jac, ref.residual, E2E_STRATEGY)
    e0, de = jax.jvp(lambda v: ref.embed(v, ref.data.gray_test), (ref.theta0,),
                     (jnp.asarray(delta),))
    after = np.asarray(e0 + de)
    cos = after / np.linalg.norm(after, axis=1, keepdims=True) @ ref.class_emb.T
    got = ref.row["R0'"]
    expected = _change(ref.labels, ref.before, cos)
    assert expected[1] > 0.1  # the tangent model's change moves the probe
    _check_rung(got, expected)
    share = _row_share(ref, delta)
    assert share == pytest.approx(1.0, abs=1e-9)  # the closed form lies in the row space
    assert got["task_fraction"] == pytest.approx(share, abs=1e-9)


def _moved_model(ref, tangent):
    """The pretrained model with its tower moved by a Δθ (float32) half in J's row space, half
    random; as the real network (``R3``) or as the tangent model (``R2``, ``linearize``).
    Returns the model and Δθ flattened like ``ref.theta0`` (float64)."""
    rng = np.random.default_rng(0)
    inside = ref.vt.T @ rng.normal(size=len(ref.s))
    outside = rng.normal(size=ref.theta0.shape)
    size = 0.1 * np.linalg.norm(ref.theta0)
    step = size * (inside / np.linalg.norm(inside) + outside / np.linalg.norm(outside)) / 2
    moved = ref.unravel(jnp.asarray(ref.theta0 + step))
    moved = jax.tree.map(lambda x: x.astype(jnp.float32), moved)
    image, proj = eqx.combine(moved, ref.static)
    model = ref.model
    if tangent:
        model = eqx.tree_at(lambda m: m.clip, model, linearize(model.clip))
        model = eqx.tree_at(lambda m: (m.clip.image.params, m.clip.image_proj), model,
                            (eqx.filter(image, eqx.is_inexact_array), proj))
    else:
        model = eqx.tree_at(lambda m: (m.clip.image, m.clip.image_proj), model, (image, proj))
    delta = np.concatenate([np.asarray(a, np.float64).ravel() - np.asarray(b, np.float64).ravel()
                            for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(ref.params),
                                            strict=True)])
    return model, delta


@pytest.mark.parametrize("rung", ["R3", "R2"])
def test_measured_rung_is_numpy_on_the_moved_model(ref, rung):
    """A moved model's measured forgetting and logit change against its gray zero-shot logits
    in NumPy (the model's features, its projection, the pretrained class embeddings), and its
    task fraction against the share of its Δθ in the explicit J's row space (NumPy)."""
    model, delta = _moved_model(ref, tangent=rung == "R2")
    assert isinstance(model.clip.image, Linearized) == (rung == "R2")
    got = ref.side.measured(model, rung)
    features = np.asarray(model.clip.image_features(jnp.asarray(ref.data.gray_test)))
    after = _zero_shot(features, model.clip.image_proj.weight, ref.class_emb)
    expected = _change(ref.labels, ref.before, after)
    assert expected[1] > 0.01
    assert got["forgetting"] == pytest.approx(expected[0], abs=1e-9)
    assert got["logit_change"] == pytest.approx(expected[1], rel=1e-4)  # float32 logits
    share = _row_share(ref, delta)
    assert 0.1 < share < 0.9
    assert got["task_fraction"] == pytest.approx(share, rel=1e-6)


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


def test_spearman_and_errors_are_against_r4_by_hand():
    """Each rung's Spearman ρ and mean absolute error against R4, by hand, on points where R3
    and R4 rank differently (the rows of ``test_summary_and_verdicts_by_hand`` rank them
    alike)."""
    config = BudgetConfig(objectives=("prompts",), seeds=(0,),
                          strategies=("direct", "static_sd", "wma_sd"), lambda_grid=False)
    values = {"direct": (3, 1, 1, 1, 1, 3), "static_sd": (2, 2, 2, 2, 2, 1),
              "wma_sd": (1, 3, 3, 3, 4, 2)}
    rows = [_row("prompts", name, 0, dict(zip(RUNGS, v, strict=True)))
            for name, v in values.items()]
    s = summarize(rows, config)["prompts"]
    # ranks against R4's (3, 1, 2): R0 (3, 2, 1): Σd² = 2, ρ = 1 − 6·2/(3·8) = 0.5; the other
    # rungs (1, 2, 3): Σd² = 6, ρ = −0.5
    assert s["spearman_with_R4"]["R0"] == pytest.approx(0.5)
    for rung in ("R0'", "R1", "R2", "R3"):
        assert s["spearman_with_R4"][rung] == pytest.approx(-0.5), rung
    # |R3 − R4|: (2, 1, 2); |R0 − R4|: (0, 1, 1)
    assert s["mean_abs_error"]["R3"] == pytest.approx(5 / 3)
    assert s["mean_abs_error"]["R0"] == pytest.approx(2 / 3)
    assert s["mean_abs_error"]["R4"] == 0


def test_quick_budget_end_to_end_and_resume(budget_run, small, monkeypatch, capsys):
    """The study's fields and files; resuming reads every finished run and the closed forms
    back: nothing trains, no file is rewritten, the same summary."""
    out, payload = budget_run.out, budget_run.payload
    assert [r["point"] for r in payload["rows"]] == [E2E_STRATEGY]
    row = payload["rows"][0]
    for rung in RUNGS:
        assert np.isfinite(row[rung]["forgetting"]), rung
        assert row[rung]["logit_change"] > 0, rung
    for rung in ("R0'", "R2", "R3", "R2gd"):
        assert 0 <= row[rung]["task_fraction"] <= 1 + 1e-9, rung
    # the closed form lies in the row space of J (measured: the share of its Δθ)
    assert row["R0'"]["task_fraction"] == pytest.approx(1.0, abs=1e-9)
    # gradient descent keeps the tangent model's change in the row space of J (up to the
    # product of the projection's and the encoder's changes); AdamW does not
    assert row["R2gd"]["task_fraction"] > 0.99
    assert row["R2gd"]["task_fraction"] > row["R2"]["task_fraction"]
    assert row["R2gd"]["curvature"] > 0
    spectrum = payload["spectra"]["0"]
    assert spectrum["size"] == N_QUICK * DIM and 0 < spectrum["rank"] <= spectrum["size"]
    assert payload["verdicts"] and "mean |rung − R4|" in budget_run.text
    assert (out / "figures" / "budget_toy_quick.png").exists()
    stamps = sorted(p.stat().st_mtime_ns for p in (out / "budget_toy_quick").rglob("*.json"))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    _quick_tiny(monkeypatch, small[1])
    monkeypatch.setattr(budget, "finetune", no_training)
    assert cli.main(budget_run.argv) == 0
    again = json.loads((out / "budget_toy_quick.json").read_text())
    assert again["summary"] == payload["summary"]
    assert sorted(p.stat().st_mtime_ns
                  for p in (out / "budget_toy_quick").rglob("*.json")) == stamps
    capsys.readouterr()


def test_trained_rungs_train_what_they_name(budget_run, ref):
    """Each trained rung's run against its definition: R1 the last-layer model (the encoder
    kept, the projection trained), R2 the tangent model (expanded at θ⁰, only Δθ trained), R3
    the network from θ⁰, all on the closed forms' n images (``data.sample(n)``); R4 on every
    finetuning image; the control the tangent model by gradient descent (its step:
    ``test_gradient_descent_control_step_is_its_recorded_curvature_self_consistency``)."""
    runs = budget_run.runs
    data, pretrained = ref.data, ref.model
    assert sorted(runs) == sorted(["R1", "R2", "R3", "R4", "R2gd"])
    strategy = REGISTRY[E2E_STRATEGY].strategy
    sample = data.sample(N_QUICK)
    for rung, run in runs.items():
        index = slice(None) if rung == "R4" else sample
        np.testing.assert_array_equal(run.images, data.color_train[index], err_msg=rung)
        np.testing.assert_array_equal(run.labels, data.train_labels[index], err_msg=rung)
        assert run.training.steps == STEPS
    for rung in ("R1", "R3", "R4"):  # from θ⁰, the real network
        assert not any(_moved(pretrained, runs[rung].model)), rung
    # R1: the features fixed, the projection (the last layer) trained
    assert not any(_moved(pretrained.clip.image, runs["R1"].trained.clip.image))
    assert all(_moved(pretrained.clip.image_proj, runs["R1"].trained.clip.image_proj))
    assert any(_moved(pretrained.clip.image, runs["R3"].trained.clip.image))
    for rung in ("R2", "R2gd"):  # the tangent model at θ⁰: only Δθ moves
        image, trained = runs[rung].model.clip.image, runs[rung].trained.clip.image
        assert isinstance(image, Linearized) and isinstance(trained, Linearized), rung
        assert not any(_moved(pretrained.clip.image, image.at_primal())), rung
        assert not any(_moved(image.primal, trained.primal)), rung
        assert any(np.any(leaf != 0) for leaf in jax.tree.leaves(trained.delta)), rung
    assert runs["R2"].strategy == strategy and runs["R3"].strategy == strategy
    control = runs["R2gd"].strategy
    assert isinstance(control, GradientDescent) and control.strategy == strategy


def test_measured_rungs_are_numpy_zero_shot_of_the_trained_models(budget_run, ref):
    """Every trained rung's forgetting and logit change against the gray zero-shot logits of
    the model it trained, in NumPy (its features and projection, the pretrained class
    embeddings), from the pretrained model's."""
    for rung, run in budget_run.runs.items():
        features = run.trained.clip.image_features(jnp.asarray(ref.data.gray_test))
        after = _zero_shot(features, run.trained.clip.image_proj.weight, ref.class_emb)
        expected = _change(ref.labels, ref.before, after)
        assert ref.row[rung]["forgetting"] == pytest.approx(expected[0], abs=1e-9), rung
        assert ref.row[rung]["logit_change"] == pytest.approx(expected[1], rel=1e-4), rung


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


def test_gradient_descent_control_step_is_its_recorded_curvature_self_consistency(budget_run):
    """Self-consistency (the code's step against the code's recorded curvature): the control's
    gradient-descent step ``lr_scale · lr`` is ``1/curvature``, half the stability bound
    ``2/|λ|_max``; ``curvature`` itself is checked against the explicit Hessian just below."""
    run = budget_run.runs["R2gd"]
    curvature = budget_run.payload["rows"][0]["R2gd"]["curvature"]
    assert run.strategy.lr_scale * run.training.lr == pytest.approx(1 / curvature, rel=1e-12)


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
