"""The linear Pareto toolkit at its edges (a user probe's findings, THEORY §7): replay-SD exact
for every λ against high-precision and least-squares references, the oracle frontier and the
frontier ratio defined at their ends, and every bad argument refused before anything compiles
with a ValueError that names it, never a NaN, an Inf or a traceback from inside JAX."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings, strategies as st

import tracer_theory as tt
from tracer_theory.linear import pareto as pareto_module

FEW = settings(max_examples=15, deadline=None, derandomize=True)


def arrays(p):
    """The float64 numpy arrays ``X_I, X_pre, W⁰`` and the residual ``R = Y − W⁰X_I``."""
    x, x_pre, w0 = (np.asarray(a, np.float64) for a in (p.x_img, p.x_pre, p.w0))
    return x, x_pre, w0, np.asarray(tt.contrastive_target(p), np.float64) - w0 @ x


def replay_mpmath(p, lam):
    """``ΔW = R X_Iᵀ (X_I X_Iᵀ + λ X_pre X_preᵀ)⁺`` in mpmath from the float64 data, at enough
    digits for λ: the inverse where ``n + m ≥ d_I``, else restricted to range([X_I, X_pre])
    (where the minimum-norm solution lives, and where the bracket is invertible)."""
    x, x_pre, _, r = arrays(p)
    with mpmath.workdps(40 + max(0, int(np.log10(lam)))):
        mat = lambda a: mpmath.matrix(a.tolist())  # noqa: E731
        hessian = mat(x) * mat(x).T + mpmath.mpf(lam) * mat(x_pre) * mat(x_pre).T
        if x.shape[1] + x_pre.shape[1] >= x.shape[0]:
            step = mat(r) * mat(x).T * hessian**-1
        else:
            basis = mat(np.concatenate([x, x_pre], axis=1))
            step = mat(r) * mat(x).T * basis * (basis.T * hessian * basis)**-1 * basis.T
        return np.array(step.tolist(), dtype=np.float64)


def replay_lstsq(p, lam):
    """The stacked least squares ``ΔW [X_I, √λ X_pre] ≈ [R, 0]`` by numpy (minimum norm)."""
    x, x_pre, w0, r = arrays(p)
    stacked = np.concatenate([x, np.sqrt(lam) * x_pre], axis=1)
    target = np.concatenate([r, np.zeros((w0.shape[0], x_pre.shape[1]))], axis=1)
    return np.linalg.lstsq(stacked.T, target.T, rcond=None)[0].T


def replay_limit(p):
    """λ → ∞: the least squares fit of ``R`` by ``ΔW X_I`` under ``ΔW X_pre = 0`` (the rank of
    ``X_pre`` judged at the problem's precision)."""
    x, x_pre, _, r = arrays(p)
    rcond = max(x_pre.shape) * float(jnp.finfo(p.dtype).eps)
    free = scipy.linalg.null_space(x_pre.T, rcond=rcond)  # (d_I, d_I − rank X_pre)
    return r @ np.linalg.pinv(free.T @ x) @ free.T


def without_w0(p):
    """``p`` with ``W⁰ = 0``: a solver's ``W`` is then ``ΔW`` itself, so its relative error
    shows however small ``ΔW`` gets (with ``W⁰ ≠ 0`` the sum ``W⁰ + ΔW`` rounds it away)."""
    return tt.LinearProblem(p.x_img, p.x_txt, jnp.zeros_like(p.w0), p.w_txt, x_pre=p.x_pre)


def user_problem(dtype="float64"):
    """The probe's case: d_I = 20, n = 8 and X_pre (20, 30) of rank 5."""
    p = tt.random_problem(20, 8, 5, 3, seed=0, dtype=dtype)
    rng = np.random.default_rng(1)
    return p.with_pretraining((rng.standard_normal((20, 5)) @ rng.standard_normal((5, 30)))
                              .astype(dtype))


def refuses(match, fn, *args, error=ValueError, **kwargs):
    with pytest.raises(error, match=match) as info:
        fn(*args, **kwargs)
    return str(info.value)


# --- 1. replay-SD: exact for every λ -------------------------------------------------------

@FEW
@given(seed=st.integers(0, 2**16), shape=st.sampled_from([(6, 4, 3), (7, 2, 3)]),
       log_lam=st.floats(-6, 15), pre_decay=st.floats(0.0, 1.5),
       scales=st.sampled_from([(1.0, 1.0), (1e-4, 1.0), (1e4, 1e-3), (1.0, 1e5)]))
def test_replay_sd_matches_a_high_precision_reference(seed, shape, log_lam, pre_decay, scales):
    d, n, m = shape
    p = tt.random_problem(d, n, 3, 2, m_pre=m, seed=seed, pre_decay=pre_decay, cond=10.0)
    x_scale, pre_scale = scales  # X_I and X_pre far from unit scale, and from each other
    p = without_w0(tt.LinearProblem(p.x_img * x_scale, p.x_txt, p.w0, p.w_txt,
                                    x_pre=p.x_pre * pre_scale))
    lam = 10.0**log_lam
    expected = replay_mpmath(p, lam)
    got = np.asarray(tt.solve(p, tt.ReplaySD(lam)))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9 * np.abs(expected).max())


