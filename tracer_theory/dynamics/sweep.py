"""Grids of student–teacher configurations solved in one jitted, vmapped call (THEORY §4)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from .._validation import check_instance
from ..linear.problem import LinearProblem
from ..linear.spectrum import Spectrum, spectrum as compute_spectrum
from .diagnostics import collapse_diagnostics
from .spectral import Rule, check_stable, coefficient_scan, summarize, task_geometry

#: What ``sweep`` returns for each configuration, all shape (C,).
SWEEP_FIELDS = ("bias", "gap", "distance", "loss", "gap_at_half", "gap_peak", "half_life",
                "normalized_auc", "gap_final")


@eqx.filter_jit
def _sweep(problem, spec, configs, make_omegas, steps: int, rule: Rule):
    geometry = task_geometry(problem, spec)
    t = jnp.arange(1, steps + 1)

    def one(config):
        lam = config["lam"]
        lr = config["lr"] if rule == "gd" else jnp.ones((), spec.s.dtype)
        if rule == "gd":
            lr = check_stable(lr, lr, lam, geometry.sigma_sq)
        horizon = config.get("horizon", steps)
        omegas = jnp.asarray(make_omegas(config), spec.s.dtype)
        # Only the gap is kept per step (for its diagnostics); the rest from the final state.
        e, f, gap = coefficient_scan(lr * geometry.sigma_sq, lam, omegas,
                                     lambda e, f: summarize(geometry, e, f).gap, rule=rule,
                                     active=t <= horizon)
        return summarize(geometry, e, f), gap, horizon

    final, gap, horizon = jax.vmap(one)(configs)
    record = jnp.arange(steps + 1)
    diag = collapse_diagnostics(gap, record, stop=horizon)
    half = jnp.take_along_axis(gap, (horizon // 2)[:, None], axis=1)[:, 0]
    safe_peak = jnp.where(diag.peak > 0, diag.peak, 1.0)
    return {"bias": final.bias, "gap": final.gap, "distance": final.distance, "loss": final.loss,
            "gap_at_half": jnp.where(diag.peak > 0, half / safe_peak, 0.0),
            "gap_peak": diag.peak, "half_life": diag.half_life,
            "normalized_auc": diag.normalized_auc, "gap_final": diag.final}


def sweep(problem: LinearProblem, configs: Mapping[str, ArrayLike],
          make_omegas: Callable[[dict[str, Array]], Array], *, steps: int, rule: Rule = "gd",
          spectrum: Spectrum | None = None) -> dict[str, Array]:
    """Solve C student–teacher configurations exactly, in one jitted ``vmap`` of the spectral scan.

    Arguments:
        configs: equal-length 1-D arrays (C,): ``lam`` always, ``lr`` for ``rule="gd"``, an
            optional integer ``horizon`` (the run stops there; default ``steps``), and whatever
            ``make_omegas`` reads (``momentum``, kernel parameters, ...).
        make_omegas: one configuration (a dict of scalars) → ω_1..ω_steps, shape (steps,); e.g.
            ``lambda c: tt.ema_teacher(c["momentum"]).weights(steps)`` or
            ``lambda c: tt.kernel_weights(tt.beta_kernel(c["a"], c["a"]), c["horizon"], steps)``.
        steps: length of the scan, at least every ``horizon``.
        rule: ``"gd"`` (student GD steps) or ``"fixed_point"`` (student solved each step).

    Returns a dict of (C,) arrays, values at each configuration's horizon: ``bias`` (task-subspace
    bias), ``gap``, ``distance``, ``loss``; the gap diagnostics ``gap_at_half`` (gap at horizon/2
    over its peak), ``gap_peak``, ``half_life``, ``normalized_auc``, ``gap_final`` (gap at the
    horizon over its peak).
    """
    check_instance("problem", problem, LinearProblem)
    if rule not in ("gd", "fixed_point"):
        raise ValueError(f"rule must be 'gd' or 'fixed_point', got {rule!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    needed = {"lam"} | ({"lr"} if rule == "gd" else set())
    missing = needed - set(configs)
    if missing:
        raise ValueError(f"configs is missing {sorted(missing)} (needs {sorted(needed)})")
    arrays = {k: jnp.asarray(v) for k, v in configs.items()}
    sizes = {k: v.shape for k, v in arrays.items()}
    if any(len(s) != 1 for s in sizes.values()) or len({s[0] for s in sizes.values()}) != 1:
        raise ValueError(f"configs must be 1-D arrays of one length C, got shapes {sizes}")
    if "horizon" in arrays:
        h = arrays["horizon"]
        if not jnp.issubdtype(h.dtype, jnp.integer) or int(h.min()) < 1 or int(h.max()) > steps:
            raise ValueError(f"configs['horizon'] must be integers in [1, steps={steps}], got "
                             f"{h.dtype} in [{h.min()}, {h.max()}]")
    if bool(jnp.any(arrays["lam"] < 0)) or not bool(jnp.all(jnp.isfinite(arrays["lam"]))):
        raise ValueError("configs['lam'] must be finite and >= 0")
    spec = compute_spectrum(problem) if spectrum is None else spectrum.check_matches(problem)
    return _sweep(problem, spec, arrays, make_omegas, steps, rule)
