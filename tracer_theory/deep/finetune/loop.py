"""The finetuning loop as an on-device program (THEORY §6).

The training arrays live on the device; every step draws its batch with ``jax.random`` from
``fold_in(key(seed), step)``, takes the jitted step of ``step.py`` (the teacher update and the
schedule's ω inside it) and, every ``log_every`` steps, logs the curves (``CURVES``) as program
outputs. On accelerators a program call is a ``lax.scan`` over the steps of a chunk of ``chunk``
steps (blocks ending at the log steps); on CPU every step is its own jitted program
(``stepwise``: XLA:CPU runs convolutions inside loop bodies an order of magnitude slower).
Every step's batch depends on its global index alone and every block is the same program, so
the chunk size only sets how often the progress bar moves and checkpoints are written, never
the result.
``finetune_seeds`` ``vmap``s seeds (each with its own pretrained model) into one program;
``reference_finetune`` is the same run one dispatched step at a time (tests and benchmarks).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..._cache import array_digest, cache_key
from ..._io import writer
from ..._progress import bar as progress_bar
from ...errors import Diverged
from ..data.folders import FolderImages
from ..data.task import Task
from ..models import DualEncoder
from ..parallel import Mesh, batch_spec, constrain, place, replicate
from .checkpoints import load_model, load_run, save_model, save_run
from .config import FinetuneConfig
from .finetunee import Batch, Finetunee
from .step import (
    TrainState,
    gap_metrics,
    phase_optimizer,
    start,
    start_phase,
    teacher_tower,
    train_step,
)
from .strategies import Phase, Strategy, describe
from .stream import SOURCES, Source, StepImages, check_workers, streamed

#: The logged curves: the step, the loss, the teacher–student gap (parameter distance, logit KL,
#: argmax agreement) and the gray zero-shot accuracy (%) on the fixed gray probe.
CURVES = ("steps", "loss", "param_distance", "logit_kl", "agreement", "gray_acc")
#: How batches are drawn (part of every result's key, so results of another sampler are not
#: resumed).
SAMPLER = "jax.random.fold_in(key(seed), step); top-k of uniforms (without replacement)"
DEFAULT_CHUNK = 250


class TrainingData(eqx.Module):
    """The finetuning arrays on the device: images (N, C, H, W) and labels (N,), and the gray
    pretraining images, caption tokens and labels that replay strategies mix in (maybe empty)."""

    images: Float[Array, "N C H W"]
    labels: Int[Array, " N"]
    hybrid_images: Float[Array, "M C H W"]
    hybrid_tokens: Int[Array, "M L"]
    hybrid_labels: Int[Array, " M"]

    @classmethod
    def of(cls, images, labels, hybrid=None) -> TrainingData:
        """From NumPy arrays; ``hybrid`` = (images, tokens, labels) or ``None`` (empty)."""
        if hybrid is None:
            hybrid = (np.zeros((0, *np.shape(images)[1:]), np.float32),
                      np.zeros((0, 8), np.int32), np.zeros((0,), np.int32))
        return cls(jnp.asarray(images), jnp.asarray(labels, jnp.int32),
                   jnp.asarray(hybrid[0]), jnp.asarray(hybrid[1], jnp.int32),
                   jnp.asarray(hybrid[2], jnp.int32))


class Probe(eqx.Module):
    """The fixed batches the curves are logged on: colored images (B, C, H, W) for the
    teacher–student gap, gray images (G, C, H, W) and labels (G,) for zero-shot accuracy."""

    images: Float[Array, "B C H W"]
    gray_images: Float[Array, "G C H W"]
    gray_labels: Int[Array, " G"]

    @classmethod
    def of(cls, images, gray: tuple[np.ndarray, np.ndarray] | None = None) -> Probe:
        """From NumPy arrays; without ``gray`` the gray accuracy curve is NaN."""
        if gray is None:
            gray = (np.zeros((0, *np.shape(images)[1:]), np.float32), np.zeros((0,), np.int32))
        return cls(jnp.asarray(images), jnp.asarray(gray[0]), jnp.asarray(gray[1], jnp.int32))


def batch_indices(key: PRNGKeyArray, n: int, n_replay: int, size: int, n_hybrid: int
                  ) -> tuple[Int[Array, " k"], Int[Array, " h"]]:
    """The indices of one batch: ``size − n_hybrid`` of the ``n`` finetuning examples and
    ``n_hybrid`` of the ``n_replay`` replay examples, each drawn without replacement with
    ``key``. The one sampler of every loop, on the device or on the host (``stream``)."""
    k_task, k_hybrid = jax.random.split(key)
    idx = subset(k_task, n, size - n_hybrid)
    hidx = subset(k_hybrid, n_replay, n_hybrid) if n_hybrid else jnp.zeros((0,), jnp.int32)
    return idx, hidx


def draw_batch(data: TrainingData, key: PRNGKeyArray, size: int, n_hybrid: int,
               images: Float[Array, "b C H W"] | None = None) -> Batch:
    """``size − n_hybrid`` finetuning examples and ``n_hybrid`` replay examples, each drawn
    without replacement with ``key`` (``batch_indices``); ``images``: the finetuning images of
    those indices when they were read on the host (a streamed run, ``data.images`` empty)."""
    idx, hidx = batch_indices(key, data.labels.shape[0], data.hybrid_labels.shape[0], size,
                              n_hybrid)
    return Batch(data.images[idx] if images is None else images, data.labels[idx],
                 data.hybrid_images[hidx], data.hybrid_tokens[hidx], data.hybrid_labels[hidx])


def subset(key: PRNGKeyArray, n: int, k: int) -> Int[Array, " k"]:
    """``k`` distinct indices drawn uniformly from ``range(n)``: the ``k`` largest of ``n``
    uniform variates (a uniformly random subset, without the full permutation that
    ``jax.random.choice(replace=False)`` sorts)."""
    return jax.lax.top_k(jax.random.uniform(key, (n,)), k)[1]


def step_key(seed_key: PRNGKeyArray, step: Int[Array, ""]) -> PRNGKeyArray:
    """The key of global step ``step`` (1-based) of a run."""
    return jax.random.fold_in(seed_key, step)


def zero_shot_accuracy(clip: DualEncoder, images: Float[Array, "G C H W"],
                       labels: Int[Array, " G"], class_emb: Float[Array, "K D"]) -> Array:
    """Zero-shot accuracy (%) of ``clip`` on ``images``; NaN for an empty probe."""
    if images.shape[0] == 0:
        return jnp.asarray(jnp.nan, jnp.float32)
    logits = clip.embed_images(images) @ class_emb.T
    return 100 * jnp.mean(jnp.argmax(logits, -1) == labels)


def log_metrics(state: TrainState, loss: Array, probe: Probe, class_emb: Float[Array, "K D"],
                pretrained: Finetunee) -> dict[str, Array]:
    """The logged values of ``CURVES`` (but the step) after a step of loss ``loss``."""
    gaps = gap_metrics(state.model, teacher_tower(state, pretrained), probe.images, class_emb)
    gray = zero_shot_accuracy(state.model.clip, probe.gray_images, probe.gray_labels, class_emb)
    return {"loss": loss, **gaps, "gray_acc": gray}


class _Fixed(eqx.Module):
    """What a chunk needs besides the state: arrays (data, probe, pretrained model, class
    embeddings, the seed's key) and static values (strategy, schedule, configs)."""

    data: TrainingData
    probe: Probe
    pretrained: Finetunee
    class_emb: Float[Array, "K D"]
    key: PRNGKeyArray
    strategy: Strategy = eqx.field(static=True)
    config: FinetuneConfig = eqx.field(static=True)
    optimizer: object = eqx.field(static=True)
    n_hybrid: int = eqx.field(static=True)
    sharding: NamedSharding | None = eqx.field(static=True)


def _train(state: TrainState, step: Int[Array, ""], fixed: _Fixed, schedule, images=None
           ) -> tuple[TrainState, Array]:
    """Step ``step``: draw its batch (its finetuning ``images`` given when streamed), one
    optimizer step and teacher update; ``(state, loss)``."""
    config = fixed.config
    batch = draw_batch(fixed.data, step_key(fixed.key, step), config.batch_size, fixed.n_hybrid,
                       images)
    if fixed.sharding is not None:
        batch = jax.lax.with_sharding_constraint(batch, fixed.sharding)
    state, parts = train_step(state, batch, fixed.strategy, schedule, config, fixed.optimizer,
                              fixed.pretrained, fixed.class_emb, fixed.pretrained.head)
    if fixed.sharding is not None:  # parameters, optimizer state and teacher keep their layout
        state = constrain(state, fixed.sharding.mesh)
    return state, parts["loss"]


def _block(state: TrainState, first: Int[Array, ""], fixed: _Fixed, schedule, length: int,
           log: bool) -> tuple[TrainState, dict[str, Array]]:
    """Steps ``first .. first + length − 1`` as a ``lax.scan``, then (``log``) the logged
    values after the last one. No conditional sits in the program."""
    arrays, static = eqx.partition(state, eqx.is_array)  # the scan carries arrays only

    def body(arrays, step):
        state, loss = _train(eqx.combine(arrays, static), step, fixed, schedule)
        return eqx.filter(state, eqx.is_array), loss

    arrays, losses = jax.lax.scan(body, arrays, first + jnp.arange(length, dtype=jnp.int32))
    state = eqx.combine(arrays, static)
    values = (log_metrics(state, losses[-1], fixed.probe, fixed.class_emb, fixed.pretrained)
              if log else {})
    return state, (values, losses)


def _blocks(state, firsts: Int[Array, " n"], fixed: _Fixed, schedule, length: int, log: bool
            ) -> tuple[TrainState, dict[str, Array]]:
    """``len(firsts)`` blocks of ``length`` steps as one ``lax.scan``; the logged values of each
    block stacked (n, ...) and every step's loss (n, length)."""
    arrays, static = eqx.partition(state, eqx.is_array)

    def body(arrays, first):
        state, values = _block(eqx.combine(arrays, static), first, fixed, schedule, length, log)
        return eqx.filter(state, eqx.is_array), values

    arrays, values = jax.lax.scan(body, arrays, firsts)
    return eqx.combine(arrays, static), values


def _over_seeds(fn, fixed: _Fixed):
    """``fn(state, x, fixed, *rest)`` vmapped over the seeds: axis 0 of the state, the
    pretrained model, the class embeddings and the key."""
    return eqx.filter_vmap(fn, in_axes=(eqx.if_array(0), None, _over_seeds_axes(fixed))
                           + (None,) * 3)


@eqx.filter_jit
def _run_blocks(state, firsts, fixed, schedule, length, log, seeds: bool):
    if not seeds:
        return _blocks(state, firsts, fixed, schedule, length, log)
    state, values = _over_seeds(_blocks, fixed)(state, firsts, fixed, schedule, length, log)
    return state, jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1), values)  # (blocks, seeds, ...)


