"""Protocols: how an experiment builds each strategy's (strategy, training config) pair.

* ``Fair()``: the same optimizer, budget and data for every strategy, the registry's
  validation-chosen hyperparameters and a true WMA teacher (the default);
* ``Paper()``: the original toy's recipe as THEORY §6 documents it: AdamW 1e-4, weight decay
  0.1, per-method epoch budgets, KL distillation toward the never-trained head, and EMA 0.99999
  as the "dynamic" teacher.

A protocol is a value: ``Fair(strategies=(("mine", MyStrategy()),))`` runs a user's own
strategies through the whole experiment unchanged.
"""

from __future__ import annotations

import dataclasses

from ..finetune.config import FinetuneConfig
from ..finetune.strategies import (
    EMA,
    L2SP,
    Direct,
    KLDistill,
    SelfDistill,
    Static,
    Strategy,
    registered,
)

Plan = tuple[tuple[str, Strategy], ...]


@dataclasses.dataclass(frozen=True)
class Protocol:
    """Base: a ``name`` (results are filed under it) and the strategies it runs."""

    name: str = ""

    def plan(self, base: FinetuneConfig, n_train: int, quick: bool
             ) -> dict[str, tuple[Strategy, FinetuneConfig]]:
        """``{name: (strategy, training config)}`` for every strategy, built from the
        experiment's ``base`` config, the training-set size and the ``quick`` flag."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Fair(Protocol):
    """Every strategy under ``base`` unchanged; ``strategies`` defaults to the registry."""

    name: str = "fair"
    strategies: Plan | None = None

    def plan(self, base, n_train, quick):
        strategies = dict(self.strategies) if self.strategies else registered()
        return {name: (strategy, base) for name, strategy in strategies.items()}


#: The original toy's strategies and epoch budgets (THEORY §6).
PAPER_EPOCHS = {"direct": 20, "l2sp": 2, "static_sd": 10, "ema_sd": 10}
PAPER_STRATEGIES: dict[str, Strategy] = {
    "direct": Direct(),
    "l2sp": L2SP(1e-3, penalize_head=True),
    "static_sd": SelfDistill(2.0, Static(), KLDistill(0.2)),
    "ema_sd": SelfDistill(2.0, EMA(0.99999), KLDistill(1.1)),
}


@dataclasses.dataclass(frozen=True)
class Paper(Protocol):
    """The original toy's recipe: AdamW 1e-4, weight decay 0.1, ``PAPER_EPOCHS`` epochs each
    (one epoch, at the base budget, when ``quick``)."""

    name: str = "paper"

    def plan(self, base, n_train, quick):
        steps_per_epoch = max(1, n_train // base.batch_size)
        return {name: (strategy, dataclasses.replace(
                    base, lr=1e-4, weight_decay=0.1,
                    steps=base.steps if quick else PAPER_EPOCHS[name] * steps_per_epoch))
                for name, strategy in PAPER_STRATEGIES.items()}


#: The protocols the CLI knows, by name.
PROTOCOLS: dict[str, Protocol] = {"fair": Fair(), "paper": Paper()}
