"""Forgetting against task fit (THEORY §7): the quadratic forms, the oracle frontier against a
brute-force constrained optimizer, every strategy on or above it, replay-SD's closed form
against gradient descent and against the frontier over all encoders, gradients of the designed
teachers against finite differences, and the refusals. (The designs themselves against
brute-force optima: test_design_reference.py; the dynamics' gradients in the kernel:
test_fast_paths.py; the study ``tracer-theory pareto``: test_pareto_reference.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import tracer_theory as tt

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


def test_every_filter_strategy_lies_on_or_above_the_oracle():
    """One problem with more samples than features and fewer pretraining features than
    features (a direction X_pre misses: free for the oracle)."""
    d, n, m = 4, 7, 3
    p = tt.random_problem(d, n, 3, 2, m_pre=m, pre_decay=1.5, seed=11, cond=10.0)
    front = tt.frontier(p)
    bound = float(tt.spectrum(p).sigma_max_sq)
    rng = np.random.default_rng(11)
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
# The free-form kernel's gradient in its log-values (the kernel teacher's path the Beta family
# shares) is checked against finite differences in test_fast_paths.py and analytically in
# test_reliability_dynamics.py; the designed free-form kernel against the recursion in
# test_pareto_reference.py.
FAMILIES = [tt.StaticFamily(), tt.BetaFamily(T), tt.EMAFamily(T),
            tt.ScheduledEMAFamily(T, warmup_steps=10), tt.DirectionalFamily()]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: type(f).__name__)
def test_design_gradients_match_finite_differences(family):
    """Reverse-mode gradients of (task loss, forgetting) against central differences."""
    from jax.flatten_util import ravel_pytree

    from tracer_theory.dynamics.design import metrics

    p = problem(seed=6)
    spec, trade = tt.spectrum(p), tt.tradeoff(p)
    params = jax.tree.map(lambda v: v + 0.1 * jnp.cos(jnp.arange(v.size).reshape(v.shape)),
                          family.init(int(spec.s.shape[0])))
    flat, unravel = ravel_pytree(params)
    both = jax.jit(lambda v: jnp.stack(metrics(family, unravel(v), spec, trade)))
    jacobian = np.asarray(jax.jit(jax.jacrev(both))(flat))  # (2, parameters)
    h = 1e-5
    fd = np.stack([(both(flat + e) - both(flat - e)) / (2 * h) for e in h * np.eye(flat.size)])
    for which, value in enumerate(np.asarray(both(flat))):  # task loss, forgetting
        np.testing.assert_allclose(jacobian[which], fd[:, which], rtol=1e-6,
                                   atol=1e-8 * abs(value))


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


def test_a_traced_grid_is_checked_when_the_computation_runs_and_holds_no_host_callback():
    """A concrete grid is checked value by value before compiling; a traced one by the
    strategies' own checks, collected in the compiled points (no run-time check inside them,
    which would keep the program out of the persistent cache) and raised after."""
    from tracer_theory.linear.pareto import _points

    p = problem()
    curve = jax.jit(lambda g: tt.pareto(p, tt.L2SP, g).forgetting)
    np.testing.assert_allclose(curve(jnp.array([0.5, 2.0])),
                               tt.pareto(p, tt.L2SP, [0.5, 2.0]).forgetting, rtol=1e-12)
    with pytest.raises(Exception, match=r"pareto: strategies refuses a value of grid"):
        jax.block_until_ready(curve(jnp.array([0.5, -2.0])))
    lowered = _points.lower(p, tt.spectrum(p), tt.L2SP, jnp.array([0.5, 2.0]))
    assert "callback" not in lowered.as_text()
