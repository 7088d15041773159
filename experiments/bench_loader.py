"""Benchmark: images per second the streamed loader (``finetune.stream.read_batches``) delivers
from a folder of 224-px-or-larger JPEGs with 0, 1 and 2 worker processes, against the finetuning
step's images per second (``--model``, default ViT-B-32, random init) on this host, side by side,
and the fraction of the streamed loop's time spent waiting on the loader.

    python experiments/bench_loader.py [--folder DIR] [--images 256] [--classes 8]
        [--batch-size 32] [--workers 0 1 2] [--threads 2] [--loader-batches 16]
        [--model ViT-B-32] [--steps 4] [--out results.json] [--quick]

The folder (default ``$TMPDIR/bench_loader_jpegs``) holds ``--images`` seeded synthetic photos
(smooth random color gradients, blobs and noise, JPEG quality 90) of varied sizes from 224×224 to
320×400 in ``--classes`` class folders, so reading one decodes, resizes its short side and center
crops (``Preprocessing(model's image size)``); it is written once and reused while its marker file
matches the flags. Three measurements per worker count ``w``:

* loader: ``read_batches(FolderImages, table, workers=w, threads=--threads)`` over
  ``--loader-batches`` batches of ``--batch-size`` random indices, read as fast as they come,
  timed after a warm-up of one batch from each worker process (or one batch for ``w`` = 0),
  which pays the processes' start (its time is shown apart as ``loader start``), and the 4
  batches read ahead meanwhile (grain's prefetch buffer); nothing else runs meanwhile;
* step: the loop's own jitted step (``loop._run_step``, Direct FT, head objective, float32) on
  one batch already on the device, the median of ``--steps`` steps from a fresh state, timed
  right before the row's loop (so drifts in the machine's load hit both alike); it is compiled
  once first, with the loop's other programs, so the streamed runs reuse them;
* loop: ``finetune(..., source="stream", workers=w, threads=--threads)`` for ``--steps`` steps
  (``log_every`` = steps). ``finetune`` does not expose its ``StepImages``, so the script swaps
  ``loop.StepImages`` for a subclass that records when each batch reached the loop and how long
  the loop waited for it (``StepImages.waited``). ``waiting`` is the time waited over the whole
  call's wall time; ``steady`` leaves out the first batch (the loader's start) and divides by the
  time from the first batch to the end; ``loop img/s`` is batch × steps over that same time.

The loop must not wait on the loader when the step is the slower part: ``loader/step`` > 1 and a
``steady`` waiting fraction near 0, with ``loop img/s`` near ``step img/s``. On a CPU host the
loader's threads and processes share the cores with XLA's step, so the loop's rate can fall below
the step's even when it never waits. ``--quick``: 64 images, the ``tiny`` preset, batch 16, 3
steps and 8 loader batches, for a smoke run (< 1 minute). Grain's worker processes are spawned,
so everything runs under ``if __name__ == "__main__"``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

#: The marker file of a folder this script wrote (its flags), so it is reused or rewritten.
MARKER = "bench_loader.json"
#: Image sizes (width, height) the synthetic photos cycle through: all at least 224 on a side.
SIZES = ((256, 320), (320, 256), (224, 224), (300, 400), (400, 300), (240, 288))
#: Batches grain reads ahead: ``read_batches``' default, which ``StepImages`` uses.
PREFETCH = 4


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=None,
                        help="folder of class sub-folders of JPEGs (written if missing); "
                             "default $TMPDIR/bench_loader_jpegs")
    parser.add_argument("--images", type=int, default=256, help="JPEGs in the folder")
    parser.add_argument("--classes", type=int, default=8, help="class sub-folders")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                        help="worker process counts to compare (0: threads of this process)")
    parser.add_argument("--threads", type=int, default=2,
                        help="grain read threads (per worker process when workers > 0)")
    parser.add_argument("--loader-batches", type=int, default=16,
                        help="timed loader batches per worker count (after the warm-up)")
    parser.add_argument("--model", default="ViT-B-32", help="CLIP preset of the step")
    parser.add_argument("--steps", type=int, default=4,
                        help="timed steps (step time) and steps per streamed run")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true",
                        help="64 images, tiny preset, batch 16, 3 steps: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.model = min(args.images, 64), "tiny"
        args.batch_size, args.steps = min(args.batch_size, 16), min(args.steps, 3)
        args.loader_batches = min(args.loader_batches, 8)
    if min(args.images, args.classes, args.batch_size, args.threads, args.loader_batches,
           args.steps) < 1 or min(args.workers) < 0:
        parser.error("--images, --classes, --batch-size, --threads, --loader-batches and "
                     "--steps must be >= 1, --workers >= 0")
    args.workers = list(dict.fromkeys(args.workers))  # each count once, in the order given
    if args.batch_size > args.images:
        parser.error(f"--batch-size {args.batch_size} draws without replacement from "
                     f"--images {args.images}")
    if args.folder is None:
        args.folder = Path(tempfile.gettempdir()) / "bench_loader_jpegs"
    if args.out is not None:
        from tracer_theory._io import check_writable
        check_writable(args.out, what="--out")
    run(args)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def photo(rng, width: int, height: int):
    """A photo-like RGB image: a smooth random color gradient, a few soft blobs and fine
    noise (so JPEG decoding sees realistic entropy), as a Pillow image."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / height, x / width
    corners = rng.uniform(0, 255, (4, 3)).astype(np.float32)  # bilinear gradient per channel
    img = ((1 - x)[..., None] * ((1 - y)[..., None] * corners[0] + y[..., None] * corners[1])
           + x[..., None] * ((1 - y)[..., None] * corners[2] + y[..., None] * corners[3]))
    for _ in range(rng.integers(2, 6)):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-120, 120, 3).astype(np.float32)
    img += rng.normal(0, 12, img.shape).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def write_folder(folder: Path, n: int, classes: int, seed: int) -> tuple[str, float]:
    """Make ``folder`` hold ``n`` seeded JPEGs in ``classes`` class folders, unless its marker
    says it already does; ``("written" or "reused", seconds)``. A non-empty folder without this
    script's marker is refused rather than overwritten."""
    import numpy as np

    wanted = {"images": n, "classes": classes, "seed": seed, "sizes": [list(s) for s in SIZES]}
    marker = folder / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == wanted:
                return "reused", 0.0
        except (OSError, ValueError):
            pass
        for sub in folder.iterdir():  # ours: clear and rewrite
            if sub.is_dir():
                shutil.rmtree(sub)
        marker.unlink()
    elif folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"bench_loader.py: {folder} is not empty and was not written by this "
                         f"script (no {MARKER}); give an empty or new --folder")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = folder / f"class_{i % classes:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        photo(rng, *SIZES[i % len(SIZES)]).save(sub / f"img_{i:05d}.jpg", quality=90)
    marker.write_text(json.dumps(wanted))
    return "written", time.perf_counter() - start


