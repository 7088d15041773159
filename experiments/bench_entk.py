"""Benchmark: the empirical NTK Gram of an image tower, structured against the matrix-free
reference and an explicit Jacobian, and one training step of the tangent model against one of
the real model, side by side in one run.

    python experiments/bench_entk.py [--models toy tiny] [--n 32 128] [--memory-gb 8]
        [--reference-max-n 32] [--repeats R] [--batch-size 128] [--steps 20] [--skip-gram]
        [--skip-step]

1. The Gram ``K = J Jᵀ`` (n·k × n·k) of the tower ``(clip.image, clip.image_proj)`` (all its
   float parameters, p of them; k embedding coordinates) on n random uniform images, float32:
   *structured*, ``ntk.entk_gram`` (each linear layer's share from its inputs and output
   cotangents, ``deep/structured.py``; blocks from ``--memory-gb``); *matrix-free*, the
   reference ``entk_gram(method="matrix-free")`` (64 rows at a time, J never formed), run only
   for n <= ``--reference-max-n`` (it costs n times the explicit Jacobian's backward passes);
   and *explicit*, the per-image Jacobian by ``jax.vmap(jax.jacrev(...))`` w.r.t. all
   parameters at once, flattened to J (n·k, p), then ``J @ J.T`` in one jitted program, run
   where J alone (n·k·p·4 bytes) fits in ``--memory-gb``. Each measurement runs in a fresh
   process (``spawn``), whose peak host RSS is reported in total and above its RSS just before
   the measurement (on an accelerator, device memory is not in the RSS; its peak is shown when
   the device reports it). Times: the first call (compilation and, for the structured Gram,
   the timing that picks each shared layer's contraction included) and the best of
   ``--repeats`` (default 1) warm calls after it (the worker keeps a persistent compilation
   cache). The methods are checked to agree: max |ΔK| / max |K| against the explicit one (or
   the structured one where the explicit did not run). The run ends with one line per model
   and n: ``entk <model> n=<n> float32: gram <s> s, explicit <s> s, ratio <r>x`` (warm times),
   with both peaks.
2. One jitted training step (``finetune.step.train_step``, strategies ``direct`` and ``wma_sd``)
   of the tangent model (``models.tangent.linearize`` on the CLIP) against the real model:
   best of ``--repeats`` (default 5) interleaved calls of ``--steps`` steps each, compiled
   beforehand.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _timing import best_time, fmt_time
from jaxtyping import Array, Float, PyTree

from tracer_theory.deep.data.prompts import TRAIN_TEMPLATES, prompt_tokens
from tracer_theory.deep.finetune import REGISTRY, Batch, FinetuneConfig, Finetunee
from tracer_theory.deep.finetune.step import start, train_step
from tracer_theory.deep.models import DualEncoder, make_model, preset
from tracer_theory.deep.models.clip import clip_tokens
from tracer_theory.deep.models.tangent import linearize
from tracer_theory.deep.ntk import Embed, entk_gram, tower_embed
from tracer_theory.errors import MemoryBudgetExceeded

METHODS = ("structured", "matrix-free", "explicit")
STRATEGIES = ("direct", "wma_sd")


# --- building blocks -------------------------------------------------------------------------

def image_size(model: str) -> int:
    """The side of the square (3, s, s) images ``model`` takes: 28 for the toy (colored MNIST),
    the preset's ``image_size`` for a CLIP."""
    return 28 if model == "toy" else preset(model).image_size


def random_images(model: str, n: int, seed: int = 0) -> Float[Array, "n 3 s s"]:
    """``n`` uniform random float32 images of ``model``'s input shape."""
    size = image_size(model)
    return jnp.asarray(np.random.default_rng(seed).random((n, 3, size, size), np.float32))


def tower(model: str) -> tuple[PyTree, Embed]:
    """``(params, embed)`` of the image tower ``(image, image_proj)`` of a fresh ``model``."""
    clip = make_model(model, key=jax.random.key(0))
    return tower_embed((clip.image, clip.image_proj))


def n_params(params: PyTree) -> int:
    """Number of scalars in ``params``."""
    return sum(x.size for x in jax.tree.leaves(params))


