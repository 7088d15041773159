"""The training hyperparameters of a finetuning or pretraining run: small frozen, hashable
values (static under ``jit``). What sets a strategy apart lives in the strategy
(``strategies.py``), not here."""

from __future__ import annotations

import dataclasses
from typing import Literal

import optax

from ..models import CLIPPreset, preset
from .finetunee import Objective


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """One finetuning run's training: objective, budget, optimizer and numerics.

    ``objective``: ``"head"`` (cross-entropy through a new linear classifier) or ``"prompts"``
    (through the frozen prompt embeddings); AdamW at ``lr`` with decoupled ``weight_decay``,
    linear warm-up over ``warmup_steps`` and optional cosine decay; ``accumulate`` micro-batches
    per step; ``compute_dtype`` for the forward and backward passes (parameters stay float32);
    the teacher–student gap is logged every ``log_every`` steps.
    """

    # lr: chosen on the validation split by `tracer-theory toy --select` (head objective, seed 0;
    # experiments/toy_selection_head.json), shared by every strategy.
    objective: Objective = "head"
    steps: int = 100
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.0
    log_every: int = 10
    warmup_steps: int = 0
    cosine: bool = False
    accumulate: int = 1
    compute_dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        if self.objective not in ("head", "prompts"):
            raise ValueError(f"objective must be 'head' or 'prompts', got {self.objective!r}")
        _check_training(self)
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Contrastive pretraining on gray digits with random training-template captions.

    ``model`` is ``"toy"`` (``ToyCLIP`` of ``width``/``dim``) or a CLIP preset name
    (``tracer_theory.deep.models.PRESETS``: ``"tiny"``, ``"small"``, ``"base"``) or a
    ``CLIPPreset``, whose sizes come from the preset. ``checkpoint_every`` > 0 saves the run
    every that many steps, so an interrupted pretraining resumes where it stopped and ends
    bit-identical.
    """

    steps: int = 600
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    width: int = 128
    dim: int = 64
    model: str | CLIPPreset = "toy"
    warmup_steps: int = 0
    cosine: bool = False
    accumulate: int = 1
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        _check_training(self)
        if self.model != "toy":
            preset(self.model)  # ValueError naming the unknown preset


def _check_training(config: FinetuneConfig | PretrainConfig) -> None:
    """Checks shared by both configs: schedule, accumulation and compute dtype."""
    if config.warmup_steps < 0 or config.warmup_steps > config.steps:
        raise ValueError(f"warmup_steps must be in [0, steps = {config.steps}], "
                         f"got {config.warmup_steps}")
    if config.accumulate < 1 or config.batch_size % config.accumulate:
        raise ValueError(f"accumulate must be >= 1 and divide batch_size = {config.batch_size}, "
                         f"got {config.accumulate}")
    if config.compute_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', "
                         f"got {config.compute_dtype!r}")


def learning_rate(config: FinetuneConfig | PretrainConfig, lr: float) -> optax.ScalarOrSchedule:
    """``lr``, or linear warm-up over ``warmup_steps`` then cosine decay to 0 (``cosine``)."""
    if config.cosine:
        return optax.warmup_cosine_decay_schedule(0.0, lr, max(config.warmup_steps, 1),
                                                  max(config.steps, config.warmup_steps + 1))
    if config.warmup_steps:
        return optax.linear_schedule(0.0, lr, config.warmup_steps)
    return lr
