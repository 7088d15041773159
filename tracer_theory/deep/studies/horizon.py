"""The long-horizon study (THEORY §4, §6): does the EMA teacher's collapse cost retention over
long finetuning, and does the WMA teacher keep it?

For each objective and label-noise level, each seed's pretrained toy CLIP is finetuned on
ColoredMNIST (fair protocol, the validation-chosen hyperparameters) for horizons ``T``. Only
the WMA teacher depends on ``T`` (its kernel spans the run), so it runs once per ``T``; every
other strategy (constant learning rate) runs once to the longest ``T`` and is evaluated at each
shorter one on the way, which is the same experiment. Per (T, strategy): forgetting, ID and OOD
accuracy, the final teacher–student gap, the step by which half of the final forgetting had
happened, and the gap and forgetting curves. The linearization at the pretrained model predicts
the same quantities with the exact finite-horizon dynamics (``spectral_dynamics``), and
``verdicts`` states in words what the numbers say.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import platform
from pathlib import Path
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..._cache import cache_key, read_record, write_record
from ..._io import write_json_atomic
from ...dynamics.schedules import static_teacher
from ...dynamics.spectral import default_lr, spectral_dynamics
from ...linear.closed_forms import solve
from ...linear.spectrum import spectrum
from ..data.mnist import flip_labels
from ..finetune.checkpoints import check_run
from ..finetune.config import FinetuneConfig, PretrainConfig
from ..finetune.loop import SAMPLER, finetune_on, zero_shot_accuracy
from ..finetune.strategies import (
    REGISTRY,
    Direct,
    Strategy,
    describe,
    entry,
    has_teacher,
)
from .arrays import ExperimentData
from .evaluation import evaluate
from .experiment import ExperimentConfig, check_pretrained, pretrained_model
from .theory import ZeroShotProbe, linear_problem, predicted_forgetting

#: The study's strategies, names of the strategy vocabulary (``strategies.entry``): the
#: registry's, with the EMA teacher at a second momentum (the ``ema999_sd`` variant).
STRATEGIES = ("direct", "static_sd", "ema_sd", "ema999_sd", "wma_sd", "l2sp")
#: The metrics recorded at every horizon (besides the gap and the half-forgetting step).
METRICS = ("forgetting", "gray_acc", "id_acc", "ood_flipped_acc", "ood_neutral_acc")


@dataclasses.dataclass(frozen=True)
class HorizonConfig:
    """The study: ``horizons`` (positive, increasing), ``objectives``, ``label_noise`` levels
    (fractions of training labels flipped, in [0, 1)), ``seeds``, ``strategies`` (names of
    ``STRATEGIES``), the base training config (its ``steps`` is replaced by each horizon),
    pretraining, and ``chunk`` steps per on-device program call."""

    horizons: tuple[int, ...] = (100, 300, 1000, 3000)
    objectives: tuple[Literal["head", "prompts"], ...] = ("head", "prompts")
    label_noise: tuple[float, ...] = (0.0, 0.25)
    seeds: tuple[int, ...] = (0, 1, 2)
    strategies: tuple[str, ...] = tuple(STRATEGIES)
    mnist: str | None = None
    pretrain: PretrainConfig = dataclasses.field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    chunk: int = 250
    quick: bool = False
    #: (objective, label noise) tables to run, when not every pair of ``objectives`` and
    #: ``label_noise``.
    only: tuple[tuple[str, float], ...] | None = None

    def __post_init__(self) -> None:
        h = tuple(self.horizons)
        if not h or any(isinstance(t, bool) or not isinstance(t, int | np.integer) or t < 1
                        for t in h):
            raise ValueError(f"--horizons must be positive integers, got {list(h)}")
        if any(b <= a for a, b in itertools.pairwise(h)):
            raise ValueError(f"--horizons must be strictly increasing, got {list(h)}")
        for p in self.label_noise:
            if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1:
                raise ValueError(f"--label-noise must be fractions in [0, 1), "
                                 f"got {list(self.label_noise)}")
        if not self.label_noise:
            raise ValueError("--label-noise must name at least one level")
        for o in self.objectives:
            if o not in ("head", "prompts"):
                raise ValueError(f"--objectives must be 'head' or 'prompts', got {o!r}")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies:
            raise ValueError(f"--strategies must name some of {list(STRATEGIES)}, "
                             f"got {list(self.strategies)}")
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, int) or self.chunk < 1:
            raise ValueError(f"--chunk must be a positive number of steps, got {self.chunk!r}")
        ExperimentConfig(seeds=self.seeds)  # the seeds' own checks
        if self.only is not None:
            only = tuple((o, float(p)) for o, p in self.only)
            missing = [s for s in only if s[0] not in self.objectives
                       or s[1] not in map(float, self.label_noise)]
            if missing or not only:
                raise ValueError(f"--only must name (objective, label noise) pairs of "
                                 f"--objectives {list(self.objectives)} and --label-noise "
                                 f"{list(self.label_noise)}, got {list(self.only)}")
            object.__setattr__(self, "only", only)
        object.__setattr__(self, "horizons", tuple(int(t) for t in h))
        object.__setattr__(self, "label_noise", tuple(float(p) for p in self.label_noise))
        every = self.finetune.log_every
        if any(t % every for t in self.horizons):
            raise ValueError(f"--horizons must be multiples of the logging interval log_every = "
                             f"{every} (every horizon is a logged step of the curves), got "
                             f"{list(self.horizons)}")

    @property
    def name(self) -> str:
        return "horizon" + ("_quick" if self.quick else "")

    def settings(self) -> list[tuple[str, float]]:
        """(objective, label noise) of every table, in run order."""
        every = [(o, p) for o in self.objectives for p in self.label_noise]
        return every if self.only is None else [s for s in every if s in self.only]

    def experiment(self) -> ExperimentConfig:
        """The experiment configuration whose pretrained models (and cache) the study shares."""
        return ExperimentConfig(seeds=self.seeds, mnist=self.mnist, pretrain=self.pretrain,
                                quick=self.quick)

    def describe(self) -> dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key in ("pretrain", "finetune"):
            fields[key] = dataclasses.asdict(fields[key])
        fields["strategies"] = {n: describe(entry(n).strategy) for n in self.strategies}
        return json.loads(json.dumps(fields, default=str))


def quick_horizon_config(**overrides: Any) -> HorizonConfig:
    """The study in seconds (for tests): horizons 4 and 8, one seed, the quick data subset."""
    base = dict(horizons=(4, 8), objectives=("head",), seeds=(0,), quick=True,
                pretrain=PretrainConfig(steps=30, batch_size=64),
                finetune=FinetuneConfig(batch_size=64, log_every=2), chunk=4)
    return HorizonConfig(**(base | overrides))


def noisy_labels(data: ExperimentData, noise: float, seed: int) -> np.ndarray:
    """The training labels with a fraction ``noise`` flipped (the test split is never touched);
    the flips depend on the seed."""
    return flip_labels(data.train_labels, noise, seed=10_000 + seed)[0]


def half_step(steps: np.ndarray, forgetting: np.ndarray, horizon: int) -> float | None:
    """The first logged step ≤ ``horizon`` by which half of the forgetting at ``horizon`` had
    happened (``None`` when nothing was forgotten)."""
    keep = steps <= horizon
    steps, forgetting = steps[keep], forgetting[keep]
    if not len(steps) or forgetting[-1] <= 0:
        return None
    return float(steps[np.argmax(forgetting >= 0.5 * forgetting[-1])])


def _runs(config: HorizonConfig, name: str) -> list[tuple[int, tuple[int, ...]]]:
    """(run length, horizons it is evaluated at) of a strategy: one run per horizon for a
    teacher whose schedule depends on the horizon, else one run to the longest."""
    strategy = entry(name).strategy
    longest = config.horizons[-1]
    if has_teacher(strategy) and not bool(eqx.tree_equal(strategy.schedule(config.horizons[0]),
                                                         strategy.schedule(longest))):
        return [(t, (t,)) for t in config.horizons]
    return [(longest, config.horizons)]


def run_horizon(config: HorizonConfig, out_dir: str | Path = "results/horizon", *,
                progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the study; writes one JSON per (setting, seed, strategy, run) and the
    summary ``<out_dir>/<name>.json`` (returned)."""
    out_dir = Path(out_dir)
    data = ExperimentData(config.mnist, "toy", config.quick)
    experiment = config.experiment()
    gray_probe = data.gray_probe()
    plan = {(objective, noise, seed, name, steps): (stops, *_where(
                config, data, out_dir, objective, noise, seed, name, steps))
            for objective, noise in config.settings() for seed in config.seeds
            for name in config.strategies for steps, stops in _runs(config, name)}
    # every artifact is checked before any work: finished runs, run checkpoints, pretrained
    finished = {at: read_record(path, key, overwrite=overwrite, fields=("horizons", "curves"))
                for at, (_, path, key, _) in plan.items()}
    for at, (_, path, key, _) in plan.items():
        if finished[at] is None:
            check_run(path.with_suffix(".ckpt"), key, overwrite=overwrite)
    check_pretrained(experiment, data, out_dir, overwrite)
    records: dict[str, dict[str, dict[str, Any]]] = {}
    theory: dict[str, dict[str, Any]] = {}
    for objective, noise in config.settings():
        setting = f"{objective}_noise{noise:g}"
        records[setting], theory[setting] = {}, {}
        for seed in config.seeds:
            pretrained = pretrained_model(experiment, data, out_dir, seed, progress,
                                          overwrite=overwrite)
            labels = noisy_labels(data, noise, seed)
            class_emb = pretrained.clip.class_embeddings(jnp.asarray(data.captions))
            before = evaluate(pretrained, data, objective)
            probe_before = float(zero_shot_accuracy(pretrained.clip, jnp.asarray(gray_probe[0]),
                                                    jnp.asarray(gray_probe[1]), class_emb))
            theory[setting][str(seed)] = predict(config, pretrained, data, labels, objective)
            for name in config.strategies:
                strategy = entry(name).strategy
                for steps, _ in _runs(config, name):
                    at = (objective, noise, seed, name, steps)
                    stops, path, key, ft = plan[at]
                    record = finished[at]
                    if record is None:
                        record = _one_run(pretrained, data, labels, strategy, ft, class_emb,
                                          seed, stops, before, probe_before, config, path, key,
                                          overwrite,
                                          progress and f"{setting} seed {seed} {name} T={steps}")
                        record = write_record(path, key, record)
                    for t, values in record["horizons"].items():
                        records[setting].setdefault(name, {}).setdefault(t, {})[str(seed)] = {
                            **values, "curves": record["curves"], "run_steps": steps}
    summary = summarize(records, config)
    payload = {"config": config.describe(), "data": data.source, "sampler": SAMPLER,
               "environment": {"jax": jax.__version__, "backend": jax.default_backend(),
                               "python": platform.python_version()},
               "summary": summary, "theory": summarize_theory(theory, config),
               "runs": _runs_without_curves(records), "curves": _curves(records, config)}
    payload["verdicts"] = verdicts(payload, config)
    write_json_atomic(out_dir / f"{config.name}.json", payload)
    return payload


