"""The forgetting experiment on a transformer CLIP, and the linear theory against it.

``run_clip`` is the toy experiment (``experiment.run_toy``: same data, strategies, losses,
schedules, metrics, resumable per-run JSON and checkpoints) with a ViT + text-transformer CLIP
preset in place of the toy CNN, trained with AdamW under warm-up + cosine schedules, data
parallel over a device mesh. It then runs a λ grid and compares the closed forms with the
measured forgetting (``theory_vs_measured``):

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
import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from tqdm.auto import tqdm

from .._io import write_json_atomic
from ..dynamics.schedules import ema_teacher, wma_teacher
from ..dynamics.spectral import TeacherSD, stability_bound
from ..linear.closed_forms import solve
from ..linear.problem import LinearProblem
from ..linear.spectrum import spectrum
from ..linear.strategies import L2SP, DirectFT, StaticSD, Strategy, WeightDecay
from .experiment import ToyConfig, ToyData, _pretrained, evaluate, run_toy, strategy_config
from .parallel import Mesh
from .train import SD_STRATEGIES, FinetuneConfig, Finetunee, PretrainConfig, finetune

#: The strategy × λ grid of the comparison, beyond each strategy's default λ (the config field
#: that holds it, and the extra values run).
LAMBDA_GRID: dict[str, tuple[str, tuple[float, ...]]] = {
    "l2sp": ("l2_lam", (1.0, 100.0)),
    "static_sd": ("lam", (0.3, 3.0)),
    "wma_sd": ("lam", (0.3, 3.0)),
}
#: Strategies with a linear counterpart (THEORY §3–§4).
LINEAR = ("direct", "l2sp", "weight_decay", "static_sd", "ema_sd", "wma_sd")


def clip_config(preset: str = "tiny", *, seeds: tuple[int, ...] = (0, 1), mnist: str | None = None,
                objective: str = "head", quick: bool = False,
                compute_dtype: str = "float32", accumulate: int = 1) -> ToyConfig:
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
    return ToyConfig(protocol="fair", objective=objective, seeds=seeds, mnist=mnist,
                     pretrain=pretrain, finetune=finetune, quick=quick)


def linear_problem(pretrained: Finetunee, data: ToyData, n: int = 500) -> LinearProblem:
    """The linearization at ``pretrained`` on ``n`` finetuning images (float64; call inside
    ``jax.enable_x64(True)``): ``X_I`` (width, n), ``X_T`` (text_width, n), ``W⁰``, ``W_T⁰``."""
    clip = pretrained.clip
    images = jnp.asarray(data.color_train[:n])
    labels = data.train_labels[:n]
    feats = np.asarray(clip.image_features(images), np.float64).T
    text = np.asarray(jax.vmap(clip.text)(jnp.asarray(data.captions[labels, 0])), np.float64).T
    scale = 1 / np.sqrt(feats.shape[1])
    return LinearProblem(feats * scale, text * scale, np.asarray(clip.image_proj.weight,
                                                                 np.float64),
                         np.asarray(clip.text_proj.weight, np.float64), contrast="centered")


def linear_strategy(problem: LinearProblem, config: FinetuneConfig) -> Strategy:
    """The linear counterpart of a finetuning config (same λ, steps and teacher schedule)."""
    if config.strategy == "direct":
        return DirectFT()
    if config.strategy == "l2sp":
        return L2SP(config.l2_lam)
    if config.strategy == "weight_decay":
        return WeightDecay(config.wd_lam)
    if config.strategy == "static_sd":
        return StaticSD(config.lam)
    if config.strategy in ("ema_sd", "wma_sd"):
        sigma_max_sq = spectrum(problem).sigma_sq[0]
        lr = 0.5 * float(stability_bound(sigma_max_sq, config.lam))
        schedule = (ema_teacher(config.momentum) if config.strategy == "ema_sd"
                    else wma_teacher(config.steps))
        return TeacherSD(config.lam, schedule, steps=config.steps, lr=lr)
    raise ValueError(f"strategy {config.strategy!r} has no linear counterpart; one of {LINEAR}")


class ZeroShotProbe(NamedTuple):
    """What the predicted forgetting needs from the pretrained model, computed once per seed:
    the gray test images' features (N, width) and the class embeddings (10, dim), float64."""

    features: np.ndarray
    class_emb: np.ndarray
    labels: np.ndarray

    @classmethod
    def of(cls, pretrained: Finetunee, data: ToyData) -> ZeroShotProbe:
        clip = pretrained.clip
        features = np.concatenate([np.asarray(clip.image_features(jnp.asarray(
            data.gray_test[i:i + 500])), np.float64) for i in range(0, len(data.gray_test), 500)])
        class_emb = np.asarray(clip.class_embeddings(jnp.asarray(data.captions)), np.float64)
        return cls(features, class_emb, data.test_labels)

    def logits(self, w: np.ndarray) -> np.ndarray:
        """Cosine zero-shot logits (N, 10) with the image projection ``w`` (dim, width)."""
        emb = self.features @ np.asarray(w).T
        return emb / np.linalg.norm(emb, axis=1, keepdims=True) @ self.class_emb.T


