"""Benchmark: the toy CLIP's jitted finetuning step with a WMA teacher, an EMA teacher, a fixed
(static) teacher and no distillation at all, timed side by side in one run.

    python experiments/bench_toy_step.py [--steps 50] [--repeats 5] [--batch-size 128]

The WMA and EMA steps differ only in ω (both run one fused ``mix`` over the image tower);
the static step has the same distillation loss and no teacher update; Direct FT has neither.
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from tracer_theory.deep.model import ToyCLIP
from tracer_theory.deep.train import (
    Batch,
    FinetuneConfig,
    Finetunee,
    TrainState,
    image_tower,
    make_optimizer,
    train_step,
    trainable_mask,
)
from tracer_theory.dynamics.teacher import teacher


def prepare(strategy: str, args: argparse.Namespace):
    """A compiled closure running ``args.steps`` consecutive steps of ``strategy``."""
    key = jax.random.key(0)
    model = Finetunee(ToyCLIP(key=key), eqx.nn.Linear(128, 10, dtype=jnp.float32, key=key))
    config = FinetuneConfig(strategy=strategy, steps=args.steps, batch_size=args.batch_size)
    optimizer = make_optimizer(config, trainable_mask(model, config), config.lr)
    rng = np.random.default_rng(0)
    batch = Batch(jnp.asarray(rng.random((args.batch_size, 3, 28, 28), np.float32)),
                  jnp.asarray(rng.integers(0, 10, args.batch_size)),
                  jnp.zeros((0, 3, 28, 28), jnp.float32), jnp.zeros((0, 8), jnp.int32),
                  jnp.zeros((0,), jnp.int32))
    class_emb = model.clip.class_embeddings(jnp.zeros((10, 1, 8), jnp.int32) + 1)
    omegas = jnp.asarray(np.asarray(config.schedule().weights(args.steps), np.float32))
    state = TrainState(model, optimizer.init(eqx.filter(model, eqx.is_inexact_array)),
                       teacher(config.schedule()).init(image_tower(model)))

    def run():
        s = state
        for step in range(args.steps):
            s, _ = train_step(s, batch, config, optimizer, model, class_emb, model.head,
                              omegas[step])
        return jax.block_until_ready(s)

    run()  # compile
    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.default_backend()}; batch {args.batch_size}, "
          f"best of {args.repeats} × {args.steps} steps; float32")
    # Every repeat times each strategy once, in turn, so drift in machine load hits all alike.
    order = ["direct", "static_sd", "ema_sd", "wma_sd"]
    runs = {s: prepare(s, args) for s in order}
    best = dict.fromkeys(order, float("inf"))
    for _ in range(args.repeats):
        for s in order:
            start = time.perf_counter()
            runs[s]()
            best[s] = min(best[s], (time.perf_counter() - start) / args.steps)
    for s in order:
        print(f"  {s:10s} {1e3 * best[s]:8.2f} ms/step")
    print(f"WMA over EMA:        {100 * (best['wma_sd'] / best['ema_sd'] - 1):+.2f}%")
    ema_over_static = 100 * (best["ema_sd"] / best["static_sd"] - 1)
    print(f"EMA update over a fixed teacher: {ema_over_static:+.2f}%")
    print(f"distillation loss over Direct FT: "
          f"{100 * (best['static_sd'] / best['direct'] - 1):+.2f}%")


if __name__ == "__main__":
    main()
