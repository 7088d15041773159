"""Benchmark: the toy CLIP's jitted finetuning step with a WMA teacher, an EMA teacher, a fixed
(static) teacher and no distillation at all, timed side by side in one run.

    python experiments/bench_toy_step.py [--steps 50] [--repeats 5] [--batch-size 128]

The WMA and EMA steps differ only in ω (both call the shared ``teacher(schedule).update``, one
fused ``mix`` over the image tower; the WMA ω is a look-up in the table its schedule computed
once); the static step has the same distillation loss and no teacher update; Direct FT has
neither. ``--horizon`` sets the WMA horizon: the step's cost must not grow with it.
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from tracer_theory.deep.finetune import REGISTRY, Batch, FinetuneConfig, Finetunee
from tracer_theory.deep.finetune.step import start, train_step
from tracer_theory.deep.models import ToyCLIP


def prepare(name: str, args: argparse.Namespace, horizon: int):
    """A compiled closure running ``args.steps`` consecutive steps of a registered strategy
    (a run of ``horizon`` steps, so the WMA kernel spans ``horizon``)."""
    key = jax.random.key(0)
    model = Finetunee(ToyCLIP(key=key), eqx.nn.Linear(128, 10, dtype=jnp.float32, key=key))
    strategy = REGISTRY[name].strategy
    config = FinetuneConfig(steps=horizon, batch_size=args.batch_size)
    state, optimizer, schedule = start(model, strategy, config)
    rng = np.random.default_rng(0)
    batch = Batch(jnp.asarray(rng.random((args.batch_size, 3, 28, 28), np.float32)),
                  jnp.asarray(rng.integers(0, 10, args.batch_size)),
                  jnp.zeros((0, 3, 28, 28), jnp.float32), jnp.zeros((0, 8), jnp.int32),
                  jnp.zeros((0,), jnp.int32))
    class_emb = model.clip.class_embeddings(jnp.zeros((10, 1, 8), jnp.int32) + 1)

    def run():
        s = state
        for _ in range(args.steps):
            s, _ = train_step(s, batch, strategy, schedule, config, optimizer, model, class_emb,
                              model.head)
        return jax.block_until_ready(s)

    run()  # compile
    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--horizon", type=int, default=100_000,
                        help="the long WMA horizon compared with a 100-step one")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.default_backend()}; batch {args.batch_size}, "
          f"best of {args.repeats} × {args.steps} steps; float32")
    # Every repeat times each strategy once, in turn, so drift in machine load hits all alike.
    order = ["direct", "static_sd", "ema_sd", "wma_sd", "wma_sd_long"]
    runs = {s: prepare(s, args, 100) for s in order[:-1]}
    runs["wma_sd_long"] = prepare("wma_sd", args, args.horizon)
    best = dict.fromkeys(order, float("inf"))
    for _ in range(args.repeats):
        for s in order:
            start = time.perf_counter()
            runs[s]()
            best[s] = min(best[s], (time.perf_counter() - start) / args.steps)
    for s in order:
        print(f"  {s:10s} {1e3 * best[s]:8.2f} ms/step")
    print(f"WMA over EMA:        {100 * (best['wma_sd'] / best['ema_sd'] - 1):+.2f}%")
    print(f"WMA at horizon {args.horizon:,} over horizon 100: "
          f"{100 * (best['wma_sd_long'] / best['wma_sd'] - 1):+.2f}%")
    ema_over_static = 100 * (best["ema_sd"] / best["static_sd"] - 1)
    print(f"EMA update over a fixed teacher: {ema_over_static:+.2f}%")
    print(f"distillation loss over Direct FT: "
          f"{100 * (best['static_sd'] / best['direct'] - 1):+.2f}%")


if __name__ == "__main__":
    main()
