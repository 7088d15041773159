"""Teacher schedules and the pytree teacher update (THEORY §4)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracer_theory.dynamics.schedules import (
    BetaKernel,
    arcsine_kernel,
    beta_kernel,
    ema_teacher,
    kernel_teacher,
    kernel_weights,
    linear_ramp_kernel,
    static_teacher,
    uniform_kernel,
    wma_teacher,
)
from tracer_theory.dynamics.teacher import TeacherState, mix, teacher

HORIZON = 20
STEPS = HORIZON + 6  # trajectories run past the horizon

SCHEDULES = {
    "static": lambda: static_teacher(),
    "ema": lambda: ema_teacher(0.9),
    "ema_warmup": lambda: ema_teacher(0.99, warmup_from=0.5, warmup_steps=7),
    "wma": lambda: wma_teacher(HORIZON),
    "wma_skewed": lambda: wma_teacher(HORIZON, 2.0, 5.0),
    "uniform": lambda: kernel_teacher(HORIZON, uniform_kernel()),
    "linear_ramp": lambda: kernel_teacher(HORIZON, linear_ramp_kernel()),
    "plain_callable": lambda: kernel_teacher(HORIZON, lambda tau: 1.0 + tau**2),
}

TRACED_STEP_CHECKED = {"static", "ema_warmup", "wma", "plain_callable"}


def rel_err(x, y):
    x, y = np.asarray(x), np.asarray(y)
    return np.linalg.norm(x - y) / np.linalg.norm(y)


@eqx.filter_jit
def run_teacher(schedule, trajectory):
    """Teacher T_0..T_n along a student trajectory W_0..W_n (leading axis), via lax.scan."""
    pair = teacher(schedule)

    def body(state, w):
        state = pair.update(w, state)
        return state, state.params

    _, ts = jax.lax.scan(body, pair.init(trajectory[0]), trajectory[1:])
    return jnp.concatenate([trajectory[:1], ts])


def random_trajectory(seed, shape=(3,)):
    return np.random.default_rng(seed).normal(size=(STEPS + 1, *shape))


def beta_weights(horizon, a, b):
    tau = (np.arange(horizon + 1) + 0.5) / (horizon + 1)
    return tau ** (a - 1) * (1 - tau) ** (b - 1)


# --- weights() and __call__ agree -------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_weights_equal_calls_exactly(name):
    schedule = SCHEDULES[name]()
    num_steps = HORIZON + 5
    vectorised = np.asarray(schedule.weights(num_steps))
    one_by_one = np.array([schedule(t) for t in range(1, num_steps + 1)])
    assert vectorised.shape == (num_steps,)
    np.testing.assert_array_equal(vectorised, one_by_one)
    if name in TRACED_STEP_CHECKED:  # a traced step inside jit (a few, to bound compile time)
        jitted = jax.jit(lambda t: schedule(t))
        traced = np.array([jitted(jnp.int32(t)) for t in range(1, num_steps + 1)])
        np.testing.assert_allclose(traced, one_by_one, rtol=1e-15, atol=0)
    assert np.all((vectorised >= 0) & (vectorised <= 1))
    assert schedule.weights(0).shape == (0,)


def test_ema_warmup_values():
    schedule = ema_teacher(0.9, warmup_from=0.5, warmup_steps=4)
    np.testing.assert_allclose(schedule.weights(6), 1 - np.array([0.5, 0.6, 0.7, 0.8, 0.9, 0.9]),
                               rtol=0, atol=1e-15)
    assert schedule(100) == 1 - schedule.momentum  # exactly the target momentum after warm-up
    assert ema_teacher(0.9, warmup_from=0.5, warmup_steps=0)(1) == 1 - jnp.asarray(0.9)


# --- teacher trajectories against direct formulas ---------------------------------------------

@pytest.mark.parametrize("a, b", [(0.5, 0.5), (2.0, 5.0), (0.3, 1.7)])
def test_wma_recursion_is_kernel_weighted_average(a, b):
    trajectory = random_trajectory(0)
    teachers = run_teacher(wma_teacher(HORIZON, a, b), jnp.asarray(trajectory))
    kappa = beta_weights(HORIZON, a, b)
    for t in range(HORIZON + 1):
        direct = kappa[: t + 1] @ trajectory[: t + 1] / kappa[: t + 1].sum()
        assert rel_err(teachers[t], direct) <= 1e-12, t


def test_scalar_trajectory_and_plain_callable_kernel():
    horizon = 25
    trajectory = np.random.default_rng(1).normal(size=horizon + 1)
    teachers = run_teacher(kernel_teacher(horizon, lambda tau: jnp.exp(-3 * tau)),
                           jnp.asarray(trajectory))
    kappa = np.exp(-3 * (np.arange(horizon + 1) + 0.5) / (horizon + 1))
    direct = np.cumsum(kappa * trajectory) / np.cumsum(kappa)
    assert rel_err(teachers, direct) <= 1e-12


def test_uniform_kernel_is_running_mean():
    trajectory = random_trajectory(2)[: HORIZON + 1]
    teachers = run_teacher(kernel_teacher(HORIZON, uniform_kernel()), jnp.asarray(trajectory))
    running_mean = np.cumsum(trajectory, axis=0) / np.arange(1, HORIZON + 2)[:, None]
    assert rel_err(teachers, running_mean) <= 1e-12
    np.testing.assert_allclose(kernel_teacher(HORIZON, uniform_kernel()).weights(HORIZON),
                               1 / np.arange(2, HORIZON + 2), rtol=1e-15)


def test_linear_ramp_kernel_weights():
    tau = (np.arange(HORIZON + 1) + 0.5) / (HORIZON + 1)
    expected = (tau / np.cumsum(tau))[1:]
    np.testing.assert_allclose(kernel_teacher(HORIZON, linear_ramp_kernel()).weights(HORIZON),
                               expected, rtol=1e-14)


def test_ema_constant_momentum_closed_form():
    m = 0.8
    trajectory = random_trajectory(3)
    teachers = run_teacher(ema_teacher(m), jnp.asarray(trajectory))
    for t in range(STEPS + 1):
        direct = m**t * trajectory[0] + sum((1 - m) * m ** (t - j) * trajectory[j]
                                            for j in range(1, t + 1))
        assert rel_err(teachers[t], direct) <= 1e-12, t


def test_ema_warmup_against_numpy_loop():
    m_src, m_tar, warmup = 0.3, 0.95, 10
    trajectory = random_trajectory(4)
    teachers = run_teacher(ema_teacher(m_tar, warmup_from=m_src, warmup_steps=warmup),
                           jnp.asarray(trajectory))
    reference = trajectory[0].copy()
    for t in range(1, STEPS + 1):
        m_t = m_src + (m_tar - m_src) * min((t - 1) / warmup, 1.0)
        reference = m_t * reference + (1 - m_t) * trajectory[t]
        assert rel_err(teachers[t], reference) <= 1e-12, t


def test_static_teacher_stays_at_start():
    trajectory = random_trajectory(5)
    teachers = run_teacher(static_teacher(), jnp.asarray(trajectory))
    np.testing.assert_array_equal(teachers, np.broadcast_to(trajectory[0], teachers.shape))


# --- clamp past the horizon, batches ----------------------------------------------------------

def test_clamp_freezes_teacher_after_horizon():
    schedule = wma_teacher(HORIZON)
    weights = np.asarray(schedule.weights(STEPS))
    assert np.all(weights[:HORIZON] > 0) and np.all(weights[HORIZON:] == 0)
    assert schedule(HORIZON + 1) == 0 and schedule(10**6) == 0
    assert schedule(HORIZON) > 0
    teachers = np.asarray(run_teacher(schedule, jnp.asarray(random_trajectory(6))))
    frozen = teachers[HORIZON:]
    np.testing.assert_array_equal(frozen, np.broadcast_to(teachers[HORIZON], frozen.shape))
    np.testing.assert_array_equal(kernel_weights(arcsine_kernel(), HORIZON, STEPS)[HORIZON:], 0)


def test_vmap_over_beta_parameter_matches_one_by_one():
    grid = jnp.array([0.3, 0.5, 1.0, 2.0, 7.0])
    batched = jax.vmap(lambda a: wma_teacher(HORIZON, a, a).weights(STEPS))(grid)
    single = jnp.stack([wma_teacher(HORIZON, float(a), float(a)).weights(STEPS) for a in grid])
    np.testing.assert_allclose(batched, single, rtol=1e-14, atol=0)


def test_vmap_over_traced_horizon_matches_one_by_one():
    horizons = jnp.array([1, HORIZON, STEPS])
    kernel = beta_kernel(0.5, 2.0)
    batched = jax.jit(jax.vmap(lambda h: kernel_weights(kernel, h, STEPS)))(horizons)
    for row, h in zip(batched, horizons.tolist(), strict=True):
        np.testing.assert_allclose(row, kernel_weights(kernel, h, STEPS), rtol=1e-14, atol=0)
        np.testing.assert_allclose(row, kernel_teacher(h, kernel).weights(STEPS), rtol=1e-13,
                                   atol=0)
        assert np.all(np.asarray(row)[h:] == 0)


def test_vmap_over_ema_momentum():
    grid = jnp.array([0.0, 0.5, 0.9, 0.999])
    batched = jax.vmap(lambda m: ema_teacher(m).weights(5))(grid)
    np.testing.assert_array_equal(batched, np.repeat(1 - np.asarray(grid)[:, None], 5, axis=1))


# --- the pytree update ------------------------------------------------------------------------

def random_mlp(seed):
    """An ``eqx.nn.MLP`` (float32) with random weights, built without compiling its init."""
    shapes = eqx.filter_eval_shape(eqx.nn.MLP, 3, 2, 8, 2, dtype=jnp.float32,
                                   key=jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)

    def fill(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return jnp.asarray(rng.normal(size=x.shape).astype(x.dtype))
        return x

    return jax.tree.map(fill, shapes, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))


def test_update_on_mlp_under_jit():
    w0, student = random_mlp(0), random_mlp(1)
    pair = teacher(ema_teacher(0.75))
    state = pair.init(w0)
    assert isinstance(state, TeacherState) and int(state.step) == 0 and state.params is w0
    new = eqx.filter_jit(pair.update)(student, state)

    omega = np.float32(0.25)  # manual tree_map, in numpy float32
    t_arrays, s_arrays = eqx.filter(w0, eqx.is_array), eqx.filter(student, eqx.is_array)
    expected = jax.tree.map(lambda t, s: (1 - omega) * np.asarray(t) + omega * np.asarray(s),
                            t_arrays, s_arrays)
    scale = jax.tree.map(lambda t, s: np.abs(t) + np.abs(s), t_arrays, s_arrays)
    got = eqx.filter(new.params, eqx.is_array)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    eps = np.finfo(np.float32).eps
    for g, e, size in zip(*map(jax.tree.leaves, (got, expected, scale)), strict=True):
        assert g.dtype == jnp.float32 and e.dtype == np.float32
        # within rounding of the two products (XLA may fuse them into a multiply-add)
        assert np.all(np.abs(np.asarray(g) - e) <= 2 * eps * size)
    assert int(new.step) == 1
    assert new.params.activation is w0.activation
    assert new.params.final_activation is w0.final_activation
    assert jax.tree.structure(new.params) == jax.tree.structure(w0)


def test_mix_keeps_dtypes_and_non_float_leaves():
    t = {"w": jnp.ones(3, jnp.float32), "count": jnp.array(3), "name": "t", "act": jax.nn.relu}
    s = {"w": jnp.zeros(3, jnp.float32), "count": jnp.array(7), "name": "s", "act": jnp.tanh}
    t_arrays, s_arrays = eqx.filter(t, eqx.is_array), eqx.filter(s, eqx.is_array)
    mixed = jax.jit(mix)(t_arrays, s_arrays, jnp.float64(0.25))  # float64 ω, float32 leaf
    assert mixed["w"].dtype == jnp.float32
    np.testing.assert_array_equal(mixed["w"], np.full(3, 0.75, np.float32))
    assert int(mixed["count"]) == 3  # integer arrays are the teacher's
    eager = mix(t, s, 0.25)
    assert eager["name"] == "t" and eager["act"] is jax.nn.relu and int(eager["count"]) == 3
    np.testing.assert_array_equal(eager["w"], mixed["w"])
    np.testing.assert_array_equal(mix(t, s, 0.0)["w"], t["w"])
    np.testing.assert_array_equal(mix(t, s, 1.0)["w"], s["w"])


def test_traced_step_and_schedule_in_jitted_loop():
    pair = teacher(wma_teacher(5))

    @jax.jit
    def run(w):
        state = pair.init(jnp.zeros(2))
        return jax.lax.fori_loop(0, 8, lambda i, st: pair.update(w * (i + 1), st), state)

    state = run(jnp.ones(2))
    assert int(state.step) == 8
    kappa = beta_weights(5, 0.5, 0.5)
    values = np.arange(6, dtype=float)  # W_0 = 0, W_t = t
    np.testing.assert_allclose(state.params, np.full(2, kappa @ values / kappa.sum()), rtol=1e-13)


# --- bad inputs -------------------------------------------------------------------------------

@pytest.mark.parametrize("build, match", [
    (lambda: wma_teacher(0), "horizon must be a positive int, got 0"),
    (lambda: wma_teacher(-3), "horizon must be a positive int"),
    (lambda: wma_teacher(2.5), "horizon must be an int"),
    (lambda: wma_teacher(True), "horizon must be an int"),
    (lambda: wma_teacher(10, a=0.0), "a must be finite > 0"),
    (lambda: wma_teacher(10, b=-1.0), "b must be finite > 0"),
    (lambda: beta_kernel(float("nan"), 1.0), "a must be finite"),
    (lambda: ema_teacher(1.0), r"momentum must be in \[0, 1\), got 1"),
    (lambda: ema_teacher(-0.1), r"momentum must be in \[0, 1\)"),
    (lambda: ema_teacher(0.9, warmup_from=1.5, warmup_steps=3), r"warmup_from must be in \[0, 1"),
    (lambda: ema_teacher(0.9, warmup_from=0.5, warmup_steps=-1), "warmup_steps must be finite >="),
    (lambda: ema_teacher(0.9, warmup_from=0.5, warmup_steps=2.5), "warmup_steps must be an int"),
    (lambda: kernel_teacher(10, lambda tau: tau - 0.5), "kernel must return non-negative"),
    (lambda: kernel_teacher(10, lambda tau: 0.0 * tau), "positive sum"),
    (lambda: kernel_teacher(10, lambda tau: jnp.log(tau - 0.5)), "kernel must return finite"),
    (lambda: kernel_teacher(10, lambda tau: jnp.where(tau > 0.9, jnp.inf, 1.0)), "finite"),
    (lambda: kernel_weights(uniform_kernel(), 0, 5), "horizon must be finite >= 1"),
    (lambda: kernel_weights(uniform_kernel(), 3, -1), "num_steps must be a non-negative int"),
    (lambda: wma_teacher(4).weights(2.0), "num_steps must be an int"),
    (lambda: jax.jit(lambda h: kernel_teacher(h, uniform_kernel()))(3), "static Python int"),
])
def test_bad_inputs_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_kernel_values_in_log_space():
    class Spike(BetaKernel):
        def log(self, tau):
            return jnp.where(tau > 0.5, jnp.inf, 0.0)

    with pytest.raises(ValueError, match="kernel must return finite"):
        kernel_teacher(4, Spike(1.0, 1.0))


def test_traced_bad_horizon_fails_at_run_time():
    with pytest.raises(RuntimeError, match="horizon must be finite >= 1"):
        jax.block_until_ready(jax.jit(lambda h: kernel_weights(uniform_kernel(), h, 5))(0))


def test_non_callable_arguments():
    with pytest.raises(TypeError, match="kernel must be a callable"):
        kernel_teacher(3, 1.0)
    with pytest.raises(TypeError, match="schedule must be a callable"):
        teacher(0.5)


# --- inputs that once gave silent wrong weights ------------------------------------------------

GRID = r"the grid τ_k = \(k \+ 0\.5\)/\(horizon \+ 1\), k = 0\.\.horizon"


@pytest.mark.parametrize("build, match", [
    (lambda: kernel_teacher(5, lambda tau: (1 + 1j) * tau),
     f"kernel must return real weights on {GRID}, got dtype complex128"),
    (lambda: kernel_teacher(5, lambda tau: jnp.full_like(tau, 1e-310)),
     r"kernel weights are too small to normalize in float64: the first positive one, "
     r"κ\(τ_0\) = 1e-310, is subnormal \(below 2\.23e-308, the smallest normal float64\)"),
    (lambda: kernel_teacher(5, lambda tau: jnp.where(tau < 0.3, 1e-310, 1.0)),
     r"too small to normalize .* κ\(τ_0\) = 1e-310"),
    (lambda: kernel_teacher(5, lambda tau: jnp.ones(3)),
     r"kernel must map the grid τ of shape \(6,\) to weights of the same shape, got shape "
     r"\(3,\)"),
    (lambda: kernel_teacher(5, lambda tau: jnp.where(tau > 0.5, jnp.nan, 1.0)),
     r"kernel must return finite weights on .*; got κ\(τ_3\) = nan"),
    (lambda: ema_teacher(0.9, warmup_from=0.5),
     r"warmup_from = 0\.5 was given without warmup_steps; pass warmup_steps \(the number of "
     r"warm-up updates\) too, or neither"),
    (lambda: ema_teacher(0.9, warmup_steps=5),
     r"warmup_steps = 5 was given without warmup_from; pass warmup_from \(the momentum at "
     r"update 1\) too, or neither"),
    (lambda: ema_teacher(0.9, warmup_from=0.5, warmup_steps=4)(-10),
     r"step must be >= 1 \(teacher updates are numbered 1, 2, …\), got -10"),
    (lambda: ema_teacher(0.9).momentum_at(0), "step must be >= 1"),
    (lambda: wma_teacher(5)(jnp.array([3, 0])), r"step must be >= 1 .*, got 0"),
    (lambda: static_teacher()(-1), "step must be >= 1"),
    (lambda: wma_teacher(5)(1.5), "step must be an integer, got dtype float64"),
    (lambda: wma_teacher(5)(True), "step must be an integer, got True"),
    (lambda: mix(jnp.ones(2), jnp.zeros(2), 1.5), r"omega must be in \[0, 1\], got 1\.5"),
    (lambda: mix(jnp.ones(2), jnp.zeros(2), float("nan")), r"omega must be in \[0, 1\], got nan"),
    (lambda: mix(jnp.ones(2), jnp.zeros(2), -0.1), r"omega must be in \[0, 1\]"),
    (lambda: mix(jnp.ones(2), jnp.zeros(2), 0.5 + 0j), "omega must be a real number"),
])
def test_silently_wrong_inputs_are_refused(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_negative_ema_step_no_longer_gives_omega_above_one():
    schedule = ema_teacher(0.9, warmup_from=0.5, warmup_steps=4)
    weights = np.asarray(schedule.weights(10))
    assert np.all((weights >= 0) & (weights <= 1))
    # warmup_steps = 0 with warmup_from is an explicit empty warm-up: the constant momentum
    assert float(ema_teacher(0.9, warmup_from=0.5, warmup_steps=0)(1)) == pytest.approx(0.1)


def test_sharp_beta_kernel_gives_weights_in_the_unit_interval():
    # κ_0 ≈ e^-722 of the largest weight: subnormal, so 0 (as XLA would flush it); the teacher
    # then jumps to W_1 (ω_1 = 1) and averages from there.
    weights = np.asarray(wma_teacher(1000, 96.0, 1.0).weights(1000))
    assert np.all(np.isfinite(weights)) and np.all((weights >= 0) & (weights <= 1))
    assert weights[0] == 1 and 0 < weights[-1] < 1


def test_traced_bad_step_and_omega_fail_at_run_time():
    schedule = wma_teacher(5)
    run = jax.jit(lambda t: schedule(t))
    assert float(run(jnp.int32(2))) > 0
    with pytest.raises(Exception, match="step must be >= 1"):
        jax.block_until_ready(run(jnp.int32(0)))
    mixed = jax.jit(lambda w: mix(jnp.ones(2), jnp.zeros(2), w))
    np.testing.assert_array_equal(mixed(0.25), np.full(2, 0.75))
    with pytest.raises(Exception, match=r"omega must be in \[0, 1\]"):
        jax.block_until_ready(mixed(1.5))


def test_teacher_update_refuses_a_custom_schedule_outside_the_unit_interval():
    pair = teacher(lambda step: 2.0)
    with pytest.raises(ValueError, match=r"omega must be in \[0, 1\], got 2\.0"):
        pair.update(jnp.ones(2), pair.init(jnp.zeros(2)))


def test_built_in_schedules_put_no_run_time_check_in_the_teacher_update():
    """A built-in schedule is validated when built and the counter starts at 1, so the jitted
    update carries no ``error_if`` (a conditional that syncs with the host on accelerators);
    an arbitrary callable's ω is still checked, and both give the same teacher."""
    params = {"w": jnp.arange(3.0)}
    student = {"w": jnp.ones(3)}
    for schedule in (wma_teacher(10), ema_teacher(0.9), static_teacher()):
        update = teacher(schedule).update
        state = teacher(schedule).init(params)
        assert "cond" not in str(jax.make_jaxpr(update)(student, state))
        checked = teacher(lambda t, s=schedule: s(t)).update
        assert "cond" in str(jax.make_jaxpr(checked)(student, state))
        np.testing.assert_array_equal(update(student, state).params["w"],
                                      checked(student, state).params["w"])