def _where(config: HorizonConfig, data, out_dir: Path, objective: str, noise: float, seed: int,
           name: str, steps: int) -> tuple[Path, dict[str, Any], FinetuneConfig]:
    """``(result file, key, training config)`` of one run."""
    setting = f"{objective}_noise{noise:g}"
    stops = dict(_runs(config, name))[steps]
    stem = f"seed{seed}_{name}" + ("" if len(stops) > 1 else f"_T{steps}")
    ft = dataclasses.replace(config.finetune, objective=objective, steps=steps)
    key = _key(data, seed, config, entry(name).strategy, ft, noise)
    return out_dir / config.name / setting / f"{stem}.json", key, ft


def _key(data, seed, config, strategy, ft, noise) -> dict[str, Any]:
    key = {"data": data.fingerprint, "seed": seed, "sampler": SAMPLER, "label_noise": noise,
           "pretrain": dataclasses.asdict(config.pretrain), "strategy": describe(strategy),
           "training": dataclasses.asdict(ft), "horizons": list(config.horizons)}
    return cache_key(key)


def _one_run(pretrained, data, labels, strategy: Strategy, ft: FinetuneConfig, class_emb,
             seed, stops, before, probe_before, config: HorizonConfig, path: Path, key,
             overwrite: bool, progress):
    """One run with its evaluation at every horizon in ``stops``; resumes from a checkpoint
    written for the same run ``key``."""
    ckpt = path.with_suffix(".ckpt")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    run = finetune_on(data.task(), pretrained, strategy, ft, class_emb=class_emb,
                      prompts=data.captions, labels=labels,
                      seed=seed, progress=progress or None, chunk=config.chunk,
                   stops=stops[:-1], checkpoint=ckpt, checkpoint_key=key, overwrite=overwrite)
    curves = {k: np.asarray(v).tolist() for k, v in run.curves.items()}
    curves["forgetting"] = (probe_before - np.asarray(run.curves["gray_acc"])).tolist()
    steps = np.asarray(run.curves["steps"])
    horizons = {}
    for t in stops:
        model = run.model if t == ft.steps else run.snapshots[t]
        after = evaluate(model, data, ft.objective)
        at = int(np.searchsorted(steps, t))  # t is a logged step (a multiple of log_every)
        values = {k: after[k] for k in METRICS if k in after}
        values["forgetting"] = before["gray_acc"] - after["gray_acc"]
        values["half_forgetting_step"] = half_step(steps, np.asarray(curves["forgetting"]), t)
        values["final_loss"] = float(run.curves["loss"][at])
        if has_teacher(strategy):
            for k in ("param_distance", "logit_kl", "agreement"):
                values[f"gap_{k}"] = float(run.curves[k][at])
        horizons[str(t)] = values
    for f in (ckpt, *ckpt.parent.glob(ckpt.name + ".step*")):
        f.unlink(missing_ok=True)
    return {"horizons": horizons, "curves": curves}