@eqx.filter_jit
def _run_step(state, step, fixed, schedule, seeds: bool, images=None):
    if not seeds:
        return _train(state, step, fixed, schedule, images)
    return eqx.filter_vmap(lambda st, f: _train(st, step, f, schedule),
                           in_axes=(eqx.if_array(0), _over_seeds_axes(fixed)))(state, fixed)


@eqx.filter_jit
def _log(state, loss, fixed, seeds: bool):
    if not seeds:
        return log_metrics(state, loss, fixed.probe, fixed.class_emb, fixed.pretrained)
    return eqx.filter_vmap(lambda st, lo, ce, pre: log_metrics(st, lo, fixed.probe, ce, pre))(
        state, loss, fixed.class_emb, fixed.pretrained)


def _over_seeds_axes(fixed: _Fixed) -> _Fixed:
    seeds = eqx.if_array(0)
    return _Fixed(None, None, seeds, seeds, seeds, fixed.strategy, fixed.config,
                  fixed.optimizer, fixed.n_hybrid, fixed.sharding)


def stepwise() -> bool:
    """Whether a program call is one step: on CPU, where XLA runs convolutions inside loop
    bodies an order of magnitude slower than outside them (jax-ml/jax#12868; measured here:
    260 against 17 ms per toy step), each step is its own jitted program (its batch drawn
    inside it) and the curves are logged by another; on accelerators a call is a rolled
    ``lax.scan`` over the steps of a chunk."""
    return jax.default_backend() == "cpu"


