"""Test numerics, set once: float64, strict rank promotion, fresh PRNG keys, dtype tolerances."""

import itertools

import jax
import jax.numpy as jnp
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

#: Relative tolerance of closed-form comparisons by dtype.
TOL = {jnp.float32: 2e-4, jnp.float64: 1e-10}


@pytest.fixture
def getkey():
    """Hands out fresh, deterministic PRNG keys: ``getkey()``."""
    counter = itertools.count()
    return lambda: jax.random.key(next(counter))
