"""Property tests: random finite inputs in range never give NaN or Inf (THEORY §3–§4).

Hypothesis draws small problems (features scaled over six decades, rank-deficient or not,
float32 or float64), hyper-parameters within their documented ranges and step sizes below the
stability bound. `solve`, `spectral_dynamics` and `sweep` must then return finite values
without an error, and a spectrum must be accepted for its own problem and refused for another.
A few fixed shapes keep the jit caches warm.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tracer_theory as tt

#: (d_I, n, d_T, k): n < d_I and n > d_I.
SHAPES = [(5, 3, 4, 2), (3, 6, 2, 3)]
STEPS = 24
FAST = settings(max_examples=30, deadline=None, derandomize=True)  # the same examples in CI

scales = st.floats(-3.0, 3.0).map(lambda e: 10.0**e)
fractions = st.floats(0.01, 0.99)  # of the stability bound


@st.composite
def problems(draw, dtypes=("float64",)):
    d, n, d_txt, k = draw(st.sampled_from(SHAPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    rank = draw(st.one_of(st.none(), st.integers(1, min(d, n))))
    x_img = rng.standard_normal((d, rank or n))[:, np.arange(n) % (rank or n)]
    arrays = [x_img, rng.standard_normal((d_txt, n)), rng.standard_normal((k, d)),
              rng.standard_normal((k, d_txt))]
    dtype = draw(st.sampled_from(dtypes))
    contrast = draw(st.sampled_from(["paper", "centered"]))
    return tt.LinearProblem(*(np.asarray(a * draw(scales), dtype) for a in arrays),
                            contrast=contrast)


def sigma_max_sq(problem):
    return float(tt.spectrum(problem).sigma_max_sq)


def assert_finite(tree):
    for leaf in (tree if isinstance(tree, list | tuple) else [tree]):
        assert np.all(np.isfinite(np.asarray(leaf))), leaf


@st.composite
def strategies_for(draw, problem):
    lam = draw(st.floats(0.0, 1e4))
    kind = draw(st.sampled_from(["direct", "static", "l2sp", "wd", "stopped"]))
    if kind == "direct":
        return tt.DirectFT()
    if kind == "stopped":
        lr = draw(fractions) * 2.0 / sigma_max_sq(problem)
        return tt.StoppedGD(draw(st.integers(0, 200)), lr)
    if kind == "wd":
        return tt.WeightDecay(max(lam, 1e-6))
    return {"static": tt.StaticSD, "l2sp": tt.L2SP}[kind](lam)


@FAST
@given(st.data())
def test_solve_is_finite_for_finite_inputs(data):
    problem = data.draw(problems(dtypes=("float64", "float32")))
    strategy = data.draw(strategies_for(problem))
    w = tt.solve(problem, strategy)
    f = tt.filter_factors(problem, strategy)
    assert w.dtype == problem.dtype
    assert_finite([w, f])
    if strategy.anchor == "pretrained":
        parts = tt.decompose(problem, w)
        assert_finite([parts.task_norm, parts.orthogonal_norm, parts.filter_factors])


@st.composite
def schedules(draw):
    kind = draw(st.sampled_from(["static", "ema", "ema_warmup", "wma"]))
    if kind == "static":
        return tt.static_teacher()
    momentum = draw(st.floats(0.0, 0.999))
    if kind == "ema":
        return tt.ema_teacher(momentum)
    if kind == "ema_warmup":
        return tt.ema_teacher(momentum, warmup_from=draw(st.floats(0.0, 0.999)),
                              warmup_steps=draw(st.integers(0, STEPS)))
    a, b = draw(st.floats(0.05, 20.0)), draw(st.floats(0.05, 20.0))
    return tt.wma_teacher(draw(st.sampled_from([1, 7, STEPS])), a, b)


@FAST
@given(problems(), st.floats(0.0, 100.0), fractions, schedules())
def test_spectral_dynamics_is_finite_below_the_stability_bound(problem, lam, fraction,
                                                               schedule):
    omegas = np.asarray(schedule.weights(STEPS))
    assert np.all((omegas >= 0) & (omegas <= 1))
    lr = fraction * float(tt.stability_bound(sigma_max_sq(problem), lam))
    run = tt.spectral_dynamics(problem, lam, schedule, steps=STEPS, lr=lr)
    s = run.summary
    assert_finite([run.student, run.teacher, s.gap, s.bias, s.distance, s.loss])
    assert np.all(np.asarray(s.bias) >= 0)


def _ema_omegas(config):
    return tt.ema_teacher(config["momentum"]).weights(STEPS)


@FAST
@given(problems(), st.lists(st.tuples(st.floats(0.0, 100.0), fractions, st.floats(0.0, 0.999),
                                      st.integers(1, STEPS)), min_size=3, max_size=3),
       st.sampled_from(["gd", "fixed_point"]))
def test_sweep_is_finite_below_the_stability_bound(problem, rows, rule):
    lam, fraction, momentum, horizon = (np.array(column) for column in zip(*rows, strict=True))
    lr = fraction * np.asarray(tt.stability_bound(sigma_max_sq(problem), lam))
    configs = {"lam": lam, "lr": lr, "momentum": momentum, "horizon": horizon}
    out = tt.sweep(problem, configs, _ema_omegas, steps=STEPS, rule=rule)
    for name, values in out.items():
        values = np.asarray(values)
        assert values.shape == (3,)
        if name == "half_life":  # inf when the gap never halves, never NaN
            assert not np.any(np.isnan(values))
        else:
            assert np.all(np.isfinite(values)), name


@FAST
@given(problems(dtypes=("float64", "float32")), st.integers(0, 2**16))
def test_a_spectrum_is_accepted_for_its_problem_and_refused_for_another(problem, seed):
    spec = tt.spectrum(problem)
    assert spec.check_matches(problem) is spec
    rng = np.random.default_rng([seed, 1])  # a stream the problems are never drawn from
    other = tt.LinearProblem(np.asarray(rng.standard_normal(problem.x_img.shape),
                                        problem.dtype), problem.x_txt, problem.w0,
                             problem.w_txt)
    with pytest.raises(ValueError, match="spectrum is not the SVD of this problem's x_img"):
        tt.solve(other, tt.DirectFT(), spectrum=spec)
    # the same data scaled by a constant are other data too (its singular values differ)
    scaled = tt.LinearProblem(problem.x_img * 2, problem.x_txt, problem.w0, problem.w_txt)
    with pytest.raises(ValueError, match="is not the SVD"):
        tt.solve(scaled, tt.DirectFT(), spectrum=spec)
    assert_finite(tt.solve(problem, tt.L2SP(jnp.asarray(0.5, problem.dtype)), spectrum=spec))
