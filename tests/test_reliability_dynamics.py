"""Reliability of the dynamics surfaces: kernel teacher weights in log space against an mpmath
reference (float32 and float64), and every argument of the schedules, ``design``, the families
and the dynamics solvers checked on the host, naming the argument."""

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tracer_theory as tt
from tracer_theory.dynamics.design import calibrate
from tracer_theory.dynamics.schedules import GridKernel, kernel_teacher, kernel_weights
from tracer_theory.dynamics.spectral import TeacherSD

FEW = settings(max_examples=6, deadline=None, derandomize=True)
DTYPES = [np.float32, np.float64]
#: One static length for the property tests (a traced horizon ≤ it): one compile per shape.
LENGTH = 48


# --- the independent reference: ω from log κ in mpmath --------------------------------------

mpmath.mp.dps = 40


def reference_omegas(log_kappa, length):
    """ω_1..ω_length from exact log-weights log κ_0..log κ_horizon (mpmath), 0 past the horizon:
    ω_t = exp(log κ_t − log Σ_{j≤t} exp(log κ_j)), the log-sum-exp accumulated step by step."""
    out, total = [], None
    for ell in log_kappa:
        total = ell if total is None else max(total, ell) + mpmath.log1p(
            mpmath.exp(-abs(total - ell)))
        out.append(float(mpmath.exp(ell - total)))
    return np.array((out[1:] + [0.0] * length)[:length])


def grid_log_kappa(values, horizon):
    """log κ(τ_k) of a GridKernel at the exact τ_k = (k + 0.5)/(horizon + 1) (mpmath)."""
    g = len(values) - 1
    v = [mpmath.mpf(float(x)) for x in values]
    out = []
    for k in range(horizon + 1):
        u = mpmath.mpf((2 * k + 1) * g) / (2 * (horizon + 1))  # τ_k in units of knot spacing
        j = min(int(mpmath.floor(u)), g - 1)
        out.append(v[j] + (u - j) * (v[j + 1] - v[j]))
    return out


def beta_log_kappa(a, b, horizon):
    """log κ(τ_k) = (a − 1) log τ_k + (b − 1) log(1 − τ_k) at the exact grid (mpmath)."""
    a, b = mpmath.mpf(float(a)), mpmath.mpf(float(b))
    return [(a - 1) * mpmath.log(mpmath.mpf(2 * k + 1) / (2 * (horizon + 1)))
            + (b - 1) * mpmath.log(mpmath.mpf(2 * (horizon - k) + 1) / (2 * (horizon + 1)))
            for k in range(horizon + 1)]


def assert_close_to_reference(got, expected, dtype, sensitivity):
    """|ω − ω_ref| ≤ 4·ε·S·ω_ref (+ a floor near the smallest normal number), where S bounds
    how much rounding the grid τ_k and the log-weights moves log κ (its condition number)."""
    finfo = np.finfo(dtype)
    got = np.asarray(got, dtype=np.float64)
    assert got.dtype == np.float64 and np.all(np.isfinite(got))
    tolerance = 4 * finfo.eps * sensitivity * expected + 1e3 * finfo.tiny
    bad = np.abs(got - expected) > tolerance
    assert not bad.any(), (np.flatnonzero(bad)[:5], got[bad][:5], expected[bad][:5])


def in_dtype(dtype):
    """A context with the default float dtype ``dtype`` (the schedules compute in it)."""
    return jax.enable_x64(dtype == np.float64)


# --- 1. kernel weights in log space -----------------------------------------------------------

@pytest.mark.parametrize(("dtype", "top"), [(np.float32, 200.0), (np.float64, 1000.0)])
def test_issue_grid_kernel_no_longer_freezes_the_teacher(dtype, top):
    """The user probe: ω₁…₅₀ were 0 (teacher frozen at W⁰ for half the run); exact ≈ 0.86."""
    with in_dtype(dtype):
        weights = np.asarray(kernel_teacher(100, GridKernel(np.array([0.0, top], dtype)))
                             .weights(100))
        assert weights.dtype == dtype
    expected = reference_omegas(grid_log_kappa([0.0, top], 100), 100)
    assert np.all(weights > 0.5)
    assert_close_to_reference(weights, expected, dtype, sensitivity=2 * top + 1)


@pytest.mark.parametrize("dtype", DTYPES)
@FEW
@given(knots=st.sampled_from([2, 5]), horizon=st.integers(1, LENGTH),
       data=st.data())
