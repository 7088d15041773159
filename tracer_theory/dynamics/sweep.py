"""Grids of student–teacher configurations solved in one jitted, vmapped call (THEORY §4)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from .._validation import all_finite, as_real_array, check_instance, ensure, is_traced, not_finite
from ..linear.problem import LinearProblem, contrastive_target
from ..linear.spectrum import Spectrum, spectrum as compute_spectrum
from .diagnostics import unchecked_collapse_diagnostics
from .spectral import Rule, coefficient_scan, summarize, task_geometry, unchecked_stability_bound

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
        horizon = config.get("horizon", steps)
        omegas = _omegas_of(make_omegas, config, steps).astype(spec.s.dtype)
        # Float reductions (NaN propagates): a boolean all() of constant weights is slow to fold.
        omega_range = jnp.stack([jnp.min(omegas), jnp.max(omegas)])
        # Only the gap is kept per step (for its diagnostics); the rest from the final state.
        e, f, gap = coefficient_scan(lr * geometry.sigma_sq, lam, omegas,
                                     lambda e, f: summarize(geometry, e, f).gap, rule=rule,
                                     active=t <= horizon)
        return summarize(geometry, e, f), gap, horizon, omega_range

    final, gap, horizon, omega_range = jax.vmap(one)(configs)
    record = jnp.arange(steps + 1)
    diag = unchecked_collapse_diagnostics(gap, record.astype(gap.dtype), horizon.astype(gap.dtype))
    half = jnp.take_along_axis(gap, (horizon // 2)[:, None], axis=1)[:, 0]
    safe_peak = jnp.where(diag.peak > 0, diag.peak, 1.0)
    out = {"bias": final.bias, "gap": final.gap, "distance": final.distance, "loss": final.loss,
           "gap_at_half": jnp.where(diag.peak > 0, half / safe_peak, 0.0),
           "gap_peak": diag.peak, "half_life": diag.half_life,
           "normalized_auc": diag.normalized_auc, "gap_final": diag.final}
    # half_life is inf when the gap never halves; every other field must be finite.
    finite = {k: ~jnp.isnan(v) if k == "half_life" else jnp.isfinite(v) for k, v in out.items()}
    finite = {"target": all_finite(contrastive_target(problem))} | finite
    return out, omega_range, finite


def _omegas_of(make_omegas, config, steps: int) -> Array:
    """``make_omegas(config)``, checked at trace time to be real with shape (steps,)."""
    omegas = jnp.asarray(make_omegas(config))
    if omegas.shape != (steps,):
        raise ValueError(f"make_omegas must return ω_1..ω_steps, shape ({steps},), got shape "
                         f"{omegas.shape}")
    if not (jnp.issubdtype(omegas.dtype, jnp.floating)
            or jnp.issubdtype(omegas.dtype, jnp.integer)):
        raise ValueError(f"make_omegas must return real weights ω_t, got dtype {omegas.dtype}")
    return omegas


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

    Refused, naming the configuration: ``lam`` not finite ≥ 0; ``lr`` not finite > 0 or not
    below the stability bound ``2/(σ_max²(1+λ))``; ``horizon`` not an integer in
    ``[1, steps]``; weights ω_t from ``make_omegas`` that are NaN or outside ``[0, 1]``; results
    that overflow. Concrete configurations fail with a ``ValueError`` before the run (the ω
    and overflow checks after it); traced ones with a run-time error.
    """
    check_instance("problem", problem, LinearProblem)
    if not callable(make_omegas):
        raise TypeError(f"make_omegas must be a callable config -> ω_1..ω_steps, got "
                        f"{make_omegas!r}")
    if rule not in ("gd", "fixed_point"):
        raise ValueError(f"rule must be 'gd' or 'fixed_point', got {rule!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not isinstance(configs, Mapping):
        raise TypeError(f"configs must be a mapping of names to (C,) arrays, got "
                        f"{type(configs).__name__}")
    needed = {"lam"} | ({"lr"} if rule == "gd" else set())
    missing = needed - set(configs)
    if missing:
        raise ValueError(f"configs is missing {sorted(missing)} (needs {sorted(needed)})")
    arrays = {k: as_real_array(f"configs[{k!r}]", v) for k, v in configs.items()}
    sizes = {k: v.shape for k, v in arrays.items()}
    if any(len(s) != 1 for s in sizes.values()) or len({s[0] for s in sizes.values()}) != 1:
        raise ValueError(f"configs must be 1-D arrays of one length C, got shapes {sizes}")
    if next(iter(sizes.values()))[0] == 0:
        raise ValueError("configs must hold at least one configuration, got C = 0")
    spec = compute_spectrum(problem) if spectrum is None else spectrum.check_matches(problem)
    lam = arrays["lam"]
    arrays["lam"] = _refuse(lam, jnp.isfinite(lam) & (lam >= 0),
                            lambda i: f"configs['lam'] must be finite and >= 0, got "
                                      f"{_at('lam', lam, i)}")
    if "horizon" in arrays:
        h = arrays["horizon"]
        if not jnp.issubdtype(h.dtype, jnp.integer):
            raise ValueError(f"configs['horizon'] must be integers in [1, steps={steps}], got "
                             f"dtype {h.dtype}")
        arrays["horizon"] = _refuse(h, (h >= 1) & (h <= steps),
                                    lambda i: f"configs['horizon'] must be integers in [1, "
                                              f"steps={steps}], got {_at('horizon', h, i)}")
    if rule == "gd":
        lr, lam = arrays["lr"], arrays["lam"]
        arrays["lr"] = _refuse(lr, jnp.isfinite(lr) & (lr > 0),
                               lambda i: f"configs['lr'] must be finite and > 0, got "
                                         f"{_at('lr', lr, i)}")
        bound = unchecked_stability_bound(spec.sigma_max_sq, lam)
        arrays["lr"] = _refuse(
            arrays["lr"], lr < bound,
            lambda i: "configs['lr'] must be below the stability bound 2/(σ_max²(1+λ)) for "
                      f"this problem and λ, got {_at('lr', lr, i)}"
                      + ("" if i is None else f" with {_at('lam', lam, i)}: the bound is "
                         f"{bound[i]:.6g}"))
    out, omega_range, finite = _sweep(problem, spec, arrays, make_omegas, steps, rule)
    low, high = omega_range[:, 0], omega_range[:, 1]
    out = _refuse(out, (low >= 0) & (high <= 1),  # False for NaN
                  lambda i: "make_omegas must return weights ω_t in [0, 1]"
                            + ("" if i is None else f"; configuration {i} gives weights in "
                               f"[{low[i]:.6g}, {high[i]:.6g}]"))
    dtype = problem.dtype
    out = ensure(out, finite.pop("target"), not_finite(
        "sweep: the contrastive target Y = W_T⁰ X_T C", dtype, "rescale x_txt or w_txt"))
    for name, ok in finite.items():
        out = _refuse(out, ok, lambda i, name=name: not_finite(
            f"sweep: {name}{'' if i is None else f' of configuration {i}'}", dtype,
            "rescale the problem's arrays (x_img, x_txt, w0, w_txt)"))
    return out


def _refuse(x, ok: Array, message: Callable[[int | None], str]):
    """``x`` if ``ok`` (C,) holds everywhere; else a ``ValueError`` with ``message(i)`` for the
    first failing configuration i (concrete), or a run-time error (traced)."""
    if is_traced(ok):
        return ensure(x, ok, message(None))
    host = np.asarray(ok)
    if not host.all():
        raise ValueError(message(int(np.argmin(host))))
    return x


def _at(key: str, values: Array, i: int | None) -> str:
    """``configs['lr'][3] = -0.1``, or ``<traced>``."""
    if i is None:
        return "<traced>"
    return f"configs[{key!r}][{i}] = {np.asarray(values)[i].item()!r}"
