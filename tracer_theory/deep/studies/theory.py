"""The linear theory against the measured forgetting, for any model and any strategy that has a
linear counterpart (``Strategy.linear``).

``run_with_theory`` runs the experiment (``experiment.run_experiment``: same data, strategies,
losses, schedules, metrics, resumable per-run JSON and checkpoints), then a λ grid, and compares
the closed forms with the measured forgetting. ``clip_config`` is its configuration for a ViT +
text-transformer CLIP preset (AdamW under warm-up + cosine schedules, data parallel over a
device mesh). The comparison:

linearize at the pretrained model (THEORY §1): ``X_I`` the image features (before
``image_proj``) of the finetuning images, ``W⁰`` the image projection, ``W_T⁰ X_T`` the projected
text features of each image's caption; features and the contrast are scaled so that the fit is a
per-sample mean, like the deep losses, and the deep λs are used as they are. Each strategy's
closed form (or exact finite-horizon teacher dynamics) gives ``W``; the predicted forgetting is
the drop of zero-shot accuracy on the gray test digits when ``W⁰`` is replaced by ``W`` with the
features held at their pretrained values.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from ..._cache import read_record
from ..._io import write_json_atomic
from ..._progress import bar as progress_bar
from ...linear.closed_forms import solve
from ...linear.problem import LinearProblem
from ..finetune.config import FinetuneConfig, PretrainConfig
from ..finetune.finetunee import Finetunee
from ..finetune.loop import finetune_on
from ..finetune.strategies import Strategy
from ..parallel import Mesh
from .arrays import ExperimentData
from .evaluation import evaluate
from .experiment import ExperimentConfig, pretrained_model, run_experiment, run_key

#: The λ grid of the comparison beyond each strategy's default λ, by registered name.
LAMBDA_GRID: dict[str, tuple[float, ...]] = {
    "l2sp": (1.0, 100.0),
    "static_sd": (0.3, 3.0),
    "wma_sd": (0.3, 3.0),
}


def clip_config(preset: str = "tiny", *, seeds: tuple[int, ...] = (0, 1), mnist: str | None = None,
                objective: str = "head", quick: bool = False,
                compute_dtype: str = "float32", accumulate: int = 1) -> ExperimentConfig:
    """The experiment's configuration for a CLIP ``preset``: pretraining 300 steps (AdamW 1e-3,
    30 warm-up steps, cosine), finetuning with the toy's validation-chosen values (lr 3e-3 and
    the λs) under 10 warm-up steps and cosine decay. ``quick`` shrinks everything for tests."""
    pretrain = PretrainConfig(model=preset, steps=20 if quick else 300,
                              batch_size=32 if quick else 128, lr=1e-3,
                              warmup_steps=2 if quick else 30, cosine=True,
                              checkpoint_every=10 if quick else 50,
                              compute_dtype=compute_dtype, accumulate=accumulate)
    finetune = FinetuneConfig(steps=4 if quick else 100, batch_size=32 if quick else 128,
                              warmup_steps=1 if quick else 10, cosine=True,
                              log_every=2 if quick else 10, compute_dtype=compute_dtype,
                              accumulate=accumulate)
    return ExperimentConfig(objective=objective, seeds=seeds, mnist=mnist, pretrain=pretrain,
                            finetune=finetune, quick=quick)


def linear_problem(pretrained: Finetunee, data: ExperimentData, n: int = 500,
                   labels: np.ndarray | None = None, n_pre: int | None = None) -> LinearProblem:
    """The linearization at ``pretrained`` on ``n`` finetuning images of the toy experiment
    (``linearize`` of ``data.sample(n)``, captions the first template of each image's label).
    ``labels``: the training labels the captions follow (default ``data.train_labels``; noisy
    ones for a label-noise study). ``n_pre``: also ``X_pre`` of a class-balanced sample of
    ``n_pre`` gray pretraining images (THEORY §7)."""
    index = data.sample(n)
    labels = (data.train_labels if labels is None else np.asarray(labels))[index]
    pre = None if n_pre is None else data.gray_train[data.sample(n_pre)]
    return linearize(pretrained, data.color_train[index], data.captions[labels, 0], pre)


def linearize(pretrained: Finetunee, images: np.ndarray, captions: np.ndarray,
              pre_images: np.ndarray | None = None) -> LinearProblem:
    """The linearization at ``pretrained`` (float64; call inside ``jax.enable_x64(True)``) on
    finetuning ``images`` (n, C, H, W) with caption tokens ``captions`` (n, L): ``X_I``
    (width, n), ``X_T`` (text_width, n), ``W⁰``, ``W_T⁰``, scaled so that the fit is a
    per-sample mean; ``pre_images``: also ``X_pre`` of those pretraining-like images, scaled
    likewise (``forgetting`` a per-image mean)."""
    clip = pretrained.clip
    feats = np.asarray(_features(clip, images), np.float64).T
    text = np.asarray(jax.vmap(clip.text)(jnp.asarray(captions)), np.float64).T
    scale = 1 / np.sqrt(feats.shape[1])
    x_pre = None
    if pre_images is not None:
        x_pre = np.asarray(_features(clip, pre_images), np.float64).T / np.sqrt(len(pre_images))
    return LinearProblem(feats * scale, text * scale, np.asarray(clip.image_proj.weight,
                                                                 np.float64),
                         np.asarray(clip.text_proj.weight, np.float64), contrast="centered",
                         x_pre=x_pre)


def _features(clip, images, chunk: int = 500) -> np.ndarray:
    """Image features (n, width) of ``images`` (an array or images on disk), in chunks."""
    return np.concatenate([np.asarray(clip.image_features(jnp.asarray(images[i:i + chunk])))
                           for i in range(0, len(images), chunk)])


class ZeroShotProbe(NamedTuple):
    """What the predicted forgetting needs from the pretrained model, computed once per seed:
    the gray test images' features (N, width) and the class embeddings (10, dim), float64."""

    features: np.ndarray
    class_emb: np.ndarray
    labels: np.ndarray

    @classmethod
    def of(cls, pretrained: Finetunee, data: ExperimentData) -> ZeroShotProbe:
        """On the gray test digits, with the training-template class embeddings."""
        return cls.on(pretrained, data.gray_test, data.test_labels, data.captions)

    @classmethod
    def on(cls, pretrained: Finetunee, images: np.ndarray, labels: np.ndarray,
           prompts: np.ndarray) -> ZeroShotProbe:
        """On ``images`` (N, C, H, W; an array or images on disk) with ``labels`` (N,) indexing
        the classes of ``prompts`` (K, P, L)."""
        clip = pretrained.clip
        class_emb = np.asarray(clip.class_embeddings(jnp.asarray(prompts)), np.float64)
        return cls(np.asarray(_features(clip, images), np.float64), class_emb,
                   np.asarray(labels))

    def logits(self, w: np.ndarray) -> np.ndarray:
        """Cosine zero-shot logits (N, 10) with the image projection ``w`` (dim, width)."""
        return self.cosine(self.features @ np.asarray(w).T)

    def cosine(self, embeddings: np.ndarray) -> np.ndarray:
        """Cosine zero-shot logits (N, 10) of image ``embeddings`` (N, dim)."""
        emb = np.asarray(embeddings)
        return emb / np.linalg.norm(emb, axis=1, keepdims=True) @ self.class_emb.T


def zero_shot_change(labels: np.ndarray, before: np.ndarray, after: np.ndarray
                     ) -> tuple[float, float]:
    """``(accuracy drop in points, relative Frobenius change)`` from zero-shot logits
    ``before`` to ``after`` (N, C) on images with ``labels`` (N,)."""
    acc = [100 * float(np.mean(np.argmax(x, 1) == labels)) for x in (before, after)]
    return acc[0] - acc[1], float(np.linalg.norm(after - before) / np.linalg.norm(before))


def predicted_forgetting(probe: ZeroShotProbe, w0: np.ndarray, w: np.ndarray
                         ) -> dict[str, float]:
    """Zero-shot gray-test accuracy drop (points) and relative logit change when the image
    projection ``w0`` becomes ``w`` with the pretrained features held fixed."""
    drop, change = zero_shot_change(probe.labels, probe.logits(w0), probe.logits(w))
    return {"predicted_forgetting": drop, "predicted_logit_change": change}


def _grid(config: ExperimentConfig, n_train: int
          ) -> list[tuple[str, Strategy, FinetuneConfig, bool]]:
    """(name, strategy, training config, is the main run) of every point of the comparison:
    the protocol's strategies, then the λ grid (``LAMBDA_GRID``)."""
    plan = config.plan(n_train)
    points = [(name, strategy, ft, True) for name, (strategy, ft) in plan.items()]
    for name, values in LAMBDA_GRID.items():
        if name in plan:
            strategy, ft = plan[name]
            points += [(name, dataclasses.replace(strategy, lam=v), ft, False) for v in values]
    return points


def _lam(strategy: Strategy) -> tuple[str, float]:
    """("lam", λ) of a strategy with a λ, else ("", 0)."""
    return ("lam", float(strategy.lam)) if hasattr(strategy, "lam") else ("", 0.0)


def run_with_theory(config: ExperimentConfig, out_dir: str | Path = "results/clip", *,
                    progress: bool = True, mesh: Mesh | None = None,
                    overwrite: bool = False) -> dict[str, Any]:
    """Every strategy of the experiment (``run_experiment``), the λ grid, and the comparison
    with the linear theory (strategies without a linear counterpart are left out of it);
    returns the payload and writes ``<out_dir>/<name>.json`` with the comparison under
    ``"theory"``."""
    out_dir = Path(out_dir)
    data = config.data()
    payload = run_experiment(config, out_dir, progress=progress, mesh=mesh, data=data,
                             overwrite=overwrite)
    run_dir = out_dir / config.name
    rows = []
    for seed in config.seeds:
        pretrained = pretrained_model(config, data, out_dir, seed, progress, mesh)
        with jax.enable_x64(True):
            problem = linear_problem(pretrained, data)
        probe = ZeroShotProbe.of(pretrained, data)
        class_emb = pretrained.clip.class_embeddings(jnp.asarray(data.captions))
        for name, strategy, ft, main in progress_bar(_grid(config, len(data.train_labels)),
                                             desc=f"theory seed {seed}", leave=False,
                                             disable=not progress):
            try:
                linear = strategy.linear(problem, ft.steps)
            except ValueError:  # no linear counterpart (LP-FT, data hybrid, ...): not compared
                continue
            field, lam = _lam(strategy)
            if main:
                measured = float(payload["runs"][name][str(seed)]["forgetting"])
            else:
                measured = _measured(payload, run_dir / f"seed{seed}_{name}_lam={lam:g}.json",
                                     run_key(config, data, seed, strategy, ft), name, strategy,
                                     ft, seed, pretrained, data, class_emb, progress, mesh,
                                     overwrite)
            with jax.enable_x64(True):
                w = np.asarray(solve(problem, linear))
                predicted = predicted_forgetting(probe, np.asarray(problem.w0), w)
            rows.append({"seed": seed, "strategy": name, "lam_field": field, "lam": lam,
                         "measured_forgetting": measured, **predicted})
    payload["theory"] = compare(rows)
    write_json_atomic(out_dir / f"{config.name}.json", payload)
    return payload


def _measured(payload, path: Path, key: dict[str, Any], name: str, strategy: Strategy,
              ft: FinetuneConfig, seed: int, pretrained, data: ExperimentData, class_emb,
              progress, mesh, overwrite: bool) -> float:
    """Measured forgetting of one λ-grid point, from its own (resumable) run at ``path``."""
    done = read_record(path, key, overwrite=overwrite, fields=("forgetting",))
    if done is not None:
        return float(done["forgetting"])
    model, _, _ = finetune_on(data.task(), pretrained, strategy, ft, class_emb=class_emb,
                              prompts=data.captions, seed=seed, mesh=mesh,
                        progress=f"seed {seed} {name} λ={strategy.lam:g}" if progress else None)
    before = payload["pretrained"][str(seed)]["gray_acc"]
    after = evaluate(model, data, ft.objective)
    record = {"config": key, **after, "forgetting": before - after["gray_acc"]}
    write_json_atomic(path, record)
    return float(record["forgetting"])


def compare(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed-averaged points and Spearman rank correlations of predicted against measured
    forgetting (accuracy drop) and of the predicted logit change against it."""
    points: dict[tuple, list[dict]] = {}
    for row in rows:
        points.setdefault((row["strategy"], row["lam_field"], row["lam"]), []).append(row)
    table = []
    for (strategy, field, lam), group in points.items():
        table.append({"strategy": strategy, "lam_field": field, "lam": lam,
                      **{k: float(np.mean([g[k] for g in group])) for k in
                         ("measured_forgetting", "predicted_forgetting",
                          "predicted_logit_change")},
                      "seeds": [g["seed"] for g in group]})
    measured = [t["measured_forgetting"] for t in table]

    def rho(key):  # undefined (None) for a constant side, e.g. every strategy forgetting 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)
            value = scipy.stats.spearmanr([t[key] for t in table], measured).statistic
        return None if np.isnan(value) else float(value)

    return {"points": table, "rows": rows,
            "spearman_predicted_forgetting": rho("predicted_forgetting"),
            "spearman_predicted_logit_change": rho("predicted_logit_change")}


def format_comparison(theory: dict[str, Any]) -> str:
    """The comparison as a table, with the rank correlations."""
    lines = [f"{'strategy':14s}{'λ':>12s}{'measured':>11s}{'predicted':>11s}{'Δlogits':>10s}",
             "-" * 58]
    for t in theory["points"]:
        lam = f"{t['lam_field']}={t['lam']:g}" if t["lam_field"] else "—"
        lines.append(f"{t['strategy']:14s}{lam:>12s}{t['measured_forgetting']:11.2f}"
                     f"{t['predicted_forgetting']:11.2f}{t['predicted_logit_change']:10.3f}")

    def fmt(v):
        return "n/a" if v is None else f"{v:+.2f}"

    lines.append(f"Spearman ρ (predicted vs measured forgetting, {len(theory['points'])} points): "
                 f"accuracy drop {fmt(theory['spearman_predicted_forgetting'])}, "
                 f"logit change {fmt(theory['spearman_predicted_logit_change'])}")
    return "\n".join(lines)
