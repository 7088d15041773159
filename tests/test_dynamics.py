"""Student–teacher dynamics (THEORY §4): spectral solver, matrix simulation, fixed point, sweeps,
collapse diagnostics — against explicit loops, hand-computed values and one-by-one runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tracer_theory as tt


@pytest.fixture(scope="module")
def problem():
    return tt.random_problem(12, 7, 5, 3, seed=21)


def lr_for(problem, lam, fraction=0.5):
    return fraction * float(tt.stability_bound(tt.spectrum(problem).s[0] ** 2, lam))


def numpy_dynamics(problem, lam, omegas, lr):
    """The matrix recursion of THEORY §4 as a plain loop; returns (W, T, gaps)."""
    x, w0 = np.asarray(problem.x_img), np.asarray(problem.w0)
    y = np.asarray(tt.contrastive_target(problem))
    w, t, gaps = w0.copy(), w0.copy(), [0.0]
    for omega in omegas:
        w = w - lr * ((w @ x - y) + lam * (w - t) @ x) @ x.T
        t = (1 - omega) * t + omega * w
        gaps.append(np.linalg.norm((w - t) @ x))
    return w, t, np.array(gaps)


@pytest.mark.parametrize("schedule", [tt.static_teacher(), tt.ema_teacher(0.9),
                                      tt.wma_teacher(60), tt.kernel_teacher(60,
                                                                            tt.uniform_kernel())],
                         ids=["static", "ema", "wma", "uniform"])
@pytest.mark.parametrize("solver", [tt.spectral_dynamics, tt.simulate],
                         ids=["spectral", "matrix"])
def test_solvers_match_a_numpy_loop(problem, schedule, solver):
    lam, steps = 0.7, 60
    lr = lr_for(problem, lam)
    w, t, gaps = numpy_dynamics(problem, lam, np.asarray(schedule.weights(steps)), lr)
    run = solver(problem, lam, schedule, steps=steps, lr=lr, record_every=3)
    np.testing.assert_allclose(run.student, w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(run.teacher, t, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(run.summary.gap, gaps[::3], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(run.steps, np.arange(0, steps + 1, 3))


def test_summaries_at_the_start_and_at_direct_ft(problem):
    run = tt.spectral_dynamics(problem, 0.0, tt.static_teacher(), steps=3000,
                               lr=lr_for(problem, 0.0, 0.9))
    s = run.summary
    assert float(s.gap[0]) == 0 and float(s.bias[0]) == pytest.approx(1.0)
    assert float(s.distance[0]) == 0
    w_ft = tt.solve(problem, tt.DirectFT())
    assert float(s.bias[-1]) < 1e-10
    np.testing.assert_allclose(s.distance[-1], np.linalg.norm(w_ft - problem.w0)
                               / np.linalg.norm(problem.w0), rtol=1e-10)
    np.testing.assert_allclose(s.loss[-1], tt.fit_loss(problem, w_ft), rtol=1e-10)


def test_fixed_point_matches_its_matrix_form(problem):
    """W_{k+1} = W⁰(I − P) + (Y X⁺ + λ T_k P)/(1 + λ), with numpy's pinv."""
    lam, steps, schedule = 1.5, 40, tt.wma_teacher(40)
    x, w0 = np.asarray(problem.x_img), np.asarray(problem.w0)
    y = np.asarray(tt.contrastive_target(problem))
    xp = np.linalg.pinv(x)
    p = x @ xp
    t = w0.copy()
    for omega in np.asarray(schedule.weights(steps)):
        w = w0 @ (np.eye(len(p)) - p) + (y @ xp + lam * t @ p) / (1 + lam)
        t = (1 - omega) * t + omega * w
    run = tt.fixed_point(problem, lam, schedule, steps=steps)
    np.testing.assert_allclose(run.student, w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(run.teacher, t, rtol=1e-12, atol=1e-12)


def test_teacher_sd_solve_equals_the_simulated_run_and_its_limits(problem):
    lam, steps = 1.0, 80
    lr = lr_for(problem, lam)
    schedule = tt.ema_teacher(0.95)
    run = tt.simulate(problem, lam, schedule, steps=steps, lr=lr, record_every=steps)
    strategy = tt.TeacherSD(lam, schedule, steps=steps, lr=lr)
    np.testing.assert_allclose(tt.solve(problem, strategy), run.student, rtol=1e-12)
    np.testing.assert_array_equal(tt.solve(problem, tt.TeacherSD(lam, schedule, steps=0, lr=lr)),
                                  problem.w0)
    far = tt.TeacherSD(lam, tt.static_teacher(), steps=5000, lr=lr)
    np.testing.assert_allclose(tt.filter_factors(problem, far),
                               tt.filter_factors(problem, tt.StaticSD(lam)), rtol=1e-12)


def test_two_by_two_rate_is_the_spectral_radius():
    s, lam, omega = np.array([0.05, 0.3, 0.9]), 0.8, 0.02
    for si, rate in zip(s, np.asarray(tt.two_by_two_rate(s, lam, omega)), strict=True):
        p = 1 - si * (1 + lam)
        m = np.array([[p, si * lam], [omega * p, 1 - omega + omega * si * lam]])
        assert rate == pytest.approx(np.max(np.abs(np.linalg.eigvals(m))), rel=1e-12)


def test_sweep_equals_one_by_one(problem):
    lams = np.array([0.25, 1.0, 4.0, 1.0])
    horizons = np.array([30, 50, 80, 80])
    a_values = np.array([0.5, 0.5, 2.0, 1.0])
    lrs = np.array([lr_for(problem, lam) for lam in lams])
    steps = 80
    configs = {"lam": lams, "lr": lrs, "horizon": horizons, "a": a_values}

    def omegas(c):
        return tt.kernel_weights(tt.beta_kernel(c["a"], c["a"]), c["horizon"], steps)

    out = tt.sweep(problem, configs, omegas, steps=steps)
    for i in range(len(lams)):
        schedule = tt.kernel_teacher(int(horizons[i]), tt.beta_kernel(a_values[i], a_values[i]))
        run = tt.spectral_dynamics(problem, lams[i], schedule, steps=int(horizons[i]), lr=lrs[i])
        diag = tt.collapse_diagnostics(run.summary.gap, run.steps)
        np.testing.assert_allclose(out["bias"][i], run.summary.bias[-1], rtol=1e-12)
        np.testing.assert_allclose(out["gap"][i], run.summary.gap[-1], rtol=1e-12)
        np.testing.assert_allclose(out["loss"][i], run.summary.loss[-1], rtol=1e-12)
        np.testing.assert_allclose(out["normalized_auc"][i], diag.normalized_auc, rtol=1e-12)
        np.testing.assert_allclose(out["half_life"][i], diag.half_life)
        np.testing.assert_allclose(out["gap_at_half"][i],
                                   run.summary.gap[horizons[i] // 2] / diag.peak, rtol=1e-12)


def test_sweep_fixed_point_rule_equals_fixed_point_one_by_one(problem):
    momenta = np.array([0.0, 0.5, 0.9, 0.99])
    configs = {"lam": np.full(4, 2.0), "momentum": momenta}
    out = tt.sweep(problem, configs, lambda c: tt.ema_teacher(c["momentum"]).weights(50),
                   steps=50, rule="fixed_point")
    for i, m in enumerate(momenta):
        run = tt.fixed_point(problem, 2.0, tt.ema_teacher(float(m)), steps=50)
        np.testing.assert_allclose(out["bias"][i], run.summary.bias[-1], rtol=1e-12)


def test_collapse_diagnostics_hand_example():
    gap = jnp.array([0.0, 4.0, 2.0, 1.0, 1.0])
    d = tt.collapse_diagnostics(gap, jnp.arange(5))
    assert float(d.peak) == 4 and float(d.peak_step) == 1 and float(d.half_life) == 1
    # trapezoids: 2 + 3 + 1.5 + 1 = 7.5 over peak·span = 16
    assert float(d.normalized_auc) == pytest.approx(7.5 / 16)
    assert float(d.final) == pytest.approx(0.25)
    never = tt.collapse_diagnostics(jnp.array([0.0, 1.0, 0.9, 0.8]), jnp.array([0, 10, 20, 30]))
    assert float(never.half_life) == np.inf
    stopped = tt.collapse_diagnostics(gap, jnp.arange(5), stop=2)
    assert float(stopped.final) == pytest.approx(0.5)
    assert float(stopped.normalized_auc) == pytest.approx((2 + 3) / (4 * 2))


def test_spectral_solver_vmapped_over_lambda_equals_one_by_one(problem):
    lams = jnp.array([0.1, 1.0, 3.0])
    lr = lr_for(problem, 3.0)
    schedule = tt.wma_teacher(40)
    batched = jax.vmap(lambda lam: tt.spectral_dynamics(problem, lam, schedule, steps=40,
                                                        lr=lr).summary.bias[-1])(lams)
    for i, lam in enumerate(lams):
        single = tt.spectral_dynamics(problem, float(lam), schedule, steps=40, lr=lr)
        np.testing.assert_allclose(batched[i], single.summary.bias[-1], rtol=1e-12)


def test_float32_problem_stays_float32_and_equals_the_float64_run():
    p64 = tt.random_problem(12, 7, 5, 3, seed=22)
    p32 = tt.LinearProblem(*(np.asarray(a, np.float32) for a in (p64.x_img, p64.x_txt, p64.w0,
                                                                  p64.w_txt)))
    lr = lr_for(p64, 1.0)
    for solver in (tt.spectral_dynamics, tt.simulate):
        run = solver(p32, 1.0, tt.wma_teacher(30), steps=30, lr=lr)
        assert run.student.dtype == jnp.float32 and run.summary.gap.dtype == jnp.float32
        ref = solver(p64, 1.0, tt.wma_teacher(30), steps=30, lr=lr)
        np.testing.assert_allclose(run.student, ref.student, rtol=1e-4, atol=1e-5)


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("solver", [tt.spectral_dynamics, tt.simulate])
def test_lr_beyond_the_stability_bound(problem, solver):
    bound = lr_for(problem, 1.0, 1.0)
    message = r"lr must be below the stability bound 2/\(σ_max²\(1\+λ\)\)"
    with pytest.raises(ValueError, match=message):
        solver(problem, 1.0, tt.ema_teacher(0.9), steps=10, lr=1.01 * bound)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(steps=0), "steps must be a positive int, got 0"),
    (dict(steps=10.0), "steps must be an int, got 10.0"),
    (dict(record_every=3), "record_every must be a positive int dividing steps = 10"),
    (dict(lam=-1.0), "lam must be finite >= 0"),
    (dict(lr=0.0), "lr must be finite > 0"),
])
def test_bad_run_arguments(problem, kwargs, message):
    args = dict(lam=1.0, steps=10, lr=lr_for(problem, 1.0), record_every=1) | kwargs
    lam = args.pop("lam")
    with pytest.raises(ValueError, match=message):
        tt.spectral_dynamics(problem, lam, tt.static_teacher(), **args)


