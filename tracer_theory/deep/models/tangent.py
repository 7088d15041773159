"""The tangent model: a module linearized at its pretrained parameters (THEORY §6.7).

``Linearized(f)(x) = f(x; θ⁰) + J(x)(θ − θ⁰)``, evaluated with one ``jax.jvp`` (no Jacobian is
ever formed). ``linearize(clip)`` puts the image encoder of any CLIP here (toy CNN or
transformer) in this form; the projection ``image_proj`` is linear already. The result has the
model's interface, so ``finetune`` trains it with any strategy unchanged: the optimizer sees the
trainable ``params`` (``trainable_part``), the expansion point ``primal`` never moves.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PyTree

from ..._validation import all_finite, check_instance, ensure_each
from .base import DualEncoder


class Linearized(eqx.Module):
    """A module's first-order Taylor expansion in its parameters around ``primal`` (θ⁰).

    ``params`` (θ, the module's floating leaves, trainable; they start at θ⁰), ``primal`` (θ⁰,
    frozen: gradients never reach it) and ``rest`` (the module's other leaves). Calling it
    returns ``f(x; θ⁰) + ∂_θ f(x; θ⁰)·(θ − θ⁰)``, shaped like ``f(x)``. ``module`` must have
    at least one floating leaf, all finite, and not be a ``Linearized`` already (``ValueError``).
    """

    params: PyTree
    primal: PyTree
    rest: PyTree

    def __init__(self, module: eqx.Module):
        if isinstance(module, Linearized):
            raise ValueError("module is a Linearized already: linearize the original module once "
                             "(its at_primal())")
        params, self.rest = eqx.partition(module, eqx.is_inexact_array)
        leaves = jax.tree.leaves(params)
        if not leaves:
            raise ValueError(f"module has no floating-point parameters to linearize, got a "
                             f"{type(module).__name__}")
        finite = "module contains NaN or Inf: the expansion point θ⁰ must be finite"
        self.params = ensure_each(params, [(all_finite(x), finite) for x in leaves])
        self.primal = jax.tree.map(jnp.copy, params)

    def __call__(self, *args, **kwargs):
        primal = jax.lax.stop_gradient(self.primal)
        tangent = jax.tree.map(jnp.subtract, self.params, primal)
        out, dout = jax.jvp(lambda p: eqx.combine(p, self.rest)(*args, **kwargs), (primal,),
                            (tangent,))
        return jax.tree.map(jnp.add, out, dout)

    @property
    def delta(self) -> PyTree:
        """``θ − θ⁰`` on the floating leaves."""
        return jax.tree.map(jnp.subtract, self.params, self.primal)

    def at_primal(self) -> eqx.Module:
        """The original module at θ⁰."""
        return eqx.combine(self.primal, self.rest)


def linearize(clip: DualEncoder) -> DualEncoder:
    """``clip`` with its image encoder replaced by ``Linearized(clip.image)``: the image
    embedding ``W_I · h_lin(x)`` is then linear in the encoder's parameters and in ``W_I``
    separately (their product is the only term beyond first order)."""
    check_instance("clip", clip, DualEncoder)
    if isinstance(clip.image, Linearized):
        raise ValueError("clip's image encoder is linearized already")
    return eqx.tree_at(lambda c: c.image, clip, Linearized(clip.image))


def trainable_part(module: PyTree) -> PyTree:
    """What the optimizer may update in ``module``: a ``Linearized``'s ``params`` (never its
    expansion point), any other module whole."""
    return module.params if isinstance(module, Linearized) else module

