"""Hyperparameters chosen on the validation split only (never the test split)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from ..._io import write_json_atomic
from ..finetune.loop import finetune_on
from ..finetune.strategies import Direct, registered
from .evaluation import validation_scores
from .experiment import ExperimentConfig, pretrained_model

#: The shared learning-rate grid, and each λ grid with the registered strategies sharing it.
LR_GRID = (3e-4, 1e-3, 3e-3)
LAMBDA_GRIDS: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "lam": (("static_sd", "ema_sd", "wma_sd"), (0.3, 1.0, 3.0)),
    "l2_lam": (("l2sp",), (0.1, 1.0, 10.0)),
    "wd_lam": (("weight_decay",), (1e-4, 1e-3, 1e-2)),
}


def select_hyperparameters(config: ExperimentConfig, out_dir: str | Path = "results/toy", *,
                           lr_grid: tuple[float, ...] = LR_GRID,
                           lambda_grids: dict[str, tuple[tuple[str, ...], tuple[float, ...]]]
                           = LAMBDA_GRIDS, progress: bool = True) -> dict[str, Any]:
    """Choose the fair protocol's hyperparameters on the validation split (seed = first seed).

    1. ``lr`` for Direct FT by ID validation accuracy, then shared by every strategy;
    2. each λ of ``lambda_grids`` (shared by its group of registered strategies: one λ for
       static/EMA/WMA SD), maximizing the mean of ID and gray validation accuracy summed over
       the group. The test split is never touched. Returns and writes the scores.
    """
    data = config.data()
    seed = config.seeds[0]
    pretrained = pretrained_model(config, data, Path(out_dir), seed, progress)
    class_emb = pretrained.clip.class_embeddings(jnp.asarray(data.captions))
    base = dataclasses.replace(config.finetune, objective=config.objective)

    def score(strategy, lr, what):
        model, _, _ = finetune_on(data.task(), pretrained, strategy,
                                  dataclasses.replace(base, lr=lr), class_emb=class_emb,
                                  prompts=data.captions, seed=seed,
                                  progress=f"select {what}" if progress else None)
        return validation_scores(model, data, config.objective)

    table: dict[str, Any] = {"lr": {v: score(Direct(), v, f"lr={v:g}") for v in lr_grid}}
    lr = max(lr_grid, key=lambda v: table["lr"][v]["id_val_acc"])
    chosen: dict[str, float] = {"lr": lr}
    for key, (names, values) in lambda_grids.items():
        strategies = registered(names)
        table[key] = {v: {n: score(dataclasses.replace(s, lam=v), lr, f"{n} λ={v:g}")
                          for n, s in strategies.items()} for v in values}
        chosen[key] = max(values, key=lambda v, k=key: sum(r["score"]
                                                            for r in table[k][v].values()))
    payload = {"chosen": chosen, "validation": json.loads(json.dumps(table, default=str)),
               "seed": seed, "objective": config.objective, "data": data.source,
               "criterion": "lr: ID val accuracy of Direct FT; λs: mean of ID val accuracy and "
                            "gray zero-shot val accuracy, summed over the strategies sharing it"}
    write_json_atomic(Path(out_dir) / f"selection_{config.objective}.json", payload)
    return payload
