"""Forgetting against task fit (THEORY §7): the quadratic forms, the oracle frontier against a
brute-force constrained optimizer, every strategy on or above it, replay-SD's closed form
against gradient descent and against the frontier over all encoders, gradients of the designed
teachers against finite differences, and the refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from hypothesis import given, settings, strategies as st

import tracer_theory as tt

FAST = settings(max_examples=2, deadline=None, derandomize=True)
LAMS = jnp.logspace(-2, 2, 9)


def problem(seed=0, d=12, n=6, m=20, decay=0.7):
    return tt.random_problem(d, n, 5, 3, m_pre=m, decay=decay, seed=seed)


def brute_force_filters(t: tt.Tradeoff, level: float) -> float:
    """min fᵀAf s.t. floor + ½Σd(1−f)² ≤ level, by SLSQP from several starts (both sides
    scaled to order one)."""
    a, d, floor = np.asarray(t.a), np.asarray(t.d), float(t.floor)
    scale_a, scale_l = np.trace(a), level - floor
    cons = {"type": "ineq",
            "fun": lambda f: (level - floor - 0.5 * np.sum(d * (1 - f) ** 2)) / scale_l,
            "jac": lambda f: d * (1 - f) / scale_l}
    runs = [scipy.optimize.minimize(lambda f: f @ a @ f / scale_a, x0,
                                    jac=lambda f: 2 * a @ f / scale_a, constraints=[cons],
                                    method="SLSQP", options={"ftol": 1e-15, "maxiter": 5000})
            for x0 in (np.full(d.size, 0.5), np.ones(d.size), np.zeros(d.size))]
    feasible = [r.fun for r in runs if r.success or cons["fun"](r.x) > -1e-9]
    return min(feasible) * scale_a


def test_quadratic_forms_are_the_encoder_metrics():
    p = problem(seed=1)
    t = tt.tradeoff(p)
    for strategy in (tt.DirectFT(), tt.L2SP(0.3), tt.StaticSD(2.0), tt.StoppedGD(7, 0.1)):
        f = tt.filter_factors(p, strategy)
        w = tt.solve(p, strategy)
        np.testing.assert_allclose(t.task_loss(f), tt.task_loss(p, w), rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(t.forgetting(f), tt.forgetting(p, w), rtol=1e-11,
                                   atol=1e-12)
    # A hand-computed encoder: forgetting is ‖(W − W⁰) X_pre‖² by definition.
    w = p.w0 + 0.01 * jnp.arange(p.w0.size).reshape(p.w0.shape)
    np.testing.assert_allclose(tt.forgetting(p, w),
                               np.sum(((np.asarray(w) - np.asarray(p.w0)) @ p.x_pre) ** 2))


@pytest.mark.parametrize("seed,shape", [(0, (12, 6, 20)), (1, (5, 9, 4)), (2, (8, 8, 3))])
def test_oracle_matches_a_constrained_optimizer(seed, shape):
    d, n, m = shape
    p = problem(seed=seed, d=d, n=n, m=m)
    t, front = tt.tradeoff(p), tt.frontier(p)
    curve = tt.oracle_frontier(p, 7)
    for level in np.asarray(curve.task_loss)[1:-1]:
        expected = brute_force_filters(t, level)
        np.testing.assert_allclose(tt.oracle_forgetting(front, level), expected, rtol=1e-6,
                                   atol=1e-9 * float(curve.forgetting[0]))
    # The oracle's own filters reach its (task loss, forgetting).
    nu = curve.param[3]
    f = front.filters(nu)
    np.testing.assert_allclose(t.task_loss(f), curve.task_loss[3], rtol=1e-9)
    np.testing.assert_allclose(t.forgetting(f), curve.forgetting[3], rtol=1e-9)
    # Ends: Direct FT at the floor, no forgetting at the far end.
    np.testing.assert_allclose(curve.forgetting[0], t.forgetting(jnp.ones_like(t.d)), rtol=1e-9)
    assert float(curve.forgetting[-1]) == 0.0


@FAST
@given(seed=st.integers(0, 2**16), shape=st.sampled_from([(6, 4, 8), (4, 7, 3), (9, 9, 5)]),
       decay=st.floats(0.0, 2.0))
def test_every_filter_strategy_lies_on_or_above_the_oracle(seed, shape, decay):
    d, n, m = shape
    p = tt.random_problem(d, n, 3, 2, m_pre=m, pre_decay=decay, seed=seed, cond=10.0)
    front = tt.frontier(p)
    bound = float(tt.spectrum(p).sigma_max_sq)
    rng = np.random.default_rng(seed)
    families = {
        "l2sp": (tt.L2SP, LAMS),
        "static": (tt.StaticSD, LAMS),
        "stopped": (lambda t: tt.StoppedGD(t, 1.0 / bound), jnp.arange(0, 60, 6)),
        "wma": (lambda lam: tt.TeacherSD(lam, tt.wma_teacher(40), steps=40,
                                         lr=0.5 / (bound * (1 + lam))), LAMS),
        "ema": (lambda lam: tt.TeacherSD(lam, tt.ema_teacher(0.9), steps=40,
                                         lr=0.5 / (bound * (1 + lam))), LAMS),
        "directional": (lambda s: tt.DirectionalSD(s * rng.uniform(0, 3, min(d, n))), LAMS),
    }
    curves = tt.pareto(p, {k: v[0] for k, v in families.items()},
                       {k: v[1] for k, v in families.items()})
    for name, curve in curves.items():
        best = tt.oracle_forgetting(front, jnp.maximum(curve.task_loss, front.floor))
        slack = 1e-9 * float(jnp.max(curve.forgetting)) + 1e-12
        assert np.all(np.asarray(curve.forgetting) >= np.asarray(best) - slack), name


def test_replay_sd_closed_form_is_gradient_descent_and_reduces_to_static_sd():
    p = problem(seed=4)
    for lam in (0.0, 0.7, 5.0):
        w = tt.solve(p, tt.ReplaySD(lam))
        hessian = p.x_img @ p.x_img.T + lam * p.x_pre @ p.x_pre.T
        lr = 1.9 / float(jnp.linalg.eigvalsh(hessian)[-1])
        gd = tt.gradient_descent(p, tt.ReplaySD(lam), steps=100_000, lr=lr)
        np.testing.assert_allclose(w, gd, rtol=0, atol=1e-9 * float(jnp.abs(w).max()))
        same = p.with_pretraining(p.x_img)
        np.testing.assert_allclose(tt.solve(same, tt.ReplaySD(lam)),
                                   tt.solve(same, tt.StaticSD(lam)), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="not a per-direction filter"):
        tt.filter_factors(p, tt.ReplaySD(1.0))


def test_replay_sd_is_the_frontier_over_all_encoders():
    p = problem(seed=5, d=5, n=3, m=4)
    replay = tt.pareto(p, tt.ReplaySD, LAMS)
    ratio = tt.frontier_ratio(p, replay)
    assert np.all(np.asarray(ratio) <= 1 + 1e-9)  # never above the filters' frontier
    # Brute force over every encoder W at replay's task loss: no W forgets less.
    x, x_pre, w0 = (np.asarray(a) for a in (p.x_img, p.x_pre, p.w0))
    y = np.asarray(tt.contrastive_target(p))
    for level, forgot in zip(np.asarray(replay.task_loss)[2:7], np.asarray(replay.forgetting)[2:7],
                             strict=True):
        def fit(v):
            return 0.5 * np.sum(((w0 + v.reshape(w0.shape)) @ x - y) ** 2)

        best = scipy.optimize.minimize(
            lambda v: np.sum((v.reshape(w0.shape) @ x_pre) ** 2), np.zeros(w0.size),
            constraints=[{"type": "ineq", "fun": lambda v, level=level: level - fit(v)}],
            method="SLSQP", options={"ftol": 1e-14, "maxiter": 3000})
        assert best.success
        np.testing.assert_allclose(best.fun, forgot, rtol=1e-5)


T = 30
FAMILIES = [tt.StaticFamily(), tt.BetaFamily(T), tt.GridFamily(T, knots=5), tt.EMAFamily(T),
            tt.ScheduledEMAFamily(T, warmup_steps=10), tt.DirectionalFamily()]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: type(f).__name__)
def test_design_gradients_match_finite_differences(family):
    from tracer_theory.dynamics.design import metrics

    p = problem(seed=6)
    spec, trade = tt.spectrum(p), tt.tradeoff(p)
    params = jax.tree.map(lambda v: v + 0.1 * jnp.cos(jnp.arange(v.size).reshape(v.shape)),
                          family.init(int(spec.s.shape[0])))
    for which in (0, 1):  # task loss, forgetting
        value = jax.jit(lambda q, which=which: metrics(family, q, spec, trade)[which])

        grads = jax.grad(value)(params)
        for key, v in params.items():
            flat = np.asarray(v).ravel()
            for i in range(flat.size):
                h = 1e-5

                def at(delta, key=key, i=i, flat=flat, shape=v.shape, value=value):
                    moved = flat.copy()
                    moved[i] += delta
                    return float(value({**params, key: jnp.asarray(moved.reshape(shape))}))

                fd = (at(h) - at(-h)) / (2 * h)
                np.testing.assert_allclose(np.asarray(grads[key]).ravel()[i], fd, rtol=1e-6,
                                           atol=1e-8 * abs(float(value(params))))


def test_spectral_dynamics_is_differentiable_in_the_kernel():
    p = problem(seed=7)
    lr = 0.5 / float(tt.spectrum(p).sigma_max_sq * 2)

    def loss(v):
        schedule = tt.kernel_teacher(T, tt.GridKernel(v))
        return tt.spectral_dynamics(p, 1.0, schedule, steps=T, lr=lr).summary.loss[-1]

    v = jnp.array([0.3, -0.2, 0.5])
    grad = jax.grad(loss)(v)
    for i in range(3):
        e = jnp.zeros(3).at[i].set(1e-5)
        np.testing.assert_allclose(grad[i], (loss(v + e) - loss(v - e)) / 2e-5, rtol=1e-6)


def test_design_lowers_forgetting_at_the_target_and_stays_above_the_oracle():
    p = problem(seed=8)
    t = tt.tradeoff(p)
    target = float(t.task_loss(tt.filter_factors(p, tt.StaticSD(1.0))))
    static = tt.design(p, tt.StaticFamily(), target, steps=5)
    beta = tt.design(p, tt.BetaFamily(40), target, steps=30)
    for result in (static, beta):
        assert result.ratio >= 1 - 1e-9
        assert result.task_loss <= target * (1 + 1e-3)
    np.testing.assert_allclose(static.forgetting, t.forgetting(tt.filter_factors(
        p, tt.StaticSD(1.0))), rtol=1e-3)
    assert beta.forgetting <= beta.history[0, 1]  # never worse than where it started


def test_refusals():
    p = problem()
    with pytest.raises(ValueError, match="x_pre has d_I = 3 rows"):
        p.with_pretraining(np.ones((3, 4)))
    with pytest.raises(ValueError, match="x_pre contains NaN"):
        p.with_pretraining(np.full((12, 4), np.nan))
    with pytest.raises(ValueError, match="no pretraining features"):
        tt.forgetting(tt.random_problem(4, 3, 2, 2), jnp.zeros((2, 4)))
    front = tt.frontier(p)
    with pytest.raises(ValueError, match="at least the unregularized optimum"):
        tt.oracle_forgetting(front, float(front.floor) - 1.0)
    with pytest.raises(ValueError, match="strictly between the unregularized optimum"):
        tt.design(p, tt.StaticFamily(), float(front.floor) - 1.0)
    with pytest.raises(ValueError, match="n_points must be an int >= 2"):
        tt.oracle_frontier(p, 1)
    with pytest.raises(ValueError, match="non-empty 1-D array"):
        tt.pareto(p, tt.L2SP, jnp.ones((2, 2)))


def test_quick_study_end_to_end(tmp_path, capsys):
    import json

    from tracer_theory.cli import main

    assert main(["pareto", "--quick", "--quiet", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "pareto.json").read_text())
    (name, r), = payload["problems"].items()
    assert (tmp_path / "figures" / "pareto.png").exists()
    # Every filter strategy at the target sits on or above the oracle; replay-SD below.
    for point in [*r["at_target"].values(), *r["designed"].values()]:
        if "oracle" in point:
            assert point["ratio"] >= 1 - 1e-9
    assert r["at_target"]["replay_sd"]["ratio"] <= 1 + 1e-9
    # The sentences carry the numbers they state.
    lines = payload["verdicts"][name]
    assert f"{r['at_target']['wma_sd']['ratio']:.2f}×" in lines[0]
    assert f"{r['designed']['grid']['ratio']:.2f}×" in lines[1]
    assert "replay sd" in capsys.readouterr().out.lower()  # the registry's label
    assert main(["pareto", "--quick", "--design-steps", "0", "--out", str(tmp_path)]) == 2
    assert main(["pareto", "--quick", "--random", "spiky", "--out", str(tmp_path)]) == 2
