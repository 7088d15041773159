"""Back to the deep model (issue 14, item 4): does a teacher designed on the linearization
forget less in the real network than TRACER's WMA Beta(0.5, 0.5) teacher and an EMA teacher,
at equal ID accuracy? And does replay-SD?

Each compared strategy is a function of λ with a λ grid (``TeachersConfig.compared``): by
default WMA SD, EMA SD (0.99), SD toward a designed kernel (``KernelTeacher(GridKernel(v))``,
when the config holds its log-values) and replay-SD (``ReplayDistill``: distillation toward the
pretrained model on gray pretraining images), plus Direct FT as the baseline. Every strategy
runs at every λ of its grid for every seed (the toy CLIP pretrained on gray MNIST, finetuned on
ColoredMNIST with the validation-chosen learning rate); each run is evaluated on the validation
split and on the test split and written to its own JSON file (resumable).

* **Chosen on validation**: per strategy, λ maximizing the mean of the ID validation accuracy
  and the gray zero-shot validation accuracy (``selection.py``'s criterion) of the first seed's
  runs. ``select_lambda`` is handed the validation scores alone; the test split never enters.
* **Reported on test**: forgetting (gray zero-shot test accuracy drop, points), ID and gray
  accuracy at the chosen λ, mean ± std over seeds, every seed's numbers, and each strategy's
  whole curve over its λ grid.
* **At equal ID accuracy**: the target is the seed-mean test ID accuracy of the reference
  strategy (WMA SD) at its validation-chosen λ. For every other strategy the seed-mean curve
  (ID accuracy, forgetting) over its λ grid, taken in λ order, is linearly interpolated in ID
  accuracy at the target; where the curve crosses the target more than once the first crossing
  in λ order is reported (and the count). The same interpolation weights applied to each seed's
  two neighbouring runs give per-seed values (their mean is the interpolated value), hence a
  std and paired per-seed differences. A target outside the curve's ID range is reported as
  such, never extrapolated. ``verdicts`` says in words, with the numbers, whether the designed
  teacher (and replay-SD) forgets less than WMA SD and EMA SD there: "less" only when it is
  lower on every seed.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from ..._cache import cache_key, read_record, write_record
from ..._io import write_json_atomic
from ..._progress import bar as progress_bar
from ...dynamics.schedules import GridKernel
from ...linear.closed_forms import solve
from ...linear.problem import forgetting
from ..finetune.config import FinetuneConfig, PretrainConfig
from ..finetune.loop import SAMPLER, finetune_on
from ..finetune.strategies import (
    Direct,
    KernelTeacher,
    SelfDistill,
    Strategy,
    describe,
    entry,
)
from .arrays import ExperimentData
from .evaluation import evaluate, validation_scores
from .experiment import (
    ExperimentConfig,
    check_pretrained,
    pretrain_key,
    pretrained_model,
)
from .theory import ZeroShotProbe, linear_problem, predicted_forgetting

#: A compared strategy: its strategy as a function of λ, and its λ grid (increasing).
Compared = tuple[Callable[[float], Strategy], tuple[float, ...]]
#: The default λ grid, shared by every compared strategy.
LAMBDAS = (0.3, 1.0, 3.0, 10.0)
#: The default compared strategies, in table order (``designed_sd`` needs a kernel): names of
#: the strategy vocabulary (``strategies.entry``), which gives their labels and colors.
NAMES = ("wma_sd", "ema_sd", "designed_sd", "replay_sd")
#: The test metrics summarized (besides the validation scores).
METRICS = ("forgetting", "id_acc", "gray_acc", "ood_flipped_acc", "ood_neutral_acc")
CRITERION = ("mean of ID validation accuracy and gray zero-shot validation accuracy, on the "
             "first seed's runs (the test split is never read)")
METHOD = ("the seed-mean (ID accuracy, forgetting) curve over the λ grid, in λ order, linearly "
          "interpolated in ID accuracy at the reference's seed-mean test ID accuracy at its "
          "validation-chosen λ; first crossing in λ order; per-seed values with the same "
          "weights; no extrapolation")


def _at_lambda(name: str, lam: float, **fields: Any) -> Strategy:
    """The vocabulary's strategy ``name`` (``strategies.entry``: ``wma_sd`` is SD toward
    TRACER's WMA teacher, Beta(0.5, 0.5) over the whole run, ``ema_sd`` toward an EMA teacher of
    momentum 0.99, ``replay_sd`` distillation toward the pretrained model on a ``fraction`` of
    gray pretraining images) at ``lam``, its other ``fields`` replaced."""
    return dataclasses.replace(entry(name).strategy, lam=lam, **fields)


def designed_sd(lam: float, *, log_values: tuple[float, ...]) -> Strategy:
    """SD toward the kernel teacher of the free-form kernel ``GridKernel(log_values)``."""
    return SelfDistill(lam, KernelTeacher(GridKernel(np.asarray(log_values))))


@dataclasses.dataclass(frozen=True)
class TeachersConfig:
    """The study: ``seeds`` (λ is chosen on the first), the finetuning ``objective``, the
    shared λ grid ``lambdas`` (increasing), the designed ``kernel`` (``GridKernel`` log-values;
    ``None``: no designed-kernel run), ``names`` of the default strategies to compare
    (``None``: every default that can run), the replay ``fraction``, the ``reference`` whose
    chosen point sets the ID accuracy of the comparison, ``baseline`` (Direct FT), data,
    pretraining and the base training config (its objective replaced by ``objective``; the
    learning rate is the validation-chosen one of ``FinetuneConfig``). ``strategies``, when
    given, replaces the defaults: ``{name: (λ -> Strategy, λ grid)}``."""

    seeds: tuple[int, ...] = (0, 1, 2)
    objective: Literal["head", "prompts"] = "head"
    lambdas: tuple[float, ...] = LAMBDAS
    kernel: tuple[float, ...] | None = None
    names: tuple[str, ...] | None = None
    replay_fraction: float = 0.25
    reference: str = "wma_sd"
    baseline: bool = True
    strategies: Mapping[str, Compared] | None = None
    mnist: str | None = None
    pretrain: PretrainConfig = dataclasses.field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    quick: bool = False

    def __post_init__(self) -> None:
        ExperimentConfig(seeds=self.seeds)  # the seeds' own checks
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if self.objective not in ("head", "prompts"):
            raise ValueError(f"--objective must be 'head' or 'prompts', got {self.objective!r}")
        object.__setattr__(self, "lambdas", _grid("--lambdas", self.lambdas))
        if self.kernel is not None:
            values = tuple(self.kernel)
            if len(values) < 2 or any(isinstance(v, bool) or not isinstance(v, int | float)
                                      or not abs(v) <= FLOAT32_MAX for v in values):
                raise ValueError(f"--kernel log_values must be at least 2 finite numbers that "
                                 f"float32 (the training dtype) holds, got {list(values)}")
            object.__setattr__(self, "kernel", tuple(float(v) for v in values))
        if not 0 < self.replay_fraction < 1:
            raise ValueError(f"replay_fraction must be in (0, 1), got {self.replay_fraction}")
        if self.strategies is not None:
            for name, (_, grid) in self.strategies.items():
                _grid(f"the λ grid of {name}", grid)
        known = self._available()
        if self.names is not None:
            names = tuple(self.names)
            if "designed_sd" in names and "designed_sd" not in known and self.strategies is None:
                raise ValueError("--strategies designed_sd needs the designed kernel: give "
                                 "--kernel FILE")
            unknown = [n for n in names if n not in known]
            if unknown or not names or len(set(names)) != len(names):
                raise ValueError(f"--strategies must name distinct strategies of {list(known)}, "
                                 f"got {list(names)}")
            object.__setattr__(self, "names", names)
        if self.reference not in self.compared():
            raise ValueError(f"the reference {self.reference!r} of the equal-ID comparison must "
                             f"be compared (--strategies must include it), got "
                             f"{list(self.compared())}")

    def _available(self) -> dict[str, Compared]:
        if self.strategies is not None:
            return dict(self.strategies)
        out: dict[str, Compared] = {
            name: (functools.partial(_at_lambda, name), self.lambdas)
            for name in ("wma_sd", "ema_sd")}
        if self.kernel is not None:
            out["designed_sd"] = (functools.partial(designed_sd, log_values=self.kernel),
                                  self.lambdas)
        out["replay_sd"] = (functools.partial(_at_lambda, "replay_sd",
                                              fraction=self.replay_fraction), self.lambdas)
        return out

    def compared(self) -> dict[str, Compared]:
        """``{name: (λ -> strategy, λ grid)}`` of the compared strategies, in table order."""
        available = self._available()
        names = self.names if self.names is not None else tuple(available)
        return {n: available[n] for n in names}

    def plan(self) -> list[tuple[str, float | None, Strategy]]:
        """``(name, λ, strategy)`` of every run of a seed: each compared strategy at every λ of
        its grid, then Direct FT (λ ``None``)."""
        plan = [(name, lam, make(lam)) for name, (make, grid) in self.compared().items()
                for lam in grid]
        return plan + ([("direct", None, Direct())] if self.baseline else [])

    def training(self) -> FinetuneConfig:
        """The training config of every run."""
        return dataclasses.replace(self.finetune, objective=self.objective)

    def experiment(self) -> ExperimentConfig:
        """The experiment configuration whose pretrained models (and cache) the study shares."""
        return ExperimentConfig(seeds=self.seeds, mnist=self.mnist, pretrain=self.pretrain,
                                quick=self.quick)

    @property
    def name(self) -> str:
        return f"teachers_{self.objective}" + ("_quick" if self.quick else "")

    def describe(self) -> dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key in ("pretrain", "finetune"):
            fields[key] = dataclasses.asdict(fields[key])
        fields["strategies"] = {name: {"lambdas": list(grid), "strategy": describe(make(grid[0]))}
                                for name, (make, grid) in self.compared().items()}
        return json.loads(json.dumps(fields, default=str))


def quick_teachers_config(**overrides: Any) -> TeachersConfig:
    """The study in seconds (for tests): one seed, λ ∈ {0.3, 3}, 6 finetuning steps of 64
    images, 30 pretraining steps, the quick data subset."""
    base = dict(seeds=(0,), lambdas=(0.3, 3.0), quick=True,
                pretrain=PretrainConfig(steps=30, batch_size=64),
                finetune=FinetuneConfig(steps=6, batch_size=64, log_every=3))
    return TeachersConfig(**(base | overrides))


#: The largest number float32, the dtype the runs train in, holds.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _grid(flag: str, values) -> tuple[float, ...]:
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int | float)
                         or not 0 <= v <= FLOAT32_MAX for v in values):
        raise ValueError(f"{flag} must be λ ≥ 0 that float32 (the training dtype) holds "
                         f"(≤ {FLOAT32_MAX:.3g}), got {list(values)}")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"{flag} must be strictly increasing, got {list(values)}")
    if len({lam_key(v) for v in values}) != len(values):
        raise ValueError(f"{flag} must be distinct at 6 significant digits, got {list(values)}")
    return tuple(float(v) for v in values)


def lam_key(lam: float) -> str:
    """The key of a λ in the results (``f"{λ:g}"``)."""
    return f"{lam:g}"


def select_lambda(scores: Mapping[str, Mapping[str, float]]) -> str:
    """The λ key (of ``scores``, in grid order) whose validation ``score`` (the mean of ID and
    gray validation accuracy) is highest; the first on a tie. ``scores`` are validation scores
    (``evaluation.validation_scores``) and nothing else."""
    if not scores:
        raise ValueError("no validation scores to choose λ from")
    return max(scores, key=lambda k: scores[k]["score"])


def run_teachers(config: TeachersConfig, out_dir: str | Path = "results/teachers", *,
                 progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the study; writes one JSON per (seed, strategy, λ) run under
    ``<out_dir>/<name>/`` and the summary ``<out_dir>/<name>.json`` (returned). A finished run
    is reused only when it was written for the same settings (else ``ResumeMismatch``, before
    any training; ``overwrite`` reruns it)."""
    out_dir = Path(out_dir)
    data = ExperimentData(config.mnist, "toy", config.quick)
    experiment, training = config.experiment(), config.training()
    plan = config.plan()
    run_dir = out_dir / config.name
    paths = {(seed, name, lam): run_dir / _stem(seed, name, lam)
             for seed in config.seeds for name, lam, _ in plan}
    keys = {(seed, name, lam): _key(data, seed, config, strategy, training)
            for seed in config.seeds for name, lam, strategy in plan}
    finished = {at: read_record(paths[at], keys[at], overwrite=overwrite, fields=RECORD_FIELDS)
                for at in keys}
    theory_key = _twins_key(config, data)
    twins = read_record(run_dir / "linear_twins.json", theory_key, overwrite=overwrite,
                        fields=("points",))
    check_pretrained(experiment, data, out_dir, overwrite)
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    direct: dict[str, Any] = {}
    bar = progress_bar(total=len(keys), initial=sum(r is not None for r in finished.values()),
               desc="teachers", unit="run", disable=not progress)
    for seed in config.seeds:
        todo = [(n, lam) for n, lam, _ in plan if finished[seed, n, lam] is None]
        if todo:
            pretrained = pretrained_model(experiment, data, out_dir, seed, progress,
                                          overwrite=overwrite)
            before = evaluate(pretrained, data, config.objective)
            class_emb = pretrained.clip.class_embeddings(jnp.asarray(data.captions))
        for name, lam, strategy in plan:
            at = (seed, name, lam)
            record = finished[at]
            if record is None:
                what = f"seed {seed} {name}" + ("" if lam is None else f" λ={lam:g}")
                bar.set_postfix_str(what)
                record = {"config": keys[at],
                          **_one_run(pretrained, before, class_emb, data, strategy, training,
                                     seed, progress and what)}
                write_json_atomic(paths[at], record)
                bar.update(1)
            if lam is None:
                direct[str(seed)] = record
            else:
                runs.setdefault(name, {}).setdefault(lam_key(lam), {})[str(seed)] = record
    bar.close()
    first = str(config.seeds[0])
    # λ from the first seed's validation scores alone
    selection = {name: _selection({k: per_seed[first]["validation"]
                                   for k, per_seed in per_lam.items()}, config.seeds[0])
                 for name, per_lam in runs.items()}
    summary = summarize(runs, selection, direct or None, reference=config.reference)
    size = theory_key["n"]
    if twins is None:
        pretrained = pretrained_model(experiment, data, out_dir, config.seeds[0], progress,
                                      overwrite=overwrite)
        twins = write_record(run_dir / "linear_twins.json", theory_key,
                             {"points": linear_twins(config, pretrained, data, size, size)})
    theory = linear_check(twins["points"], summary, size)
    payload = {"config": config.describe(), "data": data.source, "sampler": SAMPLER,
               "environment": {"jax": jax.__version__, "backend": jax.default_backend(),
                               "python": platform.python_version()},
               "selection": selection, "summary": summary, "theory": theory,
               "verdicts": [*verdicts(summary), theory["sentence"]],
               "runs": _strip(runs), "direct": {s: _strip_one(r) for s, r in direct.items()}}
    write_json_atomic(out_dir / f"{config.name}.json", payload)
    return payload