@pytest.mark.parametrize("lam", [1e30, 1e100, 1e300])
def test_replay_sd_stays_exact_at_huge_lambda(lam):
    # X_pre of full rank: ΔW ~ 1/λ, accurate relative to itself.
    p = without_w0(tt.random_problem(5, 3, 3, 2, m_pre=7, seed=3, cond=10.0))
    expected = replay_mpmath(p, lam)
    np.testing.assert_allclose(tt.solve(p, tt.ReplaySD(lam)), expected, rtol=0,
                               atol=1e-11 * np.abs(expected).max())


def test_replay_sd_fits_the_task_where_the_pseudo_inverse_returned_w0():
    # d_I = 20 ≥ n + rank X_pre = 13: for every λ > 0 the minimizer fits the task exactly with
    # ΔW X_pre = 0, the λ → ∞ limit; the minimum-norm one is the constrained fit.
    p = user_problem()
    w0_loss = float(tt.task_loss(p, p.w0))  # 103.1: what ReplaySD(1e14) used to return
    limit = replay_limit(p)
    for lam in (1.0, 1e12, 1e14, 1e300):
        w = tt.solve(p, tt.ReplaySD(lam))
        assert float(tt.task_loss(p, w)) <= 1e-20 * w0_loss
        assert float(tt.forgetting(p, w)) <= 1e-20 * w0_loss
        np.testing.assert_allclose(np.asarray(w) - np.asarray(p.w0), limit, rtol=0,
                                   atol=1e-12 * np.abs(limit).max())
    # numpy's stacked least squares agrees to its own accuracy there (≈ 1e-7 at λ = 1e14)
    np.testing.assert_allclose(limit, replay_lstsq(p, 1e14), rtol=0,
                               atol=1e-6 * np.abs(limit).max())
    # float32: ReplaySD(1e5) used to return W⁰ too
    p32 = user_problem("float32")
    w = tt.solve(p32, tt.ReplaySD(1e5))
    assert w.dtype == jnp.float32
    assert float(tt.task_loss(p32, w)) <= 1e-8 * w0_loss


@FEW
@given(seed=st.integers(0, 2**16), shape=st.sampled_from([(6, 4, 3), (8, 5, 12)]),
       log_lam=st.floats(-3, 6))
def test_replay_sd_in_float32_matches_float64_least_squares(seed, shape, log_lam):
    d, n, m = shape
    p = tt.random_problem(d, n, 3, 2, m_pre=m, seed=seed, dtype="float32", cond=10.0,
                          pre_decay=0.5)
    lam = 10.0**log_lam
    w = tt.solve(p, tt.ReplaySD(lam))
    assert w.dtype == jnp.float32
    expected = np.asarray(p.w0, np.float64) + replay_lstsq(p, lam)
    scale = np.abs(expected).max()  # the problem's scale: W⁰ plus the move
    np.testing.assert_allclose(np.asarray(w, np.float64), expected, rtol=0, atol=1e-5 * scale)


def test_replay_sd_lambda_beyond_the_dtype_is_the_limit():
    p = user_problem("float32")
    w = tt.solve(p, tt.ReplaySD(1e300))  # λ > float32's max: the λ → ∞ limit, not Inf/NaN
    limit = np.asarray(p.w0, np.float64) + replay_limit(p)
    np.testing.assert_allclose(np.asarray(w, np.float64), limit, rtol=0,
                               atol=1e-4 * np.abs(limit).max())
    # a float64 λ array keeps a float32 problem float32
    assert tt.solve(p, tt.ReplaySD(jnp.asarray(2.0, jnp.float64))).dtype == jnp.float32


