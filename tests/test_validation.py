"""Bad input fails early with a ``ValueError`` that names the argument and what was expected.

Never an XLA / shape ``TypeError`` from deep inside a jitted computation. Traced values (inside
``jax.jit``/``jax.vmap``) cannot be checked in Python; for those the check is attached to the
value and fails when the computation runs (an equinox runtime error), never silently.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tracer_theory as tt

D_IMG, N, D_TXT, K = 6, 5, 4, 3
ARG_NAMES = ("x_img", "x_txt", "w0", "w_txt")
REGULARISED = (tt.StaticSD, tt.L2SP, tt.WeightDecay)


def _good_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_img": rng.standard_normal((D_IMG, N)),
        "x_txt": rng.standard_normal((D_TXT, N)),
        "w0": rng.standard_normal((K, D_IMG)),
        "w_txt": rng.standard_normal((K, D_TXT)),
    }


def _build(**overrides):
    arrays = _good_arrays()
    contrast = overrides.pop("contrast", "paper")
    arrays.update(overrides)
    return tt.LinearProblem(arrays["x_img"], arrays["x_txt"], arrays["w0"], arrays["w_txt"],
                            contrast=contrast)


def _raises_naming(name: str, expected: str, fn, *args, **kwargs) -> str:
    """Assert ``fn(*args, **kwargs)`` raises a ValueError matching ``expected`` naming ``name``."""
    with pytest.raises(ValueError, match=expected) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert re.search(rf"\b{re.escape(name)}\b", message), (
        f"message does not name {name!r}: {message!r}")
    return message


@pytest.fixture(scope="module")
def problem() -> tt.LinearProblem:
    return _build()


@pytest.fixture(scope="module")
def sigma_max_sq(problem) -> float:
    return float(np.linalg.svd(np.asarray(problem.x_img), compute_uv=False)[0] ** 2)


# --- the good case, so that every failure below is caused by the one thing changed ----------

def test_good_input_is_accepted(problem):
    assert problem.x_img.dtype == jnp.float64
    w = tt.solve(problem, tt.DirectFT())
    assert w.shape == (K, D_IMG)
    assert np.all(np.isfinite(np.asarray(w)))


# --- shapes ------------------------------------------------------------------------------------

def test_mismatched_n_between_x_img_and_x_txt():
    x_txt = np.ones((D_TXT, N + 1))
    message = _raises_naming("x_img", r"samples \(columns\)", _build, x_txt=x_txt)
    assert "x_txt" in message and f"{N}" in message and f"{N + 1}" in message


def test_mismatched_k_between_w0_and_w_txt():
    w_txt = np.ones((K + 2, D_TXT))
    message = _raises_naming("w0", r"k = ", _build, w_txt=w_txt)
    assert "w_txt" in message and f"k = {K}" in message and f"k = {K + 2}" in message


def test_mismatched_d_img_between_w0_and_x_img():
    w0 = np.ones((K, D_IMG + 1))
    message = _raises_naming("w0", r"must be \(k, d_I\)", _build, w0=w0)
    assert "x_img" in message and f"d_I = {D_IMG + 1}" in message and f"d_I = {D_IMG}" in message


def test_mismatched_d_txt_between_w_txt_and_x_txt():
    w_txt = np.ones((K, D_TXT + 3))
    message = _raises_naming("w_txt", r"must be \(k, d_T\)", _build, w_txt=w_txt)
    assert "x_txt" in message and f"d_T = {D_TXT + 3}" in message


@pytest.mark.parametrize("name", ARG_NAMES)
@pytest.mark.parametrize("ndim", [0, 1, 3])
def test_wrong_number_of_dimensions(name, ndim):
    good = _good_arrays()[name]
    bad = {0: good[0, 0], 1: good.ravel(), 3: good[None, :, :]}[ndim]
    message = _raises_naming(name, r"must be a 2-D array of shape \(", _build, **{name: bad})
    assert str(np.shape(bad)) in message


@pytest.mark.parametrize("name", ARG_NAMES)
def test_empty_array(name):
    empty = _good_arrays()[name][:0, :]
    message = _raises_naming(name, "must not be empty", _build, **{name: empty})
    assert str(empty.shape) in message


# --- values and dtypes -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ARG_NAMES)
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_entry(name, bad_value):
    bad = _good_arrays()[name].copy()
    bad[0, 1] = bad_value
    _raises_naming(name, "contains NaN or Inf", _build, **{name: bad})


@pytest.mark.parametrize("name", ARG_NAMES)
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex128])
def test_non_floating_dtype(name, dtype):
    bad = _good_arrays()[name].astype(dtype)
    message = _raises_naming(name, "must have dtype float32 or float64", _build, **{name: bad})
    assert np.dtype(dtype).name in message


@pytest.mark.parametrize("name", ARG_NAMES)
def test_mixed_float32_and_float64(name):
    assert jax.config.jax_enable_x64  # set in tests/conftest.py; else float64 becomes float32
    bad = _good_arrays()[name].astype(np.float32)
    message = _raises_naming(name, "must share one dtype", _build, **{name: bad})
    assert "float32" in message and "float64" in message


@pytest.mark.parametrize("contrast", ["Paper", "centred", "", None])
def test_unknown_contrast(contrast):
    message = _raises_naming("contrast", "must be 'paper' or 'centered'", _build,
                             contrast=contrast)
    assert repr(contrast) in message


# --- regularisation strength -------------------------------------------------------------------

@pytest.mark.parametrize("cls", REGULARISED, ids=lambda c: c.__name__)
@pytest.mark.parametrize("lam", [-1.0, -1e-12, np.nan, np.inf, -np.inf],
                         ids=["neg", "tiny-neg", "nan", "inf", "-inf"])
def test_bad_lambda(cls, lam):
    message = _raises_naming("lam", r"lam must be finite >=? 0", cls, lam)
    assert str(float(lam)) in message


@pytest.mark.parametrize("cls", REGULARISED, ids=lambda c: c.__name__)
def test_lambda_must_be_scalar(cls):
    _raises_naming("lam", "must be a scalar", cls, np.array([1.0, 2.0]))


def test_weight_decay_refuses_zero_lambda():
    _raises_naming("lam", r"lam must be finite > 0", tt.WeightDecay, 0.0)


@pytest.mark.parametrize("cls", [tt.StaticSD, tt.L2SP], ids=lambda c: c.__name__)
def test_zero_lambda_is_allowed_where_documented(cls, problem):
    w = tt.solve(problem, cls(0.0))
    np.testing.assert_allclose(w, tt.solve(problem, tt.DirectFT()), rtol=1e-10, atol=1e-12)


# --- stopped gradient descent ------------------------------------------------------------------

@pytest.mark.parametrize("lr", [0.0, -0.1, np.nan, np.inf], ids=["zero", "neg", "nan", "inf"])
def test_stopped_gd_bad_lr(lr):
    _raises_naming("lr", r"lr must be finite > 0", tt.StoppedGD, 10, lr)


@pytest.mark.parametrize("entry", [tt.solve, tt.filter_factors], ids=["solve", "filter_factors"])
@pytest.mark.parametrize("factor", [1.001, 1.5, 10.0])
def test_stopped_gd_lr_above_stability_bound(problem, sigma_max_sq, entry, factor):
    # σ_max from numpy; numpy's and jax's SVD may differ in the last bit, hence factor > 1.
    strategy = tt.StoppedGD(10, factor * 2.0 / sigma_max_sq)  # constructing it is fine
    message = _raises_naming("lr", "must be below the stability bound", entry, problem, strategy)
    bound = float(re.search(r"2/σ_max² = ([0-9.e+-]+)", message).group(1))
    assert bound == pytest.approx(2.0 / sigma_max_sq, rel=1e-9)


@pytest.mark.parametrize("entry", [tt.solve, tt.filter_factors], ids=["solve", "filter_factors"])
def test_stopped_gd_lr_exactly_at_bound_is_refused(problem, entry):
    spec = tt.spectrum(problem)
    strategy = tt.StoppedGD(10, 2.0 / spec.sigma_max_sq)  # |1 − lr σ_max²| = 1: not stable
    _raises_naming("lr", "must be below the stability bound", entry, problem, strategy,
                   spectrum=spec)


def test_stopped_gd_lr_just_below_bound_is_accepted(problem, sigma_max_sq):
    f = tt.filter_factors(problem, tt.StoppedGD(10, 0.99 * 2.0 / sigma_max_sq))
    assert np.all(np.isfinite(np.asarray(f)))


@pytest.mark.parametrize("steps", [-1, -100])
def test_stopped_gd_negative_steps(steps):
    message = _raises_naming("steps", r"steps must be finite >= 0", tt.StoppedGD, steps, 0.1)
    assert str(steps) in message


@pytest.mark.parametrize("steps", [2.5, 3.0, np.float64(4.0), True],
                         ids=["2.5", "3.0", "np-float", "bool"])
def test_stopped_gd_non_integer_steps(steps):
    _raises_naming("steps", "steps must be an integer", tt.StoppedGD, steps, 0.1)


@pytest.mark.parametrize("name", ["steps", "lr"])
def test_gradient_descent_checks_steps_and_lr(problem, name):
    kwargs = {"steps": 5, "lr": 0.1}
    kwargs[name] = -1 if name == "steps" else 0.0
    _raises_naming(name, f"{name} must be finite", tt.gradient_descent, problem, tt.DirectFT(),
                   **kwargs)


# --- decompose, spectrum and solve arguments ---------------------------------------------------

@pytest.mark.parametrize("shape", [(K, D_IMG + 1), (K + 1, D_IMG), (D_IMG, K), (K * D_IMG,),
                                   (1, K, D_IMG)])
def test_decompose_wrong_w_shape(problem, shape):
    message = _raises_naming("w", "must have the shape of w0", tt.decompose, problem,
                             np.zeros(shape))
    assert str((K, D_IMG)) in message and str(shape) in message


@pytest.mark.parametrize("rtol", [-0.1, 1.0, np.nan])
def test_spectrum_bad_rtol(problem, rtol):
    _raises_naming("rtol", r"rtol must be in \[0, 1\)", tt.spectrum, problem, rtol)


@pytest.mark.parametrize("not_a_strategy", ["DirectFT", tt.DirectFT, 1.0, None],
                         ids=["str", "class", "float", "none"])
@pytest.mark.parametrize("entry", [tt.solve, tt.filter_factors], ids=["solve", "filter_factors"])
def test_solve_refuses_non_strategy(problem, entry, not_a_strategy):
    # The code raises TypeError (a wrong type, not a wrong value) and names the argument.
    with pytest.raises(TypeError, match=r"strategy must be a Strategy"):
        entry(problem, not_a_strategy)


def test_solve_refuses_non_problem():
    with pytest.raises(TypeError, match=r"problem must be a LinearProblem"):
        tt.solve(_good_arrays(), tt.DirectFT())


# --- traced values: the check is deferred to run time, never skipped ---------------------------

def _runtime_error_text(info: pytest.ExceptionInfo) -> str:
    return f"{info.value}\n{info.value.__cause__}"


@pytest.mark.parametrize("cls", REGULARISED, ids=lambda c: c.__name__)
def test_negative_lambda_under_jit_fails_at_run_time(problem, cls):
    solve = jax.jit(lambda lam: tt.solve(problem, cls(lam)))
    np.asarray(solve(1.0))  # a valid traced value runs
    with pytest.raises(Exception) as info:  # jax.jit wraps equinox's error
        jax.block_until_ready(solve(-1.0))
    text = _runtime_error_text(info)
    assert "lam must be finite" in text


@pytest.mark.parametrize("cls", REGULARISED, ids=lambda c: c.__name__)
def test_negative_lambda_under_vmap_fails_at_run_time(problem, cls):
    factors = jax.vmap(lambda lam: tt.filter_factors(problem, cls(lam)))
    assert factors(jnp.array([0.5, 2.0])).shape[0] == 2  # a valid batch runs
    with pytest.raises(Exception) as info:  # equinox runtime error
        jax.block_until_ready(factors(jnp.array([1.0, -1.0])))
    assert "lam must be finite" in _runtime_error_text(info)


def test_lr_above_bound_under_jit_fails_at_run_time(problem, sigma_max_sq):
    solve = jax.jit(lambda lr: tt.solve(problem, tt.StoppedGD(10, lr)))
    np.asarray(solve(1.0 / sigma_max_sq))
    with pytest.raises(Exception) as info:  # jax.jit wraps equinox's error
        jax.block_until_ready(solve(3.0 / sigma_max_sq))
    assert "lr must be below the stability bound" in _runtime_error_text(info)


def test_nan_features_under_jit_fail_at_run_time():
    good = _good_arrays()
    run = jax.jit(lambda x: tt.solve(_build(x_img=x), tt.DirectFT()))
    bad = good["x_img"].copy()
    bad[2, 2] = np.nan
    with pytest.raises(Exception) as info:  # jax.jit wraps equinox's error
        jax.block_until_ready(run(bad))
    assert "x_img contains NaN or Inf" in _runtime_error_text(info)


# --- inputs that once slipped through (complex, half precision, foreign spectra, ...) ---


@pytest.mark.parametrize("cls", [tt.StaticSD, tt.L2SP, tt.WeightDecay])
def test_complex_lambda_is_refused(cls):
    _raises_naming("lam", "must be a real number", cls, 1 + 1j)


def test_complex_lr_is_refused():
    _raises_naming("lr", "must be a real number", tt.StoppedGD, 3, 0.1 + 0j)


@pytest.mark.parametrize("value", [None, "a", [[1.0, 2.0], [1.0]]])
def test_non_numeric_lambda_and_arrays_name_the_argument(value, problem):
    _raises_naming("lam", "must be a real number", tt.StaticSD, value)
    _raises_naming("x_img", "must be a 2-D array", tt.LinearProblem, value, problem.x_txt,
                   problem.w0, problem.w_txt)


def test_half_precision_is_refused(problem):
    arrays = [np.asarray(a, np.float16) for a in (problem.x_img, problem.x_txt, problem.w0,
                                                  problem.w_txt)]
    _raises_naming("x_img", "must have dtype float32 or float64, got float16",
                   tt.LinearProblem, *arrays)


def test_spectrum_of_another_problem_is_refused(problem):
    other = tt.random_problem(problem.x_img.shape[0] + 2, problem.n, 3, problem.w0.shape[0])
    spec = tt.spectrum(other)
    _raises_naming("spectrum", "pass spectrum=tt.spectrum", tt.solve, problem, tt.DirectFT(),
                   spectrum=spec)
    _raises_naming("spectrum", "pass spectrum=tt.spectrum", tt.decompose, problem, problem.w0,
                   spectrum=spec)
    with pytest.raises(TypeError, match="spectrum must be a Spectrum"):
        tt.solve(problem, tt.DirectFT(), spectrum="not a spectrum")


def test_gradient_descent_checks_init_and_until_arguments(problem):
    bad = jnp.zeros((problem.w0.shape[0], problem.w0.shape[1] + 1))
    _raises_naming("init", "must have the shape", tt.gradient_descent, problem, tt.DirectFT(),
                   steps=3, lr=0.1, init=bad)
    target = tt.solve(problem, tt.DirectFT())
    _raises_naming("target", "must have the shape", tt.gradient_descent_until, problem,
                   tt.DirectFT(), bad, tol=1e-8, lr=0.1, max_steps=10)
    for name, kwargs in [("lr", dict(lr=-0.1)), ("tol", dict(tol=-1.0)),
                         ("max_steps", dict(max_steps=-1))]:
        args = dict(tol=1e-8, lr=0.1, max_steps=10) | kwargs
        _raises_naming(name, "must be", tt.gradient_descent_until, problem, tt.DirectFT(),
                       target, **args)
    with pytest.raises(TypeError, match="strategy must be a Strategy"):
        tt.gradient_descent(problem, "x", steps=3, lr=0.1)


def test_random_problem_refuses_negative_decay():
    with pytest.raises(ValueError, match="decay must be >= 0"):
        tt.random_problem(4, 3, 2, 2, decay=-1.0)


# --- a spectrum belongs to one problem and one dtype -----------------------------------------

def test_spectrum_of_other_data_of_the_same_shape_is_refused():
    p, q = tt.random_problem(8, 6, 5, 3, seed=0), tt.random_problem(8, 6, 5, 3, seed=1)
    foreign = tt.spectrum(q)
    for entry, args in [(tt.solve, (p, tt.DirectFT())), (tt.filter_factors, (p, tt.L2SP(1.0))),
                        (tt.decompose, (p, p.w0))]:
        message = _raises_naming("spectrum", "spectrum is not the SVD of this problem's x_img",
                                 entry, *args, spectrum=foreign)
        assert "pass spectrum=tt.spectrum(problem)" in message
    lr = 0.5 * float(tt.stability_bound(tt.spectrum(p).sigma_max_sq, 1.0))
    for solver in (tt.spectral_dynamics, tt.simulate):
        _raises_naming("spectrum", "is not the SVD", solver, p, 1.0, tt.static_teacher(),
                       steps=4, lr=lr, spectrum=foreign)
    _raises_naming("spectrum", "is not the SVD", tt.sweep, p, {"lam": np.ones(1),
                   "lr": np.array([lr])}, lambda c: jnp.zeros(4), steps=4, spectrum=foreign)
    # its own spectrum, and one of the same data rebuilt, are accepted
    rebuilt = tt.LinearProblem(*(np.asarray(a) for a in (p.x_img, p.x_txt, p.w0, p.w_txt)))
    np.testing.assert_array_equal(tt.solve(p, tt.DirectFT(), spectrum=tt.spectrum(rebuilt)),
                                  tt.solve(p, tt.DirectFT()))


def test_spectrum_of_another_dtype_is_refused():
    p = tt.random_problem(8, 6, 5, 3, seed=0)
    p32 = tt.LinearProblem(*(np.asarray(a, np.float32) for a in (p.x_img, p.x_txt, p.w0,
                                                                  p.w_txt)))
    _raises_naming("spectrum", "spectrum has dtype float32 but the problem's x_img has dtype "
                   "float64", tt.solve, p, tt.DirectFT(), spectrum=tt.spectrum(p32))
    _raises_naming("spectrum", "spectrum has dtype float64 but the problem's x_img has dtype "
                   "float32", tt.solve, p32, tt.DirectFT(), spectrum=tt.spectrum(p))


def test_foreign_spectrum_under_jit_fails_at_run_time():
    p, q = tt.random_problem(8, 6, 5, 3, seed=0), tt.random_problem(8, 6, 5, 3, seed=1)
    run = jax.jit(lambda problem, spec: tt.solve(problem, tt.DirectFT(), spectrum=spec))
    np.testing.assert_allclose(run(p, tt.spectrum(p)), tt.solve(p, tt.DirectFT()), rtol=1e-12)
    with pytest.raises(Exception) as info:  # equinox runtime error
        jax.block_until_ready(run(p, tt.spectrum(q)))
    assert "spectrum is not the SVD of this problem's x_img" in _runtime_error_text(info)


def test_vmap_over_lambda_with_a_shared_spectrum_equals_one_by_one():
    p = tt.random_problem(8, 6, 5, 3, seed=0)
    spec = tt.spectrum(p)
    lams = jnp.array([0.1, 1.0, 5.0])
    batched = jax.vmap(lambda lam: tt.solve(p, tt.L2SP(lam), spectrum=spec))(lams)
    for i, lam in enumerate(lams):
        np.testing.assert_allclose(batched[i], tt.solve(p, tt.L2SP(float(lam))), rtol=1e-12)


# --- results that overflow are refused, naming what overflowed --------------------------------

@pytest.mark.parametrize(("field", "scale", "expected"), [
    ("x_txt", 1e308, "solve: the contrastive target Y = W_T⁰ X_T C is not finite: it "
                     "overflowed float64; rescale x_txt or w_txt"),
    ("w_txt", 1e308, "the contrastive target Y = W_T⁰ X_T C is not finite"),
    ("x_img", 1e200, "x_img is too large: its largest squared singular value σ_max² overflows "
                     "float64; rescale x_img"),
])
def test_overflowing_solve_is_refused(problem, field, scale, expected):
    arrays = {k: np.asarray(getattr(problem, k)) for k in ARG_NAMES}
    arrays[field] = arrays[field] / np.abs(arrays[field]).max() * scale  # all still finite
    with pytest.raises(ValueError, match=re.escape(expected)):
        tt.solve(tt.LinearProblem(**arrays), tt.DirectFT())


def test_overflowing_solution_is_refused(problem):
    big = tt.LinearProblem(problem.x_img * 1e-160, problem.x_txt * 1e150, problem.w0,
                           problem.w_txt)  # Y X⁺ ~ 1e310
    _raises_naming("x_img", r"solve: the DirectFT solution W is not finite: it overflowed "
                   "float64", tt.solve, big, tt.DirectFT())


def test_custom_strategy_with_non_finite_filter_is_refused(problem):
    class Broken(tt.Strategy):
        def filter(self, sigma_sq):
            return jnp.log(sigma_sq - sigma_sq)  # -inf

    message = "filter_factors: a filter factor of Broken is not finite"
    with pytest.raises(ValueError, match=message):
        tt.filter_factors(problem, Broken())
    with pytest.raises(ValueError, match="solve: a filter factor of Broken is not finite"):
        tt.solve(problem, Broken())


def test_overflow_under_jit_fails_at_run_time(problem):
    run = jax.jit(lambda x_txt: tt.solve(_build(x_txt=x_txt), tt.DirectFT()))
    with pytest.raises(Exception) as info:  # equinox runtime error
        jax.block_until_ready(run(np.asarray(problem.x_txt) / 10 * 1e308))
    assert "the contrastive target Y = W_T⁰ X_T C is not finite" in _runtime_error_text(info)


def test_decompose_and_losses_refuse_overflow(problem):
    huge = np.full(problem.w0.shape, 1e300)
    _raises_naming("w", "decompose: the task/orthogonal split of w − w0 .* is not finite",
                   tt.decompose, problem, huge)
    for loss in (tt.fit_loss, tt.mmcl_loss_lstsq, tt.mmcl_loss_trace):
        _raises_naming("w", "the loss is not finite: it overflowed float64; rescale w",
                       loss, problem, huge)
    _raises_naming("w", r"must have the shape \(3, 6\)", tt.fit_loss, problem, huge[:, :2])


def test_diverging_gradient_descent_is_refused(problem, sigma_max_sq):
    _raises_naming("lr", "gradient_descent: the iterate W is not finite: .* gradient descent "
                   "diverged", tt.gradient_descent, problem, tt.DirectFT(), steps=2000,
                   lr=10 / sigma_max_sq)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(cond=np.inf), "cond must be >= 1 and finite, got inf"),
    (dict(decay=np.nan), "decay must be >= 0 and finite, got nan"),
    (dict(seed=-1), "seed must be a non-negative int, got -1"),
    (dict(dtype="float16"), "dtype must be 'float32' or 'float64', got 'float16'"),
    (dict(rank=1.5), "rank must be an int, got 1.5"),
    (dict(d_img=4.0), "d_img must be an int, got 4.0"),
])
def test_random_problem_names_bad_arguments(kwargs, message):
    args = dict(d_img=4, n=3, d_txt=2, k=2) | kwargs
    with pytest.raises(ValueError, match=re.escape(message)):
        tt.random_problem(**args)


# A run-time check is a host callback, and JAX never caches a program that holds one: constants
# converted inside jit are checked at trace time, and the sweep collects its make_omegas checks.

def _callbacks(lowered) -> int:
    return lowered.as_text().count("callback")


def test_a_constant_inside_jit_is_checked_at_trace_time_without_a_run_time_check():
    good = jax.jit(lambda x: tt.ema_teacher(0.9).weights(5) * x)
    assert _callbacks(good.lower(1.0)) == 0
    np.testing.assert_allclose(good(1.0), tt.ema_teacher(0.9).weights(5))
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1\.5"):
        jax.jit(lambda x: tt.ema_teacher(1.5).weights(5) * x)(1.0)
    with pytest.raises(ValueError, match=r"a must be finite > 0\.0, got -1\.0"):
        jax.jit(lambda x: tt.beta_kernel(-1.0, 0.5)(x))(jnp.full(3, 0.5))
    # a traced value keeps its run-time check
    traced = jax.jit(lambda m: tt.ema_teacher(m).weights(5))
    assert _callbacks(traced.lower(0.9)) > 0
    with pytest.raises(Exception, match=r"momentum must be in \[0, 1\)"):
        jax.block_until_ready(traced(1.5))


def _kernel_sweep_inputs(a):
    problem = tt.random_problem(d_img=8, n=4, d_txt=4, k=3, seed=0)
    lr = 0.5 * float(tt.stability_bound(tt.spectrum(problem).sigma_sq[0], 1.0))
    configs = {"lam": jnp.ones(2), "lr": jnp.full(2, lr), "horizon": jnp.array([6, 10]),
               "a": jnp.asarray(a), "b": jnp.full(2, 0.5)}

    def make_omegas(c):
        return tt.kernel_weights(tt.beta_kernel(c["a"], c["b"]), c["horizon"], 10)

    return problem, configs, make_omegas


def test_the_sweep_program_holds_no_run_time_check_from_make_omegas():
    from tracer_theory.dynamics.sweep import _sweep

    problem, configs, make_omegas = _kernel_sweep_inputs([0.5, 2.0])
    lowered = _sweep.lower(problem, tt.spectrum(problem), configs, make_omegas, 10, "gd")
    assert _callbacks(lowered) == 0
    # and the kernel's checks still refuse a bad configuration, naming it
    with pytest.raises(ValueError, match=r"make_omegas fails on configuration 1 \(.*"
                                         r"configs\['a'\]\[1\] = -1\.0.*\): a must be finite > 0"):
        tt.sweep(*_kernel_sweep_inputs([0.5, -1.0]), steps=10)


def test_a_traced_sweep_refuses_a_configuration_make_omegas_refuses_at_run_time():
    problem, configs, make_omegas = _kernel_sweep_inputs([0.5, -1.0])
    run = jax.jit(lambda c: tt.sweep(problem, c, make_omegas, steps=10)["bias"])
    with pytest.raises(Exception, match="make_omegas refuses a configuration"):
        jax.block_until_ready(run(configs))
    np.testing.assert_allclose(
        run(_kernel_sweep_inputs([0.5, 2.0])[1]),
        tt.sweep(*_kernel_sweep_inputs([0.5, 2.0]), steps=10)["bias"], rtol=1e-12)


def test_a_check_inside_a_transformation_of_make_omegas_stays_a_run_time_check():
    """The sweep collects only the checks at its own trace level: a kernel built inside an inner
    jit keeps its run-time check (collecting that inner tracer would leak it), and the sweep
    still names the configuration it refuses."""
    problem, configs, _ = _kernel_sweep_inputs([0.5, 2.0])
    inner = jax.jit(lambda a, b: tt.beta_kernel(a, b))

    def make_omegas(c):
        return tt.kernel_weights(inner(c["a"], c["b"]), c["horizon"], 10)

    np.testing.assert_allclose(tt.sweep(problem, configs, make_omegas, steps=10)["bias"],
                               tt.sweep(*_kernel_sweep_inputs([0.5, 2.0]), steps=10)["bias"],
                               rtol=1e-12)
    with pytest.raises(ValueError, match=r"make_omegas fails on configuration 1 \(.*"
                                         r"configs\['a'\]\[1\] = -1\.0"):
        tt.sweep(problem, _kernel_sweep_inputs([0.5, -1.0])[1], make_omegas, steps=10)