def linear_twins(config: TeachersConfig, pretrained, data: ExperimentData, n: int,
                 n_pre: int) -> list[dict[str, Any]]:
    """Each run's linear twin (``Strategy.linear``) at ``pretrained``, linearized on ``n``
    finetuning and ``n_pre`` gray pretraining images: per (strategy, λ) point of the plan, the
    forgetting ``‖(W − W⁰)X_pre‖²`` and the zero-shot drop with the features held fixed."""
    rows = []
    with jax.enable_x64(True):
        problem = linear_problem(pretrained, data, n=n, n_pre=n_pre)
        probe = ZeroShotProbe.of(pretrained, data)
        for name, lam, strategy in config.plan():
            w = solve(problem, strategy.linear(problem, config.training().steps))
            rows.append({"strategy": name, "lam": lam,
                         "linear_forgetting": float(forgetting(problem, w)),
                         "predicted_drop": predicted_forgetting(probe, problem.w0,
                                                                w)["predicted_forgetting"]})
    return rows


def linear_check(points: list[dict[str, Any]], summary: dict[str, Any],
                 n_pre: int) -> dict[str, Any]:
    """The linear theory against the measurement (THEORY §7.6): the Spearman ρ of the linear
    twins' forgetting (``linear_twins``) and predicted zero-shot drop with the measured
    seed-mean forgetting, over every (strategy, λ) point and Direct FT."""
    rows = [{**p, "measured": (summary["direct"] if p["lam"] is None else summary["strategies"]
                                [p["strategy"]]["curve"][lam_key(p["lam"])])["forgetting"]["mean"]}
            for p in points]
    measured = [r["measured"] for r in rows]
    rho = {key: float(scipy.stats.spearmanr([r[key] for r in rows], measured).statistic)
           for key in ("linear_forgetting", "predicted_drop")}
    sentence = (f"The linear theory ranks the {len(rows)} (strategy, λ) points' measured "
                f"forgetting with Spearman ρ = {rho['linear_forgetting']:+.2f} through "
                f"‖(W − W⁰)X_pre‖² on {n_pre} gray pretraining images and ρ = "
                f"{rho['predicted_drop']:+.2f} through the predicted zero-shot drop")
    return {"points": rows, "spearman": rho, "sentence": sentence}