def test_schedule_must_be_a_schedule(problem):
    with pytest.raises(TypeError, match="schedule must be a Schedule"):
        tt.simulate(problem, 1.0, lambda t: 0.1, steps=10, lr=lr_for(problem, 1.0))


@pytest.mark.parametrize(("configs", "message"), [
    ({"lr": np.ones(2)}, r"configs is missing \['lam'\]"),
    ({"lam": np.ones(2), "lr": np.ones(3)}, "one length C"),
    ({"lam": np.ones(2), "lr": np.ones(2), "horizon": np.array([5, 50])}, r"\[1, steps=10\]"),
    ({"lam": np.array([1.0, -1.0]), "lr": np.ones(2)}, "configs\\['lam'\\] must be finite"),
])
def test_bad_sweep_configs(problem, configs, message):
    with pytest.raises(ValueError, match=message):
        tt.sweep(problem, configs, lambda c: tt.ema_teacher(0.9).weights(10), steps=10)


def test_sweep_lr_beyond_bound_fails_at_run_time(problem):
    configs = {"lam": np.ones(2), "lr": np.array([lr_for(problem, 1.0), 10 * lr_for(problem, 1.0)])}
    with pytest.raises(Exception, match="stability bound"):
        jax.block_until_ready(tt.sweep(problem, configs,
                                       lambda c: tt.ema_teacher(0.9).weights(10), steps=10))


