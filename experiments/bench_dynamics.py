"""Benchmark: the student–teacher dynamics solvers against each other, measured side by side.

Three comparisons, each timed in the same run and checked for agreement:

  1. ``tt.spectral_dynamics`` (exact per-direction scan, O(steps·r)) versus ``tt.simulate`` (the
     full matrix recursion in a jitted ``lax.scan``, O(steps·k·d_I·n)) on one problem with a WMA
     teacher whose horizon is the whole run; both ``record_every=--record-every``. Agreement: the
     recorded summaries (gap, bias, distance, loss) and the final student/teacher matrices.
  2. ``tt.simulate`` versus a plain NumPy loop of the same matrix recursion (same ω array, same
     ``Y = tt.contrastive_target``, same order of operations) for ``--numpy-steps`` steps.
  3. ``tt.sweep`` over a grid of WMA horizon × λ × Beta(a, a) kernel configurations in one call,
     versus a Python loop calling ``tt.spectral_dynamics`` once per configuration.
  4. Reverse mode through the spectral solver: ``jax.value_and_grad`` of a kernel-design
     objective ``fᵀAf + Σ_i d_i (1 − f_i)²`` of the filter ``f`` of
     ``tt.TeacherSD(λ, tt.kernel_teacher(T, tt.GridKernel(v)), steps=T, lr=lr)``, with respect to
     the 16 log-values ``v`` and λ, on the problem of [1], at T = ``--grad-steps``: the library's
     checkpointed scan (``TeacherSD.filter``) versus a plain ``lax.scan`` of the same recursion
     (the pre-checkpoint implementation, whose reverse mode stores the state at every step):
     compiled temporary memory (``memory_analysis().temp_size_in_bytes``) and time. The row
     "kernel design step" is one such gradient step at T = ``--design-steps``.

The final table lists each comparison's ratio next to its target (issue 14, item 5): spectral
≥ 1000× simulate, sweep ≥ 20× the loop, gradient memory sublinear in T (ratios of the plain
scan's memory to the checkpointed one's that grow with T).

Timing: every call is blocked on (``jax.block_until_ready``) and timed with
``time.perf_counter``; jitted code is warmed up (compiled) with the same shapes first and the best
of ``--repeats`` runs is kept, except where the output says otherwise. The first calls after
compiling run slower (a 5 ms call takes up to 8 ms for its first few runs), so the fast methods
(spectral, sweep, the gradients) are called again for ``--warmup`` seconds before they are timed;
the slow ones take seconds per call and are timed after one warm-up run. Float64 throughout.

    python experiments/bench_dynamics.py --steps 10000 --numpy-steps 1000
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from _timing import best_time, fmt_time
from tqdm import tqdm

import tracer_theory as tt
from tracer_theory.dynamics.spectral import coefficient_step, schedule_weights

FIELDS = ("gap", "bias", "distance", "loss")


def _rel_matrix(a: Any, ref: Any) -> float:
    """``‖a − ref‖_F / ‖ref‖_F``."""
    a, ref = np.asarray(a), np.asarray(ref)
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def _rel_series(a: Any, ref: Any) -> tuple[float, float]:
    """Two relative differences of a recorded series against ``ref``:

    ``max_t |a_t − ref_t| / max_t |ref_t|`` (relative to the series' scale), and the pointwise
    ``max_t |a_t − ref_t| / |ref_t|`` over the steps where ``ref_t ≠ 0``.
    """
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    diff = np.abs(a - ref)
    scale = np.max(np.abs(ref))
    scaled = float(np.max(diff) / scale) if scale > 0 else float(np.max(diff))
    nz = ref != 0
    pointwise = float(np.max(diff[nz] / np.abs(ref[nz]))) if nz.any() else float("nan")
    return scaled, pointwise


def _verdict(value: float, limit: float) -> str:
    return "ok" if value <= limit else f"ABOVE {limit:g}"


def warm_up(fn: Any, seconds: float) -> None:
    """Call ``fn`` (blocking) at least once and until ``seconds`` have passed: the first calls
    after compiling are slower than the steady state."""
    start = time.perf_counter()
    while True:
        jax.block_until_ready(fn())
        if time.perf_counter() - start >= seconds:
            return


def numpy_loop(x: np.ndarray, y: np.ndarray, w0: np.ndarray, lam: float, lr: float,
               omegas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The matrix recursion of THEORY §4 as a plain NumPy loop, written as the theory states it:

    ``W ← W − lr[((W X − Y) + λ(W − T)X) Xᵀ]``, ``T ← (1 − ω)T + ωW``, from ``W = T = W⁰``
    (three matrix products per step; ``tt.simulate`` groups them into two).
    """
    w, t = w0.copy(), w0.copy()
    xt = x.T
    for omega in omegas:
        w = w - lr * (((w @ x - y) + lam * ((w - t) @ x)) @ xt)
        t = (1 - omega) * t + omega * w
    return w, t


def bench_spectral_vs_simulate(args: argparse.Namespace) -> dict[str, Any]:
    steps, every = args.steps, args.record_every
    problem = tt.random_problem(args.d_img, args.n, args.d_txt, args.k, seed=args.seed)
    spec = jax.block_until_ready(tt.spectrum(problem))
    lr = args.lr_fraction * float(tt.stability_bound(spec.sigma_max_sq, args.lam))
    schedule = tt.wma_teacher(steps)
    print(f"\n[1] spectral_dynamics vs simulate: d_I={args.d_img} n={args.n} k={args.k} "
          f"d_T={args.d_txt}, rank {int(spec.rank)}, {steps} steps, WMA teacher "
          f"(Beta(1/2, 1/2), horizon {steps}), lambda={args.lam:g}, "
          f"lr={args.lr_fraction:g} x stability bound = {lr:.4g}, record_every={every}; "
          f"the precomputed spectrum is passed to both")

    def run_spectral():
        return tt.spectral_dynamics(problem, args.lam, schedule, steps=steps, lr=lr,
                                    record_every=every, spectrum=spec)

    def run_simulate():
        return tt.simulate(problem, args.lam, schedule, steps=steps, lr=lr, record_every=every,
                           spectrum=spec)

    jax.block_until_ready(run_spectral())  # compile
    warm_up(run_spectral, args.warmup)
    t_spec, res_spec = best_time(run_spectral, args.repeats)
    print(f"    spectral: best of {args.repeats} after {args.warmup:g} s of warm-up calls: "
          f"{fmt_time(t_spec)}", flush=True)

    t0 = time.perf_counter()
    jax.block_until_ready(run_simulate())  # compile + one full run with the same shapes
    t_warm = time.perf_counter() - t0
    sim_repeats = args.sim_repeats
    if sim_repeats is None:
        sim_repeats = args.repeats if t_warm < args.slow_threshold else 1
    note = ("" if sim_repeats == args.repeats else
            f" (only {sim_repeats} timed run: the warm-up run took {fmt_time(t_warm)} "
            f">= {args.slow_threshold:g} s)")
    t_sim, res_sim = best_time(run_simulate, sim_repeats)
    print(f"    simulate: warm-up incl. compile {fmt_time(t_warm)}; best of {sim_repeats}: "
          f"{fmt_time(t_sim)}{note}", flush=True)

    same_steps = np.array_equal(np.asarray(res_spec.steps), np.asarray(res_sim.steps))
    series = {f: _rel_series(getattr(res_spec.summary, f), getattr(res_sim.summary, f))
              for f in FIELDS}
    matrices = {"student": _rel_matrix(res_spec.student, res_sim.student),
                "teacher": _rel_matrix(res_spec.teacher, res_sim.teacher)}
    print(f"    recorded steps identical: {same_steps} ({len(res_sim.steps)} records)")
    print("    agreement, spectral vs simulate (simulate as reference):")
    for f, (scaled, pointwise) in series.items():
        print(f"      {f:<9} max|diff|/max|ref| = {scaled:.2e}  "
              f"max pointwise |diff|/|ref| = {pointwise:.2e}")
    for name, rel in matrices.items():
        print(f"      final {name:<8} ||diff||_F/||ref||_F = {rel:.2e}")
    worst = max([s for s, _ in series.values()] + list(matrices.values()))
    worst_pointwise = max(p for _, p in series.values())
    return dict(name="spectral vs simulate", detail=f"{steps} steps", fast=t_spec, slow=t_sim,
                fast_label="spectral", slow_label="simulate", slow_repeats=sim_repeats,
                agreement=f"{worst:.1e} (pointwise {worst_pointwise:.1e})",
                check=_verdict(worst, 1e-8), target=1000.0)


def bench_scan_vs_numpy(args: argparse.Namespace, dims: tuple[int, int, int, int],
                        steps: int) -> dict[str, Any]:
    d_img, n, d_txt, k = dims
    problem = tt.random_problem(d_img, n, d_txt, k, seed=args.seed)
    spec = jax.block_until_ready(tt.spectrum(problem))
    lr = args.lr_fraction * float(tt.stability_bound(spec.sigma_max_sq, args.lam))
    schedule = tt.wma_teacher(steps)
    omegas = np.asarray(schedule.weights(steps))
    x = np.asarray(problem.x_img)
    y = np.asarray(tt.contrastive_target(problem))
    w0 = np.asarray(problem.w0)
    print(f"\n[2] simulate (jitted lax.scan) vs NumPy loop: d_I={d_img} n={n} k={k}, {steps} "
          f"steps, WMA teacher with horizon {steps}, lambda={args.lam:g}, lr={lr:.4g}, "
          f"simulate with record_every={steps}; NumPy {np.__version__}")

    def run_simulate():
        return tt.simulate(problem, args.lam, schedule, steps=steps, lr=lr, record_every=steps,
                           spectrum=spec)

    jax.block_until_ready(run_simulate())  # compile
    t_sim, res_sim = best_time(run_simulate, args.repeats)
    print(f"    simulate: best of {args.repeats}: {fmt_time(t_sim)}", flush=True)
    t_np, (w_np, t_np_mat) = best_time(
        lambda: numpy_loop(x, y, w0, args.lam, lr, omegas), args.repeats)
    print(f"    numpy   : best of {args.repeats}: {fmt_time(t_np)}", flush=True)
    rel = max(_rel_matrix(w_np, res_sim.student), _rel_matrix(t_np_mat, res_sim.teacher))
    print(f"    final student/teacher agreement, max ||diff||_F/||ref||_F = {rel:.2e}")
    return dict(name="simulate vs NumPy loop", detail=f"d_I={d_img}, {steps} steps", fast=t_sim,
                slow=t_np,
                fast_label="simulate", slow_label="numpy", slow_repeats=args.repeats,
                agreement=f"{rel:.1e}", check=_verdict(rel, 1e-8))


def bench_sweep_vs_loop(args: argparse.Namespace) -> dict[str, Any]:
    problem = tt.random_problem(args.sweep_d_img, args.sweep_n, args.sweep_d_txt, args.sweep_k,
                                seed=args.seed)
    spec = jax.block_until_ready(tt.spectrum(problem))
    sigma_max_sq = float(spec.sigma_max_sq)
    horizons = np.unique(np.rint(np.logspace(np.log10(args.min_horizon),
                                             np.log10(args.max_horizon),
                                             args.grid)).astype(np.int64))
    lams = np.logspace(-1, 1, args.grid)
    kernel_as = np.linspace(0.3, 3.0, args.grid)
    hh, ll, aa = (v.ravel() for v in np.meshgrid(horizons, lams, kernel_as, indexing="ij"))
    lrs = np.asarray([args.lr_fraction * float(tt.stability_bound(sigma_max_sq, lam))
                      for lam in ll])
    steps = int(horizons.max())
    count = hh.size
    configs = {"horizon": hh, "lam": ll, "lr": lrs, "a": aa}
    print(f"\n[3] sweep vs Python loop: d_I={args.sweep_d_img} n={args.sweep_n} "
          f"k={args.sweep_k} d_T={args.sweep_d_txt}, rank {int(spec.rank)}; {count} configs = "
          f"{horizons.size} WMA horizons {horizons.tolist()} x {lams.size} lambdas in "
          f"[{lams.min():g}, {lams.max():g}] x {kernel_as.size} Beta(a, a) kernels, a in "
          f"[{kernel_as.min():g}, {kernel_as.max():g}]; lr = {args.lr_fraction:g} x stability "
          f"bound per lambda; sweep with steps = max horizon = {steps} (make_omegas gives "
          f"{steps} weights per config), the loop runs each config for its own horizon; the "
          f"precomputed spectrum is passed to both")

    def make_omegas(c):
        return tt.kernel_weights(tt.beta_kernel(c["a"], c["a"]), c["horizon"], steps)

    def run_sweep():
        return tt.sweep(problem, configs, make_omegas, steps=steps, spectrum=spec)

    t0 = time.perf_counter()
    jax.block_until_ready(run_sweep())
    t_sweep_warm = time.perf_counter() - t0
    warm_up(run_sweep, args.warmup)
    t_sweep, out = best_time(run_sweep, args.repeats)
    print(f"    sweep: first call incl. compile {fmt_time(t_sweep_warm)}; best of {args.repeats} "
          f"after {args.warmup:g} s of warm-up calls: {fmt_time(t_sweep)}", flush=True)

    def one(i: int):
        schedule = tt.kernel_teacher(int(hh[i]), tt.beta_kernel(float(aa[i]), float(aa[i])))
        return tt.spectral_dynamics(problem, float(ll[i]), schedule, steps=int(hh[i]),
                                    lr=float(lrs[i]), spectrum=spec)

    # First pass: one call per distinct horizon compiles every shape the loop will meet.
    t0 = time.perf_counter()
    for h in horizons:
        jax.block_until_ready(one(int(np.flatnonzero(hh == h)[0])))
    t_loop_warm = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed)
    probe = rng.choice(count, size=min(args.loop_probe, count), replace=False)
    t0 = time.perf_counter()
    for i in probe:
        jax.block_until_ready(one(int(i)))
    per_config = (time.perf_counter() - t0) / probe.size
    projected = per_config * count
    print(f"    loop: compile pass over the {horizons.size} distinct horizons "
          f"{fmt_time(t_loop_warm)}; probe of {probe.size} random configs: "
          f"{fmt_time(per_config)} per config, full loop projected {fmt_time(projected)}",
          flush=True)

    if args.loop_configs is not None:
        subset_size = min(args.loop_configs, count)
    elif projected <= args.loop_budget:
        subset_size = count
    else:
        subset_size = max(1, min(count, int(args.loop_budget / per_config)))
    subset = (np.arange(count) if subset_size == count
              else np.sort(rng.choice(count, size=subset_size, replace=False)))
    results = []
    t0 = time.perf_counter()
    for i in tqdm(subset, desc="python loop", unit="config", mininterval=1.0):
        results.append(one(int(i)))
    jax.block_until_ready(results)
    t_loop_subset = time.perf_counter() - t0
    extrapolated = subset_size < count
    t_loop = t_loop_subset * count / subset_size
    loop_bias = np.asarray([float(r.summary.bias[-1]) for r in results])
    sweep_bias = np.asarray(out["bias"])[subset]
    diff = float(np.max(np.abs(loop_bias - sweep_bias)))
    if extrapolated:
        print(f"    loop: EXTRAPOLATED: timed a random subset of {subset_size} of {count} configs "
              f"({fmt_time(t_loop_subset)}, one pass, compile excluded, tqdm included) and "
              f"scaled by {count}/{subset_size}: {fmt_time(t_loop)} for all {count}")
    else:
        print(f"    loop: all {count} configs, one pass after the compile pass (compile "
              f"excluded, tqdm included): {fmt_time(t_loop)}")
    print(f"    scan steps: loop sum of horizons = {int(hh.sum()):,} (configs x max horizon "
          f"= {count * steps:,}); the sweep sorts the configs by horizon into batches, scans "
          f"each batch only to its longest horizon and keeps the gap diagnostics online")
    print(f"    final bias, loop vs sweep on the {subset_size} looped configs: max |diff| = "
          f"{diff:.2e} (bias range [{loop_bias.min():.3g}, {loop_bias.max():.3g}])")
    detail = f"{count} configs" + (f", loop extrapolated from {subset_size}" if extrapolated
                                   else "")
    return dict(name="sweep vs Python loop", detail=detail, fast=t_sweep, slow=t_loop,
                fast_label="sweep", slow_label="loop", slow_repeats=1,
                agreement=f"{diff:.1e} (abs)", check=_verdict(diff, 1e-8), target=20.0)