def _stem(seed: int, name: str, lam: float | None) -> str:
    return f"seed{seed}_{name}" + ("" if lam is None else f"_lam{lam_key(lam)}") + ".json"


#: What every run's record holds (a record without them is damaged).
RECORD_FIELDS = ("validation", "test", "curves")


def _twins_key(config: TeachersConfig, data: ExperimentData) -> dict[str, Any]:
    """What the linear twins depend on: the study, the data, the first seed's pretrained
    model and the linearization's sample sizes."""
    size = 64 if config.quick else 500
    return cache_key({"config": config.describe(), "seed": config.seeds[0], "n": size,
                      "n_pre": size,
                      "pretrained": pretrain_key(config.experiment(), data, config.seeds[0])})


def _key(data: ExperimentData, seed: int, config: TeachersConfig, strategy: Strategy,
         training: FinetuneConfig) -> dict[str, Any]:
    """Everything one run's record depends on, JSON-ready (the ``read_record`` key)."""
    key = {"data": data.fingerprint, "seed": seed, "sampler": SAMPLER,
           "pretrain": dataclasses.asdict(config.pretrain), "strategy": describe(strategy),
           "training": dataclasses.asdict(training), "evaluated": ["validation", "test"]}
    return cache_key(key)


def _one_run(pretrained, before, class_emb, data: ExperimentData, strategy: Strategy,
             training: FinetuneConfig, seed: int, progress) -> dict[str, Any]:
    """One finetuning run, evaluated on the validation split (for the choice of λ) and on the
    test split (what is reported)."""
    start = time.perf_counter()
    run = finetune_on(data.task(), pretrained, strategy, training, class_emb=class_emb,
                      prompts=data.captions, seed=seed, progress=progress or None)
    seconds = time.perf_counter() - start
    test = evaluate(run.model, data, training.objective)
    test["forgetting"] = before["gray_acc"] - test["gray_acc"]
    test["pretrained_gray_acc"] = before["gray_acc"]
    return {"validation": validation_scores(run.model, data, training.objective), "test": test,
            "curves": {k: np.asarray(v).tolist() for k, v in run.curves.items()},
            "train_seconds": seconds}


