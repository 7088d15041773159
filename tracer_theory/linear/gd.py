"""The reference iteration: plain gradient descent on each strategy's own objective.

The gradient comes from ``jax.grad`` of ``½‖W X_I − Y‖² + penalty(W)``, so this shares nothing
with the closed forms but the objective's definition; it is what the claims compare them to.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._validation import as_float_matrix, as_scalar, check_instance
from .problem import LinearProblem, fit_loss
from .strategies import Strategy


def objective(problem: LinearProblem, strategy: Strategy,
              w: Float[Array, "k d_I"]) -> Float[Array, ""]:
    """The strategy's finetuning objective at ``w``: data term plus its penalty, a scalar."""
    return fit_loss(problem, w) + strategy.penalty(problem, w)


@eqx.filter_jit
def _run(problem, strategy, steps, lr, init):
    grad = jax.grad(lambda w: objective(problem, strategy, w))

    def body(_, w):
        return w - lr * grad(w)

    return jax.lax.fori_loop(0, steps, body, init)


def gradient_descent(problem: LinearProblem, strategy: Strategy, *, steps: ArrayLike,
                     lr: ArrayLike, init: Float[Array, "k d_I"] | None = None
                     ) -> Float[Array, "k d_I"]:
    """``steps`` steps of gradient descent of the strategy's objective from ``init`` (``W⁰``).

    ``StoppedGD`` has no penalty, so for it this is plain GD on the data term. Returns the final
    iterate, shape (k, d_I).
    """
    _check_args(problem, strategy)
    steps = as_scalar("steps", steps, minimum=0, integer=True)
    lr = as_scalar("lr", lr, minimum=0.0, strict=True)
    init = problem.w0 if init is None else _like_w0("init", init, problem)
    return _run(problem, strategy, steps, lr, init)


def _check_args(problem: LinearProblem, strategy: Strategy) -> None:
    check_instance("problem", problem, LinearProblem)
    check_instance("strategy", strategy, Strategy)


def _like_w0(name: str, value: ArrayLike, problem: LinearProblem) -> Array:
    arr = as_float_matrix(name, value, "(k, d_I)")
    if arr.shape != problem.w0.shape or arr.dtype != problem.dtype:
        raise ValueError(f"{name} must have the shape {problem.w0.shape} and dtype "
                         f"{problem.dtype} of w0, got {arr.shape} {arr.dtype}")
    return arr


def gradient_descent_until(problem: LinearProblem, strategy: Strategy,
                           target: Float[Array, "k d_I"], *, tol: float, lr: ArrayLike,
                           max_steps: int) -> tuple[Float[Array, "k d_I"], Array]:
    """Gradient descent from ``W⁰`` until ``‖W − target‖/‖target‖ ≤ tol`` or ``max_steps``.

    Returns ``(W, steps_taken)``. Used by benchmarks to run GD "to the same tolerance".
    """
    _check_args(problem, strategy)
    target = _like_w0("target", target, problem)
    tol = as_scalar("tol", tol, minimum=0.0, strict=True)
    lr = as_scalar("lr", lr, minimum=0.0, strict=True)
    max_steps = as_scalar("max_steps", max_steps, minimum=0, integer=True)
    return _run_until(problem, strategy, target, tol, lr, max_steps)


@eqx.filter_jit
def _run_until(problem, strategy, target, tol, lr, max_steps):
    grad = jax.grad(lambda w: objective(problem, strategy, w))
    norm = jnp.linalg.norm(target)

    def cond(state):
        w, t = state
        return (jnp.linalg.norm(w - target) > tol * norm) & (t < max_steps)

    def body(state):
        w, t = state
        return w - lr * grad(w), t + 1

    return jax.lax.while_loop(cond, body, (problem.w0, jnp.zeros((), jnp.int32)))
