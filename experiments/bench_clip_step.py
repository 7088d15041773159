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

    python experiments/bench_clip_step.py --vs-open-clip [--preset ViT-B-32] [--batch-size 16]
        [--steps 5] [--warmup 2]

Our jitted contrastive step against open_clip in PyTorch on the same CPU, side by side in one
run (needs ``pip install -e '.[parity]'``). One step is a forward and backward pass of both
towers through CLIP's symmetric InfoNCE on image/caption pairs and one AdamW update of every
parameter (lr 1e-5, weight decay 0.1): ours is the library's contrastive step
(``finetune.pretraining._pretrain_step``: ``losses.clip_loss`` with diagonal targets, the
AdamW of ``PretrainConfig``), open_clip's is ``encode_image``/``encode_text`` (normalized),
``open_clip.loss.ClipLoss`` and ``torch.optim.AdamW``. (The library's Direct FT step,
``finetune.step.train_step``, trains the image tower alone on a classification loss, which is
not CLIP's contrastive finetuning.) Both start from the same random open_clip weights (ours
read by ``load_clip``), see the same random images and captions, and use as many threads
(``torch.set_num_threads`` = the CPUs XLA uses); after ``--warmup`` steps each (ours compiles
there), ``--steps`` steps of each are timed interleaved and the medians printed with the ratio
open_clip / ours, and the losses of both runs beside each other (equal at the first step).

    python experiments/bench_clip_step.py --mfu [--preset ViT-B-16] [--batch-size 256]
        [--dtype bfloat16] [--steps 10] [--peak-tflops X]