def _selection(scores: dict[str, dict[str, float]], seed: int) -> dict[str, Any]:
    return {"lam": float(select_lambda(scores)), "key": select_lambda(scores), "seed": seed,
            "scores": scores, "criterion": CRITERION}


def _strip_one(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("config", "curves")}


def _strip(runs) -> dict[str, Any]:
    return {n: {lam: {s: _strip_one(r) for s, r in per_seed.items()}
                for lam, per_seed in per_lam.items()} for n, per_lam in runs.items()}


# --- the summary ------------------------------------------------------------------------------

def _stats(values: list[float]) -> dict[str, Any]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)),
            "seeds": [float(v) for v in values]}


def _metrics(per_seed: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``{metric: {mean, std, seeds}}`` of the test metrics over the seeds (in seed order)."""
    seeds = list(per_seed)
    return {m: _stats([per_seed[s]["test"][m] for s in seeds]) | {"seed_ids": seeds}
            for m in METRICS if all(m in per_seed[s]["test"] for s in seeds)}


def crossings(xs: list[float], target: float) -> list[tuple[int, float]]:
    """Where the piecewise-linear curve through ``xs`` (in grid order) takes the value
    ``target``: ``(k, t)`` with ``target = (1 − t)·xs[k] + t·xs[k + 1]``, ``0 ≤ t < 1``
    (``t = 0``: grid point ``k`` itself), in grid order."""
    out = [(k, 0.0) for k, x in enumerate(xs) if x == target]
    for k in range(len(xs) - 1):
        a, b = xs[k], xs[k + 1]
        if min(a, b) < target < max(a, b):
            out.append((k, (target - a) / (b - a)))
    return sorted(out)


def _interpolate(values: list[float], k: int, t: float) -> float:
    return values[k] if t == 0 else (1 - t) * values[k] + t * values[k + 1]


def _lam_between(lams: list[float], k: int, t: float) -> float:
    """The λ at ``(k, t)`` of a crossing, interpolated on a log scale (linear from λ = 0): for
    information only."""
    if t == 0:
        return lams[k]
    if lams[k] > 0:
        return float(np.exp((1 - t) * np.log(lams[k]) + t * np.log(lams[k + 1])))
    return (1 - t) * lams[k] + t * lams[k + 1]


def at_equal_id(curve: Mapping[str, Mapping[str, Any]], target: float) -> dict[str, Any]:
    """A strategy's forgetting at ID accuracy ``target``, from its ``curve`` (``{λ key:
    {metric: {mean, std, seeds}}}`` in λ order): interpolated on the seed-mean curve, first
    crossing in λ order (``METHOD``); per-seed values with the same weights. ``forgetting`` is
    ``None`` when the target lies outside the curve's ID range."""
    lams = list(curve)
    ids = [curve[k]["id_acc"]["mean"] for k in lams]
    found = crossings(ids, target)
    out: dict[str, Any] = {"id_range": [min(ids), max(ids)], "crossings": len(found)}
    if not found:
        out.update(forgetting=None, note=f"ID accuracy {target:.2f} outside the range "
                                         f"[{min(ids):.2f}, {max(ids):.2f}] of its λ grid")
        return out
    k, t = found[0]
    per_seed = [_interpolate([curve[lam]["forgetting"]["seeds"][i] for lam in lams], k, t)
                for i in range(len(curve[lams[0]]["forgetting"]["seeds"]))]
    lam = _lam_between([float(x) for x in lams], k, t)
    out.update(forgetting=_stats(per_seed), between=[lams[k]] if t == 0 else lams[k:k + 2],
               weight=t, lam=lam, seed_ids=curve[lams[0]]["forgetting"].get("seed_ids"),
               all_crossings=[_interpolate([curve[x]["forgetting"]["mean"] for x in lams], j, s)
                              for j, s in found])
    return out