def explicit_gram(params: PyTree, embed: Embed, images: Float[Array, "n C H W"]
                  ) -> Float[Array, "nk nk"]:
    """``J Jᵀ`` with ``J`` (n·k, p) formed: each image's Jacobian w.r.t. all of ``params`` by
    ``jax.jacrev`` (vmapped over the images), flattened row-major in the image like
    ``entk_gram``'s rows."""
    jac = jax.vmap(jax.jacrev(lambda p, x: embed(p, x[None])[0]), in_axes=(None, 0))(
        params, images)
    rows = images.shape[0] * jax.tree.leaves(jac)[0].shape[1]
    j = jnp.concatenate([leaf.reshape(rows, -1) for leaf in jax.tree.leaves(jac)], axis=1)
    return j @ j.T


def fmt_bytes(size: float) -> str:
    """``123 MiB`` or ``4.56 GiB``."""
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


def current_rss() -> int:
    """This process's resident set size now, in bytes (Linux ``/proc``; elsewhere its peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss()


def peak_rss() -> int:
    """This process's peak resident set size so far, in bytes (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_peak() -> int | None:
    """The default device's peak memory in use, in bytes, where it reports one (not on CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


# --- one Gram measurement, in a fresh process -------------------------------------------------

def measure_gram(task: dict[str, Any]) -> dict[str, Any]:
    """Time and peak memory of one Gram (``task``: model, method, n, memory_gb,
    reference_max_n, repeats, save); run in a fresh process. Returns the timings and memory,
    or ``refused``/``skipped`` with the reason; saves K to ``task["save"]`` (``.npy``)"""
    params, embed = tower(task["model"])
    images = random_images(task["model"], task["n"])
    k = jax.eval_shape(embed, params, images[:1]).shape[1]
    nk, p = task["n"] * k, n_params(params)
    if task["method"] == "explicit":
        need = nk * p * 4
        if need > task["memory_gb"] * 2**30:
            return {"skipped": f"skipped (J would be {need / 2**30:.3g} GiB > budget)"}
        jitted = jax.jit(lambda q, x: explicit_gram(q, embed, x))

        def fn() -> np.ndarray:
            return np.asarray(jitted(params, images))
    else:
        if task["method"] == "matrix-free" and task["n"] > task["reference_max_n"]:
            return {"skipped": f"skipped (n > --reference-max-n {task['reference_max_n']})"}

        def fn() -> np.ndarray:
            return entk_gram(params, embed, images, memory_gb=task["memory_gb"],
                             method=task["method"])
    before = current_rss()
    try:
        first, gram = best_time(fn, 1)
    except MemoryBudgetExceeded as error:
        return {"refused": str(error)}
    warm, gram = best_time(fn, task["repeats"])
    out = {"first": first, "warm": warm, "peak": peak_rss(), "delta": peak_rss() - before,
           "device_peak": device_peak(), "nk": nk, "p": p}
    if task.get("save"):
        np.save(task["save"], gram)
    return out


def _worker(task: dict[str, Any], conn) -> None:
    """Entry point of a spawned process: ``measure_gram`` with a persistent compilation cache
    of its own (so warm calls skip XLA compilation), its result sent back through ``conn``."""
    with tempfile.TemporaryDirectory(prefix="bench_entk_cache_") as cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        try:
            conn.send(measure_gram(task))
        except Exception as error:  # reported in the table, the other measurements go on
            conn.send({"error": f"{type(error).__name__}: {error}"})
    conn.close()


def in_fresh_process(task: dict[str, Any]) -> dict[str, Any]:
    """``measure_gram(task)`` in a new ``spawn``ed interpreter (so its peak RSS is its own)."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_worker, args=(task, send))
    process.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:
        result = None
    process.join()
    return result or {"error": f"worker died (exit code {process.exitcode})"}


def agreement(path_a: Path, path_b: Path, rows: int = 1024) -> float:
    """max |A − B| / max |A| of two saved Grams, read in blocks of ``rows`` rows."""
    a, b = np.load(path_a, mmap_mode="r"), np.load(path_b, mmap_mode="r")
    diff = scale = 0.0
    for i in range(0, a.shape[0], rows):
        block_a = np.asarray(a[i:i + rows], np.float64)
        diff = max(diff, float(np.abs(block_a - b[i:i + rows]).max()))
        scale = max(scale, float(np.abs(block_a).max()))
    return diff / scale


# --- part 1: the Gram table -------------------------------------------------------------------