def loader_rate(images, batch: int, workers: int, threads: int, batches: int, seed: int
                ) -> tuple[float, float]:
    """``(images/s, warm-up seconds)`` of ``read_batches`` with ``workers`` processes over rows
    of ``batch`` random indices, read as fast as they come. The first ``max(1, workers)`` rows
    (one from each worker, which pays its start) are the warm-up; the next ``PREFETCH`` rows
    drain what was read ahead meanwhile; the ``batches`` after them are timed."""
    import numpy as np

    from tracer_theory.deep.finetune.stream import read_batches

    rng = np.random.default_rng([seed, workers])
    warmup = max(1, workers)
    table = np.stack([rng.choice(len(images), batch, replace=False)
                      for _ in range(warmup + PREFETCH + batches)])
    start = time.perf_counter()
    it = read_batches(images, table, workers=workers, threads=threads, prefetch=PREFETCH)
    got = sum(len(next(it)) for _ in range(warmup))
    warm = time.perf_counter()
    got += sum(len(next(it)) for _ in range(PREFETCH))
    t0 = time.perf_counter()
    # exactly as many next() calls as rows, as StepImages makes: grain's worker processes take
    # a while to report the end of the data, which a loop never waits for; each batch is
    # dropped before the next, so none outlives close()
    got += sum(len(next(it)) for _ in range(batches))
    seconds = time.perf_counter() - t0
    getattr(it, "close", lambda: None)()
    assert got == batch * len(table), got
    return batch * batches / seconds, warm - start


def timed_step_images():
    """A ``StepImages`` subclass that records, per batch, how long the loop waited for it and
    when it reached the loop (``finetune`` keeps its ``StepImages`` to itself); each instance is
    put in ``made`` for the caller to take."""
    from typing import ClassVar

    from tracer_theory.deep.finetune.stream import StepImages

    class TimedStepImages(StepImages):
        made: ClassVar[list[TimedStepImages]] = []

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.waits: list[float] = []
            self.arrived: list[float] = []
            TimedStepImages.made.append(self)

        def _next(self):
            before = self.waited
            batch = super()._next()
            self.waits.append(self.waited - before)
            self.arrived.append(time.perf_counter())
            return batch

    return TimedStepImages