def summarize(runs: Mapping[str, Mapping[str, Mapping[str, Any]]],
              selection: Mapping[str, Mapping[str, Any]],
              direct: Mapping[str, Any] | None = None, *,
              reference: str = "wma_sd") -> dict[str, Any]:
    """Per strategy: the validation-chosen λ, the test metrics there (mean, std and every
    seed), the curve over its λ grid; Direct FT's metrics; and the comparison at equal ID
    accuracy (``at_equal_id``) at the ``reference``'s chosen point.

    ``runs``: ``{name: {λ key: {seed: record}}}`` (records with a ``test`` dict; the curves
    are taken in increasing λ); ``selection``: ``{name: {"key": chosen λ key, ...}}``."""
    strategies: dict[str, Any] = {}
    for name, per_lam in runs.items():
        curve = {lam: _metrics(per_lam[lam]) for lam in sorted(per_lam, key=float)}
        chosen = selection[name]["key"]
        strategies[name] = {"lam": float(chosen), "key": chosen, "chosen": curve[chosen],
                            "curve": curve}
    out: dict[str, Any] = {"strategies": strategies, "reference": reference}
    if direct:
        out["direct"] = _metrics(direct)
    if reference in strategies:
        ref = strategies[reference]
        target = ref["chosen"]["id_acc"]["mean"]
        equal: dict[str, Any] = {}
        for name, row in strategies.items():
            if name == reference:  # its own chosen point, not an interpolation
                equal[name] = {"forgetting": ref["chosen"]["forgetting"], "lam": ref["lam"],
                               "between": [ref["key"]], "weight": 0.0, "crossings": 1,
                               "reference": True,
                               "seed_ids": ref["chosen"]["forgetting"].get("seed_ids")}
            else:
                equal[name] = at_equal_id(row["curve"], target)
        out["equal_id"] = {"reference": reference, "reference_lam": ref["lam"],
                           "id_acc": target, "method": METHOD, "strategies": equal}
    return out


