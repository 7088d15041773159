"""Evaluation metrics of the deep experiments."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PyTree


def accuracy(logits: Float[Array, "N C"], labels: Int[Array, " N"]) -> Array:
    """Fraction of rows whose argmax is the label."""
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def expected_calibration_error(probs: Float[Array, "N C"], labels: Int[Array, " N"],
                               n_bins: int = 15) -> Array:
    """Top-label ECE over the whole set: ``Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|``.

    Equal-width bins on [0, 1] by confidence = max probability; bin b holds confidences in
    ``(b/n, (b+1)/n]``, the first bin also holds 0.
    """
    conf = jnp.max(probs, axis=-1)
    correct = (jnp.argmax(probs, axis=-1) == labels).astype(conf.dtype)
    bins = jnp.clip(jnp.ceil(conf * n_bins).astype(jnp.int32) - 1, 0, n_bins - 1)
    conf_sum = jnp.zeros(n_bins, conf.dtype).at[bins].add(conf)
    acc_sum = jnp.zeros(n_bins, conf.dtype).at[bins].add(correct)
    return jnp.sum(jnp.abs(acc_sum - conf_sum)) / conf.shape[0]


def argmax_agreement(logits_a: Float[Array, "N C"], logits_b: Float[Array, "N C"]) -> Array:
    """Fraction of rows with the same argmax."""
    return jnp.mean(jnp.argmax(logits_a, axis=-1) == jnp.argmax(logits_b, axis=-1))


def mean_kl(logits_p: Float[Array, "N C"], logits_q: Float[Array, "N C"]) -> Array:
    """Mean over rows of KL(softmax p ‖ softmax q)."""
    log_p = jax.nn.log_softmax(logits_p, axis=-1)
    log_q = jax.nn.log_softmax(logits_q, axis=-1)
    return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))


def squared_distance(tree_a: PyTree, tree_b: PyTree) -> Array:
    """``Σ (a − b)²`` over all floating array leaves of two same-shaped pytrees (smooth at 0,
    unlike its square root: use it inside losses)."""
    a = jax.tree.leaves(eqx.filter(tree_a, eqx.is_inexact_array))
    b = jax.tree.leaves(eqx.filter(tree_b, eqx.is_inexact_array))
    return sum(jnp.sum((x - y) ** 2) for x, y in zip(a, b, strict=True))


def parameter_distance(tree_a: PyTree, tree_b: PyTree) -> Array:
    """L2 norm of the difference over all floating array leaves of two same-shaped pytrees."""
    return jnp.sqrt(squared_distance(tree_a, tree_b))
