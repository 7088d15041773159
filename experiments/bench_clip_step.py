"""Benchmark: training steps per second of the transformer CLIP (``--preset``, default tiny),
on 1 vs N host devices (data parallel), and the cost of the WMA teacher inside the step, timed
side by side in one run.

    python experiments/bench_clip_step.py [--preset tiny] [--devices 2] [--steps 20]
        [--repeats 3] [--batch-size 128] [--peak-tflops X]

On a CPU host the script asks XLA for ``--devices`` host devices before jax starts. Strategies:
``wma_sd`` (distillation loss + one fused teacher update per step), ``static_sd`` (the same loss,
no teacher update: the "no teacher" reference for the update's overhead) and ``direct`` (no
distillation at all). FLOPs per step come from XLA's cost analysis; ``--peak-tflops`` (the
accelerator's peak) turns the achieved rate into model FLOPs utilization.
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    if "jax" in sys.modules:
        raise RuntimeError("run this as a script: XLA_FLAGS must be set before jax is imported")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}")
    run(args)


def run(args: argparse.Namespace) -> None:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    from _timing import best_time, fmt_time

    from tracer_theory.deep.data.prompts import TRAIN_TEMPLATES, prompt_tokens
    from tracer_theory.deep.finetune import REGISTRY, Batch, FinetuneConfig, Finetunee
    from tracer_theory.deep.finetune.step import start, train_step
    from tracer_theory.deep.models.clip import CLIP, clip_tokens, preset
    from tracer_theory.deep.parallel import data_mesh, replicate, shard_batch

    spec = preset(args.preset)
    key = jax.random.key(0)
    clip = CLIP(spec, key=key)
    model = Finetunee(clip, eqx.nn.Linear(spec.width, 10, dtype=jnp.float32, key=key))
    class_emb = clip.class_embeddings(jnp.asarray(clip_tokens(prompt_tokens(TRAIN_TEMPLATES))))
    rng = np.random.default_rng(0)
    size = spec.image_size
    batch = Batch(jnp.asarray(rng.random((args.batch_size, 3, size, size), np.float32)),
                  jnp.asarray(rng.integers(10, size=args.batch_size)),
                  jnp.zeros((0, 3, size, size), jnp.float32), jnp.zeros((0, spec.context),
                                                                        jnp.int32),
                  jnp.zeros((0,), jnp.int32))

    def prepare(name: str, devices: int):
        strategy = REGISTRY[name].strategy
        config = FinetuneConfig(steps=args.steps, batch_size=args.batch_size)
        state, optimizer, schedule = start(model, strategy, config)
        mesh = data_mesh(devices)
        state, data = replicate(state, mesh), shard_batch(batch, mesh)
        compiled = train_step.lower(state, data, strategy, schedule, config, optimizer, model,
                                    class_emb, model.head).compile()
        cost = compiled.compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

        def go():
            s = state
            for _ in range(args.steps):
                s, parts = train_step(s, data, strategy, schedule, config, optimizer, model,
                                      class_emb, model.head)
            return parts["loss"]

        jax.block_until_ready(go())  # compile and warm up
        return go, flops

    devices = [1] if args.devices == 1 else [1, args.devices]
    cases = {(s, d): prepare(s, d) for d in devices for s in ("direct", "static_sd", "wma_sd")}
    times = {c: [] for c in cases}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every case
        for c, (go, _) in cases.items():
            times[c].append(best_time(go, 1)[0] / args.steps)
    print(f"CLIP preset {args.preset}, batch {args.batch_size}, {args.steps} steps x "
          f"{args.repeats} interleaved repeats, backend {jax.default_backend()} "
          f"({jax.devices()[0].device_kind}), best per-step time")
    print(f"{'strategy':10s}{'devices':>8s}{'step':>11s}{'steps/s':>9s}{'GFLOP/step':>12s}"
          f"{'GFLOP/s':>9s}" + ("{:>7s}".format("MFU") if args.peak_tflops else ""))
    best = {c: min(t) for c, t in times.items()}
    for (strategy, d), t in best.items():
        flops = cases[(strategy, d)][1] * d  # cost analysis is per device
        line = (f"{strategy:10s}{d:8d}{fmt_time(t):>11s}{1 / t:9.1f}{flops / 1e9:12.3f}"
                f"{flops / t / 1e9:9.1f}")
        if args.peak_tflops:
            line += f"{flops / t / (args.peak_tflops * 1e12 * d):7.1%}"
        print(line)
    for d in devices:
        wma, static, direct = (best[(s, d)] for s in ("wma_sd", "static_sd", "direct"))
        print(f"{d} device(s): WMA teacher update overhead vs the same loss without it "
              f"(static SD) {wma / static - 1:+.1%}; WMA SD vs Direct FT {wma / direct - 1:+.1%}")
    if len(devices) == 2:
        for s in ("direct", "wma_sd"):
            print(f"{s}: {args.devices} devices vs 1, speed-up "
                  f"{best[(s, 1)] / best[(s, args.devices)]:.2f}x")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
