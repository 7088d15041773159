"""Benchmark: finetuning steps per second of the scanned on-device loop (``finetune``) against
the step-by-step Python loop (``reference_finetune``), and of vmapped seeds
(``finetune_seeds``) against sequential runs, for the toy CLIP and a CLIP preset, timed side by
side in one run.

    python experiments/bench_scan.py [--models toy tiny] [--steps 100] [--clip-steps 50]
        [--batch-size 128] [--clip-batch-size 32] [--seeds 4] [--repeats 3] [--chunk 250]
        [--strategy wma_sd] [--quick]

Each variant runs the same model, data (the experiment's arrays: ``ExperimentData``, probes,
replay data), strategy (``REGISTRY[--strategy]``) and one shared ``FinetuneConfig`` object
(``log_every=10``), so the cached optimizers and compiled programs are reused. Variants:

* ``python loop``: ``reference_finetune``, one dispatched jitted step per Python iteration;
* ``scanned``: ``finetune``, chunks of ``--chunk`` steps as one ``lax.scan`` program (one step
  per program on CPU);
* ``python loop xN`` / ``scanned xN``: N seeds one after the other;
* ``vmapped xN``: ``finetune_seeds``, the N seeds as one vmapped program.

Every variant is run once first (compilation: the scanned programs compile per chunk length
and strategy/config), then ``--repeats`` interleaved timed runs, each blocked on the returned
model's leaves; the median is reported. Steps/s counts seed-steps (N × steps for N seeds). The
models are freshly initialized (pretraining does not change a step's cost); the arrays are put
on the device once, outside the timings. ``--quick``: tiny sizes for a smoke run.

On a CPU host every step is its own jitted program, its batch drawn inside it
(``loop.stepwise()``: XLA:CPU runs convolutions inside loop bodies an order of magnitude
slower, jax-ml/jax#12868), and the Python loop differs only in drawing each batch with a
separately dispatched program; the header says which form was timed. The toy default is 100 steps
(not 200) so that the full run stays within ~10 minutes on a 2-core CPU host; on an
accelerator, ``--steps 200``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["toy", "tiny"],
                        help="'toy' and/or CLIP preset names")
    parser.add_argument("--steps", type=int, default=100, help="steps per run of the toy")
    parser.add_argument("--clip-steps", type=int, default=50, help="steps per run of a CLIP")
    parser.add_argument("--batch-size", type=int, default=128, help="toy batch size")
    parser.add_argument("--clip-batch-size", type=int, default=32, help="CLIP batch size")
    parser.add_argument("--seeds", type=int, default=4, help="seeds of the multi-seed variants")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=250, help="steps per scanned program call")
    parser.add_argument("--strategy", default="wma_sd", help="a name of finetune.REGISTRY")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (few steps, small batches, quick data): a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.clip_steps = min(args.steps, 20), min(args.clip_steps, 10)
        args.batch_size, args.clip_batch_size = min(args.batch_size, 16), min(
            args.clip_batch_size, 8)
        args.seeds, args.repeats = min(args.seeds, 2), 1
    run(args)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def variants(name: str, args: argparse.Namespace) -> tuple[dict, int, int]:
    """``({variant: (seeds, run)}, steps, batch size)`` of one model: every run finetunes the
    same freshly initialized model(s) on the experiment's arrays and returns the model(s)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from tracer_theory.deep.finetune import REGISTRY, FinetuneConfig, Finetunee
    from tracer_theory.deep.finetune.loop import finetune, finetune_seeds, reference_finetune
    from tracer_theory.deep.models import make_model
    from tracer_theory.deep.studies.arrays import ExperimentData

    strategy, n = REGISTRY[args.strategy].strategy, args.seeds
    toy = name == "toy"
    steps = args.steps if toy else args.clip_steps
    batch = args.batch_size if toy else args.clip_batch_size
    config = FinetuneConfig(steps=steps, batch_size=batch, log_every=10)  # one shared object
    data = ExperimentData(model=name, quick=args.quick)
    images, labels = jnp.asarray(data.color_train), jnp.asarray(data.train_labels)
    common = dict(probe=jnp.asarray(data.probe()),
                  gray_probe=tuple(jnp.asarray(x) for x in data.gray_probe()),
                  hybrid=tuple(jnp.asarray(x) for x in data.hybrid()))
    models, embs = [], []
    for seed in range(n):
        key = jax.random.key(seed)
        clip = make_model(name, key=key)
        models.append(Finetunee(clip, eqx.nn.Linear(clip.image_proj.in_features, 10,
                                                    dtype=jnp.float32,
                                                    key=jax.random.fold_in(key, 1))))
        embs.append(jax.block_until_ready(clip.class_embeddings(jnp.asarray(data.captions))))

    def python(i):
        return reference_finetune(models[i], images, labels, strategy, config,
                                  class_emb=embs[i], seed=i, **common).model

    def scanned(i):
        return finetune(models[i], images, labels, strategy, config, class_emb=embs[i], seed=i,
                        chunk=args.chunk, **common).model

    def vmapped():
        return finetune_seeds(models, images, labels, strategy, config, class_emb=embs,
                              seeds=list(range(n)), chunk=args.chunk, **common).model

    return {
        "python loop": (1, lambda: python(0)),
        "scanned": (1, lambda: scanned(0)),
        f"python loop x{n}": (n, lambda: [python(i) for i in range(n)]),
        f"scanned x{n}": (n, lambda: [scanned(i) for i in range(n)]),
        f"vmapped x{n}": (n, vmapped),
    }, steps, batch