# --- in words ---------------------------------------------------------------------------------

def _label(name: str) -> str:
    """The vocabulary's label of ``name`` with its hyperparameters spelled out
    (``Entry.full_label``); a name the vocabulary does not know, itself."""
    try:
        return entry(name).full_label
    except ValueError:
        return name


def _compare(summary: dict[str, Any], name: str, other: str) -> tuple[str, str | None]:
    """``(sentence, word)``: does ``name`` forget less than ``other`` at equal ID accuracy;
    ``word`` is ``"less"``, ``"more"`` (on every seed, paired by seed), ``"unclear"``, or
    ``None`` when either lies outside the other's ID range."""
    equal = summary["equal_id"]
    a, b = equal["strategies"][name], equal["strategies"][other]
    head = f"{_label(name)} vs {_label(other)} at equal ID accuracy {equal['id_acc']:.2f}%"
    for row, n in ((a, name), (b, other)):
        if row["forgetting"] is None:
            return f"{head}: not comparable, {_label(n)}'s {row['note']}", None
    fa, fb = a["forgetting"], b["forgetting"]
    diffs = np.asarray(fa["seeds"]) - np.asarray(fb["seeds"])  # paired by seed
    lower, n = int(np.sum(diffs < 0)), len(diffs)
    word = "less" if lower == n else "more" if np.all(diffs > 0) else "unclear"
    outcome = {"less": "forgets less", "more": "forgets more",
               "unclear": "is not clearly different"}[word]
    return (f"{head}: {_label(name)} forgets {_pm(fa)} points "
            f"(λ ≈ {a['lam']:.3g}), {_label(other)} {_pm(fb)} "
            f"(λ ≈ {b['lam']:.3g}); difference {diffs.mean():+.2f} ± {diffs.std():.2f} "
            f"(lower on {lower}/{n} seeds) → {_label(name)} {outcome}"), word