def predict(config: HorizonConfig, pretrained, data, labels, objective: str) -> dict[str, Any]:
    """The linear theory's prediction at every (strategy, T): the exact finite-horizon GD
    dynamics of the linearization at ``pretrained`` (``spectral_dynamics``; Direct FT is λ = 0,
    L2-SP its converged closed form), all at one step size (half the stability bound of the
    SD λ): predicted forgetting, final gap ``‖(W − T)X_I‖``, task-subspace bias and the gap
    curve every ``log_every`` steps."""
    del objective  # the linearization is of the contrastive fit, the same for both objectives
    out: dict[str, Any] = {}
    with jax.enable_x64(True):
        problem = linear_problem(pretrained, data, labels=labels)
        spec = spectrum(problem)
        probe = ZeroShotProbe.of(pretrained, data)
        sd_lam = REGISTRY["static_sd"].strategy.lam
        lr = float(default_lr(spec.sigma_sq[0], sd_lam))
        w0 = np.asarray(problem.w0)
        for name in config.strategies:
            strategy = entry(name).strategy
            for t in config.horizons:
                if has_teacher(strategy) or isinstance(strategy, Direct):
                    lam = strategy.lam if has_teacher(strategy) else 0.0
                    schedule = strategy.schedule(t) if has_teacher(strategy) else static_teacher()
                    res = spectral_dynamics(problem, lam, schedule, steps=t, lr=lr,
                                            record_every=_record_every(t, config),
                                            spectrum=spec)
                    w = np.asarray(res.student)
                    row = {"gap": float(res.summary.gap[-1]), "bias": float(res.summary.bias[-1]),
                           "gap_curve": np.asarray(res.summary.gap).tolist(),
                           "curve_steps": np.asarray(res.steps).tolist()}
                else:
                    w = np.asarray(solve(problem, strategy.linear(problem, t)))
                    row = {"converged": True}
                row.update(predicted_forgetting(probe, w0, w))
                out.setdefault(name, {})[str(t)] = row
    return out


