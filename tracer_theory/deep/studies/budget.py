"""The theory's error budget, rung by rung (THEORY §6.7).

For every seed, objective and strategy with a linear counterpart (and a λ grid), the
forgetting (gray zero-shot accuracy drop, points) and the relative change of the zero-shot
logits on the gray test digits at five rungs:

* ``R0``: the closed form with the last layer linear and the features fixed (the linear
  theory on ``n`` finetuning images, ``theory.linear_problem``);
* ``R0'``: the closed form on the tangent model, the whole image tower linearized
  (``ntk.TangentProblem`` on the same images, its Gram the empirical NTK);
* ``R1``: the last-layer model trained by the deep step (encoder frozen, ``Restricted``);
* ``R2``: the tangent model trained by the deep step (``tangent.linearize``);
* ``R3``: the real network;
* ``R4``: the real network finetuned on the whole finetuning set (what the experiments
  measure).

The closed forms run in float64; R1–R3 train like the experiment (loss, optimizer, steps) on
the same ``n`` images the closed forms see, so that the ladder changes one assumption at a
time. Adjacent rungs attribute the error of the closed form: R0→R1 the loss and the optimizer
at fixed features, R1→R2 (and R0→R0') the features' motion to first order, R2→R3 what first
order misses, R3→R4 the finetuning sample. R2 and R3 also measure how much of their parameter
change lies in the task subspace of the tangent model (the row space of its Jacobian on the
``n`` images).

With the ``head`` objective the task loss is the new head on the features: it never reaches the
projection, so R1 does not move from the pretrained model and is left out (undefined).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import platform
import types
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import scipy.stats
from jaxtyping import Array

from ..._cache import cache_key, check_whole, key_digest, read_record
from ..._io import write_json_atomic
from ..._progress import bar as progress_bar
from ...linear.closed_forms import solve
from ...linear.problem import LinearProblem, contrastive_target
from ...linear.spectrum import spectrum
from ..finetune.finetunee import Batch, Finetunee, image_tower
from ..finetune.loop import TrainingData, finetune
from ..finetune.step import finetune_loss, in_compute_dtype, trainable_mask
from ..finetune.strategies import (
    REGISTRY,
    GradientDescent,
    Restricted,
    Strategy,
    describe,
    has_linear,
)
from ..models import PRESETS, make_model, normalize
from ..models.tangent import Linearized, linearize
from ..ntk import TangentProblem, check_memory
from .arrays import ExperimentData
from .evaluation import chunked, evaluate
from .experiment import (
    ExperimentConfig,
    check_pretrained,
    pretrained_model,
    quick_config,
    run_key,
)
from .theory import LAMBDA_GRID, ZeroShotProbe, clip_config, linear_problem, zero_shot_change


def _has_tangent_closed_form(strategy: Strategy) -> bool:
    """Whether ``strategy`` has a linear counterpart anchored at the pretrained weights (the
    closed forms of R0 and R0' need one)."""
    curvature = types.SimpleNamespace(sigma_max_sq=1.0)  # sets a teacher's step; any will do
    return has_linear(strategy) and strategy.linear(curvature, 1).anchor == "pretrained"


#: The registered strategies a budget can run (``--strategies``).
STRATEGIES = tuple(n for n, e in REGISTRY.items() if _has_tangent_closed_form(e.strategy))
#: The rungs, from the closed form to the real network.
RUNGS = ("R0", "R0'", "R1", "R2", "R3", "R4")
RUNG_LABELS = {"R0": "closed form, last layer", "R0'": "closed form, tangent model",
               "R1": "last layer, trained", "R2": "tangent model, trained",
               "R3": "real network", "R4": "real network, all images"}
#: What each step between rungs changes (R0→R2 where R1 is undefined; R0→R0' beside the
#: ladder).
STEPS = {("R0", "R1"): "the loss and the optimizer (features fixed)",
         ("R1", "R2"): "the features' motion, to first order",
         ("R0", "R2"): "the loss, the optimizer and the features' first-order motion together "
                       "(R1 is undefined)",
         ("R2", "R3"): "what first order misses",
         ("R3", "R4"): "the finetuning sample (n images vs all)",
         ("R0", "R0'"): "the features' motion, in the closed form"}
#: The trained rungs.
TRAINED = ("R1", "R2", "R3", "R4")
#: The control beside the ladder: R2 trained by gradient descent (at half the stability bound
#: of the loss at θ⁰) in place of AdamW, for the registered points: how much of the tangent
#: model's change leaves the task subspace because of Adam.
GD = "R2gd"


@dataclasses.dataclass(frozen=True)
class BudgetConfig:
    """One error budget: the ``model`` (``"toy"`` or a CLIP preset), objectives, seeds, the
    strategies (registered names with a linear counterpart) and their λ grid
    (``theory.LAMBDA_GRID``), ``n`` finetuning images for the closed forms, the eNTK's
    row ``block`` and ``memory_gb`` budget; ``quick`` shrinks everything for tests."""

    model: str = "toy"
    objectives: tuple[str, ...] = ("prompts", "head")
    seeds: tuple[int, ...] = (0, 1, 2)
    strategies: tuple[str, ...] = ("direct", "l2sp", "static_sd", "ema_sd", "wma_sd")
    lambda_grid: bool = True
    n: int = 128
    block: int | None = None
    memory_gb: float = 8.0
    mnist: str | None = None
    quick: bool = False

    def __post_init__(self) -> None:
        if not self.objectives or any(o not in ("head", "prompts") for o in self.objectives):
            raise ValueError(f"--objectives must be 'head' and/or 'prompts', "
                             f"got {list(self.objectives)}")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies:
            raise ValueError(f"--strategies must name registered strategies with a linear "
                             f"counterpart anchored at θ⁰ {list(STRATEGIES)}, got "
                             f"{list(self.strategies) or 'none'}")
        if not self.seeds:
            raise ValueError("--seeds must name at least one seed")
        if self.n < 2:
            raise ValueError(f"--n must be >= 2 images, got {self.n}")
        if self.block is not None and self.block < 1:
            raise ValueError(f"--block must be >= 1, got {self.block}")
        if not self.memory_gb > 0:
            raise ValueError(f"--memory-gb must be > 0, got {self.memory_gb}")
        if self.model != "toy" and self.model not in PRESETS:
            raise ValueError(f"--model must be 'toy' or a CLIP preset {list(PRESETS)}, "
                             f"got {self.model!r}")

    def check_memory(self) -> None:
        """``MemoryBudgetExceeded`` naming ``--memory-gb`` when the float64 eNTK Gram of ``n``
        images will not fit, before any pretraining or training."""
        pretrain = self.experiment(self.objectives[0]).pretrain
        clip = eqx.filter_eval_shape(make_model, pretrain.model, key=jax.random.key(0),
                                     width=pretrain.width, dim=pretrain.dim)
        k = clip.image_proj.weight.shape[0]
        check_memory(self.n, k, np.dtype(np.float64).itemsize, self.memory_gb, "--memory-gb")

    @property
    def name(self) -> str:
        return f"budget_{self.model}" + ("_quick" if self.quick else "")

    def experiment(self, objective: str) -> ExperimentConfig:
        """The experiment whose pretraining, data and training the budget shares."""
        if self.model == "toy":
            if self.quick:
                return quick_config(objective=objective, seeds=self.seeds, mnist=self.mnist)
            return ExperimentConfig(objective=objective, seeds=self.seeds, mnist=self.mnist)
        return clip_config(self.model, seeds=self.seeds, mnist=self.mnist, objective=objective,
                           quick=self.quick)

    def points(self) -> list[tuple[str, Strategy]]:
        """``(label, strategy)`` of every point: each strategy at its registered λ, then the λ
        grid."""
        points = []
        for name in self.strategies:
            strategy = REGISTRY[name].strategy
            points.append((name, strategy))
            if self.lambda_grid:
                points += [(f"{name} λ={v:g}", dataclasses.replace(strategy, lam=v))
                           for v in LAMBDA_GRID.get(name, ())]
        return points

    def describe(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


def quick_budget_config(**overrides: Any) -> BudgetConfig:
    """A budget that runs end to end in well under a minute (toy, quick data)."""
    base = dict(seeds=(0,), strategies=("direct", "static_sd", "wma_sd"), lambda_grid=False,
                n=8, quick=True)
    return BudgetConfig(**(base | overrides))


class _Seed:
    """One seed's closed-form side: the linear problem, the tangent problem (built lazily: its
    Gram is the costly part), the zero-shot probe and its pretrained logits."""

    def __init__(self, config: BudgetConfig, pretrained: Finetunee, data: ExperimentData,
                 progress: str | None, cache: Path | None = None, overwrite: bool = False):
        self.config, self.pretrained, self.data, self.progress = config, pretrained, data, progress
        self.cache, self.overwrite = cache, overwrite
        self.probe = ZeroShotProbe.of(pretrained, data)
        with jax.enable_x64(True):
            self.linear = linear_problem(pretrained, data, config.n)
        self.before = self.probe.logits(np.asarray(self.linear.w0))
        self._tangent: TangentProblem | None = None

    @property
    def tangent(self) -> TangentProblem:
        if self._tangent is None:
            with jax.enable_x64(True):
                tower = in_compute_dtype(image_tower(self.pretrained), "float64")
                images = jnp.asarray(self.data.color_train[self.data.sample(self.config.n)],
                                     jnp.float64)
                self._tangent = TangentProblem.build(
                    tower, images, contrastive_target(self.linear).T, block=self.config.block,
                    memory_gb=self.config.memory_gb, progress=self.progress, cache=self.cache,
                    overwrite=self.overwrite)
        return self._tangent

    def closed_forms(self, strategy: Strategy, steps: int) -> dict[str, dict[str, float]]:
        """R0 and R0' of ``strategy`` over ``steps``."""
        out = {}
        with jax.enable_x64(True):
            w = np.asarray(solve(self.linear, strategy.linear(self.linear, steps)))
            out["R0"] = self._rung(self.probe.logits(w))
            tangent = self.tangent
            delta = tangent.delta(strategy.linear(tangent, steps))
            emb = chunked(lambda x: tangent.embed(tangent.params, x) + tangent.jvp(delta, x),
                          np.asarray(self.data.gray_test, np.float64))
            out["R0'"] = self._rung(self.probe.cosine(emb))
            # measured, not assumed: Jᵀα lies in the row space up to rounding
            out["R0'"]["task_fraction"] = float(tangent.task_fraction(delta))
        return out

    def _rung(self, logits: np.ndarray) -> dict[str, float]:
        drop, change = zero_shot_change(self.probe.labels, self.before, logits)
        return {"forgetting": drop, "logit_change": change}

    def measured(self, model: Finetunee, rung: str) -> dict[str, float]:
        """Forgetting, logit change (and for R2/R3 the task fraction) of a trained model."""
        clip = model.clip
        class_emb = jnp.asarray(self.probe.class_emb, jnp.float32)
        logits = chunked(lambda x: normalize(clip.embed_images(x)) @ class_emb.T,
                         self.data.gray_test)
        out = self._rung(np.asarray(logits, np.float64))
        if rung in ("R2", "R3", GD):  # trained on the n images whose Jacobian spans it
            with jax.enable_x64(True):
                out["task_fraction"] = float(self.tangent.task_fraction(
                    in_compute_dtype(_change(self.pretrained, model), "float64")))
        return out


def _change(pretrained: Finetunee, model: Finetunee):
    """``Δθ`` of the image tower ``(image, image_proj)``, shaped like its floating leaves (a
    linearized encoder's ``θ − θ⁰``)."""
    image, proj = image_tower(model)
    image0, proj0 = eqx.filter(image_tower(pretrained), eqx.is_inexact_array)
    d_image = image.delta if isinstance(image, Linearized) else jax.tree.map(
        jnp.subtract, eqx.filter(image, eqx.is_inexact_array), image0)
    d_proj = jax.tree.map(jnp.subtract, eqx.filter(proj, eqx.is_inexact_array), proj0)
    return d_image, d_proj


def _rungs(objective: str) -> tuple[str, ...]:
    """The trained rungs defined for ``objective`` (see the module docstring for R1)."""
    return TRAINED if objective == "prompts" else ("R2", "R3", "R4")


def _train(rung: str, pretrained: Finetunee, strategy: Strategy, lr_scale: float = 1.0
           ) -> tuple[Finetunee, Strategy]:
    """The model and strategy a trained rung runs (``GD``: gradient descent at the run's
    learning rate times ``lr_scale``)."""
    if rung == "R1":
        return pretrained, Restricted(strategy)
    if rung in ("R2", GD):
        tangent = eqx.tree_at(lambda m: m.clip, pretrained, linearize(pretrained.clip))
        return tangent, GradientDescent(strategy, lr_scale) if rung == GD else strategy
    return pretrained, strategy


def _batch(images: np.ndarray, labels: np.ndarray) -> Batch:
    """All of ``images``/``labels`` as one finetuning batch, with no replay examples."""
    data = TrainingData.of(images, labels)
    return Batch(data.images, data.labels, data.hybrid_images, data.hybrid_tokens,
                 data.hybrid_labels)


def curvature(model: Finetunee, strategy: Strategy, batch: Batch, class_emb: Array,
              objective: str, *, iters: int = 40, seed: int = 0) -> float:
    """``|λ|_max`` of the Hessian of ``strategy``'s finetuning loss (``finetune_loss``, the
    teacher at ``model``) on ``batch``, over the leaves its first phase trains: power iteration
    on Hessian-vector products (``iters`` of them, from a seeded random direction)."""
    params, rest = eqx.partition(model, trainable_mask(model, strategy.phases(1)[0]))
    tower = image_tower(model)

    def loss(p):
        return finetune_loss(eqx.combine(p, rest), batch, strategy, objective, pretrained=model,
                             teacher_tower=tower, class_emb=class_emb,
                             teacher_head=model.head)[0]

    flat, unravel = jax.flatten_util.ravel_pytree(params)

    @jax.jit
    def hvp(v):
        return jax.flatten_util.ravel_pytree(
            jax.jvp(jax.grad(loss), (params,), (unravel(v),))[1])[0]

    v = jax.random.normal(jax.random.key(seed), flat.shape, flat.dtype)
    value = 0.0
    for _ in range(iters):
        v = v / jnp.linalg.norm(v)
        w = hvp(v)
        value, v = float(v @ w), w
    return abs(value)


def run_budget(config: BudgetConfig, out_dir: str | Path = "results/budget", *,
               progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the budget; writes one JSON per (objective, seed, point, rung) and each
    seed's closed forms (and its Gram's eigendecomposition, ``.npz``) under
    ``<out_dir>/<name>/``, and the summary ``<out_dir>/<name>.json`` (returned)."""
    config.check_memory()
    out_dir = Path(out_dir)
    experiments = {objective: config.experiment(objective) for objective in config.objectives}
    first = experiments[config.objectives[0]]  # pretraining, data and steps: the same for all
    data = first.data()
    sample = hashlib.sha256(data.sample(config.n).tobytes()).hexdigest()[:12]
    keys = {seed: cache_key(
        {"data": data.fingerprint, "seed": seed, "n": config.n, "sample": sample,
         "pretrain": dataclasses.asdict(first.pretrain), "steps": first.finetune.steps,
         "points": [describe(s) for _, s in config.points()]}) for seed in config.seeds}
    grams = {seed: out_dir / config.name / f"seed{seed}_gram_{_gram_digest(key)}.npz"
             for seed, key in keys.items()}
    closed = {seed: out_dir / config.name / f"seed{seed}_closed_forms.json"
              for seed in config.seeds}
    # before any work: the closed forms, the Gram caches (whole) and the pretrained models
    theories = {seed: read_record(closed[seed], keys[seed], overwrite=overwrite,
                                  fields=("points", "spectrum")) for seed in config.seeds}
    for path in grams.values():
        if path.exists() and not overwrite:
            check_whole(path)
    check_pretrained(first, data, out_dir, overwrite)
    rows: list[dict[str, Any]] = []
    spectra: dict[str, Any] = {}
    for seed in config.seeds:
        pretrained = pretrained_model(first, data, out_dir, seed, progress, overwrite=overwrite)
        key = keys[seed]
        side = _Seed(config, pretrained, data, f"eNTK Gram seed {seed}" if progress else None,
                     cache=grams[seed], overwrite=overwrite)
        theory = theories[seed] or _closed_forms(side, key, closed[seed], progress)
        spectra[str(seed)] = theory["spectrum"]
        run = _Runs(config, data, seed, pretrained, side, data.sample(config.n), sample,
                    pretrained.clip.class_embeddings(jnp.asarray(data.captions)), out_dir,
                    progress, overwrite)
        for objective in config.objectives:
            for label, strategy in config.points():
                rows.append(run.point(experiments[objective], objective, label, strategy,
                                      theory["points"][label]))
    rows.sort(key=lambda r: config.objectives.index(r["objective"]))  # objective, seed, point
    payload = {"config": config.describe(), "data": data.source,
               "environment": {"jax": jax.__version__, "backend": jax.default_backend(),
                               "python": platform.python_version()},
               "spectra": spectra, "rows": rows, "summary": summarize(rows, config)}
    payload["verdicts"] = verdicts(payload["summary"])
    write_json_atomic(out_dir / f"{config.name}.json", payload)
    return payload


def _gram_digest(key: dict[str, Any]) -> str:
    """A short hash of what the seed's Gram depends on (not the points): its cache's name."""
    return key_digest({k: key[k] for k in ("data", "seed", "n", "sample", "pretrain")})


def _closed_forms(side: _Seed, key: dict[str, Any], path: Path, progress: bool
                  ) -> dict[str, Any]:
    """The seed's R0 and R0' at every point with the Gram's spectrum summary, written to
    ``path`` for ``key``."""
    points = side.config.points()
    theory = {"config": key, "points": {
        label: side.closed_forms(strategy, key["steps"])
        for label, strategy in progress_bar(points, desc=f"closed forms seed {key['seed']}",
                                    leave=False, disable=not progress)}}
    theory["spectrum"] = _spectrum_summary(side.tangent, side.linear)
    write_json_atomic(path, theory)
    return theory


class _Runs(NamedTuple):
    """One seed's trained rungs: what every run of the seed shares."""

    config: BudgetConfig
    data: ExperimentData
    seed: int
    pretrained: Finetunee
    side: _Seed
    index: np.ndarray
    sample: str
    class_emb: Array
    out_dir: Path
    progress: bool
    overwrite: bool

    def point(self, experiment: ExperimentConfig, objective: str, label: str,
              strategy: Strategy, closed: dict[str, Any]) -> dict[str, Any]:
        """The row of one point: its closed forms, then every trained rung (and the
        gradient-descent control at a registered λ), each run or read back."""
        row = {"objective": objective, "seed": self.seed, "point": label,
               "strategy": label.split(" ")[0], "lam": getattr(strategy, "lam", None),
               **{r: dict(v) for r, v in closed.items()}}
        control = (GD,) if label == row["strategy"] else ()
        for rung in (*_rungs(objective), *control):
            record = self.rung(experiment, objective, label, strategy, rung)
            row[rung] = {k: v for k, v in record.items() if k != "config"}
        return row

    def rung(self, experiment: ExperimentConfig, objective: str, label: str,
             strategy: Strategy, rung: str) -> dict[str, Any]:
        """The record of one trained rung: its forgetting, logit change, ID accuracy (and task
        fraction; curvature for the control), read back if it was written for this run."""
        data, seed, pretrained, n = self.data, self.seed, self.pretrained, self.config.n
        ft = dataclasses.replace(experiment.finetune, objective=objective)
        path = (self.out_dir / self.config.name / objective
                / f"seed{seed}_{label.replace(' ', '_')}_{rung}.json")
        index = slice(None) if rung == "R4" else self.index
        training = ft if rung == "R4" else dataclasses.replace(
            ft, batch_size=min(ft.batch_size, n))
        named = strategy if rung == GD else _train(rung, pretrained, strategy)[1]
        key = {**run_key(experiment, data, seed, named, training), "rung": rung,
               "train_images": None if rung == "R4" else [n, self.sample]}
        record = read_record(path, key, overwrite=self.overwrite,
                             fields=("forgetting", "logit_change"))
        if record is not None:
            return record
        images, labels = data.color_train[index], data.train_labels[index]
        class_emb = self.class_emb
        extra, scale = {}, 1.0
        if rung == GD:  # the step: half the stability bound of the loss at θ⁰
            batch = _batch(images, labels)
            extra["curvature"] = curvature(_train("R2", pretrained, strategy)[0], strategy,
                                           batch, class_emb, objective)
            scale = 1 / (extra["curvature"] * training.lr)
        model, used = _train(rung, pretrained, strategy, scale)
        trained = finetune(model, images, labels, used, training, class_emb=class_emb,
                           probe=data.probe(), hybrid=data.hybrid(), seed=seed,
                           progress=(f"{objective} seed {seed} {label} {rung}"
                                     if self.progress else None)).model
        record = {"config": key, **self.side.measured(trained, rung),
                  "id_acc": evaluate(trained, data, objective)["id_acc"], **extra}
        write_json_atomic(path, record)
        return record


def _spectrum_summary(tangent: TangentProblem, linear: LinearProblem) -> dict[str, Any]:
    """How the tangent model's Gram compares with the last layer's: sizes, ranks, top and
    bottom eigenvalues, and the share of the residual in the top 10% of the eigen-directions."""
    sigma = np.asarray(tangent.sigma_sq)
    mask = np.asarray(tangent.mask)
    proj = (np.asarray(tangent.u).T @ np.asarray(tangent.residual)) ** 2
    top = max(1, len(sigma) // 10)
    last = spectrum(linear)
    return {"size": len(sigma), "rank": int(mask.sum()),
            "sigma_sq_max": float(sigma[0]), "sigma_sq_min": float(sigma[mask][-1]),
            "residual_in_top_tenth": float(proj[:top].sum() / proj.sum()),
            "last_layer_sigma_sq_max": float(last.sigma_sq[0]),
            "last_layer_rank": int(np.asarray(last.mask).sum())}


def summarize(rows: list[dict[str, Any]], config: BudgetConfig) -> dict[str, Any]:
    """Per objective and point: every rung's mean ± std over seeds; and per objective the mean
    absolute error of each rung against the measurement R4, the mean absolute move of each step,
    and each rung's Spearman correlation with R4 over the points."""
    out: dict[str, Any] = {}
    for objective in config.objectives:
        mine = [r for r in rows if r["objective"] == objective]
        labels = list(dict.fromkeys(r["point"] for r in mine))
        rungs = [r for r in RUNGS if r not in TRAINED or r in _rungs(objective)]
        points = {}
        for label in labels:
            group = [r for r in mine if r["point"] == label]
            points[label] = {"strategy": group[0]["strategy"], "lam": group[0]["lam"],
                             "seeds": [g["seed"] for g in group]}
            for rung in (*rungs, GD):
                for metric in ("forgetting", "logit_change", "task_fraction", "curvature"):
                    values = [g[rung][metric] for g in group if metric in g.get(rung, {})]
                    if values:
                        points[label].setdefault(rung, {})[metric] = [
                            float(np.mean(values)), float(np.std(values))]
        mean = {label: {rung: p[rung]["forgetting"][0] for rung in rungs}
                for label, p in points.items()}
        errors = {rung: float(np.mean([abs(m[rung] - m["R4"]) for m in mean.values()]))
                  for rung in rungs}
        steps = {f"{a}->{b}": float(np.mean([abs(m[b] - m[a]) for m in mean.values()]))
                 for a, b in (*ladder(rungs), ("R0", "R0'"))}

        out[objective] = {"rungs": rungs, "points": points, "mean_abs_error": errors,
                          "mean_abs_step": steps,
                          "spearman_with_R4": {
                              r: _spearman([m[r] for m in mean.values()],
                                           [m["R4"] for m in mean.values()])
                              for r in rungs if r != "R4"}}
    return out


def ladder(rungs: list[str]) -> list[tuple[str, str]]:
    """The consecutive steps along the ladder of ``rungs`` (R0' stands beside it)."""
    return list(itertools.pairwise(r for r in rungs if r != "R0'"))


def largest_step(summary: dict[str, Any]) -> tuple[str, str]:
    """The step of one objective's ladder (``summarize``) that moves the forgetting most."""
    return max(ladder(summary["rungs"]),
               key=lambda step: summary["mean_abs_step"]["{}->{}".format(*step)])


def _spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's ρ of ``x`` and ``y``; ``None`` with fewer than 3 points or a constant side."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(scipy.stats.spearmanr(x, y).statistic)


def verdicts(summary: dict[str, Any]) -> list[str]:
    """Sentences, computed from the summary: how far each rung is from the measurement, which
    step of the ladder moves the prediction most, and how much of the change stays in the task
    subspace under gradient descent, AdamW and in the real network."""
    lines = []
    for objective, s in summary.items():
        err = s["mean_abs_error"]
        rungs = [r for r in s["rungs"] if r != "R4"]
        parts = ", ".join(f"{r} {err[r]:.1f}" for r in rungs)
        lines.append(f"{objective}: mean |rung − R4| over {len(s['points'])} points, in "
                     f"points of gray accuracy: {parts}.")
        chain = ladder(s["rungs"])
        a, b = largest_step(s)
        moves = ", ".join(f"{x}→{y} {s['mean_abs_step'][f'{x}->{y}']:.1f}" for x, y in chain)
        lines.append(f"{objective}: mean |step| along the ladder: {moves}; the largest is "
                     f"{a}→{b}, {STEPS[a, b]}.")
        fractions = {r: [p[r]["task_fraction"][0] for p in s["points"].values()
                         if "task_fraction" in p.get(r, {})] for r in (GD, "R2", "R3")}
        if all(fractions.values()):
            lo_hi = {r: f"{min(v):.2f}–{max(v):.2f}" for r, v in fractions.items()}
            lines.append(f"{objective}: share of the change in the task subspace (row space of "
                         f"J): tangent model by gradient descent {lo_hi[GD]}, by AdamW "
                         f"{lo_hi['R2']}, real network {lo_hi['R3']}.")
    return lines


def format_budget(payload: dict[str, Any]) -> str:
    """The ladder as a table per objective: forgetting (mean ± std over seeds) at each rung,
    and the task fraction of the gradient-descent control, R2 and R3; then the verdicts."""
    blocks = []
    for objective, s in payload["summary"].items():
        rungs = s["rungs"]
        head = (f"{'point':18s}" + "".join(f"{r:>14s}" for r in rungs)
                + f"{'task GD/R2/R3':>18s}")
        lines = [f"{objective} objective: forgetting (points)", head, "-" * len(head)]
        for label, p in s["points"].items():
            cells = "".join(f"{p[r]['forgetting'][0]:8.2f}±{p[r]['forgetting'][1]:<5.2f}"
                            for r in rungs)
            frac = "/".join(f"{p[r]['task_fraction'][0]:.2f}" for r in (GD, "R2", "R3")
                            if r in p and "task_fraction" in p[r])
            lines.append(f"{label:18s}{cells}{frac:>18s}")
        blocks.append("\n".join(lines))
    return "\n\n".join([*blocks, "\n".join(payload["verdicts"])])
