"""The tangent model and the whole-network closed forms (THEORY §6.7), float64.

References: central finite differences of the real network, an explicit ``jax.jacrev``
Jacobian, gradient descent on the tangent model run to convergence, and the linear theory's
closed forms (``tt.solve``) when only the last layer is linearized."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tracer_theory as tt
from tracer_theory.deep.models import ToyCLIP
from tracer_theory.deep.models.tangent import Linearized, linearize, trainable_part
from tracer_theory.deep.ntk import TangentProblem, entk_gram, tower_embed
from tracer_theory.errors import MemoryBudgetExceeded


def _f64(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, tree)


class Tower(eqx.Module):
    """A small image tower: an MLP encoder and a bias-free projection, called as one module
    (so ``Linearized(Tower)`` is the embedding linear in every parameter)."""

    image: eqx.nn.MLP
    proj: eqx.nn.Linear

    def __call__(self, x):
        return self.proj(self.image(x))


def _tower(key, d=5, width=6, k=3):
    k1, k2 = jax.random.split(key)
    return Tower(eqx.nn.MLP(d, width, 7, 2, activation=jnp.tanh, dtype=jnp.float64, key=k1),
                 eqx.nn.Linear(width, k, use_bias=False, dtype=jnp.float64, key=k2))


def test_linearized_matches_network_at_expansion_point_and_to_first_order(getkey):
    clip = _f64(ToyCLIP(width=16, dim=8, key=getkey()))
    images = jax.random.uniform(getkey(), (3, 3, 28, 28), jnp.float64)
    lin = linearize(clip)
    np.testing.assert_allclose(lin.image_features(images), clip.image_features(images),
                               rtol=1e-12, atol=1e-12)
    params = eqx.filter(clip.image, eqx.is_inexact_array)
    direction = jax.tree.map(lambda p: jax.random.normal(getkey(), p.shape, p.dtype), params)
    eps = 1e-8  # small enough that no ReLU crosses its kink

    def moved(t):
        p = jax.tree.map(lambda a, d: a + t * d, params, direction)
        return eqx.combine(p, eqx.filter(clip.image, eqx.is_inexact_array, inverse=True))

    central = (jax.vmap(moved(eps))(images) - jax.vmap(moved(-eps))(images)) / (2 * eps)
    stepped = eqx.tree_at(lambda m: m.image.params, lin,
                          jax.tree.map(lambda a, d: a + d, lin.image.params, direction))
    first_order = stepped.image_features(images) - clip.image_features(images)
    np.testing.assert_allclose(first_order, central, rtol=1e-6, atol=1e-8)
    # linear: twice the step, twice the change (the network itself is not)
    doubled = eqx.tree_at(lambda m: m.image.params, lin,
                          jax.tree.map(lambda a, d: a + 2 * d, lin.image.params, direction))
    np.testing.assert_allclose(doubled.image_features(images) - clip.image_features(images),
                               2 * first_order, rtol=1e-10, atol=1e-10)


def test_linearized_trains_params_never_the_expansion_point(getkey):
    module = _tower(getkey())
    lin = Linearized(module)
    grads = eqx.filter_grad(lambda m, x: jnp.sum(m(x) ** 2))(lin, jnp.ones(5))
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads.primal))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads.params))
    assert trainable_part(lin) is lin.params and trainable_part(module) is module


def test_entk_gram_equals_explicit_jacobian_product(getkey):
    tower = _tower(getkey())
    images = jax.random.normal(getkey(), (4, 5), jnp.float64)
    params, embed = tower_embed((tower.image, tower.proj))
    scale = 0.5
    jac = jax.jacrev(lambda p: scale * embed(p, images))(params)  # leaves (n, k, *shape)
    flat = jnp.concatenate([j.reshape(12, -1) for j in jax.tree.leaves(jac)], axis=1)
    gram = entk_gram(params, embed, images, scale=scale, block=5)  # blocks that do not divide
    np.testing.assert_allclose(gram, flat @ flat.T, rtol=1e-12, atol=1e-12)


def _problem(tower, images, target, include=None):
    return TangentProblem.build((tower.image, tower.proj), images, target, include=include,
                                block=7)


@pytest.mark.parametrize("strategy", [tt.DirectFT(), tt.L2SP(0.3), tt.StaticSD(2.0)],
                         ids=["direct", "l2sp", "static_sd"])
def test_tangent_closed_form_equals_gradient_descent_to_convergence(getkey, strategy):
    tower = _tower(getkey())
    n = 4
    images = jax.random.normal(getkey(), (n, 5), jnp.float64)
    target = jax.random.normal(getkey(), (n, 3), jnp.float64)
    problem = _problem(tower, images, target)
    delta = problem.delta(strategy)

    lin = Linearized(tower)
    e0 = jax.vmap(tower)(images)
    scale = 1 / np.sqrt(n)

    def objective(params):  # the strategy's objective on the tangent model, written directly
        model = eqx.tree_at(lambda m: m.params, lin, params)
        emb = scale * jax.vmap(model)(images)
        value = 0.5 * jnp.sum((emb - target) ** 2)
        change = jax.tree.map(jnp.subtract, params, lin.primal)
        if isinstance(strategy, tt.L2SP):
            value += 0.5 * strategy.lam * sum(jnp.sum(c**2) for c in jax.tree.leaves(change))
        if isinstance(strategy, tt.StaticSD):
            value += 0.5 * strategy.lam * jnp.sum((emb - scale * e0) ** 2)
        return value

    lr = 1 / (float(problem.sigma_max_sq) * (1 + getattr(strategy, "lam", 0.0)) + 1.0)

    @jax.jit
    def run(params):
        def step(p, _):
            g = jax.grad(objective)(p)
            return jax.tree.map(lambda a, b: a - lr * b, p, g), None
        return jax.lax.scan(step, params, length=20_000)[0]

    trained = run(lin.params)
    change = jax.tree.map(jnp.subtract, trained, lin.primal)
    got = (change.image, change.proj)  # the problem's parameters: (image, image_proj)
    for a, b in zip(jax.tree.leaves(delta), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)
    # gradient descent from θ⁰ never leaves the row space of J: all of Δθ is task subspace
    np.testing.assert_allclose(problem.task_fraction(got), 1.0, rtol=1e-8)


def test_last_layer_tangent_problem_reduces_to_the_linear_closed_form(getkey):
    tower = _tower(getkey(), width=6, k=3)
    n = 9  # more images than features: a rank-deficient task subspace
    images = jax.random.normal(getkey(), (n, 5), jnp.float64)
    feats = jax.vmap(tower.image)(images)
    text = jax.random.normal(getkey(), (4, n), jnp.float64)
    w_txt = jax.random.normal(getkey(), (3, 4), jnp.float64)
    linear = tt.LinearProblem(feats.T / np.sqrt(n), text / np.sqrt(n), tower.proj.weight,
                              w_txt, contrast="centered")
    target = tt.contrastive_target(linear).T
    problem = _problem(tower, images, target, include=lambda t: t[1])
    for strategy in (tt.DirectFT(), tt.L2SP(0.7), tt.StaticSD(0.5)):
        w = tt.solve(linear, strategy)
        delta = problem.delta(strategy)
        np.testing.assert_allclose(delta[1].weight, w - tower.proj.weight, rtol=1e-9,
                                   atol=1e-11)
        assert delta[0] is None or not jax.tree.leaves(delta[0])


def test_gram_too_large_for_the_memory_budget_is_refused_by_name(getkey):
    tower = _tower(getkey())
    params, embed = tower_embed((tower.image, tower.proj))
    images = jnp.zeros((2000, 5), jnp.float64)
    with pytest.raises(MemoryBudgetExceeded, match=r"6000 × 6000.*memory budget of 0.1 GiB "
                                                    r"\(memory_gb\)"):
        entk_gram(params, embed, images, memory_gb=0.1)


def test_gram_cache_is_written_once_and_read_back(getkey, tmp_path, monkeypatch):
    from tracer_theory.deep import ntk

    tower = _tower(getkey())
    images = jax.random.normal(getkey(), (4, 5), jnp.float64)
    target = jax.random.normal(getkey(), (4, 3), jnp.float64)
    cache = tmp_path / "gram.npz"
    built = TangentProblem.build((tower.image, tower.proj), images, target, cache=cache)
    assert cache.exists()
    monkeypatch.setattr(ntk, "entk_gram", lambda *a, **k: pytest.fail("the Gram was rebuilt"))
    read = TangentProblem.build((tower.image, tower.proj), images, target, cache=cache)
    for a, b in ((built.sigma_sq, read.sigma_sq), (built.u, read.u), (built.mask, read.mask),
                 (built.residual, read.residual)):
        np.testing.assert_array_equal(a, b)
