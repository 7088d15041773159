"""The MNIST → ColoredMNIST forgetting experiment (THEORY §6), end to end.

``run_toy(config, out_dir)``: fixed stratified splits; per seed, contrastive pretraining on gray
digits (cached as an equinox checkpoint); every strategy finetuned on ColoredMNIST (p = 0.95)
with its metrics written to one JSON file per (seed, strategy), so an interrupted run resumes
where it stopped; WiSE-FT evaluated post hoc from Direct FT; then the summary (mean ± std over
seeds) written atomically to ``<out_dir>/<name>.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._io import write_json_atomic
from ..dynamics.diagnostics import collapse_diagnostics
from ..dynamics.teacher import mix
from ..linear.spectrum import spectrum_of
from .clip import clip_tokens, preset, resize_images
from .data import colorize, mnist_splits, to_rgb
from .metrics import accuracy, expected_calibration_error
from .model import ToyCLIP
from .parallel import Mesh
from .prompts import HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, prompt_tokens
from .train import (
    SD_STRATEGIES,
    STRATEGIES,
    FinetuneConfig,
    Finetunee,
    PretrainConfig,
    class_logits,
    finetune,
    make_clip,
    pretrain,
)

Protocol = Literal["fair", "paper"]
#: Strategies the original toy ran, under its recipe (THEORY §6).
PAPER_STRATEGIES = ("direct", "l2sp", "static_sd", "ema_sd")
P_TRAIN, P_FLIPPED, P_NEUTRAL = 0.95, 0.05, 0.5


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """One experiment: protocol, objective, seeds, data, budgets. ``quick`` shrinks everything
    for tests (a 1,000-digit subset, tiny budgets, one seed)."""

    protocol: Protocol = "fair"
    objective: Literal["head", "prompts"] = "head"
    seeds: tuple[int, ...] = (0, 1, 2)
    mnist: str | None = None
    pretrain: PretrainConfig = dataclasses.field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    wise_alphas: tuple[float, ...] = (0.25, 0.5, 0.75)
    quick: bool = False

    @property
    def name(self) -> str:
        model = "" if self.pretrain.model == "toy" else f"{preset(self.pretrain.model).name}_"
        return f"{model}{self.protocol}_{self.objective}" + ("_quick" if self.quick else "")

    def strategies(self) -> tuple[str, ...]:
        return PAPER_STRATEGIES if self.protocol == "paper" else STRATEGIES


def quick_config(**overrides: Any) -> ToyConfig:
    """A configuration that runs the whole pipeline in well under a minute."""
    base = dict(seeds=(0,), quick=True, pretrain=PretrainConfig(steps=30, batch_size=64),
                finetune=FinetuneConfig(steps=6, batch_size=64, log_every=3))
    return ToyConfig(**(base | overrides))


#: The toy experiment's three tables, as (protocol, objective).
TOY_PLAN = (("fair", "head"), ("paper", "head"), ("fair", "prompts"))


def toy_configs(plan: Sequence[tuple[str, str]], *, quick: bool, seeds: Sequence[int],
                mnist: str | None = None) -> list[ToyConfig]:
    """One configuration per (protocol, objective) of ``plan``: ``quick_config`` (one seed) or
    the full budgets over ``seeds``."""
    return [quick_config(protocol=p, objective=o, mnist=mnist) if quick
            else ToyConfig(protocol=p, objective=o, mnist=mnist, seeds=tuple(seeds))
            for p, o in plan]


def strategy_config(config: ToyConfig, strategy: str, n_train: int) -> FinetuneConfig:
    """The finetuning config of ``strategy`` under the experiment's protocol."""
    base = config.finetune
    if config.protocol == "fair":
        return dataclasses.replace(base, strategy=strategy, objective=config.objective)
    # The original toy's recipe: AdamW 1e-4, weight decay 0.1, per-method epoch budgets.
    steps_per_epoch = max(1, n_train // base.batch_size)
    epochs = 1 if config.quick else {"direct": 20, "l2sp": 2, "static_sd": 10, "ema_sd": 10}[
        strategy]
    common = dict(strategy=strategy, objective=config.objective, lr=1e-4, weight_decay=0.1,
                  steps=epochs * steps_per_epoch if not config.quick else base.steps)
    extra = {"l2sp": dict(l2_lam=1e-3, penalize_head=True),
             "static_sd": dict(lam=2.0, distill="kl", temperature=0.2),
             "ema_sd": dict(lam=2.0, distill="kl", temperature=1.1, momentum=0.99999)}
    return dataclasses.replace(base, **common, **extra.get(strategy, {}))


class ToyData:
    """Every array the experiment needs, built once from the fixed splits (split seed 0)."""

    def __init__(self, config: ToyConfig):
        splits = mnist_splits(config.mnist, seed=0)
        if config.quick:
            splits = {k: _subset(v, {"train": 600, "val": 200, "test": 200}[k])
                      for k, v in splits.items()}
        self.source = splits["train"].source
        train, val, test = splits["train"], splits["val"], splits["test"]
        self.train_labels, self.val_labels, self.test_labels = (
            np.asarray(s.labels) for s in (train, val, test))
        self.gray_train, self.gray_val, self.gray_test = (to_rgb(s.images)
                                                          for s in (train, val, test))
        self.color_train = colorize(train.images, train.labels, P_TRAIN, seed=1)[0]
        self.color_val = colorize(val.images, val.labels, P_TRAIN, seed=2)[0]
        self.color_test = {p: colorize(test.images, test.labels, p, seed=3)[0]
                           for p in (P_TRAIN, P_FLIPPED, P_NEUTRAL)}
        self.captions = prompt_tokens(TRAIN_TEMPLATES)
        self.held_out = prompt_tokens(HELD_OUT_TEMPLATES)
        if config.pretrain.model != "toy":  # CLIP: end-of-text tokens, the preset's image size
            self.captions, self.held_out = clip_tokens(self.captions), clip_tokens(self.held_out)
            size = preset(config.pretrain.model).image_size
            for name in ("gray_train", "gray_val", "gray_test", "color_train", "color_val"):
                setattr(self, name, resize_images(getattr(self, name), size))
            self.color_test = {p: resize_images(x, size) for p, x in self.color_test.items()}


def _subset(split, n):
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(split.labels), size=min(n, len(split.labels)), replace=False))
    return split._replace(images=split.images[idx], labels=split.labels[idx])


