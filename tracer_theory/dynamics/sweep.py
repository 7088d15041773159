"""Grids of student–teacher configurations solved in one jitted, vmapped call (THEORY §4)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from .._validation import (
    all_finite,
    as_real_array,
    check_instance,
    ensure,
    is_traced,
    not_finite,
    with_deferred_checks,
)
from ..linear.problem import LinearProblem, contrastive_target
from ..linear.spectrum import Spectrum, spectrum as compute_spectrum
from .diagnostics import trace_end, trace_start, trace_update
from .schedules import static_count
from .spectral import (
    Rule,
    coefficient_step,
    summarize,
    task_geometry,
    unchecked_stability_bound,
)

#: What ``sweep`` returns for each configuration, all shape (C,).
SWEEP_FIELDS = ("bias", "gap", "distance", "loss", "gap_at_half", "gap_peak", "half_life",
                "normalized_auc", "gap_final")


#: Configurations advanced together (one vmapped batch of a ``lax.map``): about this many
#: (configuration, direction) entries, so that a step's state stays in cache.
_BATCH_ENTRIES = 2048
#: Steps per iteration of the step loop (``lax.scan(unroll=...)``).
_UNROLL = 2


@eqx.filter_jit
def _sweep(problem, spec, configs, make_omegas, steps: int, rule: Rule):
    """The configurations sorted by horizon, in batches of about ``_BATCH_ENTRIES / r``; each
    batch scanned in blocks of ``⌈√steps⌉`` steps that are skipped (``lax.cond``) once past the
    batch's longest horizon; the gap diagnostics accumulated online (``GapTrace``)."""
    geometry = task_geometry(problem, spec)
    dtype = spec.s.dtype
    count = jax.tree.leaves(configs)[0].shape[0]
    horizons = configs.get("horizon", jnp.full(count, steps))

    # Batches of equal size over the configurations sorted by horizon (the last member
    # repeated to fill the last batch), so that the members of a batch stop close together.
    target = max(1, _BATCH_ENTRIES // max(1, geometry.sigma_sq.shape[0]))
    batches = -(-count // target)
    size = -(-count // batches)
    order = jnp.argsort(horizons)
    index = order[jnp.minimum(jnp.arange(batches * size), count - 1)]
    block = max(1, math.isqrt(steps - 1) + 1)  # ⌈√steps⌉
    blocks = -(-steps // block)
    members = jax.tree.map(lambda x: x[index].reshape(batches, size), configs)

    def start(config):
        lr = config["lr"] if rule == "gd" else jnp.ones((), dtype)
        s = lr * geometry.sigma_sq
        ones = jnp.ones_like(s)
        gap0 = summarize(geometry, ones, ones).gap
        return s, ((ones, ones), trace_start(gap0, jnp.zeros((), dtype)), gap0)

    def step(config, s, state, omega, t):
        """Step t of one configuration (frozen past its horizon): the state and the gap."""
        e, f = state
        e_next, f_next = coefficient_step(e, f, s, config["lam"], omega, rule)
        on = t <= config.get("horizon", steps)
        e, f = jnp.where(on, e_next, e), jnp.where(on, f_next, f)
        return (e, f), summarize(geometry, e, f).gap

    def record(config, carry, gaps, t):
        """The gap diagnostics after the gaps (K,) of steps t (K,)."""
        state, trace, gap_half = carry
        horizon = config.get("horizon", steps)
        trace = trace_update(trace, gaps, t.astype(dtype), jnp.asarray(horizon, dtype))
        hit = t == horizon // 2
        gap_half = jnp.where(jnp.any(hit), jnp.sum(jnp.where(hit, gaps, 0)), gap_half)
        return state, trace, gap_half

    def end(config, carry):
        (e, f), trace, gap_half = carry
        stop = jnp.asarray(config.get("horizon", steps), dtype)
        return summarize(geometry, e, f), trace_end(trace, 0, stop), gap_half

    def run(config):
        """One batch of (size,) configurations."""
        omegas, accepted = jax.vmap(lambda c: _checked_omegas(make_omegas, c, steps))(config)
        omegas = omegas.astype(dtype)
        # Float reductions (NaN propagates): a boolean all() of constant weights is slow to fold.
        omega_range = jnp.stack([jnp.min(omegas, axis=1), jnp.max(omegas, axis=1)], axis=1)
        # ω past `steps` (padding to whole blocks) is never used: past every horizon.
        omegas = jnp.pad(omegas, ((0, 0), (0, blocks * block - steps)))
        chunk = omegas.reshape(size, blocks, block).transpose(1, 2, 0)
        s, carry = jax.vmap(start)(config)
        last = jnp.max(config.get("horizon", jnp.full(size, steps)))
        advance = jax.vmap(step, in_axes=(0, 0, 0, 0, None))

        def one_block(carry, xs):
            first, omega = xs  # the block's first step, its weights (block, size)
            t = first + jnp.arange(block)

            def go(carry):
                def body(state, xs):
                    return advance(config, s, state, *xs)
                state, gaps = jax.lax.scan(body, carry[0], (omega, t), unroll=_UNROLL)
                return jax.vmap(record, in_axes=(0, 0, 1, None))(
                    config, (state, *carry[1:]), gaps, t)

            return jax.lax.cond(first <= last, go, lambda c: c, carry), None

        carry, _ = jax.lax.scan(one_block, carry, (1 + block * jnp.arange(blocks), chunk))
        return jax.vmap(end)(config, carry), omega_range, accepted

    out, omega_range, accepted = jax.lax.map(run, members)
    inverse = jnp.argsort(order)
    final, diag, gap_half = jax.tree.map(lambda x: x.reshape(-1)[inverse], out)
    omega_range = omega_range.reshape(-1, 2)[inverse]
    accepted = accepted.reshape(-1)[inverse]
    safe_peak = jnp.where(diag.peak > 0, diag.peak, 1.0)
    out = {"bias": final.bias, "gap": final.gap, "distance": final.distance, "loss": final.loss,
           "gap_at_half": jnp.where(diag.peak > 0, gap_half / safe_peak, 0.0),
           "gap_peak": diag.peak, "half_life": diag.half_life,
           "normalized_auc": diag.normalized_auc, "gap_final": diag.final}
    # half_life is inf when the gap never halves; every other field must be finite.
    finite = {k: ~jnp.isnan(v) if k == "half_life" else jnp.isfinite(v) for k, v in out.items()}
    finite = {"target": all_finite(contrastive_target(problem))} | finite
    return out, omega_range, finite, accepted


def _checked_omegas(make_omegas, config, steps: int) -> tuple[Array, Array]:
    """``_omegas_of`` with the library's checks inside ``make_omegas`` (the schedule and kernel
    constructors') collected rather than compiled as run-time checks, so that the sweep's
    program holds no host callback and the persistent compilation cache keeps it: the weights
    (steps,) and whether every check held (a 0-d bool)."""
    return with_deferred_checks(_omegas_of, make_omegas, config, steps)


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
    """Solve C student–teacher configurations exactly, in one jitted call of batched spectral
    scans: the recursion of THEORY §4.3 (``rule="gd"``) or the fixed point of THEORY §4.5, over
    the schedules of THEORY §4.2.

    The configurations are sorted by horizon into batches advanced together (``vmap``), each
    batch only up to its longest horizon, with the gap diagnostics accumulated during the scan:
    about Σ horizons · r work (not C · steps · r), and one batch's weights in memory at a time.

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
    ``[1, steps]``; any other configuration value that is not finite; weights ω_t from
    ``make_omegas`` that are NaN or outside ``[0, 1]``; results that overflow. Concrete
    configurations fail with a ``ValueError`` before the run (the ω and overflow checks after
    it); traced ones with a run-time error. A check inside ``make_omegas`` that fails on the
    traced configuration (e.g. ``ema_teacher`` refusing a momentum of 1.5) is reported as the
    ``ValueError`` that ``make_omegas`` gives on the first concrete configuration it refuses.
    ``steps`` is a Python (or numpy) int ≥ 1.
    """
    check_instance("problem", problem, LinearProblem)
    if not callable(make_omegas):
        raise TypeError(f"make_omegas must be a callable config -> ω_1..ω_steps, got "
                        f"{make_omegas!r}")
    if rule not in ("gd", "fixed_point"):
        raise ValueError(f"rule must be 'gd' or 'fixed_point', got {rule!r}")
    steps = static_count("steps", steps, 1)
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
    # What make_omegas reads: NaN or ±inf is no configuration, whatever the key.
    for key in [k for k in arrays if k not in ("lam", "lr", "horizon")]:
        values = arrays[key]
        arrays[key] = _refuse(values, jnp.isfinite(values),
                              lambda i, key=key, values=values: f"configs[{key!r}] must be "
                              f"finite, got {_at(key, values, i)}")
    try:
        out, omega_range, finite, accepted = _sweep(problem, spec, arrays, make_omegas, steps,
                                                    rule)
    except eqx.EquinoxRuntimeError:  # a run-time check of make_omegas's own (eqx.error_if)
        _diagnose(make_omegas, arrays)
        raise
    # the library's checks inside make_omegas, collected on the traced configuration
    if not is_traced(accepted) and not np.all(np.asarray(accepted)):
        _diagnose(make_omegas, arrays)  # raises make_omegas's own error, naming the configuration
    out = _refuse(out, accepted, lambda i: "make_omegas refuses "
                  + ("a configuration" if i is None else f"configuration {i}")
                  + ": a check of the schedule it builds fails on it")
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


def _diagnose(make_omegas: Callable[[dict[str, Array]], Array],
              arrays: dict[str, Array]) -> None:
    """Re-run ``make_omegas`` eagerly on each concrete configuration and raise the first
    ``ValueError`` it gives (its own checks, e.g. a momentum outside ``[0, 1)``), naming the
    configuration; nothing if every configuration passes (or they are traced)."""
    if any(is_traced(v) for v in arrays.values()):
        return
    for i in range(next(iter(arrays.values())).shape[0]):
        config = {k: v[i] for k, v in arrays.items()}
        try:
            make_omegas(config)
        except ValueError as err:
            values = ", ".join(f"{_at(k, v, i)}" for k, v in arrays.items())
            raise ValueError(f"make_omegas fails on configuration {i} ({values}): {err}") from None


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
