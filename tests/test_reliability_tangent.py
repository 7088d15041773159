"""Boundary checks of the eNTK Gram, the tangent problem and the linearized model (float64).

Every bad value known on the host is refused with an error naming the argument, before any
Gram is computed; every returned number is finite. The references: an explicit ``jax.jacrev``
Jacobian of a tiny conv tower on 1×4×4 images (its Gram, its row-space projector, ``Jᵀα``),
gradient descent written with that Jacobian, and the exact fit of a full-row-rank Jacobian."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tracer_theory as tt
from tracer_theory.deep import ntk
from tracer_theory.deep.finetune.strategies import Direct
from tracer_theory.deep.models.tangent import Linearized, linearize
from tracer_theory.deep.ntk import (
    TangentProblem,
    check_memory,
    entk_gram,
    gram_bytes,
    tower_embed,
)
from tracer_theory.errors import MemoryBudgetExceeded

N, K = 3, 3


class Image(eqx.Module):
    """A one-conv image encoder: (1, 4, 4) -> 8 features."""

    conv: eqx.nn.Conv2d

    def __call__(self, x):
        return jnp.tanh(self.conv(x)).reshape(-1)


def _tower(dtype=jnp.float64, k=K, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return (Image(eqx.nn.Conv2d(1, 2, 3, key=k1, dtype=dtype)),
            eqx.nn.Linear(8, k, use_bias=False, key=k2, dtype=dtype))


def _flat(tree):
    return jnp.concatenate([x.reshape(-1) for x in jax.tree.leaves(tree)])


@pytest.fixture(scope="module")
def setup():
    """The tower, images, target, the problem (built once) and the explicit scaled Jacobian
    ``J`` (n·k, p) of ``E = embed/√n`` with the flat θ⁰-embeddings ``e0`` (n·k,)."""
    tower = _tower()
    images = jax.random.normal(jax.random.key(1), (N, 1, 4, 4), jnp.float64)
    target = jax.random.normal(jax.random.key(2), (N, K), jnp.float64)
    problem = TangentProblem.build(tower, images, target, block=4)
    params, embed = tower_embed(tower)
    scale = 1 / np.sqrt(N)
    jac = jax.jacrev(lambda p: scale * embed(p, images))(params)
    jac = np.concatenate([np.asarray(j).reshape(N * K, -1) for j in jax.tree.leaves(jac)], 1)
    e0 = np.asarray(scale * embed(params, images)).reshape(-1)
    return dict(tower=tower, images=images, target=target, problem=problem, params=params,
                embed=embed, jac=jac, e0=e0)


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if a Gram's rows are ever compiled."""
    monkeypatch.setattr(ntk, "_gram_rows", lambda *a, **k: pytest.fail("the Gram was started"))


# --- entk_gram and its options ------------------------------------------------------------------

def test_entk_gram_refuses_non_finite_images_before_any_work(setup, no_work):
    images = setup["images"].at[1, 0, 2, 3].set(jnp.nan)
    with pytest.raises(ValueError, match="images contains NaN or Inf"):
        entk_gram(setup["params"], setup["embed"], images)


@pytest.mark.parametrize("option, value, message", [
    ("memory_gb", float("nan"), "memory_gb must be finite > 0"),
    ("memory_gb", float("inf"), "memory_gb must be finite > 0"),
    ("memory_gb", 0, "memory_gb must be finite > 0"),
    ("memory_gb", "1", "memory_gb must be a real number"),
    ("block", 2.5, "block must be an int, got 2.5"),
    ("block", 0, "block must be a positive int, got 0"),
    ("block", -1, "block must be a positive int, got -1"),
    ("block", True, "block must be an int, got True"),
    ("block", "4", "block must be an int, got '4'"),
    ("scale", float("nan"), "scale must be finite"),
    ("scale", float("inf"), "scale must be finite"),
    ("scale", "2", "scale must be a real number"),
])
def test_entk_gram_refuses_bad_options_by_name_before_any_work(setup, no_work, option, value,
                                                               message):
    with pytest.raises(ValueError, match=message):
        entk_gram(setup["params"], setup["embed"], setup["images"], **{option: value})


@pytest.mark.parametrize("progress", [True, 3])
def test_progress_must_be_a_label(setup, no_work, progress):
    with pytest.raises(TypeError, match="progress must be a str"):
        entk_gram(setup["params"], setup["embed"], setup["images"], progress=progress)
    with pytest.raises(TypeError, match="progress must be a str"):
        TangentProblem.build(setup["tower"], setup["images"], setup["target"], progress=progress)