def test_replay_sd_stays_differentiable():
    p = tt.random_problem(8, 5, 3, 2, m_pre=6, seed=1, cond=10.0)

    def value(lam, x_pre):
        w = tt.solve(p.with_pretraining(x_pre), tt.ReplaySD(lam))
        return tt.task_loss(p, w) + tt.forgetting(p, w)

    lam, h = 10.0, 1e-6
    grad_lam, grad_pre = jax.grad(value, argnums=(0, 1))(lam, p.x_pre)
    fd = (value(lam + h, p.x_pre) - value(lam - h, p.x_pre)) / (2 * h)
    np.testing.assert_allclose(grad_lam, fd, rtol=1e-6)
    e = jnp.zeros_like(p.x_pre).at[1, 2].set(h)
    fd = (value(lam, p.x_pre + e) - value(lam, p.x_pre - e)) / (2 * h)
    np.testing.assert_allclose(grad_pre[1, 2], fd, rtol=1e-6)


# --- 2. the frontier ratio at its ends --------------------------------------------------------

WEIGHTS = jnp.linspace(0.5, 2.0, 5)
FAMILIES = {  # every linear strategy, each grid (of one length: one compiled ratio) reaching
    "direct": (lambda v: tt.DirectFT(), [0.0, 0.0, 0.0, 0.0]),  # its extremes
    "static": (tt.StaticSD, [0.0, 1e-3, 1e3, 1e300]),
    "l2sp": (tt.L2SP, [0.0, 1.0, 1e15, 1e300]),
    "weight_decay": (tt.WeightDecay, [1e-300, 1e-3, 1.0, 1e300]),
    "stopped": (lambda t: tt.StoppedGD(t, 0.5), [0, 1, 10, 100]),  # σ_max = 1 (cond=)
    "replay": (tt.ReplaySD, [0.0, 1e-3, 1e3, 1e300]),
    "directional": (lambda s: tt.DirectionalSD(s * WEIGHTS), [0.0, 1.0, 1e3, 1e300]),
    "teacher": (lambda lam: tt.TeacherSD(lam, tt.ema_teacher(0.9), steps=5, lr=0.5 / (1 + lam)),
                [0.0, 1.0, 10.0, 1e3]),
}
FILTERS = ("direct", "static", "l2sp", "stopped", "directional", "teacher")


def test_frontier_ratio_is_one_where_both_forget_nothing():
    p = tt.random_problem(8, 5, 3, 2, m_pre=6, seed=0, cond=10.0)  # σ_max = 1
    stopped, _ = FAMILIES["stopped"]  # lr = 0.5
    front = tt.frontier(p)
    # (λ = 1e12: far into the tail, still resolved, not rounded to the end)
    for family, grid, end in ((stopped, [0, 3, 20], 0), (tt.L2SP, [0.1, 1e12, 1e300], 2)):
        curve = tt.pareto(p, family, grid)
        ratio = np.asarray(tt.frontier_ratio(front, curve))
        assert ratio[end] == 1.0  # W⁰ itself (0 steps, λ = 1e300): on the frontier's end
        inner = np.array([i for i in range(3) if i != end])  # the direct formula elsewhere
        best = tt.oracle_forgetting(front, curve.task_loss[inner])
        np.testing.assert_allclose(ratio[inner], curve.forgetting[inner] / best, rtol=1e-12)
        assert np.all(ratio >= 1 - 1e-9)
    # X_pre = 0: nothing ever forgets, every ratio is 1
    zero = p.with_pretraining(np.zeros((8, 6)))
    for family, grid in ((tt.L2SP, [0.0, 1.0, 1e300]), (tt.ReplaySD, [0.0, 1.0, 1e300]),
                         (stopped, [0, 5])):
        np.testing.assert_array_equal(tt.frontier_ratio(zero, tt.pareto(zero, family, grid)),
                                      1.0)