@eqx.filter_jit
def _logits_zero_shot(clip: ToyCLIP, images, class_emb):
    return clip.scale * clip.embed_images(images) @ class_emb.T


@eqx.filter_jit
def _logits_task(model: Finetunee, images, class_emb, objective):
    return class_logits(model, images, class_emb, objective)


def _chunked(fn, images: np.ndarray, size: int = 500) -> np.ndarray:
    return np.concatenate([np.asarray(fn(jnp.asarray(images[i:i + size])))
                           for i in range(0, len(images), size)])


def _scores(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    probs = jax.nn.softmax(jnp.asarray(logits), axis=-1)
    return {"acc": 100 * float(accuracy(jnp.asarray(logits), jnp.asarray(labels))),
            "ece": float(expected_calibration_error(probs, jnp.asarray(labels), n_bins=15))}


def evaluate(model: Finetunee, data: ToyData, objective: str) -> dict[str, float]:
    """Gray zero-shot accuracy/ECE, ColoredMNIST ID and OOD accuracy/ECE through the finetuning
    classifier, and the 2×2 (ID/OOD images × ID/OOD prompts) zero-shot accuracies."""
    clip = model.clip
    emb_train = clip.class_embeddings(jnp.asarray(data.captions))
    emb_held = clip.class_embeddings(jnp.asarray(data.held_out))
    out: dict[str, float] = {}
    gray = _scores(_chunked(lambda x: _logits_zero_shot(clip, x, emb_train), data.gray_test),
                   data.test_labels)
    out["gray_acc"], out["gray_ece"] = gray["acc"], gray["ece"]
    for p, key in ((P_TRAIN, "id"), (P_FLIPPED, "ood_flipped"), (P_NEUTRAL, "ood_neutral")):
        s = _scores(_chunked(lambda x: _logits_task(model, x, emb_train, objective),
                             data.color_test[p]), data.test_labels)
        out[f"{key}_acc"], out[f"{key}_ece"] = s["acc"], s["ece"]
    for img_key, images in (("id_images", data.color_test[P_TRAIN]),
                            ("ood_images", data.gray_test)):
        for prompt_key, emb in (("id_prompts", emb_train), ("ood_prompts", emb_held)):
            logits = _chunked(lambda x, e=emb: _logits_zero_shot(clip, x, e), images)
            out[f"zs_{img_key}_{prompt_key}"] = _scores(logits, data.test_labels)["acc"]
    return out


LAYERS = {"proj": lambda m: m.clip.image_proj.weight, "dense": lambda m: m.clip.image.dense.weight}


def task_bases(pretrained: Finetunee, data: ToyData, n: int = 500) -> dict[str, Array]:
    """Orthonormal bases (d_in, r) of the task subspaces: the span of the pretrained model's
    inputs to the image projection (and, for the toy CNN, to its dense layer) on ``n``
    finetuning images."""
    images = jnp.asarray(data.color_train[:n])
    inputs = [("proj", _chunked(pretrained.clip.image_features, images, 250).T)]  # (width, n)
    if isinstance(pretrained.clip, ToyCLIP):
        conv = jax.vmap(lambda x: jax.nn.relu(pretrained.clip.image.conv2(
            jax.nn.relu(pretrained.clip.image.conv1(x)))).reshape(-1))(images).T  # dense inputs
        inputs.append(("dense", conv))
    bases = {}
    for name, x in inputs:
        spec = spectrum_of(x)
        bases[name] = spec.u[:, np.asarray(spec.mask)]
    return bases


def decomposition(before: Finetunee, after: Finetunee,
                  bases: dict[str, Array]) -> dict[str, float]:
    """Task-subspace vs orthogonal change of the image projection and of the dense layer (the
    deep counterpart of THEORY §3): ``ΔW·P`` and ``ΔW(I − P)`` with ``P = U Uᵀ`` from
    ``task_bases``, as Frobenius norms relative to the pretrained weight."""
    out = {}
    for name, u in bases.items():
        w0, w1 = LAYERS[name](before), LAYERS[name](after)
        delta = w1 - w0
        task = (delta @ u) @ u.T
        scale = jnp.linalg.norm(w0)
        out[f"{name}_task_change"] = float(jnp.linalg.norm(task) / scale)
        out[f"{name}_orthogonal_change"] = float(jnp.linalg.norm(delta - task) / scale)
    return out


def wise_ft(pretrained: Finetunee, finetuned: Finetunee, alpha: float) -> Finetunee:
    """WiSE-FT: ``(1 − α)·θ_pretrained + α·θ_finetuned`` on every floating leaf (the new head
    comes from the finetuned model, as in the WiSE-FT paper's linear-classifier variant)."""
    mixed = mix(pretrained, finetuned, alpha)
    return eqx.tree_at(lambda m: m.head, mixed, finetuned.head)


def _gap_summary(curves: dict[str, np.ndarray]) -> dict[str, Any]:
    steps = np.r_[0, curves["steps"]]
    out: dict[str, Any] = {"curves": {k: np.asarray(v).tolist() for k, v in curves.items()}}
    for key in ("param_distance", "logit_kl"):
        if len(curves[key]) < 1:
            continue
        gap = np.r_[0.0, curves[key]]
        d = collapse_diagnostics(jnp.asarray(gap), jnp.asarray(steps))
        out[key] = {"half_life": float(d.half_life), "normalized_auc": float(d.normalized_auc),
                    "final_over_peak": float(d.final), "final": float(gap[-1])}
    if len(curves["agreement"]):
        out["agreement"] = {"final": float(curves["agreement"][-1])}
    return out


def run_toy(config: ToyConfig, out_dir: str | Path = "results/toy", *,
            progress: bool = True, mesh: Mesh | None = None,
            data: ToyData | None = None) -> dict[str, Any]:
    """Run (or resume) the experiment; returns and writes ``<out_dir>/<name>.json``.

    ``config.pretrain.model`` picks the toy CNN CLIP or a transformer CLIP preset; ``mesh`` (a
    ``parallel.data_mesh``) splits every batch over its devices; ``data`` the experiment's
    arrays when the caller has already built them."""
    out_dir = Path(out_dir)
    run_dir = out_dir / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    data = ToyData(config) if data is None else data
    n_train = len(data.train_labels)
    results: dict[str, Any] = {"pretrained": {}, "runs": {}}
    for seed in config.seeds:
        pretrained = _pretrained(config, data, out_dir, seed, progress, mesh)
        before = evaluate(pretrained, data, config.objective)
        bases = task_bases(pretrained, data)
        results["pretrained"][str(seed)] = before
        class_emb = pretrained.clip.class_embeddings(jnp.asarray(data.captions))
        hybrid = (data.gray_train, data.captions[data.train_labels, 0], data.train_labels)
        probe = data.color_val[:256]
        for strategy in config.strategies():
            path = run_dir / f"seed{seed}_{strategy}.json"
            if path.exists():
                results["runs"].setdefault(strategy, {})[str(seed)] = json.loads(
                    path.read_text())
                continue
            ft_config = strategy_config(config, strategy, n_train)
            model, curves = finetune(pretrained, data.color_train, data.train_labels,
                                     ft_config, class_emb=class_emb, probe=probe,
                                     hybrid=hybrid, seed=seed, mesh=mesh,
                                     progress=f"seed {seed} {strategy}" if progress else None)
            after = evaluate(model, data, config.objective)
            record = {"config": dataclasses.asdict(ft_config), **after,
                      "forgetting": before["gray_acc"] - after["gray_acc"],
                      **decomposition(pretrained, model, bases)}
            if strategy in SD_STRATEGIES:
                record["gap"] = _gap_summary(curves)
            if strategy == "direct":
                for alpha in config.wise_alphas:
                    mixed = evaluate(wise_ft(pretrained, model, alpha), data, config.objective)
                    results["runs"].setdefault(f"wise_ft({alpha:g})", {})[str(seed)] = {
                        **mixed, "forgetting": before["gray_acc"] - mixed["gray_acc"]}
                record["wise_ft"] = {f"{a:g}": results["runs"][f"wise_ft({a:g})"][str(seed)]
                                     for a in config.wise_alphas}
            write_json_atomic(path, record)
            results["runs"].setdefault(strategy, {})[str(seed)] = record
        # WiSE-FT records of a resumed Direct-FT run
        direct = results["runs"].get("direct", {}).get(str(seed), {})
        for alpha, rec in direct.get("wise_ft", {}).items():
            results["runs"].setdefault(f"wise_ft({alpha})", {})[str(seed)] = rec
    summary = summarize(results)
    payload = {"config": _jsonable(dataclasses.asdict(config)), "data": data.source,
               "environment": {"jax": jax.__version__, "backend": jax.default_backend(),
                               "python": platform.python_version(),
                               "machine": platform.machine()},
               **results, "summary": summary}
    write_json_atomic(out_dir / f"{config.name}.json", payload)
    return payload


def summarize(results: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """``{strategy: {metric: [mean, std]}}`` over seeds for every scalar metric."""
    summary: dict[str, dict[str, list[float]]] = {}
    rows = {"pretrained": results["pretrained"], **results["runs"]}
    for strategy, per_seed in rows.items():
        metrics: dict[str, list[float]] = {}
        for record in per_seed.values():
            for key, value in record.items():
                if isinstance(value, int | float):
                    metrics.setdefault(key, []).append(float(value))
        summary[strategy] = {k: [float(np.mean(v)), float(np.std(v))]
                             for k, v in metrics.items()}
    return summary


TABLE_COLUMNS = ("forgetting", "gray_acc", "id_acc", "ood_flipped_acc", "ood_neutral_acc",
                 "gray_ece", "id_ece")


def format_table(payload: dict[str, Any], columns: tuple[str, ...] = TABLE_COLUMNS) -> str:
    """The strategy × metric table, mean ± std over seeds."""
    summary = payload["summary"]
    width = max(len(s) for s in summary) + 2
    head = "strategy".ljust(width) + "".join(c.rjust(17) for c in columns)
    lines = [head, "-" * len(head)]
    for strategy, metrics in summary.items():
        cells = [f"{metrics[c][0]:.2f} ± {metrics[c][1]:.2f}" if c in metrics else "—"
                 for c in columns]
        lines.append(strategy.ljust(width) + "".join(c.rjust(17) for c in cells))
    return "\n".join(lines)


def _pretrain_key(config: ToyConfig) -> str:
    """A short hash of what pretraining depends on, so protocols share one checkpoint per seed."""
    text = json.dumps([dataclasses.asdict(config.pretrain), config.mnist, config.quick])
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _save_atomic(path: Path, tree: Any) -> None:
    tmp = path.with_suffix(".tmp")
    eqx.tree_serialise_leaves(tmp, tree)
    tmp.replace(path)


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


# --- hyperparameters, chosen on the validation split only ----------------------------------------

SELECTION_GRID = {"lr": (3e-4, 1e-3, 3e-3), "lam": (0.3, 1.0, 3.0), "l2_lam": (0.1, 1.0, 10.0),
                  "wd_lam": (1e-4, 1e-3, 1e-2)}


def validation_scores(model: Finetunee, data: ToyData, objective: str) -> dict[str, float]:
    """ID accuracy on the colored validation split (p = 0.95) and gray zero-shot validation
    accuracy, and their mean (the selection score: task performance and retention alike)."""
    emb = model.clip.class_embeddings(jnp.asarray(data.captions))
    task = _chunked(lambda x: _logits_task(model, x, emb, objective), data.color_val)
    gray = _chunked(lambda x: _logits_zero_shot(model.clip, x, emb), data.gray_val)
    id_acc = _scores(task, data.val_labels)["acc"]
    gray_acc = _scores(gray, data.val_labels)["acc"]
    return {"id_val_acc": id_acc, "gray_val_acc": gray_acc, "score": 0.5 * (id_acc + gray_acc)}


def select_hyperparameters(config: ToyConfig, out_dir: str | Path = "results/toy", *,
                           grid: dict[str, tuple[float, ...]] | None = None,
                           progress: bool = True) -> dict[str, Any]:
    """Choose the fair protocol's hyperparameters on the validation split (seed = first seed).

    1. ``lr`` for Direct FT by ID validation accuracy, then shared by every strategy;
    2. ``lam`` shared by static/EMA/WMA SD, ``l2_lam`` for L2-SP and ``wd_lam`` for weight decay,
       each maximizing the mean of ID and gray validation accuracy (summed over the SD variants
       for ``lam``). The test split is never touched. Returns and writes the scores.
    """
    grid = SELECTION_GRID if grid is None else grid
    data = ToyData(config)
    seed = config.seeds[0]
    pretrained = _pretrained(config, data, Path(out_dir), seed, progress)
    class_emb = pretrained.clip.class_embeddings(jnp.asarray(data.captions))
    probe = data.color_val[:256]

    def score(**changes):
        ft = dataclasses.replace(config.finetune, objective=config.objective, **changes)
        model, _ = finetune(pretrained, data.color_train, data.train_labels, ft,
                            class_emb=class_emb, probe=probe, hybrid=None, seed=seed,
                            progress=f"select {changes}" if progress else None)
        return validation_scores(model, data, config.objective)

    table: dict[str, Any] = {"lr": {lr: score(strategy="direct", lr=lr) for lr in grid["lr"]}}
    lr = max(grid["lr"], key=lambda v: table["lr"][v]["id_val_acc"])
    table["lam"] = {lam: {s: score(strategy=s, lr=lr, lam=lam) for s in SD_STRATEGIES}
                    for lam in grid["lam"]}
    table["l2_lam"] = {v: score(strategy="l2sp", lr=lr, l2_lam=v) for v in grid["l2_lam"]}
    table["wd_lam"] = {v: score(strategy="weight_decay", lr=lr, wd_lam=v) for v in grid["wd_lam"]}
    chosen = {"lr": lr,
              "lam": max(grid["lam"], key=lambda v: sum(r["score"]
                                                         for r in table["lam"][v].values())),
              "l2_lam": max(grid["l2_lam"], key=lambda v: table["l2_lam"][v]["score"]),
              "wd_lam": max(grid["wd_lam"], key=lambda v: table["wd_lam"][v]["score"])}
    payload = {"chosen": chosen, "validation": _jsonable(table), "seed": seed,
               "objective": config.objective, "data": data.source,
               "criterion": "lr: ID val accuracy of Direct FT; λs: mean of ID val accuracy and "
                            "gray zero-shot val accuracy"}
    write_json_atomic(Path(out_dir) / f"selection_{config.objective}.json", payload)
    return payload


def _pretrained(config: ToyConfig, data: ToyData, out_dir: Path, seed: int,
                progress: bool, mesh: Mesh | None = None) -> Finetunee:
    """The seed's pretrained model, from its checkpoint or pretrained now and saved (an
    interrupted pretraining resumes from its ``.run`` checkpoint)."""
    key = jax.random.key(seed)
    ckpt = out_dir / f"pretrained_{_pretrain_key(config)}_seed{seed}.eqx"
    clip = make_clip(config.pretrain, key)
    skeleton = Finetunee(clip, eqx.nn.Linear(clip.image_proj.in_features, 10,
                                             dtype=jnp.float32, key=jax.random.fold_in(key, 1)))
    if ckpt.exists():
        return eqx.tree_deserialise_leaves(ckpt, skeleton)
    clip = pretrain(data.gray_train, data.train_labels, data.captions, config.pretrain,
                    key=key, seed=seed, progress=f"pretrain seed {seed}" if progress else None,
                    mesh=mesh, checkpoint=ckpt.with_suffix(".run"))
    pretrained = eqx.tree_at(lambda m: m.clip, skeleton, clip)
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_atomic(ckpt, pretrained)
    ckpt.with_suffix(".run").unlink(missing_ok=True)
    return pretrained
