"""Closed forms (THEORY §3) against independent references, property-based over shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TOL
from hypothesis import assume, given, settings, strategies as st

import tracer_theory as tt

#: (d_I, n, d_T, k): n < d_I, n > d_I, square, tiny. A few fixed shapes keep jit caches warm;
#: hypothesis varies the seed, the rank and the hyper-parameters.
SHAPES = [(9, 4, 3, 2), (4, 9, 2, 3), (6, 6, 5, 4), (2, 3, 1, 1)]


@st.composite
def problems(draw):
    d, n, d_txt, k = draw(st.sampled_from(SHAPES))
    seed = draw(st.integers(0, 2**16))
    rank = draw(st.one_of(st.none(), st.integers(1, min(d, n))))
    return tt.random_problem(d, n, d_txt, k, seed=seed, rank=rank)


def refs(problem):
    x, w0 = np.asarray(problem.x_img), np.asarray(problem.w0)
    y = np.asarray(problem.w_txt) @ np.asarray(problem.x_txt) @ (
        problem.n * np.eye(problem.n) - np.ones((problem.n, problem.n)))
    return x, y, w0, np.linalg.pinv(x)


def effective_cond(x):
    s = np.linalg.svd(x, compute_uv=False)
    s = s[s > max(x.shape) * np.finfo(float).eps * s[0]]
    return s[0] / s[-1]


def rel(a, b):
    return np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-300)


@settings(max_examples=40, deadline=None)
@given(problems(), st.floats(0.0, 10.0))
def test_closed_forms_match_pinv_and_normal_equations(problem, lam):
    x, y, w0, xp = refs(problem)
    assume(effective_cond(x) < 1e4)
    d = x.shape[0]
    p = x @ xp
    expected = {
        "direct": w0 @ (np.eye(d) - p) + y @ xp,
        "static": w0 @ (np.eye(d) - p / (1 + lam)) + y @ xp / (1 + lam),
        "l2sp": np.linalg.solve(x @ x.T + lam * np.eye(d), (y @ x.T + lam * w0).T).T
        if lam > 1e-3 else None,
        "wd": np.linalg.solve(x @ x.T + lam * np.eye(d), x @ y.T).T if lam > 1e-3 else None,
    }
    got = {"direct": tt.solve(problem, tt.DirectFT()),
           "static": tt.solve(problem, tt.StaticSD(lam)),
           "l2sp": tt.solve(problem, tt.L2SP(lam)) if lam > 1e-3 else None,
           "wd": tt.solve(problem, tt.WeightDecay(lam)) if lam > 1e-3 else None}
    scale = np.linalg.norm(w0) + np.linalg.norm(y @ xp)  # the size of a solution's parts
    for name, want in expected.items():
        if want is not None:
            err = np.linalg.norm(np.asarray(got[name]) - want) / max(np.linalg.norm(want), scale)
            assert err < 1e-9, name


@settings(max_examples=25, deadline=None)
@given(problems(), st.integers(0, 60), st.floats(0.05, 1.95))
def test_stopped_gd_is_the_gd_iterate(problem, steps, lr_fraction):
    x, y, w0, _ = refs(problem)
    lr = lr_fraction / np.linalg.norm(x, 2) ** 2
    w = w0.copy()
    for _ in range(steps):
        w = w - lr * (w @ x - y) @ x.T
    assert rel(tt.solve(problem, tt.StoppedGD(steps, lr)), w) < 1e-9 * max(1, steps)


def test_stopped_gd_limits():
    problem = tt.random_problem(10, 6, 4, 3, seed=0)
    lr = 1.0 / float(tt.spectrum(problem).s[0] ** 2)
    np.testing.assert_allclose(tt.solve(problem, tt.StoppedGD(0, lr)), problem.w0)
    far = tt.solve(problem, tt.StoppedGD(100_000, lr))
    assert rel(far, np.asarray(tt.solve(problem, tt.DirectFT()))) < 1e-12


@settings(max_examples=20, deadline=None)
@given(problems(), st.floats(0.01, 5.0))
def test_decomposition_recovers_filter_factors(problem, lam):
    for strategy in (tt.DirectFT(), tt.StaticSD(lam), tt.L2SP(lam)):
        w = tt.solve(problem, strategy)
        dec = tt.decompose(problem, w)
        f = tt.filter_factors(problem, strategy)
        mask = np.asarray(tt.spectrum(problem).mask)
        # directions where Direct FT does not move carry no measurable factor
        ft_cols = (np.asarray(tt.solve(problem, tt.DirectFT())) - np.asarray(problem.w0)) @ \
            np.asarray(tt.spectrum(problem).u)
        moving = mask & (np.linalg.norm(ft_cols, axis=0) > 1e-8)
        np.testing.assert_allclose(np.asarray(dec.filter_factors)[moving],
                                   np.asarray(f)[moving], rtol=1e-8, atol=1e-10)
        assert float(jnp.max(dec.off_filter)) < 1e-8
        assert float(dec.orthogonal_norm) < 1e-10
        np.testing.assert_allclose(dec.task + dec.orthogonal, w - problem.w0, atol=1e-12)


def test_filter_factor_table():
    """The f_i column of THEORY §3, from σ_i² of numpy's SVD."""
    problem = tt.random_problem(12, 8, 5, 4, seed=7)
    s2 = np.linalg.svd(np.asarray(problem.x_img), compute_uv=False) ** 2
    lam, lr, t = 0.7, 0.5 / s2[0], 13
    cases = [(tt.DirectFT(), np.ones_like(s2)), (tt.StaticSD(lam), np.full_like(s2, 1 / (1 + lam))),
             (tt.L2SP(lam), s2 / (s2 + lam)), (tt.WeightDecay(lam), s2 / (s2 + lam)),
             (tt.StoppedGD(t, lr), 1 - (1 - lr * s2) ** t)]
    for strategy, want in cases:
        np.testing.assert_allclose(tt.filter_factors(problem, strategy), want, rtol=1e-12)


