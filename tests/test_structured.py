"""The eNTK Gram by structured derivatives (``deep/structured.py``), float64.

Reference: the matrix-free Gram (per-image gradients pushed through ``J`` by ``jax.jvp``) and,
for the small towers, the explicit ``jax.jacrev`` Jacobian's ``J Jᵀ``."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracer_theory.deep import structured
from tracer_theory.deep.models import make_model
from tracer_theory.deep.models.tangent import Linearized
from tracer_theory.deep.ntk import eigh_descending, entk_gram, tower_embed


def _f64(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, tree)


class Shared(eqx.Module):
    """Weight sharing, LayerNorm and the fallbacks: a strided convolution without bias, a
    LayerNorm over positions, one dense layer applied at every position (``vmap``), a weight
    used twice (``mix``, explicit rows), a layer ``x @ W`` (``right``) and a weight used
    transposed (``back``, explicit rows)."""

    conv: eqx.nn.Conv2d
    norm: eqx.nn.LayerNorm
    dense: eqx.nn.Linear
    mix: jax.Array
    right: jax.Array
    back: jax.Array

    def __init__(self, key):
        k1, k2, k3, k4, k5 = jax.random.split(key, 5)
        self.conv = eqx.nn.Conv2d(2, 4, 3, stride=2, padding=1, use_bias=False, key=k1,
                                  dtype=jnp.float64)
        self.norm = eqx.nn.LayerNorm(4, dtype=jnp.float64)
        self.dense = eqx.nn.Linear(4, 5, key=k2, dtype=jnp.float64)
        self.mix = jax.random.normal(k3, (5, 5), jnp.float64) / 3
        self.right = jax.random.normal(k5, (5, 4), jnp.float64) / 3
        self.back = jax.random.normal(k4, (3, 4), jnp.float64) / 3

    def __call__(self, x):
        h = self.conv(x).reshape(4, -1).T  # (positions, 4)
        h = jax.vmap(lambda v: jnp.tanh(self.dense(self.norm(v))))(h)
        h = jnp.tanh(h @ self.mix) @ self.mix  # one weight, two uses
        h = jnp.tanh(h @ self.right)  # a layer x @ W at every position (W the right operand)
        return jnp.mean(h, axis=0) @ self.back.T


class Identity(eqx.Module):
    def __call__(self, x):
        return x


def _towers():
    key = jax.random.key(3)
    toy = _f64(make_model("toy", key=key, width=16, dim=8))
    tiny = _f64(make_model("tiny", key=key))
    return {"toy": ((toy.image, toy.image_proj), (3, 28, 28)),
            "tiny": ((tiny.image, tiny.image_proj), (3, 28, 28)),
            "shared": ((Shared(key), Identity()), (2, 6, 6))}


TOWERS = _towers()


@pytest.mark.parametrize("name", list(TOWERS))
def test_structured_gram_equals_matrix_free_reference_at_every_block_size(name, monkeypatch):
    """Blocks of one image, two (a ragged last block) and from the budget, with the timing
    that picks a shared weight's contraction fixed so that both are checked (factors, then
    explicit rows; the other tests time it)."""
    tower, shape = TOWERS[name]
    params, embed = tower_embed(tower)
    images = _images(name)
    n = images.shape[0]
    reference = _reference(name, params, embed, images)
    k = reference.shape[0] // n
    # the ViT compiles slowly: one block of both images (the explicit rows and the ragged block
    # are the toy's and the weight-sharing module's); the budget's block on the latter only
    blocks = {"tiny": {None: True}, "toy": {k: True, 2 * k: False},
              "shared": {k: True, 2 * k: False, None: True}}[name]
    for block, measured in blocks.items():
        monkeypatch.setattr(structured, "measured_faster", lambda *a, m=measured: m)
        if block is not None:
            plan, _ = structured.plan(embed, params, shape, jnp.dtype("float64"), k, n, 8.0,
                                      block // k)
            shared = [t for t in plan.taps if t.P > 1]  # the counts decide some without timing
            assert any(t.structured == measured for t in shared)
            assert all(t.structured == (measured if structured._by_counts(t, k) is None
                                        else structured._by_counts(t, k)) for t in shared)
        gram = entk_gram(params, embed, images, scale=0.7, block=block)
        assert gram.dtype == np.float64
        np.testing.assert_array_equal(gram, gram.T)
        np.testing.assert_allclose(gram, reference, rtol=0, atol=1e-12 * np.abs(reference).max())


_REFERENCES = {}


def _images(name):
    """The images of ``name``'s reference Gram (two for the ViT, three for the others)."""
    _, shape = TOWERS[name]
    return jax.random.uniform(jax.random.key(4), (2 if name == "tiny" else 3, *shape),
                              jnp.float64)


def _reference(name, params, embed, images):
    """The matrix-free Gram, computed once per tower."""
    if name not in _REFERENCES:
        _REFERENCES[name] = entk_gram(params, embed, images, scale=0.7, method="matrix-free")
        assert np.abs(_REFERENCES[name]).max() > 0
    return _REFERENCES[name]


def test_structured_gram_equals_explicit_jacobian_and_uses_both_contractions():
    """The toy-shaped tower exercises a convolution taken explicitly, one taken through its
    factors, dense layers with and without bias, and explicit bias rows."""
    tower, _ = TOWERS["shared"]
    params, embed = tower_embed(tower)
    images = jax.random.uniform(jax.random.key(5), (2, 2, 6, 6), jnp.float64)
    jac = jax.jit(jax.jacrev(lambda p: embed(p, images)))(params)
    flat = np.concatenate([np.asarray(j).reshape(2 * 3, -1) for j in jax.tree.leaves(jac)], 1)
    np.testing.assert_allclose(entk_gram(params, embed, images, block=3), flat @ flat.T,
                               rtol=0, atol=1e-12 * np.abs(flat @ flat.T).max())
    plan, _ = structured.plan(embed, params, images.shape[1:], jnp.dtype("float64"), 3, 2, 8.0)
    leaves = jax.tree.leaves(params)
    tapped = {leaves[t.leaf].shape for t in plan.taps}
    assert tapped == {(4, 2, 3, 3), (5, 4)}  # conv, dense, right; mix (two uses), back (.T): not
    assert {(t.O, t.P, t.C) for t in plan.taps} == {(4, 9, 18), (5, 9, 4), (4, 9, 5)}