def test_frontier_ratio_where_x_pre_misses_the_task():
    # X_pre orthogonal to range(X_I): the oracle never forgets; filters don't either, but
    # weight decay (anchored at 0) moves W⁰ on X_pre.
    p = tt.random_problem(8, 3, 4, 2, seed=2)
    x = np.asarray(p.x_img)
    rng = np.random.default_rng(0)
    x_pre = (np.eye(8) - x @ np.linalg.pinv(x)) @ rng.standard_normal((8, 5))
    p = p.with_pretraining(x_pre)
    front = tt.frontier(p)
    np.testing.assert_array_equal(front.kappa, 0.0)  # not round-off: exactly no cost
    np.testing.assert_array_equal(tt.frontier_ratio(p, tt.pareto(p, tt.L2SP, [0.5, 2.0])), 1.0)
    decay = tt.pareto(p, tt.WeightDecay, [0.5, 2.0])
    ratio = np.asarray(tt.frontier_ratio(front, decay))  # forgetting / its round-off: huge
    assert np.all(np.isfinite(ratio)) and np.all(ratio > 1e20)
    # with nothing to resolve against, the infinite ratio is refused naming the point
    blind = eqx.tree_at(lambda f: f.forgetting_scale, front, jnp.zeros(()))
    message = refuses("forgets where the oracle forgets nothing", tt.frontier_ratio, blind,
                      decay)
    assert message.startswith("frontier_ratio: curve point [0]")




@settings(max_examples=5, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), rank=st.sampled_from([2, 6]), pre_decay=st.floats(0, 2))
def test_frontier_ratio_is_finite_for_every_strategy_family(seed, rank, pre_decay):
    p = tt.random_problem(8, 5, 3, 2, m_pre=6, seed=seed, cond=10.0, pre_decay=pre_decay)
    p = p.with_pretraining(p.x_pre.at[:, rank:].set(0.0))  # rank 2: free task directions
    front = tt.frontier(p)
    curves = tt.pareto(p, {k: f for k, (f, _) in FAMILIES.items()},
                       {k: g for k, (_, g) in FAMILIES.items()})
    for name, curve in curves.items():
        ratio = np.asarray(tt.frontier_ratio(front, curve))
        assert np.all(np.isfinite(ratio)), name
        if name in FILTERS:  # on or above the oracle, within round-off near its end
            assert np.all(ratio >= 1 - 1e-6), (name, ratio)
        if name == "replay":  # the frontier over all encoders: on or below it
            assert np.all(ratio <= 1 + 1e-9), ratio


# --- 3. the oracle frontier spans its stated range --------------------------------------------

@pytest.mark.parametrize("n_points", [2, 3, 4, 7])
def test_oracle_frontier_spans_direct_ft_to_the_least_forgetting_point(prob, n_points):
    p = prob
    curve = tt.oracle_frontier(p, n_points)
    assert curve.task_loss.shape == (n_points,)
    direct = tt.solve(p, tt.DirectFT())
    np.testing.assert_allclose(curve.task_loss[0], tt.task_loss(p, direct), atol=1e-12)
    np.testing.assert_allclose(curve.forgetting[0], tt.forgetting(p, direct), rtol=1e-12)
    np.testing.assert_allclose(curve.task_loss[-1], tt.task_loss(p, p.w0), rtol=1e-12)
    assert float(curve.forgetting[-1]) == 0.0
    assert np.all(np.diff(np.asarray(curve.task_loss)) >= 0)
    assert np.all(np.diff(np.asarray(curve.forgetting)) <= 1e-12)
    assert float(curve.param[0]) == 0.0 and float(curve.param[-1]) == np.inf  # documented


def test_oracle_frontier_ends_where_free_directions_are_fitted():
    # X_pre orthogonal to the first task direction u_1: fitting it costs no forgetting, so the
    # least-forgetting point is W⁰ moved by Direct FT along u_1, below W⁰'s task loss.
    p = tt.random_problem(10, 5, 4, 3, seed=4, cond=5.0)
    spec = tt.spectrum(p)
    u1 = np.asarray(spec.u[:, 0])
    rng = np.random.default_rng(1)
    p = p.with_pretraining((np.eye(10) - np.outer(u1, u1)) @ rng.standard_normal((10, 30)))
    c1 = np.asarray((tt.contrastive_target(p) - p.w0 @ p.x_img) @ spec.v[:, 0]) / spec.s[0]
    free_fit = tt.task_loss(p, p.w0 + jnp.outer(c1, u1))
    curve = tt.oracle_frontier(p, 5)
    np.testing.assert_allclose(curve.task_loss[-1], free_fit, rtol=1e-10)
    assert float(curve.task_loss[-1]) < float(tt.task_loss(p, p.w0))
    assert float(curve.forgetting[-1]) == 0.0


