"""Benchmark: bytes per device and steps/s of the CLIP finetuning step sharded FSDP-style
(``parallel.device_mesh(devices, fsdp)``) at fsdp = 1, 2, 4 on forced host devices, and the
largest preset whose WMA-SD state fits a per-device memory budget with and without sharding,
from the memory accounting (``finetune.memory.step_memory``).

    python experiments/bench_sharding.py [--preset small] [--batch-size 32] [--steps 10]
        [--warmup 1] [--devices 4] [--budget-gb 16] [--quick] [--out FILE]
        [--devices-available]

Before jax starts the script asks XLA for ``--devices`` host devices
(``--xla_force_host_platform_device_count``, appended to ``XLA_FLAGS``) unless
``--devices-available`` (use the devices there are, e.g. several GPUs) or ``XLA_FLAGS`` already
sets a host device count.

Part 1, for ``--preset`` (a random-init CLIP with a fresh 10-class head,
``studies.finetune_task.fresh_model``), ``--strategies`` (default WMA SD and Direct FT), head
objective, float32, batch ``--batch-size``: one device without a mesh (the baseline) and a
``--devices``-device mesh at every fsdp in 1, 2, 4 that divides it. Per device: parameters,
optimizer state, teacher and anchor as ``step_memory`` accounts them, the same four measured
from the shards the arrays hold on device 0 after the timed steps (``place`` / the step's
``constrain`` layout kept), the activations ``step_memory(..., mesh, batch=...)`` measures, and
XLA's temporaries of the sharded step itself (``memory_analysis`` of the compiled SPMD program,
per device), which ``step_memory`` measures the same way (the step compiled on the mesh, the
state placed by the rule), so the two columns agree: with fsdp they include the gathered weights
and gradients. Steps/s: the jitted step on the mesh (state placed with ``place``,
anchor placed like the loop does, batch split with ``shard_batch``, the new state constrained to
the same layout as ``finetune(..., mesh=...)`` does), compiled and warmed up, then the median of
``--steps`` single-step timings, all cases interleaved so drifts in machine load hit every case.
Forced host devices share this machine's CPU cores, so throughput ratios here say little about
accelerators; the memory figures carry over.

Part 2, for every preset of ``PRESETS`` (built from shapes alone with ``jax.eval_shape``,
1000-class head), the WMA-SD state per device (``step_memory(shapes, wma, config, mesh)``:
parameters, optimizer, teacher, anchor; activations excluded) at fsdp 1, 2, 4, 8; meshes
larger than the devices there are are ``jax.sharding.AbstractMesh``es (the sharding rule only
reads the mesh's axis sizes; cross-checked against real meshes where there are devices), and
the largest preset whose state fits ``--budget-gb`` GiB per device without sharding and at each
fsdp. The activations per image the small preset's step measured (part 1) are printed to
estimate the rest.

``--quick``: the tiny preset, WMA SD alone and 2 timed steps (under a minute). ``--out FILE``:
the results as JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

FORCE = "--xla_force_host_platform_device_count"
#: Strategies of part 1 (registry names): default, and with ``--quick``.
STRATEGIES, QUICK_STRATEGIES = "wma_sd,direct", "wma_sd"
SIZING_FSDP = (1, 2, 4, 8)
MIB = 2.0 ** 20
GIB = 2.0 ** 30


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=None, help="default: small (tiny with --quick)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="global batch; must divide by --devices")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per case (default 10, 2 with --quick)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    parser.add_argument("--devices", type=int, default=4, help="devices of the mesh")
    parser.add_argument("--budget-gb", type=float, default=16.0,
                        help="per-device memory budget in GiB (2**30 bytes) for part 2")
    parser.add_argument("--strategies", default=None,
                        help=f"part 1's strategies, comma-separated registry names (default "
                             f"{STRATEGIES}; {QUICK_STRATEGIES} with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny preset, 2 timed steps, {QUICK_STRATEGIES} only")
    parser.add_argument("--devices-available", action="store_true",
                        help="do not force host devices: use the devices jax finds")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    args.preset = args.preset or ("tiny" if args.quick else "small")
    args.steps = args.steps if args.steps is not None else (2 if args.quick else 10)
    args.strategies = tuple(x.strip() for x in (args.strategies or (
        QUICK_STRATEGIES if args.quick else STRATEGIES)).split(",") if x.strip())
    if min(args.steps, args.batch_size, args.devices) < 1 or args.warmup < 0:
        parser.error("--steps, --batch-size and --devices must be >= 1, --warmup >= 0")
    if args.batch_size % args.devices:
        parser.error(f"--batch-size {args.batch_size} must be a multiple of --devices "
                     f"{args.devices}")
    if not args.budget_gb > 0:
        parser.error("--budget-gb must be > 0")
    if "jax" in sys.modules:
        raise RuntimeError("run this as a script: XLA_FLAGS must be set before jax is imported")
    flags = os.environ.get("XLA_FLAGS", "")
    if not args.devices_available and FORCE not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {FORCE}={args.devices}".strip()
    run(args)


def run(args: argparse.Namespace) -> None:
    import statistics
    import time

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    from _timing import cpu_model, fmt_time
    from bench_clip_step import class_embeddings
    from jax.sharding import AbstractMesh

    from tracer_theory.deep import parallel
    from tracer_theory.deep.finetune import Batch, FinetuneConfig
    from tracer_theory.deep.finetune.memory import StepMemory, step_memory
    from tracer_theory.deep.finetune.step import start, train_step
    from tracer_theory.deep.finetune.strategies import registered
    from tracer_theory.deep.models.clip import CLIP, PRESETS, preset
    from tracer_theory.deep.studies.finetune_task import fresh_model

    t_all = time.perf_counter()
    available = len(jax.devices())
    if available < args.devices:
        raise SystemExit(f"{args.devices} devices asked for, jax has {available} "
                         f"({jax.devices()[0].device_kind}); XLA_FLAGS="
                         f"{os.environ.get('XLA_FLAGS', '')!r}")
    device = jax.devices()[0]
    usable = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]
    machine = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "usable_cpus": usable,
               "load_1min": load, "jax": jax.__version__, "backend": jax.default_backend(),
               "device_kind": device.device_kind, "devices": available,
               "xla_flags": os.environ.get("XLA_FLAGS", "")}
    print(f"machine: {machine['cpu']}, {machine['cpu_count']} CPUs ({usable} usable); jax "
          f"{jax.__version__}, backend {machine['backend']} ({device.device_kind}, {available} "
          f"device(s)); XLA_FLAGS={machine['xla_flags']!r}; python "
          f"{platform.python_version()}; load average {load:.2f} at start")

    strategies = registered(args.strategies)
    spec = preset(args.preset)
    clip = CLIP(spec, key=jax.random.key(0))
    model = fresh_model(clip, 10, 0)
    class_emb = class_embeddings(clip, spec)
    rng = np.random.default_rng(0)
    b, size = args.batch_size, spec.image_size
    batch = Batch(jnp.asarray(rng.random((b, 3, size, size), np.float32)),
                  jnp.asarray(rng.integers(10, size=b), jnp.int32),
                  jnp.zeros((0, 3, size, size), jnp.float32),
                  jnp.zeros((0, spec.context), jnp.int32), jnp.zeros((0,), jnp.int32))
    config = FinetuneConfig(steps=args.warmup + args.steps + 1, batch_size=b)

    @eqx.filter_jit
    def step_on(state, data, strategy, schedule, optimizer, pretrained, emb, mesh):
        """One ``train_step``, the new state constrained to the mesh's layout (as the loop)."""
        state, parts = train_step(state, data, strategy, schedule, config, optimizer,
                                  pretrained, emb, pretrained.head)
        if mesh is not None:
            state = parallel.constrain(state, mesh)
        return state, parts["loss"]

    class Loss:
        """A compiled ``train_step`` returning ``(state, loss)`` like ``step_on``."""

        def __init__(self, compiled):
            self.compiled = compiled

        def __call__(self, *a):
            state, parts = self.compiled(*a)
            return state, parts["loss"]

        def memory_analysis(self):
            return self.compiled.compiled.memory_analysis()

    def held(tree, dev) -> int:
        """Bytes of the shards of ``tree``'s arrays on device ``dev`` (their actual layout)."""
        total = 0
        for x in jax.tree.leaves(eqx.filter(tree, eqx.is_array)):
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                continue
            if dev in x.sharding.device_set:
                total += int(np.prod(x.sharding.shard_shape(x.shape), dtype=np.int64)) \
                    * x.dtype.itemsize
        return total

    meshes = [("1 device", 1, None)]
    meshes += [(f"fsdp={f}", f, parallel.device_mesh(args.devices, f))
               for f in (1, 2, 4) if args.devices % f == 0]
    cases = {}
    for name, strategy in strategies.items():
        for label, fsdp, mesh in meshes:
            t0 = time.perf_counter()
            memory = step_memory(model, strategy, config, mesh, batch=batch,
                                 class_emb=class_emb)
            t_memory = time.perf_counter() - t0
            state, optimizer, schedule = start(model, strategy, config)
            if mesh is None:
                pretrained, emb, data = model, class_emb, batch
            else:
                state, pretrained = parallel.place(state, mesh), parallel.place(model, mesh)
                emb = parallel.replicate(class_emb, mesh)
                data = parallel.shard_batch(batch, mesh)
            t0 = time.perf_counter()
            if mesh is None:  # train_step itself: the program step_memory compiled (cached)
                step_args = (data, strategy, schedule, config, optimizer, pretrained, emb,
                             pretrained.head)
                compiled = Loss(train_step.lower(state, *step_args).compile())
            else:
                step_args = (data, strategy, schedule, optimizer, pretrained, emb, mesh)
                compiled = step_on.lower(state, *step_args).compile()
            t_compile = time.perf_counter() - t0
            analysis = (compiled.memory_analysis() if mesh is None
                        else compiled.compiled.memory_analysis())
            xla = {k: int(getattr(analysis, f"{k}_size_in_bytes", -1))
                   for k in ("temp", "argument", "output")}
            state, loss = compiled(state, *step_args)
            first_loss = float(loss)
            for _ in range(args.warmup):
                state, loss = compiled(state, *step_args)
            jax.block_until_ready(state)
            cases[(name, label)] = {"strategy": name, "mesh": label, "fsdp": fsdp,
                                    "devices": 1 if mesh is None else args.devices,
                                    "memory": memory, "xla": xla, "first_loss": first_loss,
                                    "compile_s": t_compile, "step_memory_s": t_memory,
                                    "run": [compiled, state, step_args], "anchor": pretrained,
                                    "times": []}
            print(f"  prepared {name} {label}: step_memory {fmt_time(t_memory)}, compile "
                  f"{fmt_time(t_compile)}", flush=True)
    for _ in range(args.steps):  # interleaved, so drifts in machine load hit every case
        for case in cases.values():
            compiled, state, step_args = case["run"]
            t0 = time.perf_counter()
            state, loss = compiled(state, *step_args)
            jax.block_until_ready((state, loss))
            case["times"].append(time.perf_counter() - t0)
            case["run"][1] = state
    dev0 = jax.devices()[0]
    for case in cases.values():
        _, state, step_args = case["run"]
        case["held"] = StepMemory(held(state.model, dev0), held(state.opt_state, dev0),
                                  held(state.teacher.params, dev0), held(case["anchor"], dev0))
        case["median_s"] = statistics.median(case["times"])
        del case["run"], case["anchor"]

    print(f"\nPart 1: CLIP preset {args.preset} (random init, 10-class head), head objective, "
          f"float32, global batch {b}; {args.devices}-device mesh (data x fsdp) vs 1 device "
          f"without a mesh; warm-up {args.warmup} step(s) after compiling, median of "
          f"{args.steps} interleaved single-step timings")
    print("per device, MiB: param/opt/teacher/anchor = step_memory's accounting "
          "(held = measured from the shards on device 0 after the timed steps); act = "
          "step_memory's activations (XLA temporaries per device of the step compiled on the "
          f"mesh for the global batch of {b}); step temp = XLA temporaries of the timed sharded "
          "step itself, per device")
    head = (f"{'strategy':9s}{'mesh':>9s}{'param':>8s}{'opt':>8s}{'teacher':>8s}"
            f"{'anchor':>8s}{'state':>8s}{'held':>8s}{'act':>8s}{'step temp':>10s}"
            f"{'step':>11s}{'steps/s':>9s}{'img/s':>8s}{'state/f1':>9s}{'speed/f1':>9s}"
            f"{'speed/1dev':>11s}")
    print(head)
    print("-" * len(head))
    for (name, label), case in cases.items():
        m, h, t = case["memory"], case["held"], case["median_s"]
        state_bytes = m.total - (m.activations or 0)
        ref = cases.get((name, "fsdp=1"))
        one = cases[(name, "1 device")]
        ref_state = ref["memory"].total - (ref["memory"].activations or 0) if ref else None
        row = (f"{name:9s}{label:>9s}{m.parameters / MIB:8.1f}{m.optimizer / MIB:8.1f}"
               f"{m.teacher / MIB:8.1f}{m.anchor / MIB:8.1f}{state_bytes / MIB:8.1f}"
               f"{h.total / MIB:8.1f}"
               + (f"{m.activations / MIB:8.1f}" if m.activations is not None else f"{'n/a':>8s}")
               + f"{case['xla']['temp'] / MIB:10.1f}{fmt_time(t):>11s}{1 / t:9.2f}{b / t:8.1f}")
        if ref is not None and case["devices"] > 1:
            row += (f"{state_bytes / ref_state:9.2f}{ref['median_s'] / t:9.2f}")
        else:
            row += f"{'':9s}{'':9s}"
        row += f"{one['median_s'] / t:11.2f}"
        print(row)
        case["state_bytes"] = state_bytes
    print("state/f1: per-device state (param+opt+teacher+anchor) relative to fsdp=1 on the same "
          "mesh; speed/f1, speed/1dev: steps/s relative to fsdp=1 and to one device (> 1 faster)")
    print("the compiled step per device, MiB (XLA memory_analysis of the program timed "
          "above): arguments (state, anchor, batch share, class embeddings), outputs (new "
          "state), temporaries; step_memory's total (state + its act) beside state + the "
          "step's own temporaries")
    head2 = (f"{'strategy':9s}{'mesh':>9s}{'args':>9s}{'outputs':>9s}{'temp':>9s}"
             f"{'step_memory total':>19s}{'state+temp':>12s}{'state+temp /f1':>16s}")
    print(head2)
    print("-" * len(head2))
    for (name, label), case in cases.items():
        x, m = case["xla"], case["memory"]
        ref = cases.get((name, "fsdp=1"))
        peak = case["state_bytes"] + x["temp"]
        case["state_plus_temp"] = peak
        row = (f"{name:9s}{label:>9s}{x['argument'] / MIB:9.1f}{x['output'] / MIB:9.1f}"
               f"{x['temp'] / MIB:9.1f}{m.total / MIB:19.1f}{peak / MIB:12.1f}")
        if ref is not None and case["devices"] > 1:
            row += f"{peak / (ref['state_bytes'] + ref['xla']['temp']):16.2f}"
        print(row)
    mismatch = [(k, c["held"].total, c["state_bytes"]) for k, c in cases.items()
                if c["held"].total != c["state_bytes"]]
    print("held (measured shards) equals step_memory's accounting in every case" if not mismatch
          else "held differs from the accounting: " + "; ".join(
              f"{k[0]} {k[1]}: held {h / MIB:.2f} vs accounted {a / MIB:.2f} MiB"
              for k, h, a in mismatch))
    for name in strategies:
        base = cases[(name, "1 device")]["first_loss"]
        diffs = [abs(c["first_loss"] - base) for (s, _), c in cases.items() if s == name]
        print(f"{name}: first-step loss {base:.6f} on 1 device; max |difference| across meshes "
              f"{max(diffs):.1e}")
    print(f"caveat: the {args.devices} forced host devices share {usable} CPU core(s), so "
          "steps/s ratios between meshes measure CPU contention and XLA:CPU collectives, not "
          "what FSDP does on accelerators; the bytes per device carry over")

    # activations per image, from the two batch sizes measured (one device's share and all)
    per_image = {}
    for name in strategies:
        one, mesh_case = cases[(name, "1 device")], cases.get((name, "fsdp=1"))
        a1 = one["memory"].activations
        share = b // args.devices
        if mesh_case is None or a1 is None or mesh_case["memory"].activations is None \
                or share == b:
            continue
        a_share = mesh_case["memory"].activations
        slope = (a1 - a_share) / (b - share)
        per_image[name] = {"batch": b, "activations": a1, "share": share,
                           "share_activations": a_share, "marginal_per_image": slope,
                           "intercept": a1 - slope * b}
        print(f"{name}: activations (step_memory) {a1 / MIB:.1f} MiB at {b} images "
              f"({a1 / b / MIB:.3f} MiB/image), {a_share / MIB:.1f} MiB at {share} "
              f"({a_share / share / MIB:.3f} MiB/image); marginal {slope / MIB:.3f} MiB per "
              f"image, intercept {(a1 - slope * b) / MIB:+.1f} MiB (XLA temporaries are not "
              f"linear in the batch: buffer reuse), preset {args.preset}")

    # Part 2: the state per device of every preset, from shapes alone
    wma = registered(("wma_sd",))["wma_sd"]
    sizing_config = FinetuneConfig(steps=1000, batch_size=b)
    budget = args.budget_gb * GIB
    sizing, failed, checks = {}, {}, 0
    for p in PRESETS:
        try:
            shapes = jax.eval_shape(lambda p=p: fresh_model(CLIP(p, key=jax.random.key(0)),
                                                            1000, 0))
        except Exception as e:  # a preset that does not build is skipped
            failed[p] = f"{type(e).__name__}: {e}"
            continue
        rows = {}
        for f in SIZING_FSDP:
            abstract = AbstractMesh((1, f), ("data", "fsdp"))
            mem = step_memory(shapes, wma, sizing_config, abstract)
            if f <= available:  # the same rule on a real mesh of forced devices
                real = step_memory(shapes, wma, sizing_config, parallel.device_mesh(f, f))
                if real != mem:
                    raise AssertionError(f"{p} fsdp={f}: real mesh {real} != abstract {mem}")
                checks += 1
            rows[f] = mem
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
        sizing[p] = {"parameters": n_params, "rows": rows}
    print(f"\nPart 2: WMA-SD state per device (parameters + AdamW state + WMA teacher + "
          f"anchor; activations EXCLUDED), float32, 1000-class head, from shapes alone "
          f"(jax.eval_shape + step_memory); fsdp > {available} on AbstractMesh (rule checked "
          f"against real meshes in {checks} cases: equal)")
    head = (f"{'preset':20s}{'params':>9s}" + "".join(f"{f'fsdp={f} GiB':>13s}"
                                                       for f in SIZING_FSDP)
            + f"{f'fits {args.budget_gb:g} GiB at':>18s}")
    print(head)
    print("-" * len(head))
    for p, s in sizing.items():
        at = next((f"fsdp>={f}" for f in SIZING_FSDP if s["rows"][f].total <= budget),
                  f"fsdp>{SIZING_FSDP[-1]}")
        s["fits_from_fsdp"] = next((f for f in SIZING_FSDP if s["rows"][f].total <= budget),
                                   None)
        print(f"{p:20s}{s['parameters'] / 1e6:8.1f}M"
              + "".join(f"{s['rows'][f].total / GIB:13.3f}" for f in SIZING_FSDP)
              + f"{at:>18s}")
    for p, s in sizing.items():
        m = s["rows"][1]
        print(f"  {p}: fsdp=1 " + m.format() + f"; fsdp=8 / fsdp=1 = "
              f"{s['rows'][8].total / m.total:.3f}")
    for p, why in failed.items():
        print(f"  skipped {p}: {why}")

    def largest(f):
        fits = [p for p, s in sizing.items() if s["rows"][f].total <= budget]
        if not fits:
            return None, []
        top = max(sizing[p]["rows"][f].total for p in fits)
        # presets of the same size (GELU / QuickGELU variants) are listed together
        return top, [p for p in fits if sizing[p]["rows"][f].total == top]

    fits = {}
    print(f"budget {args.budget_gb:g} GiB ({budget:,.0f} bytes) per device, state only:")
    for f in SIZING_FSDP:
        top, names = largest(f)
        fits[f] = names
        what = ("nothing fits" if not names else
                f"largest {' / '.join(names)} ({top / GIB:.3f} GiB, "
                f"{budget - top:,.0f} bytes = {(budget - top) / GIB:.2f} GiB left for "
                "activations)")
        print(f"  {'without sharding' if f == 1 else f'fsdp={f}':>16s}: {what}")
    big = max(sizing, key=lambda p: sizing[p]["rows"][1].total)
    print(f"the largest preset here ({big}) needs {sizing[big]['rows'][1].total / GIB:.3f} GiB "
          f"unsharded, {sizing[big]['rows'][8].total / GIB:.3f} GiB at fsdp=8 (state only)")
    for name, est in per_image.items():
        if name == "wma_sd":
            print(f"activations to add (measured on {args.preset}, not on these presets): "
                  f"about {est['activations'] / est['batch'] / MIB:.3f} MiB per image of the "
                  f"{args.preset} WMA-SD step ({est['activations'] / MIB:.1f} MiB at "
                  f"{est['batch']} images); larger presets need far more per image "
                  "(tokens x width x layers), so measure them with step_memory(..., batch=) on "
                  "the target device")
    print(f"total {fmt_time(time.perf_counter() - t_all)}")

    if args.out is not None:
        from tracer_theory._io import write_json_atomic

        def mem_dict(m):
            return {k: v for k, v in m._asdict().items()} | {"total": m.total}

        write_json_atomic(args.out, {
            "machine": machine, "preset": args.preset, "batch_size": b,
            "devices": args.devices, "steps": args.steps, "warmup": args.warmup,
            "cases": [{"strategy": c["strategy"], "mesh": c["mesh"], "fsdp": c["fsdp"],
                       "devices": c["devices"], "step_memory": mem_dict(c["memory"]),
                       "held_device0": mem_dict(c["held"]), "state_bytes": c["state_bytes"],
                       "xla_step_bytes": c["xla"], "state_plus_step_temp": c["state_plus_temp"],
                       "step_times_s": c["times"],
                       "median_step_s": c["median_s"], "steps_per_s": 1 / c["median_s"],
                       "first_loss": c["first_loss"], "compile_s": c["compile_s"]}
                      for c in cases.values()],
            "activations_per_image": per_image,
            "sizing": {"budget_gib": args.budget_gb, "strategy": "wma_sd",
                       "activations": "excluded",
                       "presets": {p: {"parameters": s["parameters"],
                                       "fits_from_fsdp": s["fits_from_fsdp"],
                                       "fsdp": {str(f): mem_dict(m)
                                                for f, m in s["rows"].items()}}
                                   for p, s in sizing.items()},
                       "largest_fitting": {str(f): n for f, n in fits.items()},
                       "skipped": failed}})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