def _record_every(t: int, config: HorizonConfig) -> int:
    return max(1, min(config.finetune.log_every, t))


def summarize(records, config: HorizonConfig) -> dict[str, Any]:
    """``{setting: {strategy: {T: {metric: [mean, std, per-seed values]}}}}``."""
    out: dict[str, Any] = {}
    for setting, per_strategy in records.items():
        for name, per_t in per_strategy.items():
            for t, per_seed in per_t.items():
                row = {}
                keys = [k for k, v in next(iter(per_seed.values())).items()
                        if isinstance(v, int | float) or v is None]
                for k in keys:
                    values = [r[k] for r in per_seed.values()]
                    finite = [float(v) for v in values if v is not None]
                    row[k] = {"mean": float(np.mean(finite)) if finite else None,
                              "std": float(np.std(finite)) if finite else None,
                              "seeds": values}
                out.setdefault(setting, {}).setdefault(name, {})[t] = row
    return out


def summarize_theory(theory, config: HorizonConfig) -> dict[str, Any]:
    """Seed means of the predictions, with the per-seed gap curves of the longest horizon."""
    out: dict[str, Any] = {}
    for setting, per_seed in theory.items():
        seeds = list(per_seed)
        for name in config.strategies:
            for t in map(str, config.horizons):
                rows = [per_seed[s][name][t] for s in seeds]
                row = {k: float(np.mean([r[k] for r in rows]))
                       for k in ("predicted_forgetting", "predicted_logit_change", "gap", "bias")
                       if k in rows[0]}
                if "gap_curve" in rows[0]:
                    row["curve_steps"] = rows[0]["curve_steps"]
                    row["gap_curve"] = np.mean([r["gap_curve"] for r in rows], axis=0).tolist()
                out.setdefault(setting, {}).setdefault(name, {})[t] = row
    return out