def test_fixed_point_bias_is_a_product_over_the_teacher_weights(problem):
    """[ours] 1 − b_{k+1} = (1 − ω_{k+1}/(1+λ))(1 − b_k) and the student W_{k+1} has bias
    λ(1 − b_k)/(1+λ), so the fixed-point bias at step k+1 is λ/(1+λ) · Π_{j≤k} (1 − ω_j/(1+λ))."""
    lam, steps = 0.8, 300
    for schedule in (tt.wma_teacher(steps), tt.ema_teacher(0.97), tt.wma_teacher(steps, 2, 5)):
        omegas = np.asarray(schedule.weights(steps))
        product = lam / (1 + lam) * np.cumprod(np.r_[1.0, 1 - omegas[:-1] / (1 + lam)])
        run = tt.fixed_point(problem, lam, schedule, steps=steps)
        np.testing.assert_allclose(run.summary.bias[1:], product, rtol=1e-11)


@pytest.mark.parametrize("a", [0.5, 1.0, 2.0])
def test_fixed_point_bias_exponent_is_minus_a_over_one_plus_lambda(problem, a):
    """[ours] For a Beta(a, b) kernel the WMA fixed-point bias falls like T^(−a/(1+λ))."""
    lam = 1.0
    horizons = np.array([1_000, 3_000, 10_000, 30_000])
    configs = {"lam": np.full(4, lam), "horizon": horizons}
    out = tt.sweep(problem, configs,
                   lambda c: tt.kernel_weights(tt.beta_kernel(a, 0.5), c["horizon"], 30_000),
                   steps=30_000, rule="fixed_point")
    slope = np.polyfit(np.log(horizons), np.log(np.asarray(out["bias"])), 1)[0]
    assert slope == pytest.approx(-a / (1 + lam), abs=0.02)