def run(args: argparse.Namespace) -> None:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    from _timing import cpu_model, fmt_time
    from bench_clip_step import class_embeddings

    from tracer_theory.deep.data.folders import image_folder
    from tracer_theory.deep.data.images import Preprocessing
    from tracer_theory.deep.finetune import REGISTRY, FinetuneConfig, Finetunee, loop, stream
    from tracer_theory.deep.finetune.step import phase_optimizer, start
    from tracer_theory.deep.models.clip import CLIP, preset

    t_all = time.perf_counter()
    how, seconds = write_folder(args.folder, args.images, args.classes, args.seed)
    _log(f"folder {args.folder}: {how}" + (f" in {fmt_time(seconds)}" if seconds else ""))
    image_set = image_folder(args.folder)
    spec = preset(args.model)
    images = image_set.array(Preprocessing(spec.image_size))
    labels = np.asarray(image_set.labels, np.int32)
    b = args.batch_size

    # 1. loader throughput, alone on the host
    loader = {}
    for w in args.workers:
        rate, first = loader_rate(images, b, w, args.threads, args.loader_batches, args.seed)
        loader[w] = (rate, first)
        _log(f"loader workers={w}: {rate:.1f} img/s (warm-up {fmt_time(first)})")

    # 2. the step: the loop's jitted step on a batch already on the device
    key = jax.random.key(0)
    clip = CLIP(spec, key=key)
    model = Finetunee(clip, eqx.nn.Linear(spec.width, len(image_set.classes), dtype=jnp.float32,
                                          key=jax.random.fold_in(key, 1)))
    class_emb = jax.block_until_ready(class_embeddings(clip, spec))
    probe = np.asarray(images[:2])
    strategy = REGISTRY["direct"].strategy
    config = FinetuneConfig(steps=args.steps, batch_size=b, log_every=args.steps)
    schedule = strategy.schedule(config.steps)
    held = np.zeros((0, *images.shape[1:]), np.float32)  # what a streamed run holds
    fixed = loop._Fixed(loop.TrainingData.of(held, labels), loop.Probe.of(probe), model,
                        jnp.asarray(class_emb), jax.random.key(args.seed), strategy, config,
                        phase_optimizer(config, strategy.phases(config.steps)[0]), 0, None)
    batch = jax.device_put(np.asarray(images[np.arange(b)]))

    def steps(n: int) -> tuple[list[float], list[float]]:
        """Seconds of ``n`` steps from a fresh state, and when each step call returned."""
        state = start(model, strategy, config)[0]
        times, dispatch = [], []
        for step in range(1, n + 1):
            t0 = time.perf_counter()
            state, loss = loop._run_step(state, jnp.int32(step), fixed, schedule, False, batch)
            dispatch.append(time.perf_counter() - t0)  # the call returned, not yet blocked
            jax.block_until_ready((state, loss))
            times.append(time.perf_counter() - t0)
        return times, dispatch

    compile_s = steps(1)[0][0]
    _log(f"first step (compiles): {fmt_time(compile_s)}")
    # the loop's other programs compile here, outside its timings: the logged curves at the
    # last step, the loss stack and the finiteness check (on a fresh state: the same shapes)
    state = start(model, strategy, config)[0]
    loss = jnp.float32(0)
    jax.block_until_ready(loop._log(state, loss, fixed, False))
    jax.block_until_ready(jnp.stack([loss] * args.steps))
    jax.block_until_ready(loop._all_finite(eqx.filter(state.model, eqx.is_inexact_array)))
    # and the host's index program of the streamed runs (StepImages computes its table with it)
    stream.step_indices(jax.random.key(args.seed), 1, args.steps, n=len(images), n_replay=0,
                        size=b, n_hybrid=0)
    del state, loss

    # 3. per worker count: the step alone, then the streamed loop as users run it, one right
    # after the other so that drifts in the machine's load hit both alike
    timed = timed_step_images()
    original = loop.StepImages
    loop.StepImages = timed
    step_times, dispatch, streamed = {}, {}, {}
    try:
        for w in args.workers:
            step_times[w], dispatch[w] = steps(args.steps)
            _log(f"step alone: {', '.join(map(fmt_time, step_times[w]))}")
            t0 = time.perf_counter()
            result = loop.finetune(model, images, labels, strategy, config, class_emb=class_emb,
                                   probe=probe, seed=args.seed, source="stream", workers=w,
                                   threads=args.threads)
            jax.block_until_ready(eqx.filter(result.model, eqx.is_array))
            t1 = time.perf_counter()
            (run_images,) = timed.made  # one per run; not kept past it (nor its grain iterator)
            timed.made.clear()
            assert len(run_images.waits) == args.steps
            steady = t1 - run_images.arrived[0]
            streamed[w] = {"wall_s": t1 - t0, "waited_s": run_images.waited,
                           "waiting": run_images.waited / (t1 - t0),
                           "first_batch_s": run_images.waits[0],
                           "steady_waiting": sum(run_images.waits[1:]) / steady,
                           "loop_images_per_s": b * args.steps / steady,
                           "waits_s": run_images.waits}
            _log(f"streamed workers={w}: {fmt_time(t1 - t0)}, waited "
                 f"{fmt_time(run_images.waited)} ({', '.join(map(fmt_time, run_images.waits))})")
            del result, run_images
    finally:
        loop.StepImages = original
    step_rate = {w: b / statistics.median(t) for w, t in step_times.items()}
    dispatch_share = statistics.median(d / t for w in args.workers
                                       for d, t in zip(dispatch[w], step_times[w], strict=True))

    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0))
    device = jax.devices()[0]
    print(f"machine: {cpu_model()}, {cpus} CPUs ({usable} usable); jax {jax.__version__}, "
          f"backend {jax.default_backend()} ({device.device_kind}, {len(jax.devices())} "
          f"device(s)); grain {version('grain')}; python {platform.python_version()}")
    print(f"folder: {args.folder} ({len(image_set)} JPEGs, {len(image_set.classes)} classes, "
          f"sizes {'/'.join(f'{w}x{h}' for w, h in SIZES)}, {how}); preprocessing to "
          f"{spec.image_size} px")
    print(f"loader: read_batches over {args.loader_batches} batches of {b} random indices "
          f"after a warm-up batch from each worker and {PREFETCH} read-ahead batches, nothing "
          f"else running; threads = grain read threads (per worker process when workers > 0)")
    sync = ("synchronous dispatch: the loader reads ahead in its own threads or processes "
            "while the step runs" if dispatch_share > 0.9 else "asynchronous dispatch")
    print(f"step: {args.model} (random init) Direct FT, head objective, float32, batch {b}: "
          f"loop._run_step on a device batch (first call compiles: {fmt_time(compile_s)}), "
          f"median of {args.steps} steps from a fresh state timed right before each row's "
          f"loop; a step call returns after {dispatch_share:.0%} of its time ({sync})")
    print(f"loop: finetune(source='stream', workers=w, threads={args.threads}) for "
          f"{args.steps} steps; waiting = StepImages.waited / wall time of the call; steady = "
          f"waits after the first batch / time from the first batch to the end")
    head = (f"{'workers':>7s}  {'threads':>16s}{'loader img/s':>14s}{'step img/s':>12s}"
            f"{'loader/step':>13s}{'loop img/s':>12s}{'waiting':>9s}{'steady':>8s}"
            f"{'loader start':>14s}{'loop start':>12s}")
    print(head)
    print("-" * len(head))
    for w in args.workers:
        rate, first = loader[w]
        s = streamed[w]
        threads = f"{args.threads} in-process" if w == 0 else f"{w} proc x {args.threads}"
        print(f"{w:7d}  {threads:>16s}{rate:14.1f}{step_rate[w]:12.2f}"
              f"{rate / step_rate[w]:12.1f}x{s['loop_images_per_s']:12.2f}{s['waiting']:9.1%}"
              f"{s['steady_waiting']:8.1%}{fmt_time(first):>14s}"
              f"{fmt_time(s['first_batch_s']):>12s}")
    slow = [w for w in args.workers if loader[w][0] < step_rate[w]]
    print("the step is the slower part for every worker count" if not slow else
          f"the loader is the slower part with workers {slow}")
    _log(f"total {fmt_time(time.perf_counter() - t_all)}")
    if args.out is not None:
        from tracer_theory._io import write_json_atomic
        write_json_atomic(args.out, {
            "machine": {"cpu": cpu_model(), "cpu_count": cpus, "usable_cpus": usable,
                        "jax": jax.__version__, "backend": jax.default_backend(),
                        "device_kind": device.device_kind},
            "images": len(image_set), "classes": len(image_set.classes), "model": args.model,
            "image_size": spec.image_size, "batch_size": b, "threads": args.threads,
            "steps": args.steps, "compile_s": compile_s,
            "rows": [{"workers": w, "loader_images_per_s": loader[w][0],
                      "loader_warmup_s": loader[w][1], "step_times_s": step_times[w],
                      "step_dispatch_s": dispatch[w], "step_images_per_s": step_rate[w],
                      "loader_over_step": loader[w][0] / step_rate[w], **streamed[w]}
                     for w in args.workers]})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
