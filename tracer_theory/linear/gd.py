"""The reference iteration: plain gradient descent on each strategy's own objective.

The gradient comes from ``jax.grad`` of ``½‖W X_I − Y‖² + penalty(W)``, so this shares nothing
with the closed forms but the objective's definition; it is what the claims compare them to.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._validation import as_scalar, check_instance, ensure, not_finite, show
from .problem import LinearProblem, check_encoder, unchecked_fit_loss
from .strategies import Strategy


def objective(problem: LinearProblem, strategy: Strategy,
              w: Float[Array, "k d_I"]) -> Float[Array, ""]:
    """The strategy's finetuning objective at ``w`` (k, d_I): data term plus its penalty
    (THEORY §3.2); returns a scalar.

    ``w`` must have the shape and dtype of ``w0``; a value that overflows is refused.
    """
    _check_args(problem, strategy)
    w = check_encoder(problem, w)
    value = _objective(problem, strategy, w)
    return ensure(value, jnp.isfinite(value), not_finite(
        "objective: the objective", problem.dtype, "rescale w or the problem's arrays"))


def _objective(problem, strategy, w):
    return unchecked_fit_loss(problem, w) + strategy.penalty(problem, w)


@eqx.filter_jit
def _run(problem, strategy, steps, lr, init):
    grad = jax.grad(lambda w: _objective(problem, strategy, w))
    lr = lr.astype(init.dtype)  # a float64 lr keeps a float32 iteration float32

    def body(_, w):
        return w - lr * grad(w)

    return jax.lax.fori_loop(0, steps, body, init)


def gradient_descent(problem: LinearProblem, strategy: Strategy, *, steps: ArrayLike,
                     lr: ArrayLike, init: Float[Array, "k d_I"] | None = None
                     ) -> Float[Array, "k d_I"]:
    """``steps`` steps of gradient descent of the strategy's objective from ``init`` (``W⁰``).

    The reference iteration of THEORY §3.2, ``init`` of shape (k, d_I). ``StoppedGD`` has no
    penalty, so for it this is plain GD on the data term (THEORY §3.4). Returns the final
    iterate, shape (k, d_I); an iteration that diverges (a non-finite ``W``) is refused.
    """
    _check_args(problem, strategy)
    steps = as_scalar("steps", steps, minimum=0, integer=True)
    lr = as_scalar("lr", lr, minimum=0.0, strict=True)
    init = problem.w0 if init is None else check_encoder(problem, init, "init")
    return _diverged(_run(problem, strategy, steps, lr, init), "gradient_descent", problem, lr)


def _check_args(problem: LinearProblem, strategy: Strategy) -> None:
    check_instance("problem", problem, LinearProblem)
    check_instance("strategy", strategy, Strategy)


def _diverged(w: Array, where: str, problem: LinearProblem, lr: Array) -> Array:
    """``w`` if finite, else an error: the iteration diverged (or overflowed)."""
    return ensure(w, jnp.all(jnp.isfinite(w)), not_finite(
        f"{where}: the iterate W", problem.dtype,
        f"gradient descent diverged: lr = {show(lr)} must be below 2/(largest curvature) "
        "(Strategy.curvature), or rescale the problem's arrays"))


def gradient_descent_until(problem: LinearProblem, strategy: Strategy,
                           target: Float[Array, "k d_I"], *, tol: float, lr: ArrayLike,
                           max_steps: int) -> tuple[Float[Array, "k d_I"], Array]:
    """Gradient descent from ``W⁰`` until ``‖W − target‖/‖target‖ ≤ tol`` or ``max_steps``.

    ``target`` (k, d_I); returns ``(W, steps_taken)``, ``W`` (k, d_I) and an int scalar: the
    reference iteration of THEORY §3.2, whose curvatures set its rate. Used by benchmarks to
    run GD "to the same tolerance". A diverging iteration (a non-finite ``W``) is refused.
    """
    _check_args(problem, strategy)
    target = check_encoder(problem, target, "target")
    tol = as_scalar("tol", tol, minimum=0.0, strict=True)
    lr = as_scalar("lr", lr, minimum=0.0, strict=True)
    max_steps = as_scalar("max_steps", max_steps, minimum=0, integer=True)
    w, steps = _run_until(problem, strategy, target, tol, lr, max_steps)
    return _diverged(w, "gradient_descent_until", problem, lr), steps


@eqx.filter_jit
def _run_until(problem, strategy, target, tol, lr, max_steps):
    grad = jax.grad(lambda w: _objective(problem, strategy, w))
    norm = jnp.linalg.norm(target)
    lr = lr.astype(target.dtype)

    def cond(state):
        w, t = state
        return (jnp.linalg.norm(w - target) > tol * norm) & (t < max_steps)

    def body(state):
        w, t = state
        return w - lr * grad(w), t + 1

    return jax.lax.while_loop(cond, body, (problem.w0, jnp.zeros((), jnp.int32)))
