"""The full matrix simulation of the coupled student–teacher dynamics (THEORY §4).

    W_{t+1} = W_t − lr [ (W_t X_I − Y) X_Iᵀ + λ (W_t − T_t) X_I X_Iᵀ ]
    T_{t+1} = (1 − ω_{t+1}) T_t + ω_{t+1} W_{t+1},          T_0 = W_0 = W⁰

One jitted nested ``lax.scan`` (outer: records, inner: ``record_every`` steps); only the summary
scalars of the recorded steps are kept, never the trajectory of matrices. O(steps · k·d_I·n).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike

from .._validation import all_finite
from ..linear.closed_forms import from_filter
from ..linear.problem import LinearProblem, contrastive_target
from ..linear.spectrum import Spectrum, spectrum as compute_spectrum
from .schedules import Schedule
from .spectral import (
    DynamicsResult,
    Summary,
    check_run,
    check_stable,
    checked_result,
    schedule_weights,
)


@eqx.filter_jit
def _simulate(problem: LinearProblem, spec: Spectrum, lam, lr, omegas, record_every: int):
    x, y, w0 = problem.x_img, contrastive_target(problem), problem.w0
    w_ft = from_filter(problem, spec, spec.mask.astype(spec.s.dtype), w0)
    um = spec.u * spec.mask[None, :]
    bias_scale = jnp.linalg.norm(((w0 - w_ft) @ um) @ um.T)
    safe_scale = jnp.where(bias_scale > 0, bias_scale, 1.0)

    def summary(w, t):
        task = ((w - w_ft) @ um) @ um.T
        return Summary(gap=jnp.linalg.norm((w - t) @ x),
                       bias=jnp.where(bias_scale > 0, jnp.linalg.norm(task) / safe_scale, 0.0),
                       distance=jnp.linalg.norm(w - w0) / jnp.linalg.norm(w0),
                       loss=0.5 * jnp.sum((w @ x - y) ** 2))

    def step(state, omega):
        w, t = state
        # (W X − Y) + λ(W − T) X = ((1 + λ)W − λT) X − Y: two matrix products per step.
        w = w - lr * ((((1 + lam) * w - lam * t) @ x - y) @ x.T)
        t = (1 - omega) * t + omega * w
        return (w, t), None

    def record(state, chunk):
        state, _ = jax.lax.scan(step, state, chunk)
        return state, summary(*state)

    chunks = omegas.reshape(-1, record_every)
    (w, t), ys = jax.lax.scan(record, (w0, w0), chunks)
    first = jax.tree.map(lambda v: v[None], summary(w0, w0))
    stacked = jax.tree.map(lambda v0, vs: jnp.concatenate([v0, vs]), first, ys)
    steps = jnp.arange(chunks.shape[0] + 1) * record_every
    return DynamicsResult(steps=steps, summary=stacked, student=w, teacher=t), all_finite(y)


def simulate(problem: LinearProblem, lam: ArrayLike, schedule: Schedule, *, steps: int,
             lr: ArrayLike, record_every: int = 1,
             spectrum: Spectrum | None = None) -> DynamicsResult:
    """Simulate ``steps`` student–teacher steps with full matrices; see the module docstring.

    The coupled iteration of THEORY §4.1, O(steps · k·d_I·n). Same arguments as
    ``spectral_dynamics``; returns the same ``DynamicsResult`` (summaries (R,), final student
    and teacher (k, d_I)). The spectrum is used only for the bias summary (the projector
    ``P``) and the stability check.
    """
    lam, lr, steps, record_every = check_run(problem, schedule, lam, lr, steps, record_every)
    spec = compute_spectrum(problem) if spectrum is None else spectrum.check_matches(problem)
    lr = check_stable(lr, lr, lam, spec.sigma_sq)
    omegas = schedule_weights(schedule, steps, problem.dtype)
    return checked_result(_simulate(problem, spec, lam, lr, omegas, record_every), "simulate",
                          problem)