def test_weight_decay_erases_the_orthogonal_part():
    problem = tt.random_problem(12, 5, 4, 3, seed=1)
    dec = tt.decompose(problem, tt.solve(problem, tt.WeightDecay(0.3)))
    p = np.asarray(tt.spectrum(problem).projector())
    w0_orth = np.linalg.norm(np.asarray(problem.w0) @ (np.eye(12) - p)) / np.linalg.norm(
        np.asarray(problem.w0))
    np.testing.assert_allclose(dec.orthogonal_norm, w0_orth, rtol=1e-12)


def test_vmap_over_lambda_equals_one_by_one():
    problem = tt.random_problem(10, 6, 4, 3, seed=2)
    lams = jnp.linspace(0.0, 3.0, 7)
    batched = jax.vmap(lambda lam: tt.solve(problem, tt.StaticSD(lam)))(lams)
    for i, lam in enumerate(lams):
        np.testing.assert_allclose(batched[i], tt.solve(problem, tt.StaticSD(float(lam))),
                                   rtol=1e-13, atol=1e-13)


def test_jitted_solver_equals_the_eager_solver():
    problem = tt.random_problem(10, 6, 4, 3, seed=3)
    f = jax.jit(lambda p, lam: tt.solve(p, tt.L2SP(lam)))
    np.testing.assert_allclose(f(problem, 0.5), tt.solve(problem, tt.L2SP(0.5)), rtol=1e-13)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_numpy_inputs_keep_their_dtype_and_equal_the_float64_solution(dtype):
    p64 = tt.random_problem(10, 6, 4, 3, seed=4)
    arrays = [np.asarray(a).astype(dtype) for a in (p64.x_img, p64.x_txt, p64.w0, p64.w_txt)]
    problem = tt.LinearProblem(*arrays)
    for strategy in (tt.DirectFT(), tt.StaticSD(0.5), tt.L2SP(0.5), tt.WeightDecay(0.5)):
        w = tt.solve(problem, strategy)
        assert w.dtype == dtype
        assert rel(w, np.asarray(tt.solve(p64, strategy))) < TOL[dtype]
    # a strongly typed float64 hyper-parameter does not change the problem's dtype
    assert tt.solve(problem, tt.StaticSD(np.float64(0.5))).dtype == dtype


def test_centered_convention_scales_the_target_by_one_over_n():
    p = tt.random_problem(8, 6, 4, 3, seed=5)
    c = tt.LinearProblem(p.x_img, p.x_txt, p.w0, p.w_txt, contrast="centered")
    np.testing.assert_allclose(tt.contrastive_target(p), p.n * tt.contrastive_target(c),
                               rtol=1e-13)
    x_txt = np.asarray(p.x_txt)
    y = np.asarray(p.w_txt) @ x_txt @ (p.n * np.eye(p.n) - np.ones((p.n, p.n)))
    np.testing.assert_allclose(tt.contrastive_target(p), y, rtol=1e-12, atol=1e-12)


def test_problem_is_a_pytree_through_jit():
    p = tt.random_problem(8, 6, 4, 3, seed=6)
    out = jax.jit(lambda q: q)(p)
    assert isinstance(out, tt.LinearProblem) and out.contrast == p.contrast
    np.testing.assert_array_equal(out.x_img, p.x_img)


def test_spectrum_projector_and_pinv_match_numpy():
    problem = tt.random_problem(9, 5, 3, 2, seed=8, rank=3)
    x = np.asarray(problem.x_img)
    spec = tt.spectrum(problem)
    np.testing.assert_allclose(spec.pinv(), np.linalg.pinv(x), atol=1e-12)
    np.testing.assert_allclose(spec.projector(), x @ np.linalg.pinv(x), atol=1e-12)
    assert int(spec.rank) == 3