@pytest.mark.parametrize("shape, message", [
    ((N, 4, 4), r"tower fails on images of shape \(4, 4\)"),
    ((N, 1, 5, 5), r"tower fails on images of shape \(1, 5, 5\)"),
    ((0, 1, 4, 4), r"images must be a batch of n >= 1 images.*\(0, 1, 4, 4\)"),
    ((16,), r"images must be a batch of n >= 1 images"),
])
def test_images_of_the_wrong_shape_are_refused_by_name(setup, no_work, shape, message):
    images = jnp.ones(shape, jnp.float64)
    with pytest.raises(ValueError, match=message):
        entk_gram(setup["params"], setup["embed"], images)
    with pytest.raises(ValueError, match=message):
        TangentProblem.build(setup["tower"], images, setup["target"][:shape[0]])


@pytest.mark.parametrize("dtype, message", [
    (jnp.int32, "images must have dtype float32 or float64, got int32"),
    (jnp.float16, "images must have dtype float32 or float64, got float16"),
    (jnp.complex64, "images must be real numbers, got dtype complex64"),
])
def test_images_of_other_dtypes_are_refused(setup, no_work, dtype, message):
    with pytest.raises(ValueError, match=message):
        entk_gram(setup["params"], setup["embed"], setup["images"].astype(dtype))


def test_float32_images_are_cast_to_the_towers_float64(setup):
    images32 = setup["images"].astype(jnp.float32)
    gram = entk_gram(setup["params"], setup["embed"], images32, block=5)
    params, embed = setup["params"], setup["embed"]
    jac = jax.jacrev(lambda p: embed(p, images32.astype(jnp.float64)))(params)
    flat = np.concatenate([np.asarray(j).reshape(N * K, -1) for j in jax.tree.leaves(jac)], 1)
    assert gram.dtype == np.float64
    np.testing.assert_allclose(gram, flat @ flat.T, rtol=1e-12, atol=1e-12)


def test_entk_gram_refuses_non_finite_or_non_float_params_by_name(setup, no_work):
    params, embed, images = setup["params"], setup["embed"], setup["images"]
    bad = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.inf), params)
    with pytest.raises(ValueError, match="params contains NaN or Inf"):
        entk_gram(bad, embed, images)
    with pytest.raises(ValueError, match="params has no floating-point parameters"):
        entk_gram((), embed, images)
    with pytest.raises(ValueError, match=r"params must be in one dtype.*float16"):
        entk_gram(jax.tree.map(lambda x: x.astype(jnp.float16), params), embed, images)
    with pytest.raises(ValueError, match=r"params must hold only floating-point arrays.*int"):
        entk_gram((params, 3), embed, images)
    with pytest.raises(TypeError, match="embed must be a function"):
        entk_gram(params, None, images)


def test_an_embedding_that_is_not_a_batch_of_vectors_is_refused(setup, no_work):
    params, embed = setup["params"], setup["embed"]
    with pytest.raises(ValueError, match=r"embed must embed a batch of B images as a floating "
                                         r"\(B, k\) array"):
        entk_gram(params, lambda p, x: embed(p, x)[:, 0], setup["images"])
    tower = _tower(k=0)
    with pytest.raises(ValueError, match="tower embeds images into k = 0 coordinates"):
        TangentProblem.build(tower, setup["images"], jnp.zeros((N, 0)))


def test_a_gram_that_overflows_is_refused_naming_it(setup):
    with pytest.raises(ValueError, match="entk_gram: the eNTK Gram K is not finite: it "
                                         "overflowed float64"):
        entk_gram(setup["params"], setup["embed"], setup["images"], scale=1e200)


# --- the memory budget --------------------------------------------------------------------------

def test_gram_bytes_is_exact_and_refuses_non_counts():
    # numpy integers would wrap around at 2**63; the count is an exact Python int
    assert gram_bytes(np.int64(10**6), np.int64(10**4), 8) == 2 * 10**20 * 8
    for n, message in ((-1, "n must be a non-negative int, got -1"),
                       (2.5, "n must be an int, got 2.5")):
        with pytest.raises(ValueError, match=message):
            gram_bytes(n, 3, 8)
    with pytest.raises(ValueError, match="itemsize must be a positive int, got 0"):
        gram_bytes(3, 3, 0)