def schedule_blocks(done: int, end: int, config: FinetuneConfig
                    ) -> list[tuple[int, int, bool, int]]:
    """The scanned calls from step ``done`` to ``end``: ``(first step, block length, logs,
    number of blocks)``. Blocks end at every log step (multiples of ``log_every`` and
    ``config.steps``) and at ``end``; a call holds the consecutive equal blocks."""
    every = config.log_every
    edges = sorted({*range(done - done % every + every, end, every), end})
    calls: list[tuple[int, int, bool, int]] = []
    lo = done
    for hi in edges:
        length, log = hi - lo, hi % every == 0 or hi == config.steps
        if calls and calls[-1][1:3] == (length, log):
            calls[-1] = (*calls[-1][:3], calls[-1][3] + 1)
        else:
            calls.append((lo + 1, length, log, 1))
        lo = hi
    return calls


class Run(NamedTuple):
    """A finished run: the model, the logged curves (``CURVES``, NumPy) and the models at the
    requested ``stops`` (``{step: model}``). For ``finetune_seeds``, lists over the seeds."""

    model: Finetunee
    curves: dict[str, np.ndarray]
    snapshots: dict[int, Finetunee]


def finetune(pretrained: Finetunee, images: np.ndarray, labels: np.ndarray,
             strategy: Strategy, config: FinetuneConfig, *, class_emb: Float[Array, "C D"],
             probe: np.ndarray, gray_probe: tuple[np.ndarray, np.ndarray] | None = None,
             hybrid: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, seed: int,
             progress: str | None = None, mesh: Mesh | None = None, chunk: int = DEFAULT_CHUNK,
             stops: Sequence[int] = (), checkpoint: str | Path | None = None,
             checkpoint_key: dict | None = None, overwrite: bool = False,
             source: Source = "auto", workers: int = 0, threads: int = 2) -> Run:
    """Finetune ``pretrained`` on ``images`` (N, C, H, W) / ``labels`` (N,) with ``strategy``
    under the training ``config``, as one scanned on-device program per chunk of steps.

    ``images``: an array, or ``FolderImages`` on disk. ``source`` (``stream.streamed``):
    ``"device"`` holds the images on the device and draws each batch there, ``"stream"`` reads
    each step's images on the host (grain, ``workers`` processes or ``threads`` threads) into
    the same jitted step, ``"auto"`` streams large sets on disk. Both draw the same batches.

    ``class_emb`` (C, D): the frozen class embeddings; ``probe`` (B, C, H, W) the fixed colored
    batch the teacher–student gap is logged on and ``gray_probe`` = (images, labels) the gray
    one for zero-shot accuracy, every ``config.log_every`` steps; ``hybrid`` = (gray images,
    caption tokens, labels) for strategies that mix pretraining data into their batches;
    ``mesh`` a device mesh (``parallel.data_mesh``) each batch is split over; ``chunk`` steps
    per program call on accelerators (on CPU a call is one step, see ``stepwise``), and
    between checkpoints and progress-bar updates; ``stops`` steps at which to keep a copy of
    the model (``Run.snapshots``);
    ``checkpoint`` a file the run is saved to after every chunk and resumed from, keyed by
    every argument the result depends on and by the caller's ``checkpoint_key`` (e.g. a study's
    run key): a checkpoint of another run is a ``ResumeMismatch`` and a damaged one a
    ``DamagedArtifact``, both naming the file (``overwrite``: start afresh instead).
    Values that overflow the parameters' dtype (a λ of 1e300 in float32) are refused before
    training, and a non-finite loss or parameter stops the run at once with a ``Diverged``
    naming the step, the strategy and its λ and learning rate (nothing is checkpointed).
    Returns ``Run(model, curves, snapshots)``.
    """
    run = _Runner(strategy, config, chunk, stops, hybrid, mesh, n_seeds=None, source=source,
                  workers=workers, threads=threads)
    return run(pretrained, images, labels, jnp.asarray(class_emb), probe, gray_probe,
               jax.random.key(seed), progress, checkpoint, checkpoint_key, overwrite)