def predicted_forgetting(probe: ZeroShotProbe, w0: np.ndarray, w: np.ndarray
                         ) -> dict[str, float]:
    """Zero-shot gray-test accuracy drop (points) and relative logit change when the image
    projection ``w0`` becomes ``w`` with the pretrained features held fixed."""
    before, after = probe.logits(w0), probe.logits(w)
    acc = [100 * float(np.mean(np.argmax(x, 1) == probe.labels)) for x in (before, after)]
    return {"predicted_forgetting": acc[0] - acc[1],
            "predicted_logit_change": float(np.linalg.norm(after - before)
                                            / np.linalg.norm(before))}


def _grid(config: ToyConfig) -> list[tuple[str, str, float]]:
    """(strategy, λ field, λ) of every point of the comparison: defaults, then the grid."""
    points = [(s, *_lam_of(config.finetune, s)) for s in LINEAR]
    for strategy, (field, values) in LAMBDA_GRID.items():
        points += [(strategy, field, v) for v in values]
    return points


def _lam_of(config: FinetuneConfig, strategy: str) -> tuple[str, float]:
    field = {"l2sp": "l2_lam", "weight_decay": "wd_lam"}.get(
        strategy, "lam" if strategy in SD_STRATEGIES else "")
    return field, float(getattr(config, field)) if field else 0.0


def run_clip(config: ToyConfig, out_dir: str | Path = "results/clip", *, progress: bool = True,
             mesh: Mesh | None = None) -> dict[str, Any]:
    """Every strategy on the CLIP preset (``run_toy``), the λ grid, and the comparison with
    the linear theory; returns the payload and writes ``<out_dir>/<name>.json``."""
    out_dir = Path(out_dir)
    data = ToyData(config)
    payload = run_toy(config, out_dir, progress=progress, mesh=mesh, data=data)
    run_dir = out_dir / config.name
    rows = []
    for seed in config.seeds:
        pretrained = _pretrained(config, data, out_dir, seed, progress, mesh)
        with jax.enable_x64(True):
            problem = linear_problem(pretrained, data)
        probe = ZeroShotProbe.of(pretrained, data)
        class_emb = pretrained.clip.class_embeddings(jnp.asarray(data.captions))
        for strategy, field, lam in tqdm(_grid(config), desc=f"theory seed {seed}",
                                         leave=False, disable=not progress):
            main = strategy_config(config, strategy, len(data.train_labels))
            ft = dataclasses.replace(main, **{field: lam}) if field else main
            measured = _measured(payload, run_dir, ft, ft == main, seed, field, lam,
                                 pretrained, data, class_emb, progress, mesh)
            with jax.enable_x64(True):
                w = np.asarray(solve(problem, linear_strategy(problem, ft)))
                predicted = predicted_forgetting(probe, np.asarray(problem.w0), w)
            rows.append({"seed": seed, "strategy": strategy, "lam_field": field, "lam": lam,
                         "measured_forgetting": measured, **predicted})
    payload["theory"] = compare(rows)
    write_json_atomic(out_dir / f"{config.name}.json", payload)
    return payload


def _measured(payload, run_dir: Path, ft: FinetuneConfig, main: bool, seed: int, field: str,
              lam: float, pretrained, data, class_emb, progress, mesh) -> float:
    """Measured forgetting of one grid point: from the main run when ``ft`` is its config
    (``main``), else from the point's own (resumable) run."""
    if main:
        return float(payload["runs"][ft.strategy][str(seed)]["forgetting"])
    path = run_dir / f"seed{seed}_{ft.strategy}_{field}={lam:g}.json"
    if path.exists():
        return float(json.loads(path.read_text())["forgetting"])
    hybrid = (data.gray_train, data.captions[data.train_labels, 0], data.train_labels)
    model, _ = finetune(pretrained, data.color_train, data.train_labels, ft,
                        class_emb=class_emb, probe=data.color_val[:256], hybrid=hybrid,
                        seed=seed, mesh=mesh,
                        progress=f"seed {seed} {ft.strategy} {field}={lam:g}" if progress
                        else None)
    before = payload["pretrained"][str(seed)]["gray_acc"]
    after = evaluate(model, data, ft.objective)
    record = {"config": dataclasses.asdict(ft), **after, "forgetting": before - after["gray_acc"]}
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

    def rho(key):
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