For an accelerator: images/s and model FLOPs utilization of Direct FT and WMA SD
(``finetune.step.train_step``, head objective, compute in ``--dtype``), with model FLOPs counted
from the architecture (the ViT's matrix products and attention, 3× the forward pass for forward
and backward, plus one forward pass of the teacher for WMA SD; XLA's own count beside it) against
``--peak-tflops`` (default: the dense bf16 peak of a known device kind, e.g. 989 for H100/H200),
and the extra memory of the WMA teacher: the device bytes its state holds beyond Direct FT's
(one float32 copy of the image tower once it moves off the pretrained model) and the difference
of the compiled steps' temporary memory.
"""

from __future__ import annotations

import argparse
import os
import sys

#: Per mode: (preset, batch size, timed steps) when not given.
DEFAULTS = {"devices": ("tiny", 128, 20), "vs_open_clip": ("ViT-B-32", 16, 5),
            "mfu": ("ViT-B-16", 256, 10)}
#: Dense bf16 peak TFLOP/s by device kind (substring of ``device_kind``), for ``--mfu``.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0,
                    "A10G": 70.0, "TPU v5p": 459.0, "TPU v5 lite": 197.0, "TPU v4": 275.0}
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--vs-open-clip", action="store_true",
                      help="our contrastive step vs open_clip's in PyTorch on this CPU")
    mode.add_argument("--mfu", action="store_true",
                      help="images/s, MFU and WMA teacher memory on an accelerator")
    parser.add_argument("--preset", default=None,
                        help="default: tiny, ViT-B-32 (--vs-open-clip), ViT-B-16 (--mfu)")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="default: 20, 5, 10 by mode")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps before timing (--vs-open-clip, --mfu)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: 128, 16 (--vs-open-clip), 256 (--mfu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="compute dtype; default float32, bfloat16 for --mfu")
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    args.mode = "vs_open_clip" if args.vs_open_clip else "mfu" if args.mfu else "devices"
    preset_name, batch_size, steps = DEFAULTS[args.mode]
    args.preset = preset_name if args.preset is None else args.preset
    args.batch_size = batch_size if args.batch_size is None else args.batch_size
    args.steps = steps if args.steps is None else args.steps
    args.dtype = args.dtype or ("bfloat16" if args.mfu else "float32")
    if min(args.steps, args.batch_size, args.repeats) < 1 or args.warmup < 0:
        parser.error("--steps, --batch-size and --repeats must be >= 1, --warmup >= 0")
    if "jax" in sys.modules:
        raise RuntimeError("run this as a script: XLA_FLAGS must be set before jax is imported")
    if args.mode == "devices":
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.devices}")
        run(args)
    elif args.mode == "vs_open_clip":
        vs_open_clip(args)
    else:
        mfu(args)


def class_embeddings(clip, spec):
    """(10, dim) class embeddings of the digits: the project's training templates for its own
    vocabulary, two CLIP prompts through CLIP's tokenizer for CLIP's vocabulary."""
    import jax.numpy as jnp

    from tracer_theory.deep.data import clip_tokenizer, zero_shot_prompts
    from tracer_theory.deep.data.prompts import TRAIN_TEMPLATES, prompt_tokens
    from tracer_theory.deep.models.clip import CLIP_VOCAB_SIZE, clip_tokens

    if spec.vocab_size == CLIP_VOCAB_SIZE:
        prompts = zero_shot_prompts(clip_tokenizer(context=spec.context), DIGITS,
                                    ("a photo of the number {}.", "a blurry photo of a {}."))
    else:
        prompts = clip_tokens(prompt_tokens(TRAIN_TEMPLATES))
    return clip.class_embeddings(jnp.asarray(prompts))


def run(args: argparse.Namespace) -> None:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    from _timing import best_time, fmt_time

    from tracer_theory.deep.finetune import REGISTRY, Batch, FinetuneConfig, Finetunee
    from tracer_theory.deep.finetune.step import start, train_step
    from tracer_theory.deep.models.clip import CLIP, preset
    from tracer_theory.deep.parallel import data_mesh, replicate, shard_batch

    spec = preset(args.preset)
    key = jax.random.key(0)
    clip = CLIP(spec, key=key)
    model = Finetunee(clip, eqx.nn.Linear(spec.width, 10, dtype=jnp.float32, key=key))
    class_emb = class_embeddings(clip, spec)
    rng = np.random.default_rng(0)
    size = spec.image_size
    batch = Batch(jnp.asarray(rng.random((args.batch_size, 3, size, size), np.float32)),
                  jnp.asarray(rng.integers(10, size=args.batch_size)),
                  jnp.zeros((0, 3, size, size), jnp.float32), jnp.zeros((0, spec.context),
                                                                        jnp.int32),
                  jnp.zeros((0,), jnp.int32))

    def prepare(name: str, devices: int):
        strategy = REGISTRY[name].strategy
        config = FinetuneConfig(steps=args.steps, batch_size=args.batch_size,
                                compute_dtype=args.dtype)
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
    print(f"CLIP preset {args.preset}, batch {args.batch_size}, compute {args.dtype}, "
          f"{args.steps} steps x "
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


def vs_open_clip(args: argparse.Namespace) -> None:
    """Our contrastive step against open_clip's, on this CPU (see the module docstring)."""
    import json
    import statistics
    import tempfile
    import time
    from pathlib import Path

    from parity_open_clip import import_open_clip, require_torch_stack

    require_torch_stack()
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from _timing import fmt_time
    from safetensors.torch import save_file

    from tracer_theory.deep.data import clip_tokenizer
    from tracer_theory.deep.finetune import PretrainConfig
    from tracer_theory.deep.finetune.pretraining import _pretrain_optimizer, _pretrain_step
    from tracer_theory.deep.models import load_clip

    open_clip = import_open_clip()
    threads = len(os.sched_getaffinity(0))  # XLA:CPU's thread pool: one thread per usable CPU
    torch.set_num_threads(threads)
    lr, weight_decay, b = 1e-5, 0.1, args.batch_size
    # the same random weights on both sides: open_clip's, read back by load_clip
    torch.manual_seed(0)
    theirs = open_clip.create_model(args.preset, pretrained=None)
    theirs.train()
    with tempfile.TemporaryDirectory(prefix="bench_clip_") as tmp:
        (Path(tmp) / "open_clip_config.json").write_text(
            json.dumps({"model_cfg": open_clip.get_model_config(args.preset)}))
        save_file({k: v.contiguous() for k, v in theirs.state_dict().items()},
                  str(Path(tmp) / "open_clip_model.safetensors"))
        ours = load_clip(tmp)
    spec = ours.preset
    rng = np.random.default_rng(0)
    images = rng.standard_normal((b, 3, spec.image_size, spec.image_size)).astype(np.float32)
    tokens = clip_tokenizer(context=spec.context)(
        [f"a photo of {DIGITS[i % 10]} {'red blue green'.split()[i % 3]} things, number {i}"
         for i in range(b)])

    # ours: the library's contrastive step and optimizer
    optimizer = _pretrain_optimizer(PretrainConfig(lr=lr, weight_decay=weight_decay,
                                                   model=spec, batch_size=b))
    state = [ours, optimizer.init(eqx.filter(ours, eqx.is_array))]
    x, t = jnp.asarray(images), jnp.asarray(tokens)

    def our_step() -> float:
        model, opt_state, loss = _pretrain_step(*state, x, t, None, optimizer)
        state[:] = [model, opt_state]
        return float(jax.block_until_ready(loss))

    # open_clip: its loss and torch's AdamW on every parameter
    torch_opt = torch.optim.AdamW(theirs.parameters(), lr=lr, weight_decay=weight_decay,
                                  betas=(0.9, 0.999), eps=1e-8)
    clip_loss = open_clip.loss.ClipLoss()
    tx, tt = torch.from_numpy(images), torch.from_numpy(tokens.astype(np.int64))

    def their_step() -> float:
        torch_opt.zero_grad(set_to_none=True)
        loss = clip_loss(theirs.encode_image(tx, normalize=True),
                         theirs.encode_text(tt, normalize=True), theirs.logit_scale.exp())
        loss.backward()
        torch_opt.step()
        return float(loss.detach())

    def timed(step) -> tuple[float, float]:
        t0 = time.perf_counter()
        loss = step()
        return time.perf_counter() - t0, loss

    losses: dict[str, list[float]] = {"ours": [], "open_clip": []}
    times: dict[str, list[float]] = {"ours": [], "open_clip": []}
    warm = {"ours": [], "open_clip": []}
    for i in range(args.warmup + args.steps):  # interleaved: load drifts hit both
        for name, step in (("ours", our_step), ("open_clip", their_step)):
            seconds, loss = timed(step)
            losses[name].append(loss)
            (warm if i < args.warmup else times)[name].append(seconds)
    ours_s, theirs_s = (statistics.median(times[k]) for k in ("ours", "open_clip"))
    print(f"CLIP {args.preset} contrastive finetuning step (forward + backward + AdamW, both "
          f"towers), batch {b}, float32, {threads} CPU threads each (XLA:CPU, "
          f"torch.set_num_threads), jax {jax.__version__}, torch {torch.__version__}, "
          f"open_clip {open_clip.__version__}")
    print(f"{args.warmup} warm-up steps each (first: ours {fmt_time(warm['ours'][0])} with "
          f"compilation, open_clip {fmt_time(warm['open_clip'][0])}), then median of "
          f"{args.steps} interleaved steps each")
    print(f"{'':12s}{'median step':>13s}{'min':>11s}{'max':>11s}{'images/s':>10s}")
    for name, median in (("ours", ours_s), ("open_clip", theirs_s)):
        print(f"{name:12s}{fmt_time(median):>13s}{fmt_time(min(times[name])):>11s}"
              f"{fmt_time(max(times[name])):>11s}{b / median:10.2f}")
    print(f"ratio open_clip / ours: {theirs_s / ours_s:.2f}x "
          f"({'ours faster' if theirs_s > ours_s else 'open_clip faster'})")
    first = [losses[k][0] for k in ("ours", "open_clip")]
    print(f"loss at step 1: ours {first[0]:.6f}, open_clip {first[1]:.6f} "
          f"(relative difference {abs(first[0] - first[1]) / abs(first[1]):.1e}); "
          f"at step {len(losses['ours'])}: ours {losses['ours'][-1]:.6f}, "
          f"open_clip {losses['open_clip'][-1]:.6f}")


def vit_forward_flops(spec) -> float:
    """Model FLOPs of one image through the image tower and its projection: the patch
    embedding, per block the q/k/v/output projections (4·T·w² multiply-adds), the attention
    scores and their weighted sum (2·T²·w) and the MLP (2·r·T·w²), then the projection;
    2 FLOPs per multiply-add, norms and activations not counted."""
    t, w, r = spec.patches + 1, spec.width, spec.mlp_ratio
    patch = spec.patches * spec.channels * spec.patch_size ** 2 * w
    block = 4 * t * w * w + 2 * t * t * w + 2 * r * t * w * w
    return 2.0 * (patch + spec.layers * block + w * spec.dim)


def mfu(args: argparse.Namespace) -> None:
    """Images/s and MFU of Direct FT and WMA SD, and the WMA teacher's memory (see the module
    docstring). Runs anywhere; MFU needs a known accelerator or ``--peak-tflops``."""
    import statistics
    import time

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    from _timing import fmt_time

    from tracer_theory.deep.finetune import REGISTRY, Batch, FinetuneConfig, Finetunee
    from tracer_theory.deep.finetune.step import start, train_step
    from tracer_theory.deep.models.clip import CLIP, preset

    spec = preset(args.preset)
    device = jax.devices()[0]
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items()
                                     if k.lower() in device.device_kind.lower()), None)
    key = jax.random.key(0)
    clip = CLIP(spec, key=key)
    model = Finetunee(clip, eqx.nn.Linear(spec.width, 10, dtype=jnp.float32, key=key))
    class_emb = class_embeddings(clip, spec)
    rng = np.random.default_rng(0)
    b, size = args.batch_size, spec.image_size
    batch = Batch(jnp.asarray(rng.standard_normal((b, 3, size, size), np.float32)),
                  jnp.asarray(rng.integers(10, size=b)), jnp.zeros((0, 3, size, size)),
                  jnp.zeros((0, spec.context), jnp.int32), jnp.zeros((0,), jnp.int32))
    forward = vit_forward_flops(spec) * b

    def buffers(tree) -> dict[int, int]:
        """``{buffer address: bytes}`` of the distinct device buffers ``tree`` holds."""
        return {leaf.unsafe_buffer_pointer(): leaf.nbytes
                for leaf in jax.tree.leaves(eqx.filter(tree, eqx.is_array))}

    results = {}
    for name in ("direct", "wma_sd"):
        strategy = REGISTRY[name].strategy
        config = FinetuneConfig(steps=args.warmup + args.steps, batch_size=b,
                                compute_dtype=args.dtype)
        state, optimizer, schedule = start(model, strategy, config)
        step_args = (strategy, schedule, config, optimizer, model, class_emb, model.head)
        compiled = train_step.lower(state, batch, *step_args).compile()
        cost = compiled.compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
        memory = compiled.compiled.memory_analysis()
        temp = getattr(memory, "temp_size_in_bytes", float("nan"))
        times = []
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            state, parts = train_step(state, batch, *step_args)
            jax.block_until_ready(parts["loss"])
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        # what the run keeps between steps (state and pretrained model, shared buffers once),
        # and the teacher's own buffers (shared with neither the pretrained model nor the student)
        held = sum(buffers((state, model, class_emb)).values())
        others = buffers((model, state.model))
        teacher_own = sum(n for p, n in buffers(state.teacher).items() if p not in others)
        model_flops = 3 * forward + (forward if name == "wma_sd" else 0)
        results[name] = (statistics.median(times), model_flops, xla_flops, temp, held,
                         teacher_own)
        del state, parts
    print(f"CLIP {args.preset} finetuning step (head objective, image tower trains), batch {b}, "
          f"compute {args.dtype}, {device.platform} ({device.device_kind}), warm-up "
          f"{args.warmup}, median of {args.steps} steps; peak "
          + (f"{peak:g} TFLOP/s" if peak else "unknown (give --peak-tflops for MFU)"))
    print(f"{'strategy':10s}{'step':>11s}{'images/s':>10s}{'model GFLOP':>13s}"
          f"{'XLA GFLOP':>11s}{'TFLOP/s':>9s}{'MFU':>7s}{'held MiB':>10s}{'teacher MiB':>13s}"
          f"{'temp MiB':>10s}")
    mib = 2.0 ** 20
    for name, (t, flops, xla, temp, held, own) in results.items():
        print(f"{name:10s}{fmt_time(t):>11s}{b / t:10.1f}{flops / 1e9:13.1f}{xla / 1e9:11.1f}"
              f"{flops / t / 1e12:9.2f}" + (f"{flops / t / (peak * 1e12):7.1%}" if peak
                                             else f"{'n/a':>7s}")
              + f"{held / mib:10.1f}{own / mib:13.1f}{temp / mib:10.1f}")
    direct, wma = results["direct"], results["wma_sd"]
    tower = sum(x.nbytes for x in jax.tree.leaves(eqx.filter((clip.image, clip.image_proj),
                                                              eqx.is_array)))
    print(f"held: the distinct device buffers kept between steps (train state and pretrained "
          f"model); teacher: the teacher's own buffers in it (one float32 image tower + "
          f"projection is {tower / mib:.1f} MiB); temp: the compiled step's temporaries")
    print(f"WMA teacher, extra memory vs Direct FT: held {(wma[4] - direct[4]) / mib:+.1f} MiB, "
          f"temporaries {(wma[3] - direct[3]) / mib:+.1f} MiB; step time "
          f"{wma[0] / direct[0] - 1:+.1%}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