def test_grid_kernel_weights_match_the_log_space_reference(dtype, knots, horizon, data):
    values = np.asarray(data.draw(st.lists(
        st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=knots, max_size=knots)), dtype)
    with in_dtype(dtype):
        weights = kernel_weights(GridKernel(values), jnp.asarray(horizon), LENGTH)
        assert weights.dtype == dtype
    expected = reference_omegas(grid_log_kappa(values, horizon), LENGTH)
    spread = np.abs(np.diff(values.astype(np.float64))).max()
    assert_close_to_reference(weights, expected, dtype,
                              np.abs(values).max() + (knots - 1) * spread + 1)
    assert np.all(np.asarray(weights)[horizon:] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@FEW
@given(log_a=st.floats(np.log(1e-2), np.log(300.0)), log_b=st.floats(np.log(1e-2), np.log(300.0)),
       horizon=st.integers(1, LENGTH))
def test_beta_kernel_weights_match_the_log_space_reference(dtype, log_a, log_b, horizon):
    a, b = float(np.exp(log_a)), float(np.exp(log_b))
    with in_dtype(dtype):
        weights = kernel_weights(tt.beta_kernel(a, b), jnp.asarray(horizon), LENGTH)
        assert weights.dtype == dtype
    log_kappa = beta_log_kappa(a, b, horizon)
    expected = reference_omegas(log_kappa, LENGTH)
    # log τ and log(1 − τ) of a rounded τ: errors ε and ε·(2·horizon + 1), times a − 1, b − 1
    sensitivity = (max(abs(float(x)) for x in log_kappa) + abs(a - 1)
                   + abs(b - 1) * (2 * horizon + 1) + 1)
    assert_close_to_reference(weights, expected, dtype, sensitivity)


def test_sharp_kernels_follow_the_student_instead_of_freezing():
    """Each new weight dominates the earlier ones, so ω_t → 1: the teacher follows the student
    (the max-shift-then-exp table gave 0 for the early steps)."""
    np.testing.assert_array_equal(kernel_teacher(4, GridKernel([0.0, 1e300])).weights(4), 1.0)
    np.testing.assert_array_equal(tt.wma_teacher(10, 1e6, 1.0).weights(10), 1.0)
    batched = jax.vmap(lambda a: tt.wma_teacher(10, a, 1.0).weights(10))(jnp.array([0.5, 1e4]))
    np.testing.assert_array_equal(batched[1], 1.0)
    np.testing.assert_allclose(batched[0], reference_omegas(beta_log_kappa(0.5, 1.0, 10), 10),
                               rtol=1e-13)
    # decreasing: ω_t = κ_t/κ_0 underflows to exactly 0
    np.testing.assert_array_equal(kernel_teacher(4, GridKernel([1e300, 0.0])).weights(4), 0.0)


def test_plain_callable_weights_whose_sum_overflows_are_normalized():
    """The sum of six weights 1e308 overflows float64; in log space it does not matter."""
    weights = kernel_teacher(5, lambda tau: jnp.full_like(tau, 1e308)).weights(5)
    np.testing.assert_allclose(weights, 1 / np.arange(2, 7), rtol=1e-15)
    ramp = kernel_teacher(5, lambda tau: jnp.exp(700 * tau)).weights(5)
    tau = [mpmath.mpf(2 * k + 1) / 12 for k in range(6)]
    np.testing.assert_allclose(ramp, reference_omegas([700 * t for t in tau], 5), rtol=1e-12)


def test_gradient_of_the_weights_in_log_space_is_the_analytic_one():
    """d ω_t / d log κ_j = ω_t (δ_tj − κ_j / Σ_{i≤t} κ_i), through the grid interpolation, for a
    peaked kernel whose early weights the old table flushed to 0."""
    horizon, values = 12, np.array([0.0, 150.0, -40.0])
    coef = np.cos(np.arange(horizon))

    def loss(v):
        return jnp.sum(kernel_weights(GridKernel(v), horizon, horizon) * coef)

    grad = np.asarray(jax.grad(loss)(jnp.asarray(values)))
    ell = np.array([float(x) for x in grid_log_kappa(values, horizon)])
    tau_units = (2 * np.arange(horizon + 1) + 1) * 2 / (2 * (horizon + 1))
    # d log κ_k / d v_g: the hat functions of linear interpolation on the knots 0, 1, 2
    hats = np.maximum(0, 1 - np.abs(tau_units[:, None] - np.arange(3)[None, :]))
    expected = np.zeros(3)
    for t in range(1, horizon + 1):
        p = np.exp(ell[: t + 1] - np.logaddexp.reduce(ell[: t + 1]))
        d_omega = p[t] * ((np.arange(t + 1) == t) - p)  # d ω_t / d log κ_j, j ≤ t
        expected += coef[t - 1] * d_omega @ hats[: t + 1]
    np.testing.assert_allclose(grad, expected, rtol=1e-9, atol=1e-12)


# --- 2./3. arguments checked on the host, naming the argument ---------------------------------

@pytest.fixture(scope="module")
def setup():
    p = tt.random_problem(8, 5, 4, 3, m_pre=12, decay=0.7, seed=0)
    spec, trade = tt.spectrum(p), tt.tradeoff(p)
    target = float(trade.task_loss(tt.filter_factors(p, tt.StaticSD(1.0))))
    return p, spec, trade, target


def _ema5(c):
    return tt.ema_teacher(0.9).weights(5)


SCHEDULE_CASES = [
    (lambda: GridKernel([1.0]), "log_values must be a 1-D array of at least 2 knots"),
    (lambda: GridKernel([[0.0, 1.0], [1.0, 2.0]]), r"at least 2 knots, got shape \(2, 2\)"),
    (lambda: GridKernel([0.0, np.nan]), "log_values must be finite"),
    (lambda: GridKernel([0.0, np.inf]), "log_values must be finite"),
    (lambda: GridKernel([-1e308, 1e308]), "log_values must have finite differences between "
                                          "neighbouring knots"),
    (lambda: GridKernel(["a", "b"]), "log_values must be real numbers"),
    (lambda: GridKernel([True, False]), "log_values must be real numbers, got dtype bool"),
    (lambda: GridKernel([1j, 2.0]), "log_values must be real numbers, got dtype complex128"),
    (lambda: GridKernel(None), "log_values must be real numbers"),
    (lambda: kernel_teacher(None, tt.arcsine_kernel()), "horizon must be an int, got None"),
    (lambda: kernel_teacher("10", tt.arcsine_kernel()), "horizon must be an int, got '10'"),
    (lambda: tt.wma_teacher(np.float64(5.0)), "horizon must be an int"),
    (lambda: kernel_weights(tt.uniform_kernel(), 3, 2**70), "num_steps must be below"),
    (lambda: kernel_teacher(10, lambda tau: "x"), "kernel must return real weights on the grid"),
    (lambda: kernel_teacher(10, lambda tau: None), "kernel must return real weights on the grid"),
    (lambda: tt.wma_teacher(10, None, 1.0), "a must be a real number"),
    (lambda: tt.wma_teacher(10, 1.0, "x"), "b must be a real number"),
    (lambda: tt.ema_teacher(None), "momentum must be a real number"),
    (lambda: tt.ema_teacher(np.nan), "momentum must be finite, got nan"),
    (lambda: tt.ema_teacher([0.9, 0.8]), r"momentum must be a scalar, got shape \(2,\)"),
    (lambda: tt.ema_teacher(0.9).weights(None), "num_steps must be an int, got None"),
]


@pytest.mark.parametrize(("build", "match"), SCHEDULE_CASES)
def test_schedule_arguments_are_named(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_schedule_counts_fit_the_index_dtype():
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=r"horizon must be below 2147483647 \(steps are "
                                             r"indexed in int32\), got 2147483648"):
            tt.wma_teacher(2**31)
    with pytest.raises(TypeError, match="kernel must be a callable"):
        kernel_weights(None, 3, 5)


FAMILY_CASES = [
    (lambda: tt.BetaFamily(-5), "steps must be a positive int, got -5"),
    (lambda: tt.BetaFamily(0), "steps must be a positive int, got 0"),
    (lambda: tt.BetaFamily(2.5), "steps must be an int, got 2.5"),
    (lambda: tt.BetaFamily(True), "steps must be an int, got True"),
    (lambda: tt.BetaFamily("3"), "steps must be an int, got '3'"),
    (lambda: tt.EMAFamily(-1), "steps must be a positive int, got -1"),
    (lambda: tt.GridFamily(10, knots=1), "knots must be an int >= 2, got 1"),
    (lambda: tt.GridFamily(10, knots=2.5), "knots must be an int, got 2.5"),
    (lambda: tt.ScheduledEMAFamily(10, warmup_steps=0),
     "warmup_steps must be a positive int, got 0"),
    (lambda: tt.ScheduledEMAFamily(10, warmup_steps=2.5), "warmup_steps must be an int"),
]


@pytest.mark.parametrize(("build", "match"), FAMILY_CASES)
def test_family_arguments_are_named(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_family_counts_are_plain_ints():
    family = tt.GridFamily(np.int64(7), knots=np.int32(3))
    assert type(family.steps) is int and type(family.knots) is int
    assert family == tt.GridFamily(7, knots=3)


DESIGN_CASES = [
    (dict(target=None), "target_task_loss must be a real number"),
    (dict(target=np.nan), "target_task_loss must be finite, got nan"),
    (dict(target="x"), "target_task_loss must be a real number"),
    (dict(target=np.ones(2)), r"target_task_loss must be a scalar, got shape \(2,\)"),
    (dict(target=-1.0), "target_task_loss must lie strictly between the unregularized optimum"),
    (dict(steps=-5), "steps must be a non-negative int, got -5"),
    (dict(steps=2.5), "steps must be an int, got 2.5"),
    (dict(steps=True), "steps must be an int, got True"),
    (dict(steps="3"), "steps must be an int, got '3'"),
    (dict(learning_rate=-1.0), "learning_rate must be finite > 0.0, got -1.0"),
    (dict(learning_rate=0.0), "learning_rate must be finite > 0.0, got 0.0"),
    (dict(learning_rate=np.nan), "learning_rate must be finite > 0.0, got nan"),
    (dict(penalty=-1.0), "penalty must be finite > 0.0, got -1.0"),
    (dict(penalty=np.inf), "penalty must be finite > 0.0, got inf"),
]


@pytest.mark.parametrize(("change", "match"), DESIGN_CASES)
def test_design_arguments_are_named(setup, change, match):
    p, _, _, target = setup
    args = dict(target=target, steps=2, learning_rate=0.05, penalty=1e3) | change
    with pytest.raises(ValueError, match=match):
        tt.design(p, tt.StaticFamily(), args.pop("target"), **args)


def test_design_refuses_another_problems_spectrum_or_frontier(setup):
    p, _, _, target = setup
    with pytest.raises(TypeError, match="spectrum must be a Spectrum, got int"):
        tt.design(p, tt.StaticFamily(), target, spectrum=3)
    with pytest.raises(TypeError, match="frontier must be a Frontier, got int"):
        tt.design(p, tt.StaticFamily(), target, frontier=3)
    other = tt.random_problem(8, 5, 4, 3, m_pre=12, decay=0.7, seed=5)
    with pytest.raises(ValueError, match="frontier is not this problem's"):
        tt.design(p, tt.StaticFamily(), target, steps=0, frontier=tt.frontier(other))


def test_calibrate_arguments_are_named(setup):
    _, spec, trade, target = setup
    family = tt.StaticFamily()
    start = family.init(int(spec.s.shape[0]))
    cases = [
        (lambda: calibrate(family, start, target, spec, trade, iterations=0),
         "iterations must be a positive int, got 0"),
        (lambda: calibrate(family, start, np.nan, spec, trade), "target must be finite, got nan"),
        (lambda: calibrate(family, start, None, spec, trade), "target must be a real number"),
        (lambda: calibrate(family, {}, target, spec, trade),
         r"params must have the keys and shapes of StaticFamily\.init\(5\)"),
        (lambda: calibrate(family, {"log_lam": jnp.asarray(np.nan)}, target, spec, trade),
         r"params\['log_lam'\] must be finite real numbers"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    with pytest.raises(TypeError, match="family must be a Family, got NoneType"):
        calibrate(None, start, target, spec, trade)


def test_design_with_zero_steps_is_the_calibrated_start(setup):
    p, _, _, target = setup
    result = tt.design(p, tt.StaticFamily(), target, steps=0)
    assert result.history.shape == (0, 2) and result.reached
    np.testing.assert_allclose(result.task_loss, target, rtol=1e-9)
    # calibrated to λ = 1: the target is static SD's task loss at λ = 1
    np.testing.assert_allclose(np.exp(result.params["log_lam"]), 1.0, rtol=1e-6)


def test_design_reports_a_target_the_family_cannot_reach(setup):
    """Two GD steps cannot fit the task down to just above Direct FT's loss: the closest point
    is pure GD (λ → 0), f_i = 1 − (1 − σ_i²/σ_max²)², reported with reached = False."""
    p, spec, trade, _ = setup
    floor = float(trade.floor)
    target = floor + 1e-6 * (float(trade.most_task_loss) - floor)
    result = tt.design(p, tt.BetaFamily(2), target, steps=0)
    sigma_sq, d = np.asarray(spec.sigma_sq), np.asarray(trade.d)
    f = 1 - (1 - sigma_sq / sigma_sq.max()) ** 2
    gd_loss = floor + 0.5 * np.sum(d * (1 - f) ** 2)
    assert not result.reached and result.task_loss > target
    np.testing.assert_allclose(result.task_loss, gd_loss, rtol=1e-9)
    assert np.isfinite([result.forgetting, result.oracle, result.ratio]).all()


def test_design_names_a_learning_rate_that_leaves_the_family_range(setup):
    """Adam at learning_rate 1e6 moves log λ by ~1e6: λ = e^(1e6) overflows. Was a traced
    EquinoxRuntimeError from inside the compiled step."""
    p, _, _, target = setup
    with pytest.raises(ValueError, match=r"design: Adam step 1 \(learning_rate = 1e\+06\) moved "
                                         r"the parameters of StaticFamily out of its range: "
                                         r"lam must be finite >= 0.0, got inf; lower "
                                         r"learning_rate"):
        tt.design(p, tt.StaticFamily(), target, steps=3, learning_rate=1e6)


def _lr(setup, lam=1.0):
    return 0.5 * float(tt.stability_bound(setup[1].sigma_max_sq, lam))


DYNAMICS_CASES = [
    (lambda s: tt.spectral_dynamics(s[0], 1.0, tt.ema_teacher(0.9), steps=3, lr=None),
     "lr must be a real number"),
    (lambda s: tt.spectral_dynamics(s[0], 1.0, tt.ema_teacher(0.9), steps=3, lr=_lr(s),
                                    record_every=True),
     "record_every must be an int, got True"),
    (lambda s: tt.simulate(s[0], 1.0, tt.ema_teacher(0.9), steps=4, lr=_lr(s), record_every=2.0),
     "record_every must be an int, got 2.0"),
    (lambda s: tt.spectral_dynamics(s[0], 1.0, tt.ema_teacher(0.9), steps=10, lr=10 * _lr(s)),
     r"lr must be below the stability bound"),
    (lambda s: TeacherSD(1.0, tt.ema_teacher(0.9), steps=2.0, lr=0.1),
     "steps must be an int, got 2.0"),
    (lambda s: tt.two_by_two_rate(1e200, 1e200, 0.5),
     "two_by_two_rate: the spectral radius is not finite: it overflowed float64"),
    (lambda s: tt.two_by_two_rate(jnp.ones(2), jnp.ones(3), 0.5),
     r"s, lam and omega must broadcast together, got shapes \(2,\), \(3,\) and \(\)"),
    (lambda s: tt.stability_bound(1e300, 1e10),
     r"stability_bound: σ_max²\(1 \+ λ\) overflows float64"),
    (lambda s: tt.sweep(s[0], {"lam": [1.0], "lr": [_lr(s)], "m": [np.nan]}, _ema5, steps=5),
     r"configs\['m'\] must be finite, got configs\['m'\]\[0\] = nan"),
    (lambda s: tt.sweep(s[0], {"lam": [1.0], "lr": [_lr(s)]}, _ema5, steps=True),
     "steps must be an int, got True"),
]


@pytest.mark.parametrize(("call", "match"), DYNAMICS_CASES)
def test_dynamics_arguments_are_named(setup, call, match):
    with pytest.raises(ValueError, match=match):
        call(setup)


def test_numpy_integer_counts_are_accepted(setup):
    p = setup[0]
    run = tt.spectral_dynamics(p, 1.0, tt.ema_teacher(0.9), steps=np.int64(4), lr=_lr(setup),
                               record_every=np.int32(2))
    np.testing.assert_array_equal(run.steps, [0, 2, 4])


def test_sweep_names_the_configuration_make_omegas_refuses(setup):
    """ema_teacher's own check fails on the traced configuration inside the sweep; the sweep
    re-runs make_omegas on each concrete configuration and names the one it refuses."""
    configs = {"lam": [1.0, 1.0], "lr": [_lr(setup)] * 2, "m": [0.5, 1.5]}
    with pytest.raises(ValueError, match=r"make_omegas fails on configuration 1 \(.*"
                                         r"configs\['m'\]\[1\] = 1\.5\): momentum must be in "
                                         r"\[0, 1\), got 1\.5"):
        tt.sweep(setup[0], configs, lambda c: tt.ema_teacher(c["m"]).weights(5), steps=5)