def finetune_on(task: Task, pretrained: Finetunee, strategy: Strategy, config: FinetuneConfig,
                *, class_emb: Float[Array, "C D"], prompts: np.ndarray,
                labels: np.ndarray | None = None, **options) -> Run:
    """``finetune`` on a ``Task``: its training split (``labels`` replacing its labels, e.g.
    noisy ones), its curves' fixed batches (``Task.probes``) and its replay data with the first
    template's tokens of ``prompts`` (C, P, L), read only for a strategy that mixes it in;
    ``options`` as ``finetune``'s (``seed``, ...)."""
    gap, zero_shot = task.probes()
    replay = task.replay_arrays(prompts) if strategy.hybrid_size(config.batch_size) else None
    return finetune(pretrained, task.train.images,
                    task.train.labels if labels is None else labels, strategy, config,
                    class_emb=class_emb, probe=gap, gray_probe=zero_shot, hybrid=replay,
                    **options)


def finetune_seeds(pretrained: Sequence[Finetunee], images: np.ndarray, labels: np.ndarray,
                   strategy: Strategy, config: FinetuneConfig, *,
                   class_emb: Sequence[Float[Array, "C D"]], probe: np.ndarray,
                   gray_probe: tuple[np.ndarray, np.ndarray] | None = None,
                   hybrid: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                   seeds: Sequence[int], progress: str | None = None,
                   mesh: Mesh | None = None, chunk: int = DEFAULT_CHUNK,
                   stops: Sequence[int] = (), checkpoint: str | Path | None = None,
                   checkpoint_key: dict | None = None, overwrite: bool = False) -> Run:
    """``finetune`` for several seeds as one vmapped program: ``pretrained[i]`` and
    ``class_emb[i]`` are seed ``seeds[i]``'s. Each seed's result equals its own ``finetune``
    (within float32 round-off). Returns a ``Run`` whose fields are lists over the seeds (the
    snapshots ``{step: [model per seed]}``)."""
    if mesh is not None:
        raise ValueError("finetune_seeds runs on one device (mesh must be None); split one "
                         "seed's batches over a mesh with finetune(..., mesh=...)")
    if not len(seeds) or len(seeds) != len(pretrained) or len(seeds) != len(class_emb):
        raise ValueError(f"seeds, pretrained and class_emb must have the same non-zero length, "
                         f"got {len(seeds)}, {len(pretrained)}, {len(class_emb)}")
    run = _Runner(strategy, config, chunk, stops, hybrid, mesh, n_seeds=len(seeds))
    keys = jnp.stack([jax.random.key(s) for s in seeds])
    return run(_stack(pretrained), images, labels, jnp.stack([jnp.asarray(c) for c in class_emb]),
               probe, gray_probe, keys, progress, checkpoint, checkpoint_key, overwrite)