def gram_row(model: str, n: int, method: str, r: dict[str, Any], device: bool) -> str:
    """One line of the Gram table (with the device's peak memory if ``device``)."""
    head = f"{model:6s}{n:6d}  {method:12s}"
    if "first" not in r:
        reason = r.get("skipped") or r.get("error") or f"refused: {r['refused']}"
        return f"{head}{reason}"
    line = (f"{head}{fmt_time(r['first']):>11s}{fmt_time(r['warm']):>11s}"
            f"{fmt_bytes(r['delta']):>11s}{fmt_bytes(r['peak']):>11s}")
    return line + (f"{fmt_bytes(r['device_peak'] or 0):>13s}" if device else "")


def gram_case(model: str, n: int, args: argparse.Namespace, repeats: int, tmp: str
              ) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Every method on ``n`` images of ``model``, each in its own process, and the agreement
    of each with the explicit Gram (or with the structured one where the explicit did not
    run): ``{method: max |ΔK| / max |K_reference|}``."""
    task = {"model": model, "n": n, "memory_gb": args.memory_gb, "repeats": repeats,
            "reference_max_n": args.reference_max_n}
    paths = {m: Path(tmp) / f"{m}.npy" for m in METHODS}
    results = {m: in_fresh_process({**task, "method": m, "save": str(paths[m])})
               for m in METHODS}
    ran = [m for m in METHODS if "first" in results[m]]
    reference = "explicit" if "explicit" in ran else "structured"
    agree = {m: agreement(paths[reference], paths[m]) for m in ran
             if m != reference and reference in ran}
    for path in paths.values():
        path.unlink(missing_ok=True)
    return results, agree


def run_gram(args: argparse.Namespace) -> None:
    """Measure and print every (model, n, method), then the ratios and the summary lines."""
    repeats = args.repeats or 1
    print(f"\n[1] eNTK Gram K = J Jᵀ of the image tower, float32, memory budget "
          f"{args.memory_gb:g} GiB.\n    first = first call (compilation included); "
          f"warm = best of {repeats} later call(s); Δpeak = the worker process's peak RSS "
          "above its RSS before the measurement; peak = its total peak RSS")
    device = jax.default_backend() != "cpu"
    print(f"{'model':6s}{'n':>6s}  {'method':12s}{'first':>11s}{'warm':>11s}{'Δpeak':>11s}"
          f"{'peak':>11s}" + (f"{'device peak':>13s}" if device else ""))
    cases = []
    with tempfile.TemporaryDirectory(prefix="bench_entk_") as tmp:
        for model in args.models:
            for n in args.n:
                results, agree = gram_case(model, n, args, repeats, tmp)
                for method in METHODS:
                    print(gram_row(model, n, method, results[method], device), flush=True)
                for method, value in agree.items():
                    flag = "  <- beyond float32 rounding: one is wrong" if value > 1e-4 else ""
                    print(f"{'':14s}{method} agrees to max|ΔK|/max|K| = {value:.2e}{flag}")
                cases.append((model, n, results))
    print()
    for model, n, results in cases:
        print(summary_line(model, n, results))


def summary_line(model: str, n: int, results: dict[str, dict[str, Any]]) -> str:
    """``entk <model> n=<n> float32: gram <s> s, explicit <s> s, ratio <r>x`` (warm times),
    then both peak RSS; ``n/a`` for a method that did not run."""
    gram, explicit = results["structured"], results["explicit"]

    def seconds(r):
        return f"{r['warm']:.3g} s" if "warm" in r else "n/a"

    ratio = (f"{explicit['warm'] / gram['warm']:.3g}x" if "warm" in gram and "warm" in explicit
             else "n/a")
    peaks = ", ".join(f"{name} {fmt_bytes(r['peak'])}" for name, r in
                      (("gram", gram), ("explicit", explicit)) if "peak" in r)
    return (f"entk {model} n={n} float32: gram {seconds(gram)}, explicit {seconds(explicit)}, "
            f"ratio {ratio} (peak RSS: {peaks or 'n/a'})")


# --- part 2: tangent against real training steps ----------------------------------------------

def finetunee(model: str, tangent: bool) -> tuple[Finetunee, Float[Array, "10 D"], int]:
    """A fresh ``model`` with a 10-class head (its CLIP linearized if ``tangent``), the class
    embeddings of the training prompts, and the prompts' token length."""
    key = jax.random.key(0)
    clip: DualEncoder = make_model(model, key=key)
    tokens = prompt_tokens(TRAIN_TEMPLATES)
    tokens = tokens if model == "toy" else clip_tokens(tokens)
    class_emb = clip.class_embeddings(jnp.asarray(tokens))
    head = eqx.nn.Linear(clip.image_proj.in_features, 10, dtype=jnp.float32,
                         key=jax.random.fold_in(key, 1))
    out = Finetunee(clip, head)
    if tangent:
        out = eqx.tree_at(lambda m: m.clip, out, linearize(out.clip))
    return out, class_emb, tokens.shape[-1]


