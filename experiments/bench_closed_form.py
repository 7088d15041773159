"""Benchmark: closed-form solutions versus gradient descent run to the same tolerance.

For two seeded problems (isotropic Gaussian features, and a power-law spectrum ``σ_i = i^-decay``
closer to real CLIP features) and three strategies (Direct FT, static SD, L2-SP) it times

  (a) the closed form ``tt.solve``, jitted, SVD included;
  (b) the closed form reusing a precomputed ``tt.spectrum`` (the cached path: no SVD);
  (c) gradient descent from ``W⁰`` on the strategy's own objective with ``lr = 1/L`` (``L`` the
      largest curvature of the objective) until ``‖W_GD − W_closed‖/‖W_closed‖ ≤ tol``.

(a) and (b) are warmed up (compiled) and timed as the best of ``--repeats`` runs; (c) is warmed up
once (which also compiles it) and then timed over ``--gd-repeats`` runs (best). Every timing
blocks on the result (``block_until_ready``) and uses ``time.perf_counter``. Float64 throughout.

    python experiments/bench_closed_form.py --d-img 1024 --n 256 --k 64 --d-txt 64
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import numpy as np
from _timing import best_time, fmt_time

import tracer_theory as tt


def _label(strategy: tt.Strategy) -> str:
    name = type(strategy).__name__
    return f"{name}({float(strategy.lam):g})" if hasattr(strategy, "lam") else name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-img", type=int, default=1024, help="image feature dimension d_I")
    parser.add_argument("--n", type=int, default=256, help="number of finetuning pairs")
    parser.add_argument("--k", type=int, default=64, help="embedding dimension")
    parser.add_argument("--d-txt", type=int, default=64, help="text feature dimension d_T")
    parser.add_argument("--tol", type=float, default=1e-8,
                        help="GD stops at ||W_GD - W_closed|| / ||W_closed|| <= tol")
    parser.add_argument("--repeats", type=int, default=5, help="closed-form timings: best of")
    parser.add_argument("--gd-repeats", type=int, default=1, help="GD timings: best of")
    parser.add_argument("--max-steps", type=int, default=2_000_000, help="GD step cap")
    parser.add_argument("--decay", type=float, default=0.5,
                        help="power-law exponent of the second problem (sigma_i = i^-decay)")
    parser.add_argument("--lam", type=float, default=1.0, help="lambda of StaticSD and L2SP")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.repeats, args.gd_repeats, args.max_steps) < 1 or not args.tol > 0:
        parser.error("--repeats, --gd-repeats and --max-steps must be >= 1 and --tol > 0")

    jax.config.update("jax_enable_x64", True)

    problems = {
        "gaussian": tt.random_problem(args.d_img, args.n, args.d_txt, args.k, seed=args.seed),
        f"power-law({args.decay:g})": tt.random_problem(
            args.d_img, args.n, args.d_txt, args.k, seed=args.seed, decay=args.decay),
    }
    strategies = [tt.DirectFT(), tt.StaticSD(args.lam), tt.L2SP(args.lam)]

    closed = jax.jit(lambda problem, strategy: tt.solve(problem, strategy))
    cached = jax.jit(lambda problem, strategy, spec: tt.solve(problem, strategy, spectrum=spec))

    cpu = platform.processor() or platform.machine()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({cpu}), "
          f"x64={jax.config.jax_enable_x64}")
    print(f"d_I={args.d_img} n={args.n} k={args.k} d_T={args.d_txt} tol={args.tol:g} "
          f"repeats={args.repeats} gd_repeats={args.gd_repeats} max_steps={args.max_steps} "
          f"seed={args.seed}")

    rows = []
    for pname, problem in problems.items():
        s = np.linalg.svd(np.asarray(problem.x_img), compute_uv=False)
        sigma_max_sq = float(s[0] ** 2)
        spec = jax.block_until_ready(tt.spectrum(problem))
        rank = int(spec.rank)
        sigma_min_sq = float(s[rank - 1] ** 2)
        print(f"\n{pname}: X_I {problem.x_img.shape}, rank {rank}, "
              f"sigma_max^2={sigma_max_sq:.4g}, sigma_min^2={sigma_min_sq:.4g}, "
              f"condition number of X_I X_I^T on the task subspace "
              f"{sigma_max_sq / sigma_min_sq:.4g}")
        for strategy in strategies:
            label = _label(strategy)
            jax.block_until_ready(closed(problem, strategy))  # compile
            jax.block_until_ready(cached(problem, strategy, spec))
            t_closed, w_closed = best_time(lambda p=problem, st=strategy: closed(p, st),
                                            args.repeats)
            t_cached, w_cached = best_time(
                lambda p=problem, st=strategy, sp=spec: cached(p, st, sp), args.repeats)
            gap = float(np.linalg.norm(np.asarray(w_closed) - np.asarray(w_cached))
                        / np.linalg.norm(np.asarray(w_closed)))

            curvature = float(strategy.curvature(jax.numpy.asarray(sigma_max_sq)))
            lr = 1.0 / curvature

            def run_gd(p=problem, st=strategy, target=w_closed, lr=lr):
                return tt.gradient_descent_until(p, st, target, tol=args.tol, lr=lr,
                                                 max_steps=args.max_steps)

            t0 = time.perf_counter()
            jax.block_until_ready(run_gd())  # warm-up: compile and one full run
            t_warm = time.perf_counter() - t0
            t_gd, (w_gd, steps) = best_time(run_gd, args.gd_repeats)
            steps = int(steps)
            w_closed_np = np.asarray(w_closed)
            rel_err = float(np.linalg.norm(np.asarray(w_gd) - w_closed_np)
                            / np.linalg.norm(w_closed_np))
            rows.append(dict(problem=pname, strategy=label, steps=steps, t_gd=t_gd,
                             t_closed=t_closed, t_cached=t_cached, rel_err=rel_err,
                             hit_max=steps >= args.max_steps, lr=lr, gap=gap,
                             per_step=t_gd / max(steps, 1), t_warm=t_warm))
            print(f"  {label:<14} lr=1/{curvature:.4g}  GD {steps} steps in {fmt_time(t_gd)} "
                  f"(warm-up incl. compile {fmt_time(t_warm)}), closed {fmt_time(t_closed)}, "
                  f"cached {fmt_time(t_cached)}, |closed - cached|/|closed| = {gap:.1e}",
                  flush=True)

    header = (f"{'problem':<16} {'strategy':<14} {'GD steps':>9} {'GD time':>11} "
              f"{'closed':>10} {'cached':>10} {'GD/closed':>10} {'GD/cached':>10} "
              f"{'GD rel err':>10} {'hit max':>7}")
    print("\n" + header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['problem']:<16} {r['strategy']:<14} {r['steps']:>9d} "
              f"{fmt_time(r['t_gd']):>11} {fmt_time(r['t_closed']):>10} "
              f"{fmt_time(r['t_cached']):>10} {r['t_gd'] / r['t_closed']:>10.1f} "
              f"{r['t_gd'] / r['t_cached']:>10.1f} {r['rel_err']:>10.2e} "
              f"{'YES' if r['hit_max'] else 'no':>7}")
    unconverged = [r for r in rows if r["hit_max"]]
    if unconverged:
        print("\nGD did NOT reach tol within max_steps for: "
              + ", ".join(f"{r['problem']}/{r['strategy']} (rel err {r['rel_err']:.2e})"
                          for r in unconverged))
    else:
        print(f"\nGD reached rel err <= {args.tol:g} in every case.")


if __name__ == "__main__":
    main()