def test_check_memory_refuses_a_budget_that_is_not_a_positive_number_naming_the_flag():
    for bad in (float("nan"), -1.0, "1"):
        with pytest.raises(ValueError, match="--memory-gb must be"):
            check_memory(3, 3, 8, bad, "--memory-gb")
    with pytest.raises(ValueError, match="n must be a non-negative int, got -5"):
        check_memory(-5, 3, 8, 1.0)
    check_memory(3, 3, 8, 1.0)  # 1.7 KiB: fits
    with pytest.raises(MemoryBudgetExceeded, match=r"memory budget of 1e-09 GiB \(memory_gb\)"):
        check_memory(3, 3, 8, 1e-9)


# --- the tower and include ----------------------------------------------------------------------

def test_tower_must_be_an_image_projection_pair_with_float_parameters(setup):
    with pytest.raises(TypeError, match=r"tower must be a pair \(image, image_proj\)"):
        tower_embed(setup["tower"][0])
    with pytest.raises(ValueError, match="tower has no floating-point parameters"):
        tower_embed((jnp.tanh, jnp.tanh))
    mixed = (setup["tower"][0], jax.tree.map(
        lambda x: x.astype(jnp.float32) if eqx.is_inexact_array(x) else x, setup["tower"][1]))
    with pytest.raises(ValueError, match=r"tower must be in one dtype.*float32, float64"):
        tower_embed(mixed)
    half = jax.tree.map(lambda x: x.astype(jnp.float16) if eqx.is_inexact_array(x) else x,
                        setup["tower"])
    with pytest.raises(ValueError, match=r"tower must be in one dtype.*got float16"):
        TangentProblem.build(half, setup["images"], setup["target"])


def test_a_tower_with_non_finite_parameters_is_refused(setup, no_work):
    image, proj = setup["tower"]
    bad = (image, eqx.tree_at(lambda m: m.weight, proj, proj.weight.at[0, 0].set(jnp.nan)))
    with pytest.raises(ValueError, match="tower contains NaN or Inf"):
        TangentProblem.build(bad, setup["images"], setup["target"])


@pytest.mark.parametrize("include, error, message", [
    (lambda t: (), ValueError, "include selects no floating-point parameter of tower"),
    (lambda t: jnp.zeros(3), ValueError, "include must select a part of tower.*not a leaf"),
    (lambda t: t[2], ValueError, "include must select a part of tower.*IndexError"),
    (1, TypeError, "include must be a function"),
], ids=["nothing", "not_a_subtree", "raises", "not_callable"])
def test_include_must_select_some_parameters_of_the_tower(setup, no_work, include, error,
                                                         message):
    with pytest.raises(error, match=message):
        TangentProblem.build(setup["tower"], setup["images"], setup["target"], include=include)


# --- TangentProblem.build -----------------------------------------------------------------------

@pytest.mark.parametrize("shape, message", [
    ((N, 2), r"target must have shape \(n, k\) = \(3, 3\).*got \(3, 2\)"),
    ((2, K), r"target must have shape \(n, k\) = \(3, 3\).*got \(2, 3\)"),
    ((N * K,), r"target must be a 2-D array of shape \(n, k\) = \(3, 3\)"),
])
def test_target_of_the_wrong_shape_is_refused_with_the_expected_shape(setup, no_work, shape,
                                                                      message):
    with pytest.raises(ValueError, match=message):
        TangentProblem.build(setup["tower"], setup["images"], jnp.ones(shape))


def test_target_must_be_finite_and_floating(setup, no_work):
    with pytest.raises(ValueError, match="target contains NaN or Inf"):
        TangentProblem.build(setup["tower"], setup["images"],
                             setup["target"].at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="target must have dtype float32 or float64"):
        TangentProblem.build(setup["tower"], setup["images"], jnp.ones((N, K), jnp.int32))


def test_build_checks_its_options_even_when_the_gram_is_cached(setup, tmp_path, no_work):
    cache = tmp_path / "gram.npz"
    cache.write_bytes(b"not read: the options are refused first")
    with pytest.raises(ValueError, match=r"block must be an int, got 2\.5"):
        TangentProblem.build(setup["tower"], setup["images"], setup["target"], block=2.5,
                             cache=cache)