# --- 4–8. every bad argument is refused, naming it --------------------------------------------

@pytest.fixture(scope="module")
def prob():
    return tt.random_problem(8, 5, 3, 2, m_pre=6, seed=0, cond=10.0)  # σ_max = 1


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan, [1.0, np.nan], [2.0, np.inf]])
def test_oracle_forgetting_shows_the_value_given(prob, value):
    shown = "nan" if np.isnan(np.asarray(value, float)).any() else "inf"
    message = refuses("task_loss", tt.oracle_forgetting, prob, value)
    assert message.endswith(f"got {'-' if np.all(np.asarray(value) == -np.inf) else ''}{shown}")
    if np.ndim(value):
        assert message.startswith("task_loss[1] must be finite")


@pytest.mark.parametrize(("lams", "match"), [
    (jnp.array([1 + 1j, 2.0]), "lams must be real numbers, got dtype complex"),
    ("abc", "lams must be real numbers"),
    (None, "lams must be real numbers"),
    (jnp.array([True, False]), "lams must be real numbers, got dtype bool"),
    (jnp.zeros((0,)), re.escape("lams must be a non-empty 1-D array, got shape (0,)")),
    (jnp.ones((2, 2)), re.escape("lams must be a non-empty 1-D array, got shape (2, 2)")),
    (jnp.array([1.0, -1.0]), re.escape("lams[1] must be finite and >= 0, got -1.0")),
    (jnp.array([1.0, jnp.nan]), re.escape("lams[1] must be finite and >= 0, got nan")),
])
def test_directional_sd_refuses_bad_lams(lams, match):
    refuses(match, tt.DirectionalSD, lams)


def test_directional_sd_of_the_wrong_length_is_refused_everywhere(prob):
    wrong = tt.DirectionalSD(jnp.ones(3))
    match = re.escape("lams has 3 entries but the problem has 5 task directions")
    lr = 0.1 / float(tt.spectrum(prob).sigma_max_sq)
    for fn, args, kwargs in [(tt.solve, (prob, wrong), {}),
                             (tt.filter_factors, (prob, wrong), {}),
                             (tt.objective, (prob, wrong, prob.w0), {}),
                             (tt.gradient_descent, (prob, wrong), dict(steps=3, lr=lr)),
                             (tt.pareto, (prob, lambda s: tt.DirectionalSD(s * jnp.ones(3)),
                                          [1.0]), {})]:
        refuses(match, fn, *args, **kwargs)
    # integer λ are real numbers: the same strategy as floats
    np.testing.assert_array_equal(tt.solve(prob, tt.DirectionalSD(jnp.arange(5))),
                                  tt.solve(prob, tt.DirectionalSD(jnp.arange(5.0))))


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(m_pre=3, pre_decay="1"), "pre_decay must be a real number, got '1'"),
    (dict(pre_decay=None), "pre_decay must be a real number, got None"),
    (dict(m_pre=3, pre_decay=1j), "pre_decay must be a real number, got 1j"),
    (dict(m_pre=3, pre_decay=-1), "pre_decay must be >= 0 and finite, got -1"),
    (dict(m_pre=3, pre_decay=np.inf), "pre_decay must be >= 0 and finite, got inf"),
    (dict(cond="10"), "cond must be a real number, got '10'"),
    (dict(decay=[1.0]), "decay must be a real number, got [1.0]"),
    (dict(d_img=0), "d_img must be a positive int, got 0"),
    (dict(n=True), "n must be an int, got True"),
    (dict(k=2.0), "k must be an int, got 2.0"),
    (dict(d_txt=np.int64(-2)), "d_txt must be a positive int, got -2"),
    (dict(m_pre=0), "m_pre must be a positive int, got 0"),
    (dict(m_pre="3"), "m_pre must be an int, got '3'"),
    (dict(seed=-1), "seed must be a non-negative int, got -1"),
    (dict(rank=0), "rank must be a positive int, got 0"),
    (dict(rank=4), "rank must be in [1, min(d_img, n) = 3], got 4"),
    (dict(dtype=None), "dtype must be 'float32' or 'float64', got None"),
    (dict(dtype="int32"), "dtype must be 'float32' or 'float64', got 'int32'"),
])
def test_random_problem_refuses_every_bad_argument(kwargs, message):
    refuses(re.escape(message), tt.random_problem, **(dict(d_img=4, n=3, d_txt=2, k=2) | kwargs))