def plain_filter(s: jax.Array, lam: jax.Array, omegas: jax.Array) -> jax.Array:
    """The TeacherSD filter ``1 − e_T`` as one plain ``lax.scan`` of ``coefficient_step`` (the
    implementation before the checkpointed scan): its reverse mode stores every step's state."""
    def body(carry, omega):
        return coefficient_step(*carry, s, lam, omega, "gd"), None

    ones = jnp.ones_like(s)
    (e, _), _ = jax.lax.scan(body, (ones, ones), omegas)
    return 1 - e


def design_objective(problem: tt.LinearProblem, spec: Any, lr: float, steps: int, plain: bool):
    """``(v, λ) ↦ fᵀAf + Σ_i d_i (1 − f_i)²`` for the filter ``f`` of
    ``TeacherSD(λ, kernel_teacher(steps, GridKernel(v)), steps=steps, lr=lr)``: ``A = BBᵀ/r``
    (a fixed random PSD form, the "forgetting"), ``d = σ²/σ_max²`` (the "fit")."""
    sigma_sq = spec.sigma_sq
    r = sigma_sq.shape[0]
    b = jax.random.normal(jax.random.key(7), (r, 8), sigma_sq.dtype)
    a, d = b @ b.T / r, sigma_sq / spec.sigma_max_sq

    def objective(params):
        values, lam = params
        strategy = tt.TeacherSD(lam, tt.kernel_teacher(steps, tt.GridKernel(values)),
                                steps=steps, lr=lr)
        if plain:
            omegas = schedule_weights(strategy.schedule, steps, sigma_sq.dtype)
            f = plain_filter(strategy.lr * sigma_sq, strategy.lam, omegas)
        else:
            f = strategy.filter(sigma_sq)
        return f @ a @ f + jnp.sum(d * (1 - f) ** 2)

    return objective