class _Runner:
    """The host side of a run: phases, chunks, logging, snapshots and checkpoints. With
    ``n_seeds`` every array of the state carries the seeds on axis 0."""

    def __init__(self, strategy, config, chunk, stops, hybrid, mesh, n_seeds, source="device",
                 workers=0, threads=2):
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        self.source = source
        self.workers, self.threads = check_workers(workers, threads)
        if isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1:
            raise ValueError(f"chunk must be a positive number of steps, got {chunk!r}")
        if any(isinstance(s, bool) or not isinstance(s, int | np.integer) for s in stops):
            raise ValueError(f"stops must be integer steps, got {list(stops)}")
        stops = tuple(sorted({int(s) for s in stops}))
        if any(not 1 <= s <= config.steps for s in stops):
            raise ValueError(f"stops must be steps in [1, {config.steps}], got {list(stops)}")
        self.n_hybrid = strategy.hybrid_size(config.batch_size)
        if self.n_hybrid and hybrid is None:
            raise ValueError(f"{type(strategy).__name__} mixes {self.n_hybrid} pretraining "
                             "images into each batch: pass hybrid=(images, tokens, labels)")
        self.strategy, self.config, self.chunk, self.stops = strategy, config, int(chunk), stops
        self.hybrid, self.mesh, self.n_seeds = hybrid, mesh, n_seeds
        self.phases = strategy.phases(config.steps)
        self.ends = np.cumsum([p.steps for p in self.phases])
        # what a divergence message names: the strategy and the numbers that set its scale
        self.what = f"{type(strategy).__name__} finetuning"
        self.scale = scale_text(strategy, config)

    def _map(self, fn, *trees):
        return (fn if self.n_seeds is None else eqx.filter_vmap(fn))(*trees)

    def _phase_start(self, state: TrainState, i: int) -> TrainState:
        """``state`` with phase ``i``'s fresh optimizer state (model and teacher kept)."""
        phase = self.phases[i]
        return self._map(lambda m, t: start_phase(m, t, phase, self.config)[0],
                         state.model, state.teacher)

    def __call__(self, pretrained, images, labels, class_emb, probe, gray_probe, key, progress,
                 checkpoint, checkpoint_key=None, overwrite=False):
        config = self.config
        if len(labels) < config.batch_size - self.n_hybrid:
            raise ValueError(f"batch_size = {config.batch_size} draws "
                             f"{config.batch_size - self.n_hybrid} finetuning examples per step "
                             f"without replacement, but only {len(labels)} were given")
        self.streamed = streamed(images, self.source)
        if self.streamed and self.n_seeds is not None:
            raise ValueError("finetune_seeds holds the images on the device (source='device'); "
                             "stream one seed at a time with finetune(..., source='stream')")
        dtype = jnp.result_type(*jax.tree.leaves(eqx.filter(pretrained, eqx.is_inexact_array)))
        check_representable(self.strategy, config, dtype)
        state = self._map(lambda m: start(m, self.strategy, config)[0], pretrained)
        schedule = self.strategy.schedule(config.steps)
        done, logged, snapshots = 0, [], {}
        run_key = None
        if checkpoint is not None:
            run_key = cache_key({
                "run": checkpoint_key, "strategy": describe(self.strategy),
                "training": dataclasses.asdict(config), "stops": list(self.stops),
                "sampler": SAMPLER, "seeds": self.n_seeds,
                "arguments": array_digest((pretrained, _digestible(images), labels, class_emb,
                                           probe,
                                           gray_probe, self.hybrid, key))})
            resumed = self._resume(Path(checkpoint), state, pretrained, run_key, overwrite)
            if resumed is not None:
                done, logged, snapshots, state = resumed
        self.images = images
        held = (np.zeros((0, *images.shape[1:]), np.float32) if self.streamed
                else np.asarray(images))
        data = TrainingData.of(held, labels, self.hybrid)
        probe = Probe.of(probe, gray_probe)
        sharding = None
        if self.mesh is not None:
            data, probe = replicate((data, probe), self.mesh)
            pretrained = place(pretrained, self.mesh)  # the anchor, sharded like the model
            sharding = NamedSharding(self.mesh, batch_spec(self.mesh))
        seeds = self.n_seeds is not None
        bar = progress_bar(total=config.steps, initial=done, desc=progress, leave=False,
                   disable=progress is None or not writer())
        for i, phase in enumerate(self.phases):
            if done >= self.ends[i]:
                continue
            if i and done == self.ends[i] - phase.steps:
                state = self._phase_start(state, i)
            if self.mesh is not None:
                state = place(state, self.mesh)
            fixed = _Fixed(data, probe, pretrained, class_emb, key, self.strategy, config,
                           phase_optimizer(config, phase), self.n_hybrid, sharding)
            # rolled programs: chunks of whole log intervals, so every block is the same program
            every = config.log_every
            size = self.chunk if stepwise() or self.streamed else -(-self.chunk // every) * every
            for lo, hi in chunk_ranges(done, int(self.ends[i]), size, self.stops):
                state, rows = self._steps(state, lo, hi, fixed, schedule, seeds)
                logged += rows
                done = hi
                if done in self.stops:
                    snapshots[done] = state.model
                    if checkpoint is not None:
                        save_model(_snapshot_path(checkpoint, done), state.model,
                                   {**run_key, "snapshot": done})
                if checkpoint is not None:
                    save_run(checkpoint, state, done, run_key, {"curves": logged, "phase": i})
                bar.update(hi - lo)
        bar.close()
        return self._result(state.model, logged, snapshots)

    def _steps(self, state, lo: int, hi: int, fixed: _Fixed, schedule, seeds: bool):
        """Steps ``lo + 1 .. hi``; returns the state and the logged rows."""
        config, rows = self.config, []
        if self.streamed or stepwise():
            losses = []
            images = itertools.repeat(None)  # batches drawn inside the step
            if self.streamed:  # each step's images read on the host (stream.py)
                images = StepImages(self.images, fixed.key, lo + 1, hi,
                                    n_replay=fixed.data.hybrid_labels.shape[0],
                                    size=config.batch_size, n_hybrid=self.n_hybrid,
                                    workers=self.workers, threads=self.threads,
                                    sharding=fixed.sharding)
            for step, batch in zip(range(lo + 1, hi + 1), images, strict=False):
                state, loss = _run_step(state, jnp.int32(step), fixed, schedule, seeds, batch)
                losses.append(loss)
                if step % config.log_every == 0 or step == config.steps:
                    values = _log(state, loss, fixed, seeds)
                    rows += _logged_rows(np.array([step]),
                                         jax.tree.map(lambda x: x[None], values))
            check_finite(jnp.stack(losses), lo, state.model, self.what, self.scale)
            return state, rows
        for first, length, log, n in schedule_blocks(lo, hi, config):
            firsts = jnp.asarray(first + length * np.arange(n), jnp.int32)
            state, (values, losses) = _run_blocks(state, firsts, fixed, schedule, length, log,
                                                  seeds)
            # losses (n, [seeds,] length) → (n·length, seeds) in step order
            losses = np.moveaxis(np.asarray(losses), -1, 1).reshape(n * length, -1)
            check_finite(losses, first - 1, state.model, self.what, self.scale)
            if log:
                rows += _logged_rows(first - 1 + length * np.arange(1, n + 1), values)
        return state, rows

    def _resume(self, path: Path, state: TrainState, pretrained, key, overwrite: bool):
        """``(step, logged rows, snapshots, state)`` of the checkpoint at ``path`` (written for
        ``key``), or ``None`` when there is none (or, ``overwrite``, none usable)."""

        def like(info):
            return state if info["phase"] == 0 else self._phase_start(state, info["phase"])

        resumed = load_run(path, like, key, overwrite=overwrite)
        if resumed is None:
            return None
        state, step, info = resumed
        snapshots = {}
        for s in (s for s in self.stops if s <= step):
            snapshots[s] = load_model(_snapshot_path(path, s), state.model, {**key, "snapshot": s},
                                      overwrite=overwrite)
            if snapshots[s] is None:  # missing (or unusable with overwrite): start afresh
                return None
        return step, [tuple(r) for r in info["curves"]], snapshots, state

    def _result(self, model, logged, snapshots) -> Run:
        rows = np.asarray(logged, np.float64).reshape(len(logged), -1)
        steps = rows[:, 0].astype(np.int64)
        n = len(CURVES) - 1
        if self.n_seeds is None:
            curves = {"steps": steps} | {k: rows[:, 1 + j] for j, k in enumerate(CURVES[1:])}
            return Run(model, curves, snapshots)
        curves = [{"steps": steps} | {k: rows[:, 1 + s * n + j] for j, k in enumerate(CURVES[1:])}
                  for s in range(self.n_seeds)]
        return Run(_unstack(model, self.n_seeds), curves,
                   {step: _unstack(m, self.n_seeds) for step, m in snapshots.items()})


def scale_text(strategy: Strategy, config: FinetuneConfig) -> str:
    """The numbers that set a run's scale, for a message: the strategy's numeric fields
    (dotted names) and the learning rate, e.g. ``"lam = 1e+30, lr = 0.003"``."""
    parts = [f"{name} = {value:g}" for name, value in _numbers(describe(strategy))]
    return ", ".join([*parts, f"lr = {config.lr:g}"])


def _numbers(value, prefix: str = "") -> list[tuple[str, float]]:
    """``(dotted name, number)`` of every real number in a ``describe`` value."""
    if isinstance(value, dict):
        return [n for k, v in value.items() if k != "type"
                for n in _numbers(v, f"{prefix}{k}.")]
    if isinstance(value, list | tuple):
        return [n for i, v in enumerate(value) for n in _numbers(v, f"{prefix}{i}.")]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [(prefix.rstrip("."), float(value))]
    return []


def check_representable(strategy: Strategy, config: FinetuneConfig, dtype) -> None:
    """``ValueError`` naming the field when a number of ``strategy`` (λ, a momentum, a kernel
    value) or the learning rate is not finite or overflows ``dtype``, the parameters' dtype the
    run trains in (a λ of 1e300 is finite in Python and Inf in float32)."""
    largest = float(jnp.finfo(dtype).max)
    for name, value in [*_numbers(describe(strategy)), ("lr", config.lr),
                        ("weight_decay", config.weight_decay)]:
        if not abs(value) <= largest:
            raise ValueError(f"{type(strategy).__name__}.{name} = {value:g} "
                             f"{'overflows' if np.isfinite(value) else 'is not finite in'} "
                             f"{jnp.dtype(dtype).name}, the dtype the parameters train in "
                             f"(largest {largest:.3g})")


def check_finite(losses, first: int, model, what: str, scale: str) -> None:
    """``Diverged`` when a loss of steps ``first + 1, first + 2, …`` (``losses``: axis 0 the
    steps, any other axes seeds) or a parameter of ``model`` after them is NaN or Inf; the
    message names the first such step, ``what`` ran and its ``scale`` (λ, lr)."""
    losses = np.asarray(losses, np.float64)
    bad = ~np.isfinite(losses.reshape(losses.shape[0], -1)).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise Diverged(f"{what} went non-finite at step {first + 1 + i}: the loss is "
                       f"{losses[i].tolist()} ({scale}); lower λ or the learning rate (nothing "
                       "was written for this run)")
    if not bool(_all_finite(eqx.filter(model, eqx.is_inexact_array))):
        raise Diverged(f"{what} went non-finite by step {first + len(losses)}: a parameter is "
                       f"NaN or Inf ({scale}); lower λ or the learning rate (nothing was "
                       "written for this run)")


@jax.jit
def _all_finite(tree) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _digestible(images):
    """``images`` as ``array_digest`` reads them: arrays themselves, images on disk by their
    fingerprint (files, sizes, times, preprocessing)."""
    return images.fingerprint() if isinstance(images, FolderImages) else images


def _snapshot_path(checkpoint: str | Path, step: int) -> Path:
    return Path(f"{checkpoint}.step{step}")


def _logged_rows(steps: np.ndarray, values: dict[str, Array]) -> list[tuple[float, ...]]:
    """The rows (step, then each curve's value, seeds side by side) of logged ``steps``."""
    # (steps, seeds, curves): a run without seeds is one seed
    table = np.stack([np.asarray(values[k], np.float64).reshape(len(steps), -1)
                      for k in CURVES[1:]], axis=2).reshape(len(steps), -1)
    return [(float(s), *map(float, r)) for s, r in zip(steps, table, strict=True)]


def chunk_ranges(done: int, end: int, chunk: int, stops: Sequence[int] = ()
                 ) -> list[tuple[int, int]]:
    """``(lo, hi]`` step ranges from ``done`` to ``end``: at most ``chunk`` long, split at
    ``stops``."""
    edges = sorted({*range(done, end, chunk), end, *(s for s in stops if done < s < end)})
    return list(itertools.pairwise(edges))


def _stack(trees: Sequence):
    """One tree whose array leaves stack ``trees`` on a new axis 0."""
    arrays = [eqx.filter(t, eqx.is_array) for t in trees]
    static = eqx.partition(trees[0], eqx.is_array)[1]
    return eqx.combine(jax.tree.map(lambda *x: jnp.stack(x), *arrays), static)


def _unstack(tree, n_seeds: int) -> list:
    """The ``n_seeds`` trees of a stacked tree."""
    arrays, static = eqx.partition(tree, eqx.is_array)
    return [eqx.combine(jax.tree.map(lambda x, i=i: x[i], arrays), static)
            for i in range(n_seeds)]


def reference_finetune(pretrained: Finetunee, images: np.ndarray, labels: np.ndarray,
                       strategy: Strategy, config: FinetuneConfig, *,
                       class_emb: Float[Array, "C D"], probe: np.ndarray,
                       gray_probe: tuple[np.ndarray, np.ndarray] | None = None,
                       hybrid: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                       seed: int) -> Run:
    """The same run as ``finetune``, one dispatched jitted step per Python iteration over the
    same batches (a reference for tests and the benchmark's baseline)."""
    n_hybrid = strategy.hybrid_size(config.batch_size)
    data = TrainingData.of(images, labels, hybrid)
    probe = Probe.of(probe, gray_probe)
    key = jax.random.key(seed)
    state, optimizer, schedule = start(pretrained, strategy, config)
    draw = eqx.filter_jit(draw_batch)
    logs = eqx.filter_jit(log_metrics)
    rows = []
    step = 0
    for i, phase in enumerate(strategy.phases(config.steps)):
        if i:
            state, optimizer = start_phase(state.model, state.teacher, phase, config)
        for _ in range(phase.steps):
            step += 1
            batch = draw(data, step_key(key, jnp.int32(step)), config.batch_size, n_hybrid)
            state, parts = train_step(state, batch, strategy, schedule, config, optimizer,
                                      pretrained, class_emb, pretrained.head)
            if step % config.log_every == 0 or step == config.steps:
                values = logs(state, parts["loss"], probe, class_emb, pretrained)
                rows.append((step, *(float(values[k]) for k in CURVES[1:])))
    table = np.asarray(rows, np.float64)
    curves = {k: table[:, j] for j, k in enumerate(CURVES)}
    curves["steps"] = curves["steps"].astype(np.int64)
    return Run(state.model, curves, {})


__all__ = ["CURVES", "Phase", "Probe", "Run", "TrainingData", "draw_batch", "finetune",
           "finetune_on", "finetune_seeds", "reference_finetune"]