@pytest.fixture
def no_compilation(monkeypatch):
    """Fail if any curve is computed: the grid checks must all come first."""
    def compiled(*args):
        raise AssertionError("a curve was computed before every grid value was checked")

    monkeypatch.setattr(pareto_module, "_points", compiled)


@pytest.mark.parametrize(("family", "grid", "message"), [
    (tt.L2SP, [1.0, -1.0], "grid[1] = -1.0 is refused by strategies: lam must be finite >= 0.0, "
                           "got -1.0"),
    (tt.L2SP, [1.0, np.nan], "grid[1] = nan is refused by strategies: lam must be finite"),
    (tt.ReplaySD, [1.0, np.inf], "grid[1] = inf is refused by strategies: lam must be finite"),
    (tt.WeightDecay, [1.0, 0.0], "grid[1] = 0.0 is refused by strategies: lam must be finite "
                                 "> 0.0"),
    (lambda t: tt.StoppedGD(t, 0.01), [0, -5], "grid[1] = -5 is refused by strategies: steps "
                                               "must be finite >= 0, got -5"),
    (lambda lr: tt.StoppedGD(10, lr), [0.01, 100.0], "grid[1] = 100.0 is refused by strategies: "
                                                     "lr must be below the stability bound"),
    (tt.L2SP, [[1.0, 2.0]], "grid must be a non-empty 1-D array, got shape (1, 2)"),
    (tt.L2SP, [], "grid must be a non-empty 1-D array, got shape (0,)"),
    (tt.L2SP, ["a"], "grid must be real numbers"),
])
def test_pareto_checks_every_grid_value_before_compiling(prob, no_compilation, family, grid,
                                                         message):
    refuses(re.escape(message), tt.pareto, prob, family, grid)


def test_pareto_names_the_family_of_a_mapping(prob, no_compilation):
    refuses(re.escape("grid['replay'][2] = -3.0 is refused by strategies['replay']: lam must "
                      "be finite >= 0.0, got -3.0"),
            tt.pareto, prob, {"l2sp": tt.L2SP, "replay": tt.ReplaySD},
            {"l2sp": [1.0, 2.0], "replay": [1.0, 2.0, -3.0]})
    refuses(re.escape("strategies['x'] must return a Strategy, got int for grid['x'][0] = 1.0"),
            tt.pareto, prob, {"x": lambda v: 3}, {"x": [1.0]}, error=TypeError)
    refuses("strategies must be a callable", tt.pareto, prob, 3, [1.0], error=TypeError)


# --- 8. the extremes of valid inputs: finite and right ----------------------------------------

def test_extreme_grid_values_give_the_limits(prob):
    direct = tt.solve(prob, tt.DirectFT())
    at = {"W0": (tt.task_loss(prob, prob.w0), 0.0),
          "direct": (tt.task_loss(prob, direct), tt.forgetting(prob, direct)),
          "zero": (tt.task_loss(prob, jnp.zeros_like(prob.w0)),
                   tt.forgetting(prob, jnp.zeros_like(prob.w0)))}
    cases = [(tt.L2SP, [0.0, 1e300], ["direct", "W0"]),
             (tt.StaticSD, [0.0, 1e300], ["direct", "W0"]),
             (lambda t: tt.StoppedGD(t, 0.01), [0], ["W0"]),
             (tt.WeightDecay, [1e300], ["zero"]),
             (tt.ReplaySD, [0.0], ["direct"])]
    for family, grid, ends in cases:
        curve = tt.pareto(prob, family, grid)
        for i, end in enumerate(ends):
            loss, forgot = at[end]
            np.testing.assert_allclose(curve.task_loss[i], loss, rtol=1e-10, atol=1e-20)
            np.testing.assert_allclose(curve.forgetting[i], forgot, rtol=1e-10, atol=1e-20)