def _runs_without_curves(records) -> dict[str, Any]:
    return {s: {n: {t: {seed: {k: v for k, v in r.items() if k != "curves"}
                        for seed, r in per_seed.items()}
                    for t, per_seed in per_t.items()}
                for n, per_t in per_s.items()}
            for s, per_s in records.items()}


def _curves(records, config: HorizonConfig) -> dict[str, Any]:
    """The curves of every run, once per run: ``{setting: {strategy: {run T: {seed: curves}}}}``
    (the strategies that run once to the longest horizon have one run)."""
    out: dict[str, Any] = {}
    for setting, per_strategy in records.items():
        for name, per_t in per_strategy.items():
            for per_seed in per_t.values():
                for seed, r in per_seed.items():
                    out.setdefault(setting, {}).setdefault(name, {}).setdefault(
                        str(r["run_steps"]), {})[seed] = r["curves"]
    return out


def _mean(summary, setting, name, t, key="forgetting"):
    return summary[setting][name][str(t)][key]["mean"]


def _std(summary, setting, name, t, key="forgetting"):
    return summary[setting][name][str(t)][key]["std"]


def _label(name: str) -> str:
    """The vocabulary's label of a strategy, its hyperparameters spelled out (``EMA SD (0.99)``
    beside ``EMA SD (0.999)``)."""
    return entry(name).full_label