def prepare_steps(model: str, strategy_name: str, tangent: bool, args: argparse.Namespace):
    """A compiled closure running ``args.steps`` consecutive training steps of
    ``strategy_name`` on one fixed batch (the real or the tangent model), from step 0."""
    net, class_emb, length = finetunee(model, tangent)
    strategy = REGISTRY[strategy_name].strategy
    config = FinetuneConfig(steps=max(100, args.steps), batch_size=args.batch_size)
    state, optimizer, schedule = start(net, strategy, config)
    images = random_images(model, args.batch_size)
    size = images.shape[-1]
    batch = Batch(images, jnp.asarray(np.random.default_rng(1).integers(10, size=args.batch_size)),
                  jnp.zeros((0, 3, size, size), jnp.float32), jnp.zeros((0, length), jnp.int32),
                  jnp.zeros((0,), jnp.int32))

    def run():
        s = state
        for _ in range(args.steps):
            s, _ = train_step(s, batch, strategy, schedule, config, optimizer, net, class_emb,
                              net.head)
        return s

    jax.block_until_ready(run())  # compile
    return run


def run_step(args: argparse.Namespace) -> None:
    """Time real and tangent steps for every (model, strategy), interleaved, and print them."""
    repeats = args.repeats or 5
    print(f"\n[2] one training step, tangent model (image encoder linearized) vs real; batch "
          f"{args.batch_size}, best of {repeats} interleaved calls of {args.steps} steps "
          "(compiled beforehand)")
    print(f"{'model':6s}{'strategy':10s}{'real':>11s}{'tangent':>11s}{'tangent/real':>14s}")
    for model in args.models:
        cases = {(s, t): prepare_steps(model, s, t, args)
                 for s in STRATEGIES for t in (False, True)}
        best = dict.fromkeys(cases, float("inf"))
        for _ in range(repeats):  # interleaved, so drifts in machine load hit every case
            for case, run in cases.items():
                best[case] = min(best[case], best_time(run, 1)[0] / args.steps)
        for s in STRATEGIES:
            real, tangent = best[(s, False)], best[(s, True)]
            print(f"{model:6s}{s:10s}{fmt_time(real):>11s}{fmt_time(tangent):>11s}"
                  f"{tangent / real:13.2f}x", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["toy", "tiny"],
                        help="'toy' and/or CLIP preset names")
    parser.add_argument("--n", nargs="+", type=int, default=[32, 128],
                        help="numbers of images of the Gram")
    parser.add_argument("--memory-gb", type=float, default=8.0,
                        help="budget of both Grams (J for the explicit one)")
    parser.add_argument("--reference-max-n", type=int, default=32,
                        help="the largest n the matrix-free reference runs at (0: never)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="best of; default 1 for the Gram (slow), 5 for the steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed call")
    parser.add_argument("--skip-gram", action="store_true")
    parser.add_argument("--skip-step", action="store_true")
    args = parser.parse_args(argv)
    repeats = 1 if args.repeats is None else args.repeats
    if min(*args.n, args.batch_size, args.steps, repeats) < 1 or args.reference_max_n < 0:
        parser.error("--n, --batch-size, --steps and --repeats must be >= 1, "
                     "--reference-max-n >= 0")
    if not args.memory_gb > 0:
        parser.error("--memory-gb must be > 0")
    for model in args.models:
        try:
            image_size(model)
        except ValueError as error:  # an unknown preset
            parser.error(str(error))
    print(f"jax {jax.__version__}, backend {jax.default_backend()} "
          f"({jax.devices()[0].device_kind}), float32; {time.strftime('%Y-%m-%d %H:%M')}"
          + (f"; XLA_FLAGS={os.environ['XLA_FLAGS']!r}" if os.environ.get("XLA_FLAGS") else ""))
    if not args.skip_gram:
        run_gram(args)
    if not args.skip_step:
        run_step(args)


if __name__ == "__main__":
    main()