def test_overflow_is_refused_naming_what_overflowed(prob):
    big = tt.LinearProblem(prob.x_img, prob.x_txt * 1e200, prob.w0, prob.w_txt * 1e200,
                           x_pre=prob.x_pre)
    match = "tradeoff: the task curvature d = σ²‖c‖² is not finite: it overflowed float64"
    for fn in (tt.tradeoff, tt.frontier, tt.oracle_frontier):
        refuses(re.escape(match), fn, big)
    refuses(re.escape("pareto: the point of strategies at grid[0] = 1.0 (its task loss or "
                      "forgetting) is not finite: it overflowed float64"),
            tt.pareto, big, tt.L2SP, [1.0])


# --- further probes ---------------------------------------------------------------------------

def test_frontier_functions_check_their_arguments(prob):
    front = tt.frontier(prob)
    refuses("spectrum must be a Spectrum, got str", tt.tradeoff, prob, spectrum="x",
            error=TypeError)
    refuses("problem must be a LinearProblem or a Frontier, got NoneType",
            tt.oracle_forgetting, None, 1.0, error=TypeError)
    refuses("curve must be a ParetoCurve, got list", tt.frontier_ratio, front, [1, 2],
            error=TypeError)
    ones = jnp.ones(2)
    refuses(re.escape("curve.task_loss[1] must be finite, got nan"), tt.frontier_ratio, front,
            tt.ParetoCurve(ones, jnp.array([1.0, jnp.nan]), ones))
    refuses(re.escape("curve.forgetting[0] must be finite and >= 0, got -1.0"),
            tt.frontier_ratio, front, tt.ParetoCurve(ones, ones, jnp.array([-1.0, 1.0])))
    refuses(re.escape("curve.task_loss has shape (3,) but curve.forgetting has (2,)"),
            tt.frontier_ratio, front, tt.ParetoCurve(ones, jnp.ones(3), ones))
    refuses("n_points must be an int, got 2.0", tt.oracle_frontier, prob, 2.0)
    # a numpy int is an int; a Frontier is accepted like the problem it came from
    np.testing.assert_array_equal(tt.oracle_frontier(prob, np.int64(5)).task_loss,
                                  tt.oracle_frontier(front, 5).task_loss)


def test_gradient_descent_keeps_a_float32_problem_float32():
    p32 = tt.random_problem(8, 5, 3, 2, seed=1, dtype="float32")
    lr = 0.5 / float(tt.spectrum(p32).sigma_max_sq)
    w = tt.gradient_descent(p32, tt.L2SP(1.0), steps=20, lr=jnp.asarray(lr, jnp.float64))
    assert w.dtype == jnp.float32
    np.testing.assert_array_equal(w, tt.gradient_descent(p32, tt.L2SP(1.0), steps=20,
                                                         lr=np.float32(lr)))


def test_traced_targets_are_checked_when_the_computation_runs(prob):
    front = tt.frontier(prob)
    oracle = eqx.filter_jit(lambda t: tt.oracle_forgetting(front, t))
    np.testing.assert_allclose(oracle(jnp.array([float(front.floor) + 0.1])),
                               tt.oracle_forgetting(front, [float(front.floor) + 0.1]))
    with pytest.raises(Exception, match="task_loss must be finite and at least"):
        jax.block_until_ready(oracle(jnp.array([jnp.nan])))
    ratio = eqx.filter_jit(lambda loss: tt.frontier_ratio(
        front, tt.ParetoCurve(loss, loss, jnp.ones_like(loss))))
    with pytest.raises(Exception, match=re.escape("curve.task_loss must be finite")):
        jax.block_until_ready(ratio(jnp.array([jnp.nan])))


def test_with_pretraining_none_and_huge_random_problems_are_refused():
    from tracer_theory.errors import MemoryBudgetExceeded

    problem = tt.random_problem(6, 4, 3, 2, m_pre=5)
    with pytest.raises(ValueError, match="x_pre must be an array of pretraining features"):
        problem.with_pretraining(None)
    with pytest.raises(MemoryBudgetExceeded, match=r"random_problem\(d_img=1000000, n=1000000.*"
                                                   r"GiB, more than this machine's"):
        tt.random_problem(10**6, 10**6, 3, 2)


def test_a_float64_value_that_overflows_float32_is_named_before_the_cast():
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=r"log_values holds 1e\+39, which overflows float32"):
            tt.GridKernel(np.array([0.0, 1e39]))
        with pytest.raises(ValueError, match=r"lam holds 1e\+39, which overflows float32"):
            tt.L2SP(1e39)