def verdicts(payload: dict[str, Any], config: HorizonConfig) -> dict[str, list[str]]:
    """In words, per setting, measured and predicted: does EMA SD's forgetting rise toward
    Direct FT's as T grows (collapse harms), and does WMA SD stay below EMA SD, at which T."""
    summary, theory = payload["summary"], payload["theory"]
    hs = config.horizons
    out: dict[str, list[str]] = {}
    for setting in summary:
        lines = []
        names = summary[setting]
        for ema in ("ema_sd", "ema999_sd"):
            if ema not in names or "direct" not in names:
                continue
            label = _label(ema)
            first, last = _mean(summary, setting, ema, hs[0]), _mean(summary, setting, ema, hs[-1])
            noise = np.hypot(_std(summary, setting, ema, hs[0]),
                             _std(summary, setting, ema, hs[-1]))
            direct = _mean(summary, setting, "direct", hs[-1])
            rise = last - first
            word = ("rises" if rise > max(noise, 0.5) else
                    "falls" if rise < -max(noise, 0.5) else "stays flat")
            lines.append(f"measured: {label} forgetting {word} from {first:.1f} (T={hs[0]}) to "
                         f"{last:.1f} (T={hs[-1]}) points (seed spread {noise:.1f}); "
                         f"{_label('direct')} {direct:.1f} at T={hs[-1]} — collapse "
                         + ("harms" if word == "rises" else "does not harm") + " here")
            p_first = theory[setting][ema][str(hs[0])]["predicted_forgetting"]
            p_last = theory[setting][ema][str(hs[-1])]["predicted_forgetting"]
            p_direct = theory[setting]["direct"][str(hs[-1])]["predicted_forgetting"]
            lines.append(f"predicted: {label} forgetting {p_first:.1f} → {p_last:.1f} points "
                         f"({_label('direct')} {p_direct:.1f} at T={hs[-1]}); final gap "
                         f"{theory[setting][ema][str(hs[0])]['gap']:.3g} → "
                         f"{theory[setting][ema][str(hs[-1])]['gap']:.3g}")
        if "wma_sd" in names and "ema_sd" in names:
            below = [t for t in hs if _mean(summary, setting, "wma_sd", t)
                     < _mean(summary, setting, "ema_sd", t)]
            diffs = ", ".join(f"T={t}: {_mean(summary, setting, 'wma_sd', t):.1f} vs "
                              f"{_mean(summary, setting, 'ema_sd', t):.1f}" for t in hs)
            lines.append(f"measured: {_label('wma_sd')} below {_label('ema_sd')} at T ∈ "
                         f"{below or 'none'} ({diffs})")
            p_below = [t for t in hs if theory[setting]["wma_sd"][str(t)]["predicted_forgetting"]
                       < theory[setting]["ema_sd"][str(t)]["predicted_forgetting"]]
            lines.append(f"predicted: {_label('wma_sd')} below {_label('ema_sd')} at T ∈ "
                         f"{p_below or 'none'}")
        out[setting] = lines
    return out


TABLE = (("forgetting", "forget"), ("id_acc", "ID"), ("ood_flipped_acc", "OOD flip"),
         ("gap_logit_kl", "gap KL"), ("half_forgetting_step", "half step"))


def format_horizon(payload: dict[str, Any]) -> str:
    """The (setting × strategy × T) table, mean ± std over seeds, the theory's predicted
    forgetting, and the verdicts."""
    lines = []
    for setting, per_strategy in payload["summary"].items():
        lines.append(f"\n== {setting.replace('_noise', ', label noise ')}")
        head = f"{'strategy':22s}{'T':>6s}" + "".join(f" {h:>16s}" for _, h in TABLE) + \
            f"{'predicted':>11s}"
        lines += [head, "-" * len(head)]
        for name, per_t in per_strategy.items():
            for t, row in per_t.items():
                cells = []
                for key, _ in TABLE:
                    v = row.get(key)
                    cells.append("—" if v is None or v["mean"] is None else
                                 f"{v['mean']:.2g} ± {v['std']:.1g}" if key.startswith("gap")
                                 else f"{v['mean']:.1f} ± {v['std']:.1f}")
                pred = payload["theory"][setting][name][t]["predicted_forgetting"]
                lines.append(f"{_label(name):22s}{t:>6s}"
                             + "".join(f" {c:>16s}" for c in cells) + f"{pred:11.1f}")
        lines += [f"  {v}" for v in payload["verdicts"][setting]]
    return "\n".join(lines)