def _temp_bytes(compiled: Any) -> float:
    memory = compiled.memory_analysis()
    return float("nan") if memory is None else float(memory.temp_size_in_bytes)


def _fmt_bytes(n: float) -> str:
    return "n/a" if n != n else (f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB")


def bench_gradients(args: argparse.Namespace) -> list[dict[str, Any]]:
    problem = tt.random_problem(args.d_img, args.n, args.d_txt, args.k, seed=args.seed)
    spec = jax.block_until_ready(tt.spectrum(problem))
    lr = args.lr_fraction * float(tt.stability_bound(spec.sigma_max_sq, 1.0))
    params = (jnp.zeros(16, problem.dtype), jnp.asarray(1.0, problem.dtype))
    print(f"\n[4] reverse mode through TeacherSD.filter: value_and_grad of fᵀAf + Σ d(1-f)² "
          f"w.r.t. the 16 GridKernel log-values and lambda (at v = 0, lambda = 1), problem of "
          f"[1] (rank {int(spec.rank)}), lr = {args.lr_fraction:g} x stability bound at "
          f"lambda = 1 = {lr:.4g}; checkpointed scan (the library) vs plain lax.scan")
    rows, measured = [], {}
    for steps in sorted(set(args.grad_steps) | {args.design_steps}):
        out = {}
        for plain in (False, True):
            name = "plain" if plain else "ckpt"
            fn = jax.jit(jax.value_and_grad(design_objective(problem, spec, lr, steps, plain)))
            t0 = time.perf_counter()
            compiled = fn.lower(params).compile()
            t_compile = time.perf_counter() - t0
            warm_up(lambda c=compiled: c(params), args.warmup)
            t, (value, grads) = best_time(lambda c=compiled: c(params), args.repeats)
            out[name] = dict(time=t, temp=_temp_bytes(compiled), value=value,
                             grads=np.concatenate([np.ravel(g) for g in grads]))
            print(f"    T={steps:>7,} {name:<5}: temp {_fmt_bytes(out[name]['temp']):>9}, "
                  f"value_and_grad best of {args.repeats}: {fmt_time(t)} (compile "
                  f"{fmt_time(t_compile)})", flush=True)
        ref = out["plain"]["grads"]
        rel = float(np.max(np.abs(out["ckpt"]["grads"] - ref)) / np.max(np.abs(ref)))
        rel_value = abs(float(out["ckpt"]["value"]) / float(out["plain"]["value"]) - 1)
        print(f"    T={steps:>7,} gradients ckpt vs plain: max|diff|/max|ref| = {rel:.1e}, "
              f"objective rel diff {rel_value:.1e}")
        measured[steps] = (out, max(rel, rel_value))
    previous = None
    for steps in args.grad_steps:
        out, rel = measured[steps]
        growth = ("" if previous is None else
                  f", x{out['ckpt']['temp'] / previous['ckpt']['temp']:.1f} vs "
                  f"x{out['plain']['temp'] / previous['plain']['temp']:.1f}")
        rows.append(dict(name="grad memory", detail=f"T={steps:,}{growth}",
                         fast=out["ckpt"]["temp"], slow=out["plain"]["temp"],
                         fast_label="ckpt", slow_label="plain", slow_repeats=1, unit="bytes",
                         agreement=f"{rel:.1e}", check=_verdict(rel, 1e-8), target=None))
        rows.append(dict(name="grad time", detail=f"T={steps:,}", fast=out["ckpt"]["time"],
                         slow=out["plain"]["time"], fast_label="ckpt", slow_label="plain",
                         slow_repeats=args.repeats, agreement=f"{rel:.1e}",
                         check=_verdict(rel, 1e-8), target=None))
        previous = out
    if len(args.grad_steps) > 1:
        first, last = args.grad_steps[0], args.grad_steps[-1]
        growth = {name: measured[last][0][name]["temp"] / measured[first][0][name]["temp"]
                  for name in ("ckpt", "plain")}
        print(f"    temp memory from T={first:,} to T={last:,} (x{last / first:g} steps): "
              f"ckpt x{growth['ckpt']:.1f}, plain x{growth['plain']:.1f}")
    out, rel = measured[args.design_steps]
    rows.append(dict(name="kernel design step", detail=f"T={args.design_steps:,}, d_I={args.d_img}",
                     fast=out["ckpt"]["time"], slow=out["plain"]["time"], fast_label="ckpt",
                     slow_label="plain", slow_repeats=args.repeats, agreement=f"{rel:.1e}",
                     check=_verdict(rel, 1e-8), target=None))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-img", type=int, default=1024, help="[1, 2] image feature dim d_I")
    parser.add_argument("--n", type=int, default=256, help="[1, 2] number of finetuning pairs")
    parser.add_argument("--k", type=int, default=64, help="[1, 2] embedding dimension")
    parser.add_argument("--d-txt", type=int, default=64, help="[1, 2] text feature dimension")
    parser.add_argument("--steps", type=int, default=10_000,
                        help="[1] steps (and WMA horizon) of spectral vs simulate")
    parser.add_argument("--record-every", type=int, default=100, help="[1] record interval")
    parser.add_argument("--numpy-steps", type=int, default=1000,
                        help="[2] steps (and WMA horizon) of simulate vs the NumPy loop")
    parser.add_argument("--small-steps", type=int, default=10_000,
                        help="[2] steps of the second, small (--sweep-* sizes) comparison")
    parser.add_argument("--lam", type=float, default=1.0, help="[1, 2] lambda")
    parser.add_argument("--lr-fraction", type=float, default=0.5,
                        help="lr as a fraction of the stability bound 2/(sigma_max^2 (1+lambda))")
    parser.add_argument("--repeats", type=int, default=3, help="timings: best of")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="[1, 3, 4] seconds of untimed calls of the fast methods first")
    parser.add_argument("--sim-repeats", type=int, default=None,
                        help="[1] timed runs of simulate (default: --repeats, or 1 when its "
                             "warm-up run takes >= --slow-threshold seconds)")
    parser.add_argument("--slow-threshold", type=float, default=10.0,
                        help="[1] seconds; see --sim-repeats")
    parser.add_argument("--sweep-d-img", type=int, default=64, help="[3] d_I")
    parser.add_argument("--sweep-n", type=int, default=32, help="[3] n")
    parser.add_argument("--sweep-k", type=int, default=16, help="[3] k")
    parser.add_argument("--sweep-d-txt", type=int, default=16, help="[3] d_T")
    parser.add_argument("--grid", type=int, default=10,
                        help="[3] values per axis (horizon, lambda, a): grid^3 configs")
    parser.add_argument("--min-horizon", type=int, default=100, help="[3] smallest horizon")
    parser.add_argument("--max-horizon", type=int, default=3162,
                        help="[3] largest horizon (horizons log-spaced, rounded)")
    parser.add_argument("--loop-budget", type=float, default=180.0,
                        help="[3] seconds: if the full Python loop is projected to take longer, "
                             "time a random subset and extrapolate")
    parser.add_argument("--loop-configs", type=int, default=None,
                        help="[3] time exactly this many random configs in the loop and "
                             "extrapolate (overrides --loop-budget)")
    parser.add_argument("--loop-probe", type=int, default=20,
                        help="[3] random configs timed to project the loop's duration")
    parser.add_argument("--grad-steps", type=int, nargs="+", default=[1_000, 10_000, 100_000],
                        help="[4] horizons T of the gradient memory/time comparison")
    parser.add_argument("--design-steps", type=int, default=10_000,
                        help="[4] horizon T of the kernel design step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", type=int, nargs="*", default=[], choices=[1, 2, 3, 4],
                        help="comparisons to skip")
    args = parser.parse_args(argv)
    if min(args.repeats, args.steps, args.numpy_steps, args.record_every, args.grid,
           args.loop_probe, args.min_horizon, args.design_steps, *args.grad_steps) < 1 \
            or args.max_horizon < args.min_horizon:
        parser.error("counts must be >= 1 and --max-horizon >= --min-horizon")
    args.grad_steps = sorted(set(args.grad_steps))
    if args.steps % args.record_every:
        parser.error("--record-every must divide --steps")
    if args.sim_repeats is not None and args.sim_repeats < 1:
        parser.error("--sim-repeats must be >= 1")
    if args.loop_configs is not None and args.loop_configs < 1:
        parser.error("--loop-configs must be >= 1")
    if not 0 < args.lr_fraction < 1:
        parser.error("--lr-fraction must be in (0, 1)")

    jax.config.update("jax_enable_x64", True)

    cpu = platform.processor() or platform.machine()
    device = jax.devices()[0]
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, device {device} "
          f"({device.device_kind}, {cpu}), x64={jax.config.jax_enable_x64}")
    print(f"repeats={args.repeats} seed={args.seed}")

    t_start = time.perf_counter()
    large = (args.d_img, args.n, args.d_txt, args.k)
    small = (args.sweep_d_img, args.sweep_n, args.sweep_d_txt, args.sweep_k)
    benches = [(1, bench_spectral_vs_simulate),
               (2, lambda a: bench_scan_vs_numpy(a, large, a.numpy_steps)),   # BLAS-bound
               (2, lambda a: bench_scan_vs_numpy(a, small, a.small_steps)),   # overhead-bound
               (3, bench_sweep_vs_loop),
               (4, bench_gradients)]
    rows = []
    for number, bench in benches:
        if number not in args.skip:
            out = bench(args)
            rows += out if isinstance(out, list) else [out]

    width = max([4] + [len(r["detail"]) for r in rows])
    header = (f"{'comparison':<20} {'size':<{width}} {'fast':>18} {'slow':>26} {'ratio':>9} "
              f"{'target':>8} {'met':>4} {'agreement':>24} {'<= 1e-8':>10}")
    print("\n" + header)
    print("-" * len(header))
    for r in rows:
        fmt = _fmt_bytes if r.get("unit") == "bytes" else fmt_time
        slow_note = "" if r["slow_repeats"] > 1 or r.get("unit") else " (1 run)"
        ratio = r["slow"] / r["fast"]
        target = r.get("target")
        met = "" if target is None else ("yes" if ratio >= target else "NO")
        print(f"{r['name']:<20} {r['detail']:<{width}} "
              f"{r['fast_label'] + ' ' + fmt(r['fast']):>18} "
              f"{r['slow_label'] + ' ' + fmt(r['slow']) + slow_note:>26} "
              f"{ratio:>8.1f}x {'' if target is None else f'{target:g}x':>8} {met:>4} "
              f"{r['agreement']:>24} {r['check']:>10}")
    print(f"\nratio = slow / fast (> 1: the first-named method is faster or, for memory, "
          f"smaller); target: issue 14 item 5. Total wall time "
          f"{fmt_time(time.perf_counter() - t_start)}.")


if __name__ == "__main__":
    main()
