"""Contrastive pretraining of a CLIP on gray digits (symmetric multi-positive InfoNCE),
resumable from checkpoints, as a scanned on-device program."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jaxtyping import PRNGKeyArray

from ..._cache import array_digest, cache_key
from ..._io import writer
from ..._progress import bar as progress_bar
from ..losses import clip_loss
from ..models import DualEncoder, make_model
from ..parallel import Mesh, batch_spec, constrain, place, replicate
from .checkpoints import load_run, save_run
from .config import PretrainConfig, learning_rate
from .loop import SAMPLER, check_finite, chunk_ranges, stepwise, subset
from .step import accumulated_value_and_grad, in_compute_dtype


@eqx.filter_jit
def _pretrain_step(model, opt_state, images, tokens, labels, optimizer, accumulate: int = 1,
                   compute_dtype: str = "float32"):
    def loss(m, batch):
        m = in_compute_dtype(m, compute_dtype)
        images, tokens, labels = batch
        images = images.astype(compute_dtype)
        value = clip_loss(m.embed_images(images), m.embed_texts(tokens), m.scale, labels=labels)
        return value.astype(jnp.float32), ()

    (value, _), grads = accumulated_value_and_grad(loss, model, (images, tokens, labels),
                                                   accumulate)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state, value


def _pretrain_batch(images, labels, captions, key, batch_size: int):
    """``batch_size`` images drawn without replacement, each with a random caption of its
    digit: ``(images, tokens, labels)``."""
    k_idx, k_caption = jax.random.split(key)
    idx = subset(k_idx, labels.shape[0], batch_size)
    which = jax.random.randint(k_caption, (batch_size,), 0, captions.shape[1])
    return images[idx], captions[labels[idx], which], labels[idx]


def _pretrain_one(model, opt_state, step, arrays, key, optimizer, config: PretrainConfig,
                  sharding):
    """Pretraining step ``step``: its batch drawn from ``fold_in(key, step)``."""
    batch = _pretrain_batch(*arrays, jax.random.fold_in(key, step), config.batch_size)
    if sharding is not None:
        batch = jax.lax.with_sharding_constraint(batch, sharding)
    model, opt_state, loss = _pretrain_step(model, opt_state, *batch, optimizer,
                                            config.accumulate, config.compute_dtype)
    if sharding is not None:  # the parameters and optimizer state keep their layout
        model, opt_state = constrain((model, opt_state), sharding.mesh)
    return model, opt_state, loss


@eqx.filter_jit
def _pretrain_chunk(model, opt_state, steps, arrays, key, optimizer, config: PretrainConfig,
                    sharding):
    """``len(steps)`` pretraining steps: one step without a loop where ``stepwise()`` (CPU),
    else a ``lax.scan``; returns the model, the optimizer state and the losses."""
    if stepwise():
        model, opt_state, loss = _pretrain_one(model, opt_state, steps[0], arrays, key,
                                               optimizer, config, sharding)
        return model, opt_state, loss[None]
    carry, static = eqx.partition((model, opt_state), eqx.is_array)

    def body(carry, step):
        model, opt_state = eqx.combine(carry, static)
        model, opt_state, loss = _pretrain_one(model, opt_state, step, arrays, key, optimizer,
                                               config, sharding)
        return eqx.filter((model, opt_state), eqx.is_array), loss

    carry, losses = jax.lax.scan(body, carry, steps)
    model, opt_state = eqx.combine(carry, static)
    return model, opt_state, losses


def pretrain(images: np.ndarray, labels: np.ndarray, captions: np.ndarray,
             config: PretrainConfig, *, key: PRNGKeyArray, seed: int,
             progress: str | None = None, mesh: Mesh | None = None,
             checkpoint: str | Path | None = None, chunk: int = 100,
             overwrite: bool = False) -> DualEncoder:
    """Contrastive pretraining of a fresh ``config.model`` on ``images`` (N, 3, H, W), as a
    scanned on-device program over chunks of ``chunk`` steps (one step per program on CPU, see
    ``loop.stepwise``; batches drawn with ``jax.random``
    from ``fold_in(key(seed), step)``, so any chunk size gives the same model).

    ``captions`` (10, P, L): caption tokens per digit; each image gets a random one per step.
    ``mesh``: a device mesh (``parallel.data_mesh`` or ``device_mesh``) over whose devices each
    batch is split; the model and optimizer state are replicated or, over an ``"fsdp"`` axis,
    sharded (``parallel.place``). ``checkpoint``: where to save/resume the run every
    ``config.checkpoint_every`` steps (the model and the optimizer state), keyed by every
    argument the result depends on: a checkpoint of another run is a ``ResumeMismatch`` and a
    damaged one a ``DamagedArtifact`` (``overwrite``: start afresh instead). A non-finite loss
    stops the run at once with a ``Diverged`` naming the step.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1:
        raise ValueError(f"chunk must be a positive number of steps, got {chunk!r}")
    model = make_model(config.model, key=key, width=config.width, dim=config.dim)
    optimizer = _pretrain_optimizer(config)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    start = 0
    run_key = cache_key({"run": "pretraining", "config": dataclasses.asdict(config),
                         "seed": seed, "key": array_digest(key),
                         "data": array_digest((images, labels, captions)), "sampler": SAMPLER})
    if checkpoint is not None:
        resumed = load_run(checkpoint, (model, opt_state), run_key, overwrite=overwrite)
        if resumed is not None:
            (model, opt_state), start, _ = resumed
    arrays = (jnp.asarray(images), jnp.asarray(labels, jnp.int32), jnp.asarray(captions))
    sharding = None
    if mesh is not None:
        (model, opt_state), arrays = place((model, opt_state), mesh), replicate(arrays, mesh)
        sharding = NamedSharding(mesh, batch_spec(mesh))
    every = config.checkpoint_every if checkpoint is not None else 0
    stops = range(every, config.steps, every) if every else ()
    seed_key = jax.random.key(seed)
    with progress_bar(total=config.steps, initial=start, desc=progress, leave=False,
              disable=progress is None or not writer()) as bar:
        pending: list = []  # losses not yet checked (one transfer per chunk or checkpoint)
        for lo, hi in chunk_ranges(start, config.steps, 1 if stepwise() else chunk, stops):
            model, opt_state, losses = _pretrain_chunk(
                model, opt_state, jnp.arange(lo + 1, hi + 1, dtype=jnp.int32), arrays,
                seed_key, optimizer, config, sharding)
            pending.append(losses)
            due = every and (hi % every == 0 or hi == config.steps)
            checked = hi - sum(len(x) for x in pending)  # steps before the pending losses
            if due or hi == config.steps or hi - checked >= chunk:
                check_finite(jnp.concatenate(pending), checked, model,
                             f"pretraining (seed {seed})",
                             f"lr = {config.lr:g}, weight_decay = {config.weight_decay:g}")
                pending = []
            if due:
                save_run(checkpoint, (model, opt_state), hi, run_key)
            bar.update(hi - lo)
    return model


@functools.lru_cache(maxsize=16)
def _pretrain_optimizer(config: PretrainConfig) -> optax.GradientTransformation:
    """AdamW of a pretraining config, one object per config so the jitted step compiles once."""
    return optax.adamw(learning_rate(config, config.lr), weight_decay=config.weight_decay)