def test_one_image_is_fitted_exactly_by_direct_ft(setup):
    # n = 1, k = 3 outputs and 44 parameters: J has full row rank, so Direct FT fits Y exactly
    images, target = setup["images"][:1], setup["target"][:1]
    problem = TangentProblem.build(setup["tower"], images, target)
    delta = problem.delta(tt.DirectFT())
    fitted = problem.embed(problem.params, images) + problem.jvp(delta, images)  # scale 1
    np.testing.assert_allclose(fitted, target, rtol=1e-10, atol=1e-12)


def test_a_float32_tower_gives_the_float64_answer_to_float32_precision(setup):
    tower32 = jax.tree.map(lambda x: x.astype(jnp.float32) if eqx.is_inexact_array(x) else x,
                           setup["tower"])
    problem = TangentProblem.build(tower32, setup["images"], setup["target"])  # images cast
    delta = problem.delta(tt.L2SP(1.0))
    assert problem.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(delta))
    # the float64 reference on the float32 tower's weights, from the explicit Jacobian
    params, embed = tower_embed(jax.tree.map(
        lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, tower32))
    scale = 1 / np.sqrt(N)
    jac = jax.jacrev(lambda p: scale * embed(p, setup["images"]))(params)
    jac = np.concatenate([np.asarray(j).reshape(N * K, -1) for j in jax.tree.leaves(jac)], 1)
    r = np.asarray(setup["target"]).reshape(-1) - np.asarray(
        scale * embed(params, setup["images"])).reshape(-1)
    want = jac.T @ np.linalg.solve(jac @ jac.T + np.eye(N * K), r)  # L2SP(1): Jᵀ(K + I)⁻¹R
    np.testing.assert_allclose(_flat(delta), want, rtol=2e-4, atol=2e-5 * np.abs(want).max())


# --- TangentProblem.delta -----------------------------------------------------------------------

def test_delta_refuses_what_is_not_a_linear_strategy_like_solve(setup):
    problem = setup["problem"]
    with pytest.raises(TypeError, match="strategy must be a tracer_theory.linear strategy "
                                        r"\(tt.DirectFT\(\).*got str"):
        problem.delta("direct")
    with pytest.raises(TypeError, match="got Direct; a finetuning strategy's twin is "
                                        r"strategy.linear\(problem, steps\)"):
        problem.delta(Direct())
    linear = tt.LinearProblem(jnp.eye(2), jnp.eye(2), jnp.eye(2), jnp.eye(2))
    with pytest.raises(TypeError, match="strategy"):  # the linear API's answer: a TypeError too
        tt.solve(linear, "direct")


@pytest.mark.parametrize("strategy, message", [
    (tt.WeightDecay(1.0), "strategy WeightDecay is anchored at 0"),
    (tt.ReplaySD(1.0), "strategy ReplaySD is not a per-direction filter"),
])
def test_delta_refuses_strategies_without_a_tangent_closed_form(setup, strategy, message):
    with pytest.raises(ValueError, match=message):
        setup["problem"].delta(strategy)


def test_unstable_stopped_gd_is_refused_and_a_stable_one_is_gradient_descent(setup):
    problem, jac = setup["problem"], setup["jac"]
    sigma_max_sq = np.linalg.eigvalsh(jac @ jac.T).max()  # the explicit Gram's
    np.testing.assert_allclose(problem.sigma_max_sq, sigma_max_sq, rtol=1e-12)
    with pytest.raises(ValueError, match=r"lr must be below the stability bound 2/σ_max²"):
        problem.delta(tt.StoppedGD(200, 10 / sigma_max_sq))
    with pytest.raises(ValueError, match=r"lr must be below the stability bound"):
        problem.delta(tt.StoppedGD(200, 2 / float(problem.sigma_max_sq)))  # the bound itself
    lr = 1.9 / sigma_max_sq  # stable, oscillating in the top direction
    r = np.asarray(setup["target"]).reshape(-1) - setup["e0"]
    theta = np.zeros(jac.shape[1])
    for _ in range(200):  # gradient descent on ½‖JΔθ − R‖² from Δθ = 0
        theta = theta - lr * jac.T @ (jac @ theta - r)
    np.testing.assert_allclose(_flat(problem.delta(tt.StoppedGD(200, lr))), theta, rtol=1e-9,
                               atol=1e-12)


class _Huge(tt.Strategy):
    """A filter that overflows Δθ (a custom strategy's bug)."""

    value: float = 1e308

    def filter(self, sigma_sq):
        return jnp.full_like(sigma_sq, self.value)