# --- inputs that once ran without a word ---------------------------------------------------

def _ema10(c):
    return tt.ema_teacher(0.9).weights(10)


@pytest.mark.parametrize(("configs", "make_omegas", "message"), [
    ({"lam": np.ones(2), "lr": np.array([0.1, -0.1])}, _ema10,
     r"configs\['lr'\] must be finite and > 0, got configs\['lr'\]\[1\] = -0\.1"),
    ({"lam": np.ones(2), "lr": np.array([0.1, np.nan])}, _ema10,
     r"configs\['lr'\] must be finite and > 0, got configs\['lr'\]\[1\] = nan"),
    ({"lam": np.ones(1), "lr": np.array([0.1])}, lambda c: jnp.full(10, jnp.nan),
     r"make_omegas must return weights ω_t in \[0, 1\]; configuration 0 gives weights in "
     r"\[nan, nan\]"),
    ({"lam": np.ones(2), "lr": np.full(2, 0.1), "m": np.array([0.5, -0.5])},
     lambda c: 1 - c["m"] * jnp.ones(10),
     r"make_omegas must return weights ω_t in \[0, 1\]; configuration 1 gives weights in "
     r"\[1\.5, 1\.5\]"),
    ({"lam": np.ones(1), "lr": np.array([0.1])}, lambda c: jnp.full(10, 0.5 + 0j),
     "make_omegas must return real weights ω_t, got dtype complex128"),
    ({"lam": np.ones(1), "lr": np.array([0.1])}, lambda c: jnp.full(9, 0.5),
     r"make_omegas must return ω_1\.\.ω_steps, shape \(10,\), got shape \(9,\)"),
    ({"lam": np.array([1 + 0j]), "lr": np.array([0.1])}, _ema10,
     r"configs\['lam'\] must be real numbers, got dtype complex128"),
    ({"lam": np.ones(2), "lr": np.full(2, 0.1), "horizon": np.array([2.0, 3.0])}, _ema10,
     r"configs\['horizon'\] must be integers in \[1, steps=10\], got dtype float64"),
    ({"lam": np.ones(0), "lr": np.ones(0)}, _ema10, "at least one configuration"),
])
def test_sweep_refuses_bad_values(configs, make_omegas, message):
    problem = tt.random_problem(6, 5, 4, 3, seed=3)  # lr = 0.1 is stable for it
    with pytest.raises(ValueError, match=message):
        tt.sweep(problem, configs, make_omegas, steps=10)


def test_sweep_names_the_unstable_configuration(problem):
    lr = lr_for(problem, 1.0)
    with pytest.raises(ValueError, match=r"configs\['lr'\]\[1\] = .* with configs\['lam'\]\[1\] "
                                         r"= 1\.0: the bound is"):
        tt.sweep(problem, {"lam": np.ones(2), "lr": np.array([lr, 10 * lr])}, _ema10, steps=10)


def test_sweep_with_traced_configs_checks_at_run_time(problem):
    lr = lr_for(problem, 1.0)
    run = jax.jit(lambda lrs: tt.sweep(problem, {"lam": jnp.ones(2), "lr": lrs}, _ema10,
                                       steps=10)["bias"])
    assert np.all(np.isfinite(np.asarray(run(jnp.array([lr, lr])))))
    with pytest.raises(Exception, match=r"configs\['lr'\] must be finite and > 0"):
        jax.block_until_ready(run(jnp.array([lr, -lr])))