def test_toy_tower_takes_each_contraction_where_the_counts_say():
    tower, shape = TOWERS["toy"]
    params, embed = tower_embed(tower)
    plan, _ = structured.plan(embed, params, shape, jnp.dtype("float64"), 8, 64, 8.0)
    by_shape = {jax.tree.leaves(params)[t.leaf].shape: t for t in plan.taps}
    # conv1 at 196 positions: P²·k·O ≫ k²·O·C, rows win; the dense layers (P = 1): factors win
    assert not by_shape[(16, 3, 5, 5)].structured
    assert by_shape[(16, 1568)].structured and by_shape[(8, 16)].structured
    assert by_shape[(16, 3, 5, 5)].costs(8) == (196**2 * 75 + 196**2 * 8 * 16 + 64 * 196 * 16,
                                                64 * 16 * 75)


def test_linearized_tower_gram_equals_reference():
    """A tangent model's tower (``Linearized``: every weight enters through ``jax.jvp``). At
    Δθ = 0 its Jacobian in Δθ is the real tower's at θ⁰: the reference is the toy's
    matrix-free Gram on the same images."""
    tower, _ = TOWERS["toy"]
    images = _images("toy")
    reference = _reference("toy", *tower_embed(tower), images)
    lin = (Linearized(tower[0]), tower[1])
    params, embed = tower_embed(lin, include=lambda t: (t[0].params, t[1]))
    np.testing.assert_allclose(entk_gram(params, embed, images, scale=0.7), reference, rtol=0,
                               atol=1e-12 * np.abs(reference).max())


def test_second_call_with_same_shapes_does_not_recompile(monkeypatch):
    built = []
    original = structured._build
    monkeypatch.setattr(structured, "_build", lambda p: built.append(p) or original(p))
    structured._PROGRAMS.clear()
    tower, shape = TOWERS["toy"]
    images = jax.random.uniform(jax.random.key(7), (3, *shape), jnp.float64)
    other = _f64(make_model("toy", key=jax.random.key(8), width=16, dim=8))  # new values
    for t in (tower, (other.image, other.image_proj)):
        params, embed = tower_embed(t)  # a new embed closure each time
        entk_gram(params, embed, images + len(built), block=8)
    assert len(built) == 1
    factors, pair = structured._PROGRAMS[next(iter(structured._PROGRAMS))]
    assert factors._cache_size() == 1 and pair._cache_size() == 1


def test_structured_refuses_what_does_not_fit_naming_the_budget():
    tower, shape = TOWERS["toy"]
    params, embed = tower_embed(tower)
    plan, _ = structured.plan(embed, params, shape, jnp.dtype("float64"), 8, 64, 8.0)
    with pytest.raises(structured.MemoryBudgetExceeded, match="--memory-gb"):
        structured.choose_block(plan, 64, 1e-4, "--memory-gb")
    assert plan.block == structured.choose_block(plan, 64, 8.0) == structured.MAX_BLOCK
    # a budget that leaves exactly four times an 8-image block's intermediates: 16 is halved
    # away, 8 fits
    fixed = (64 * 8) ** 2 * 8 + plan.feature_bytes(64)
    assert structured.choose_block(plan, 64, (fixed + 4 * plan.block_bytes(8)) / 2**30) == 8
    assert plan.block_bytes(16) > plan.block_bytes(8)


def test_entk_gram_refuses_an_unknown_method():
    tower, shape = TOWERS["toy"]
    params, embed = tower_embed(tower)
    with pytest.raises(ValueError, match="method must be one of"):
        entk_gram(params, embed, jnp.zeros((1, *shape)), method="fast")


def test_eigh_descending_is_numpys_eigendecomposition_computed_in_place():
    """In place: a 32,768² float64 Gram and its eigenvectors are 17 GiB of a 24 GB machine,
    and a copy of the Gram (LAPACK's column-major order) did not fit."""
    a = np.random.default_rng(0).standard_normal((40, 30))
    gram = a @ a.T  # rank 30: ten zero eigenvalues
    values = np.linalg.eigvalsh(gram)
    work = gram.copy()
    sigma_sq, u = eigh_descending(work)
    assert not np.array_equal(work, gram)  # overwritten, not copied
    np.testing.assert_allclose(sigma_sq, values[::-1], rtol=0, atol=1e-12 * values.max())
    np.testing.assert_allclose((u * sigma_sq) @ u.T, gram, rtol=0, atol=1e-12 * values.max())
    np.testing.assert_allclose(u.T @ u, np.eye(40), rtol=0, atol=1e-12)
    assert np.all(np.diff(sigma_sq) <= 0)


@pytest.mark.parametrize("bad", [np.ones((3, 4)), np.ones(3), np.ones((3, 3), np.int64),
                                 np.array([[1.0, np.nan], [np.nan, 1.0]]),
                                 np.array([[np.inf, 0.0], [0.0, 1.0]]), [[1.0]]])
def test_eigh_descending_refuses_what_is_no_finite_square_gram_by_name(bad):
    with pytest.raises(ValueError, match=r"^gram "):
        eigh_descending(bad)