def test_a_delta_that_overflows_is_refused_naming_what_overflowed(setup):
    problem = setup["problem"]
    with pytest.raises(ValueError, match=r"delta: the _Huge change Δθ is not finite: it "
                                         r"overflowed float64"):
        problem.delta(_Huge())
    with pytest.raises(ValueError, match="delta: a filter factor of _Huge is not finite"):
        problem.delta(_Huge(float("nan")))


def test_delta_of_traced_strategies_is_the_closed_form(setup):
    # the checks pass traced hyper-parameters (jit of vmap over λ) through to run-time checks
    problem, jac = setup["problem"], setup["jac"]
    r = np.asarray(setup["target"]).reshape(-1) - setup["e0"]
    lams = jnp.array([0.1, 2.0])
    batched = jax.jit(jax.vmap(lambda lam: _flat(problem.delta(tt.L2SP(lam)))))(lams)
    for lam, got in zip(np.asarray(lams), batched, strict=True):  # L2SP: Jᵀ(K + λI)⁻¹R
        want = jac.T @ np.linalg.solve(jac @ jac.T + lam * np.eye(N * K), r)
        np.testing.assert_allclose(got, want, rtol=1e-10)


# --- task_fraction, jvp and pull ----------------------------------------------------------------

def _direction(params, seed=3):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape, x.dtype)
                                     for k, x in zip(keys, leaves, strict=True)])


def test_task_fraction_is_the_projector_share_at_every_scale(setup):
    problem, jac = setup["problem"], setup["jac"]
    d = _direction(problem.params)
    flat = np.asarray(_flat(d))
    projected = np.linalg.pinv(jac) @ (jac @ flat)  # P = J⁺J, the row space of J
    want = projected @ projected / (flat @ flat)
    assert 0.05 < want < 0.95  # a direction partly inside the task subspace
    for size in (1.0, 1e200, 1e-200):  # ‖Δθ‖² over- or underflows at the extremes
        got = problem.task_fraction(jax.tree.map(lambda x, s=size: s * x, d))
        np.testing.assert_allclose(got, want, rtol=1e-9)


def test_task_fraction_refuses_a_zero_non_finite_or_misshapen_delta(setup):
    problem = setup["problem"]
    d = _direction(problem.params)
    with pytest.raises(ValueError, match="delta is zero: the share of a zero change"):
        problem.task_fraction(jax.tree.map(jnp.zeros_like, d))
    with pytest.raises(ValueError, match="delta contains NaN or Inf"):
        problem.task_fraction(jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), d))
    with pytest.raises(ValueError, match=r"delta must be shaped like the problem's params .*"
                                         r"a pytree of 3 arrays, got a Linear of 1 leaves"):
        problem.task_fraction(d[1])
    with pytest.raises(ValueError, match=r"got shape \(2, 1, 3, 1\) at leaf 0 for a parameter "
                                         r"of shape \(2, 1, 3, 3\)"):
        problem.task_fraction(jax.tree.map(lambda x: x[..., :1], d))
    with pytest.raises(ValueError, match="delta must be float32 or float64, got int32"):
        problem.task_fraction(jax.tree.map(lambda x: x.astype(jnp.int32), d))


def test_jvp_checks_images_and_delta_and_casts_float32(setup):
    problem, images = setup["problem"], setup["images"]
    d = _direction(problem.params)
    want = setup["jac"] @ np.asarray(_flat(d)) * np.sqrt(N)  # unscaled J Δθ
    np.testing.assert_allclose(problem.jvp(d, images).reshape(-1), want, rtol=1e-10)
    d32 = jax.tree.map(lambda x: x.astype(jnp.float32), d)
    np.testing.assert_allclose(problem.jvp(d32, images), problem.jvp(
        jax.tree.map(lambda x: x.astype(jnp.float64), d32), images), rtol=1e-13)
    with pytest.raises(ValueError, match=r"images must be \(B, 1, 4, 4\), like the problem's "
                                         r"images, got shape \(3, 4, 4\)"):
        problem.jvp(d, images[:, 0])
    with pytest.raises(ValueError, match="images must have dtype float32 or float64"):
        problem.jvp(d, images.astype(jnp.int32))
    with pytest.raises(ValueError, match="delta contains NaN or Inf"):
        problem.jvp(jax.tree.map(lambda x: x * jnp.inf, d), images)