def test_collapse_diagnostics_of_a_diverged_curve_are_nan():
    gap = jnp.array([[0.0, 1.0, jnp.nan, 0.5], [0.0, 1.0, 0.4, 0.2], [0.0, 2.0, 1.0, jnp.inf]])
    d = tt.collapse_diagnostics(gap, jnp.arange(4))
    for field in ("peak", "peak_step", "half_life", "normalized_auc", "final"):
        values = np.asarray(getattr(d, field))
        assert np.isnan(values[0]) and np.isnan(values[2]), field  # never "fully collapsed"
        assert np.isfinite(values[1]), field
    # a NaN past `stop` is ignored
    stopped = tt.collapse_diagnostics(gap[2], jnp.arange(4), stop=2)
    assert float(stopped.final) == pytest.approx(0.5)


@pytest.mark.parametrize(("args", "message"), [
    ((jnp.ones(4), jnp.array([0, 1, 1, 2])), r"steps must be finite and strictly increasing"),
    ((jnp.ones(4), jnp.array([0.0, 1.0, np.nan, 3.0])), r"steps must be finite"),
    ((jnp.ones(4), jnp.arange(4), -1.0), r"stop must be finite and >= steps\[0\]"),
    ((jnp.ones(4) + 0j, jnp.arange(4)), r"gap must be a real array, got dtype complex128"),
    ((jnp.ones((2, 4)), jnp.arange(4), jnp.ones(3)), r"stop must be a scalar or one value per"),
])
def test_collapse_diagnostics_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        tt.collapse_diagnostics(*args)


class _Overshoot(tt.Schedule):
    """A user's schedule with ω = 1.5: outside [0, 1]."""

    def __call__(self, step):
        return jnp.full(jnp.shape(step), 1.5)


@pytest.mark.parametrize("solver", [tt.spectral_dynamics, tt.simulate, tt.fixed_point])
def test_solvers_refuse_a_schedule_outside_the_unit_interval(problem, solver):
    kwargs = {} if solver is tt.fixed_point else {"lr": lr_for(problem, 1.0)}
    with pytest.raises(ValueError, match=r"schedule _Overshoot must give teacher weights ω_t in "
                                         r"\[0, 1\]: ω_1 = 1\.5"):
        solver(problem, 1.0, _Overshoot(), steps=5, **kwargs)
    with pytest.raises(ValueError, match="schedule _Overshoot must give teacher weights"):
        tt.TeacherSD(1.0, _Overshoot(), steps=5, lr=0.1)


@pytest.mark.parametrize("solver", [tt.spectral_dynamics, tt.simulate])
def test_dynamics_that_overflow_are_refused(problem, solver):
    arrays = {k: np.asarray(getattr(problem, k)) for k in ("x_img", "x_txt", "w0", "w_txt")}
    arrays["x_txt"] = arrays["x_txt"] / np.abs(arrays["x_txt"]).max() * 1e308
    with pytest.raises(ValueError, match=f"{solver.__name__}: the contrastive target Y = W_T⁰ "
                                         "X_T C is not finite: it overflowed float64"):
        solver(tt.LinearProblem(**arrays), 1.0, tt.wma_teacher(5), steps=5,
               lr=lr_for(problem, 1.0))
    with pytest.raises(ValueError, match="sweep: the contrastive target Y"):
        tt.sweep(tt.LinearProblem(**arrays), {"lam": np.ones(1),
                 "lr": np.array([lr_for(problem, 1.0)])}, _ema10, steps=10)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: tt.stability_bound(0.0, 1.0), "sigma_max_sq must be finite > 0, got 0.0"),
    (lambda: tt.stability_bound(1.0, -1.0), "lam must be finite >= 0, got -1.0"),
    (lambda: tt.two_by_two_rate(0.1, 1.0, 1.5), r"omega must be in \[0, 1\], got 1\.5"),
    (lambda: tt.two_by_two_rate(np.array([0.1, np.nan]), 1.0, 0.5), "s must be finite"),
    (lambda: tt.two_by_two_rate(0.1 + 0j, 1.0, 0.5), "s must be real numbers"),
])
def test_rate_helpers_check_their_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()