def bench(name: str, args: argparse.Namespace) -> tuple[list[tuple], dict[str, str]]:
    """Rows ``(model, variant, seeds, steps, batch, median seconds or None)`` of one model and
    ``{variant: error}`` of the variants that failed (reported, not timed)."""
    import jax
    from _timing import fmt_time

    _log(f"[{name}] data, models")
    runs, steps, batch = variants(name, args)
    failed: dict[str, str] = {}

    def attempt(variant: str) -> float | None:
        try:
            start = time.perf_counter()
            jax.block_until_ready(runs[variant][1]())
            return time.perf_counter() - start
        except Exception as err:  # reported in the table; the script then exits with status 1
            failed[variant] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            _log(f"[{name}] {variant} FAILED: {failed[variant]}")
            return None

    # compile / warm up (the sequential variants reuse the one-seed programs)
    for variant in ("python loop", "scanned", f"vmapped x{args.seeds}"):
        t = attempt(variant)
        if t is not None:
            _log(f"[{name}] warm-up {variant}: {fmt_time(t)}")
    times: dict[str, list[float]] = {v: [] for v in runs}
    for r in range(args.repeats):  # interleaved, so drifts in machine load hit all alike
        for variant in runs:
            if variant in failed or (variant.startswith("scanned x") and "scanned" in failed):
                continue
            t = attempt(variant)
            if t is not None:
                times[variant].append(t)
                _log(f"[{name}] repeat {r + 1}/{args.repeats} {variant}: {fmt_time(t)}")
    rows = [(name, v, seeds, steps, batch,
             statistics.median(times[v]) if times[v] else None) for v, (seeds, _) in runs.items()]
    return rows, failed


def run(args: argparse.Namespace) -> None:
    import jax
    from _timing import fmt_time

    n = args.seeds
    rows, errors = [], {}
    for name in args.models:
        model_rows, failed = bench(name, args)
        rows += model_rows
        errors.update({(name, v): e for v, e in failed.items()})

    from tracer_theory.deep.finetune import loop

    device = jax.devices()[0]
    unrolled = loop.stepwise()
    form = "one step per program (stepwise)" if unrolled else f"lax.scan, chunk {args.chunk}"
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, device {device.device_kind} "
          f"({len(jax.devices())} device(s)); strategy {args.strategy}, log_every 10; scanned "
          f"programs: {form}; median of {args.repeats} run(s) after a warm-up; steps/s counts "
          f"seed-steps")
    head = (f"{'model':8s}{'variant':18s}{'seeds':>6s}{'steps':>7s}{'batch':>7s}{'time':>12s}"
            f"{'steps/s':>10s}")
    print(head)
    print("-" * len(head))
    rate = {}
    for model, variant, seeds, steps, batch, t in rows:
        if t is None:
            print(f"{model:8s}{variant:18s}{seeds:6d}{steps:7d}{batch:7d}{'FAILED':>12s}"
                  f"{'-':>10s}")
            continue
        rate[model, variant] = seeds * steps / t
        print(f"{model:8s}{variant:18s}{seeds:6d}{steps:7d}{batch:7d}{fmt_time(t):>12s}"
              f"{rate[model, variant]:10.1f}")
    print()

    def ratio(model, a, b):
        if (model, a) in rate and (model, b) in rate:
            return f"{rate[model, a] / rate[model, b]:.2f}x"
        return "n/a"

    for model in args.models:
        print(f"{model}: scanned / python loop (1 seed) {ratio(model, 'scanned', 'python loop')}; "
              f"vmapped x{n} / scanned x{n} {ratio(model, f'vmapped x{n}', f'scanned x{n}')}; "
              f"vmapped x{n} / python loop x{n} "
              f"{ratio(model, f'vmapped x{n}', f'python loop x{n}')}")
    for (model, variant), error in errors.items():
        print(f"{model} {variant} failed: {error}")
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