def test_pull_is_the_transposed_jacobian_and_checks_alpha(setup):
    problem, jac = setup["problem"], setup["jac"]
    alpha = jax.random.normal(jax.random.key(4), (N * K,), jnp.float64)
    np.testing.assert_allclose(_flat(problem.pull(alpha)), jac.T @ np.asarray(alpha),
                               rtol=1e-10)
    np.testing.assert_allclose(_flat(problem.pull(alpha.reshape(N, K))),
                               _flat(problem.pull(alpha)), rtol=1e-15)
    with pytest.raises(ValueError, match=r"alpha must have shape \(n·k,\) = \(9,\) or \(n, k\) "
                                         r"= \(3, 3\), got shape \(6,\)"):
        problem.pull(jnp.ones(6))
    with pytest.raises(ValueError, match="alpha contains NaN or Inf"):
        problem.pull(alpha.at[0].set(jnp.nan))
    column = np.abs(jac).sum(0).argmax()  # ‖J[:, j]‖₁ = 1.4: Jᵀα overflows at |α_i| = 1.7e308
    with pytest.raises(ValueError, match="pull: Jᵀ α is not finite: it overflowed float64"):
        problem.pull(1.7e308 * np.sign(jac[:, column]))


# --- the linearized model -----------------------------------------------------------------------

def test_linearized_refuses_nothing_to_linearize_twice_or_non_finite(setup):
    proj = setup["tower"][1]
    with pytest.raises(ValueError, match="module has no floating-point parameters"):
        Linearized(jnp.tanh)
    with pytest.raises(ValueError, match="module is a Linearized already"):
        Linearized(Linearized(proj))
    with pytest.raises(ValueError, match="module contains NaN or Inf"):
        Linearized(eqx.tree_at(lambda m: m.weight, proj, proj.weight.at[0, 0].set(jnp.inf)))
    with pytest.raises(TypeError, match="clip must be a DualEncoder, got tuple"):
        linearize(setup["tower"])


# --- the keyed Gram cache -----------------------------------------------------------------------

def test_the_gram_cache_is_reused_only_for_the_same_tower_and_images(setup, tmp_path,
                                                                   monkeypatch):
    from tracer_theory.errors import DamagedArtifact, ResumeMismatch

    cache = tmp_path / "gram.npz"
    args = (setup["tower"], setup["images"], setup["target"])
    built = TangentProblem.build(*args, block=4, cache=cache)
    np.testing.assert_array_equal(built.sigma_sq, setup["problem"].sigma_sq)
    # other images (or another tower) under the same file name: refused, naming what differs
    other = setup["images"].at[0, 0, 0, 0].add(1.0)
    with pytest.raises(ResumeMismatch, match=r"gram\.npz was written for other settings "
                                             r"\(images:"):
        TangentProblem.build(setup["tower"], other, setup["target"], block=4, cache=cache)
    with pytest.raises(ResumeMismatch, match=r"params:"):
        TangentProblem.build(_tower(seed=5), setup["images"], setup["target"], block=4,
                             cache=cache)
    # damaged: one error naming the file, never a BadZipFile or a dot_general shape error
    raw = cache.read_bytes()
    for content in (raw[: len(raw) // 2], b"PK\x03\x04 not a zip"):
        cache.write_bytes(content)
        with pytest.raises(DamagedArtifact, match=r"gram\.npz is damaged.*--overwrite"):
            TangentProblem.build(*args, block=4, cache=cache)
    # a cache of the right key holding eigenvectors of the wrong size
    from tracer_theory._cache import keyed_header, write_keyed

    cache.write_bytes(raw)
    key = keyed_header(cache)["key"]
    write_keyed(cache, key, lambda f: np.savez(f, sigma_sq=np.ones(2), u=np.eye(2)))
    with pytest.raises(DamagedArtifact, match=r"expected eigenvalues \(9,\)"):
        TangentProblem.build(*args, block=4, cache=cache)
    # overwrite: computed anew and written for this key
    again = TangentProblem.build(*args, block=4, cache=cache, overwrite=True)
    np.testing.assert_array_equal(again.sigma_sq, built.sigma_sq)
    monkeypatch.setattr(ntk, "_gram_rows", lambda *a, **k: pytest.fail("recomputed"))
    TangentProblem.build(*args, block=4, cache=cache)  # read back, not recomputed