def _pm(stat: Mapping[str, Any] | None) -> str:
    """``mean ± std`` of a summary statistic, or ``—``."""
    return "—" if stat is None else f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def verdicts(summary: dict[str, Any]) -> list[str]:
    """In words, with the numbers: each strategy at its validation-chosen λ; then whether the
    designed teacher, and replay-SD, forget less than WMA SD and EMA SD at equal ID accuracy
    ("less"/"more" only when it holds on every seed), and the answer in one line each."""
    lines = [f"{_label(name)} at its validation-chosen λ = {row['lam']:g}: forgetting "
             f"{_pm(row['chosen']['forgetting'])}, ID accuracy {_pm(row['chosen']['id_acc'])}"
             for name, row in summary["strategies"].items()]
    if "direct" in summary:
        d = summary["direct"]
        lines.append(f"{_label('direct')}: forgetting {_pm(d['forgetting'])}, ID accuracy "
                     f"{_pm(d['id_acc'])}")
    if "equal_id" not in summary:
        return lines
    for name, against in comparisons(summary).items():
        if against is None:
            lines.append(f"{_label(name)}: not run"
                         + (" (no designed kernel given)" if name == "designed_sd" else ""))
            continue
        lines += [sentence for sentence, _ in against.values()]
        if against:
            words = {o: w for o, (_, w) in against.items()}
            less = [_label(o) for o, w in words.items() if w == "less"]
            rest = [f"{_label(o)}: " + {"more": "forgets more", "unclear": "not clearly "
                                        "different", None: "not comparable"}[w]
                    for o, w in words.items() if w != "less"]
            lines.append(f"Answer: {_label(name)} forgets less at equal ID accuracy than "
                         + (" and ".join(less) if less else "none of them")
                         + (f" ({'; '.join(rest)})" if rest else ""))
    return lines


