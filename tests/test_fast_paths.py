"""The fast paths of the spectral solver (issue 14, item 5) against independent references:
the checkpointed scans against plain ``lax.scan`` and finite differences, their reverse-mode
memory against the plain scan's, recorded summaries against the every-step run, the online gap
diagnostics against the stored-curve ones, and the batched sweep against one run per
configuration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tracer_theory as tt
from tracer_theory.dynamics import spectral, sweep as sweep_module
from tracer_theory.dynamics.diagnostics import (
    trace_end,
    trace_start,
    trace_update,
    unchecked_collapse_diagnostics,
)

jax.config.update("jax_enable_x64", True)  # as tests/conftest.py; also when run on its own


@pytest.fixture(scope="module")
def problem():
    return tt.random_problem(12, 7, 5, 3, seed=21)


def lr_for(problem, lam, fraction=0.5):
    return fraction * float(tt.stability_bound(tt.spectrum(problem).sigma_max_sq, lam))


def plain_run(s, lam, omegas):
    """The step recursion as one plain ``lax.scan`` (the reference): final ``(e, f)``."""
    def body(carry, omega):
        return spectral.coefficient_step(*carry, s, lam, omega, "gd"), None

    ones = jnp.ones_like(s)
    return jax.lax.scan(body, (ones, ones), omegas)[0]


# --- checkpointed scans ----------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 3, 4, 17, 100])
def test_checkpointed_scan_is_the_plain_scan(n):
    xs = jnp.sin(jnp.arange(n, dtype=jnp.float64))

    def body(carry, x):
        return 0.9 * carry + x * jnp.cos(carry), carry**2 + x

    carry, ys = spectral.checkpointed_scan(body, jnp.array([0.3, -0.2]), xs)
    ref_carry, ref_ys = jax.lax.scan(body, jnp.array([0.3, -0.2]), xs)
    np.testing.assert_allclose(carry, ref_carry, rtol=1e-15)
    np.testing.assert_allclose(ys, ref_ys, rtol=1e-15)
    assert ys.shape == ref_ys.shape


def test_filter_gradient_equals_plain_scan_and_finite_differences(problem):
    """d/d(λ, lr, kernel log-values) of a quadratic objective of the TeacherSD filter."""
    sigma_sq = tt.spectrum(problem).sigma_sq
    steps, lr0 = 300, lr_for(problem, 2.0)
    weights = jnp.linspace(1.0, 2.0, sigma_sq.shape[0])

    def objective(x, plain=False):
        lam, lr, values = x[0], x[1], x[2:]
        strategy = tt.TeacherSD(lam, tt.kernel_teacher(steps, tt.GridKernel(values)),
                                steps=steps, lr=lr)
        if plain:
            omegas = spectral.schedule_weights(strategy.schedule, steps, sigma_sq.dtype)
            f = 1 - plain_run(lr * sigma_sq, lam, omegas)[0]
        else:
            f = strategy.filter(sigma_sq)
        return jnp.sum(weights * (1 - f) ** 2) + jnp.sum(f) ** 2

    x = jnp.concatenate([jnp.array([0.8, lr0]), jnp.array([0.3, -0.5, 0.1, 0.7])])
    grad = jax.jit(jax.grad(objective))(x)
    np.testing.assert_allclose(grad, jax.jit(jax.grad(lambda x: objective(x, plain=True)))(x),
                               rtol=1e-11, atol=1e-14)
    h = 1e-6 * jnp.maximum(jnp.abs(x), 1e-3)
    value = jax.jit(objective)
    fd = [(value(x + step) - value(x - step)) / (2 * hi) for step, hi in zip(jnp.diag(h), h,
                                                                              strict=True)]
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)


def test_spectral_dynamics_gradient_equals_finite_differences(problem):
    lr = lr_for(problem, 3.0)

    def loss(lam):
        run = tt.spectral_dynamics(problem, lam, tt.wma_teacher(120), steps=120, lr=lr,
                                   record_every=10)
        return run.summary.loss[-1] + run.summary.gap[5]

    lam, h = 1.3, 1e-6
    np.testing.assert_allclose(jax.grad(loss)(lam), (loss(lam + h) - loss(lam - h)) / (2 * h),
                               rtol=1e-7)


def _temp_bytes(fn, *args):
    memory = jax.jit(fn).lower(*args).compile().memory_analysis()
    if memory is None:
        pytest.skip("no memory analysis on this backend")
    return memory.temp_size_in_bytes


def test_reverse_mode_memory_is_sublinear_in_the_steps():
    """16× the steps: the plain scan's reverse mode needs ~16× the memory, the checkpointed one
    ~√16 = 4× (O(√T·r) carries; r = 64 here, so the carries dominate)."""
    s = jnp.linspace(0.01, 0.4, 64)

    def grad_of(run, steps):
        omegas = jnp.full(steps, 1e-3)
        return jax.grad(lambda x: jnp.sum(run(x[0] * s, x[1], omegas)[0] ** 2)), jnp.ones(2)

    def checkpointed(s, lam, omegas):
        return spectral.coefficient_run(s, lam, omegas)

    small, large = (_temp_bytes(*grad_of(checkpointed, t)) for t in (1_000, 16_000))
    plain_small, plain_large = (_temp_bytes(*grad_of(plain_run, t)) for t in (1_000, 16_000))
    assert plain_large / plain_small > 12  # the reference grows linearly
    assert large / small < 6, (small, large)
    assert large < plain_large / 10


# --- recorded summaries ----------------------------------------------------------------------

@pytest.mark.parametrize("solver", [tt.spectral_dynamics, tt.fixed_point],
                         ids=["spectral", "fixed_point"])
def test_records_every_k_steps_are_the_every_step_run_subsampled(problem, solver):
    steps, every = 210, 7
    kwargs = {} if solver is tt.fixed_point else {"lr": lr_for(problem, 1.0)}
    schedule = tt.wma_teacher(150)
    full = solver(problem, 1.0, schedule, steps=steps, record_every=1, **kwargs)
    sparse = solver(problem, 1.0, schedule, steps=steps, record_every=every, **kwargs)
    np.testing.assert_array_equal(sparse.steps, full.steps[::every])
    for field in ("gap", "bias", "distance", "loss"):
        np.testing.assert_allclose(getattr(sparse.summary, field),
                                   getattr(full.summary, field)[::every], rtol=1e-12,
                                   atol=1e-300, err_msg=field)
    np.testing.assert_allclose(sparse.student, full.student, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sparse.teacher, full.teacher, rtol=1e-12, atol=1e-14)


def test_coefficient_scan_freezes_where_inactive():
    """Against the recursion of THEORY §4 in NumPy: ``e ← e − s(e + λ(e − f))``, then
    ``f ← (1 − ω) f + ω e``, from ``e = f = 1``, for the 25 active steps; the recorded gaps
    every 5 steps, then frozen."""
    s, steps, lam = jnp.linspace(0.05, 0.5, 5), 40, 0.7
    omegas = jnp.linspace(0.5, 0.01, steps)
    e, f, gaps = spectral.coefficient_scan(s, lam, omegas, lambda e, f: jnp.sum((e - f) ** 2),
                                           active=jnp.arange(1, steps + 1) <= 25, record_every=5)
    e_ref, f_ref, s_np = np.ones(5), np.ones(5), np.asarray(s)
    gaps_ref = [0.0]
    for t, omega in enumerate(np.asarray(omegas[:25]), start=1):
        e_ref = e_ref - s_np * (e_ref + lam * (e_ref - f_ref))
        f_ref = (1 - omega) * f_ref + omega * e_ref
        if t % 5 == 0:
            gaps_ref.append(np.sum((e_ref - f_ref) ** 2))
    np.testing.assert_allclose(e, e_ref, rtol=1e-14)
    np.testing.assert_allclose(f, f_ref, rtol=1e-14)
    assert gaps.shape == (steps // 5 + 1,)
    np.testing.assert_allclose(gaps[:6], gaps_ref, rtol=1e-13, atol=1e-300)
    np.testing.assert_array_equal(gaps[5:], gaps[5])  # frozen after step 25
    with pytest.raises(ValueError, match="record_every must be a positive int dividing 40"):
        spectral.coefficient_scan(s, 0.7, omegas, lambda e, f: (), record_every=3)


# --- online gap diagnostics -------------------------------------------------------------------

def _curves():
    rng = np.random.default_rng(5)
    curves = [rng.uniform(0, 1, 30), np.r_[0.0, np.linspace(1, 0.1, 29)],  # steady collapse
              np.r_[0.0, 2.0, 1.5, 3.0, 1.0, 4.0, 2.5, 1.9, np.full(22, 2.0)],  # later peaks
              np.r_[0.0, 1.0, 1.0, 0.4, np.full(26, 1.0)],  # tie at the peak
              np.zeros(30), np.r_[0.0, np.linspace(1, 2, 29)],  # flat; never halves
              np.r_[0.0, 1.0, np.nan, np.full(27, 0.1)],  # diverged early
              np.r_[0.0, 1.0, 0.2, np.full(26, 0.1), np.inf]]  # diverged at the very end
    return np.stack(curves)


@pytest.mark.parametrize("block", [1, 4, 29])
def test_online_diagnostics_equal_the_stored_curve_ones(block):
    gap = jnp.asarray(_curves())
    steps = jnp.asarray(np.r_[0.0, np.cumsum(np.linspace(1.0, 3.0, 29))])  # uneven spacing
    stop = jnp.asarray([steps[-1], steps[20], steps[-1], steps[10], steps[-1], steps[3],
                        steps[-1], steps[27]])
    ref = unchecked_collapse_diagnostics(gap, steps, stop)
    trace = trace_start(gap[:, 0], steps[0])
    update = jax.jit(trace_update)
    for i in range(1, gap.shape[1], block):
        trace = update(trace, gap[:, i:i + block].T, steps[i:i + block], stop)
    out = trace_end(trace, steps[0], stop)
    for field in ("peak", "peak_step", "half_life", "final"):
        np.testing.assert_array_equal(getattr(out, field), getattr(ref, field), err_msg=field)
    np.testing.assert_allclose(out.normalized_auc, ref.normalized_auc, rtol=1e-13)


# --- sweep ------------------------------------------------------------------------------------

def test_sweep_batches_equal_one_run_per_configuration(problem, monkeypatch):
    """Configurations of different horizons, sorted into several batches (forced small here)
    whose members stop at different steps, against spectral_dynamics one by one."""
    monkeypatch.setattr(sweep_module, "_BATCH_ENTRIES", 3 * 7)  # r = 7: batches of 3
    horizons = np.array([40, 1, 17, 40, 2, 17, 40, 1])  # sorted: [1 1 2 | 17 17 40 | 40 40]
    lams = np.linspace(0.2, 3.0, horizons.size)
    a_values = np.linspace(0.5, 2.0, horizons.size)
    lrs = np.array([lr_for(problem, lam, 0.9) for lam in lams])
    steps = 40
    configs = {"lam": lams, "lr": lrs, "horizon": horizons, "a": a_values}

    def omegas(c):
        return tt.kernel_weights(tt.beta_kernel(c["a"], c["a"]), c["horizon"], steps)

    out = tt.sweep(problem, configs, omegas, steps=steps)
    for i, horizon in enumerate(horizons):
        schedule = tt.kernel_teacher(int(horizon), tt.beta_kernel(a_values[i], a_values[i]))
        run = tt.spectral_dynamics(problem, lams[i], schedule, steps=int(horizon), lr=lrs[i])
        diag = tt.collapse_diagnostics(run.summary.gap, run.steps)
        expected = {"bias": run.summary.bias[-1], "gap": run.summary.gap[-1],
                    "distance": run.summary.distance[-1], "loss": run.summary.loss[-1],
                    "gap_peak": diag.peak, "half_life": diag.half_life,
                    "normalized_auc": diag.normalized_auc, "gap_final": diag.final,
                    "gap_at_half": run.summary.gap[horizon // 2] / diag.peak}
        for name, value in expected.items():
            np.testing.assert_allclose(out[name][i], value, rtol=1e-12, atol=1e-300,
                                       err_msg=f"{name} of configuration {i}")