def comparisons(summary: dict[str, Any]) -> dict[str, dict[str, tuple[str, str | None]] | None]:
    """``{name: {other: (sentence, word)}}`` for the designed teacher and replay-SD against WMA
    SD and EMA SD at equal ID accuracy (``_compare``); ``None`` for one not run."""
    names = summary.get("equal_id", {}).get("strategies", {})
    return {name: ({other: _compare(summary, name, other) for other in ("wma_sd", "ema_sd")
                    if other in names} if name in names else None)
            for name in ("designed_sd", "replay_sd")}


def format_teachers(payload: dict[str, Any]) -> str:
    """The table (validation-chosen λ, test metrics there, forgetting at equal ID accuracy),
    each strategy's curve over its λ grid, and the verdicts."""
    summary = payload["summary"]
    equal = summary.get("equal_id", {}).get("strategies", {})

    head = (f"{'strategy':24s}{'λ':>7s}{'val score':>11s}{'forgetting':>16s}{'ID acc':>16s}"
            f"{'gray acc':>16s}{'forget @ eq. ID':>18s}")
    lines = [head, "-" * len(head)]
    for name, row in summary["strategies"].items():
        c = row["chosen"]
        score = payload["selection"][name]["scores"][row["key"]]["score"]
        eq = equal.get(name, {}).get("forgetting")
        lines.append(f"{_label(name):24s}{row['lam']:>7g}{score:>11.2f}"
                     f"{_pm(c['forgetting']):>16s}{_pm(c['id_acc']):>16s}"
                     f"{_pm(c['gray_acc']):>16s}{_pm(eq):>18s}")
    if "direct" in summary:
        d = summary["direct"]
        lines.append(f"{_label('direct'):24s}{'—':>7s}{'—':>11s}{_pm(d['forgetting']):>16s}"
                     f"{_pm(d['id_acc']):>16s}{_pm(d['gray_acc']):>16s}{'—':>18s}")
    if "equal_id" in summary:
        e = summary["equal_id"]
        lines.append(f"(equal ID accuracy: {e['id_acc']:.2f}%, {_label(e['reference'])}'s "
                     f"validation-chosen point λ = {e['reference_lam']:g}; {e['method']})")
    lines.append("\ncurves over λ (test, mean ± std over seeds): forgetting / ID accuracy")
    for name, row in summary["strategies"].items():
        cells = [f"λ={lam}: {m['forgetting']['mean']:.2f}±{m['forgetting']['std']:.2f} / "
                 f"{m['id_acc']['mean']:.2f}±{m['id_acc']['std']:.2f}"
                 for lam, m in row["curve"].items()]
        lines.append(f"  {_label(name):24s}" + "   ".join(cells))
    lines += ["", *(f"  {v}" for v in payload["verdicts"])]
    return "\n".join(lines)
