"""The forgetting–fit study (THEORY §7): every strategy's curve against the oracle frontier, and
teachers designed by gradient through the exact dynamics, on random problems of several spectra
and on the toy and tiny-CLIP linearizations.

For each problem: the (task loss, forgetting) curve of L2-SP, static SD, EMA SD (0.99), WMA SD
(Beta(½, ½)) and replay-SD over a shared λ grid; the oracle frontier over per-direction filters;
at one target task loss (static SD's at λ = 1, the paper's default) the forgetting of the
paper's teachers, of each designed family (Beta(a, b), a free-form kernel, EMA momentum,
warmed-up EMA, per-direction weights) and of replay-SD, each over the oracle's; the kernel
shapes found. ``verdicts`` says it in sentences; the figure is ``report.pareto``.
"""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..._io import write_json_atomic
from ..._progress import bar as progress_bar
from ...dynamics.design import (
    BetaFamily,
    DirectionalFamily,
    EMAFamily,
    Family,
    GridFamily,
    ScheduledEMAFamily,
    StaticFamily,
    design,
)
from ...dynamics.schedules import ema_teacher, wma_teacher
from ...dynamics.spectral import TeacherSD, default_lr
from ...linear.closed_forms import filter_factors
from ...linear.pareto import frontier, frontier_ratio, oracle_frontier, pareto, tradeoff
from ...linear.problem import LinearProblem
from ...linear.random import random_problem
from ...linear.spectrum import spectrum
from ...linear.strategies import L2SP, ReplaySD, StaticSD
from ..finetune.strategies import entry

#: Random problems: (d_I, n, d_T, k, m_pre) and the spectrum of X_I.
RANDOM = {"flat": {}, "power law": {"decay": 1.0}, "ill-conditioned": {"cond": 1e3}}
SHAPE = (60, 20, 16, 8, 200)
#: The curves' strategies (names of the strategy vocabulary, ``strategies.entry``), in plotting
#: order.
CURVES = ("l2sp", "static_sd", "ema_sd", "wma_sd", "replay_sd")
#: The designed families, by name.
FAMILIES: dict[str, type[Family]] = {
    "beta": BetaFamily, "grid": GridFamily, "ema": EMAFamily,
    "scheduled_ema": ScheduledEMAFamily, "directional": DirectionalFamily}
DESIGNED = tuple(FAMILIES)


@dataclasses.dataclass(frozen=True)
class ParetoConfig:
    """The study: ``random`` spectra (names of ``RANDOM``), deep ``models`` (``"toy"``,
    ``"tiny"``) linearized on ``n`` finetuning and ``n_pre`` gray pretraining images (seed 0),
    the teachers' horizon ``steps`` for random problems (the deep ones use their finetuning
    steps), the λ grid size, the optimizer steps of each design, the ``designs`` (names of
    ``DESIGNED``), and ``quick`` (smaller)."""

    random: tuple[str, ...] = tuple(RANDOM)
    models: tuple[str, ...] = ("toy", "tiny")
    n: int = 500
    n_pre: int = 500
    steps: int = 1000
    n_lams: int = 41
    design_steps: int = 300
    designs: tuple[str, ...] = DESIGNED
    mnist: str | None = None
    quick: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.random) - set(RANDOM)
        if unknown:
            raise ValueError(f"--random: unknown random spectra {sorted(unknown)}; known "
                             f"{list(RANDOM)}")
        if set(self.designs) - set(DESIGNED):
            raise ValueError(f"designs must be among {list(DESIGNED)}, got {self.designs}")
        if set(self.models) - {"toy", "tiny"}:
            raise ValueError(f"--models must be 'toy' and/or 'tiny', got {self.models}")
        for name in ("n", "n_pre", "steps", "n_lams", "design_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                flag = "--design-steps" if name == "design_steps" else name
                raise ValueError(f"{flag} must be a positive integer, got {value!r}")
        if not self.random and not self.models:
            raise ValueError("--random and --models name no problem to study: give at least one "
                             f"random spectrum {list(RANDOM)} or model ['toy', 'tiny']")


def quick_pareto_config(**overrides: Any) -> ParetoConfig:
    """A small study for tests: one random spectrum, no deep model, short horizons."""
    values = dict(random=("power law",), models=(), steps=50, n_lams=7, design_steps=10,
                  designs=("grid",), quick=True)
    return ParetoConfig(**(values | overrides))


def curve_families(problem: LinearProblem, steps: int) -> dict[str, Any]:
    """``{name: λ -> Strategy}`` of the curves, the teachers over ``steps`` steps."""
    top = spectrum(problem).sigma_max_sq
    return {
        "l2sp": L2SP,
        "static_sd": StaticSD,
        "ema_sd": lambda lam: TeacherSD(lam, ema_teacher(0.99), steps=steps,
                                        lr=default_lr(top, lam)),
        "wma_sd": lambda lam: TeacherSD(lam, wma_teacher(steps), steps=steps,
                                        lr=default_lr(top, lam)),
        "replay_sd": ReplaySD,
    }


def design_families(steps: int) -> dict[str, Family]:
    """The designed families over a horizon of ``steps`` (warm-up over its first tenth)."""
    return {"beta": BetaFamily(steps), "grid": GridFamily(steps), "ema": EMAFamily(steps),
            "scheduled_ema": ScheduledEMAFamily(steps, warmup_steps=max(1, steps // 10)),
            "directional": DirectionalFamily()}


def analyse(problem: LinearProblem, steps: int, config: ParetoConfig) -> dict[str, Any]:
    """One problem's curves, oracle, paper teachers and designs (JSON-ready)."""
    spec = spectrum(problem)
    trade, front = tradeoff(problem, spectrum=spec), frontier(problem, spectrum=spec)
    lams = jnp.logspace(-3, 3, config.n_lams)
    families = curve_families(problem, steps)
    curves = pareto(problem, families, dict.fromkeys(families, lams), spectrum=spec)
    oracle = oracle_frontier(problem, 60, spectrum=spec)
    target = float(trade.task_loss(filter_factors(problem, StaticSD(1.0), spectrum=spec)))

    def point(result) -> dict[str, Any]:
        return {"task_loss": result.task_loss, "forgetting": result.forgetting,
                "oracle": result.oracle, "ratio": result.ratio,
                "reached": result.task_loss <= target + 1e-3 * (target - float(trade.floor))}

    # The paper's teachers: each family at its start (λ calibrated to the target), not designed.
    paper = {"static_sd": StaticFamily(), "ema_sd": EMAFamily(steps),
             "wma_sd": BetaFamily(steps)}
    at_target = {name: point(design(problem, family, target, steps=0, spectrum=spec,
                                    frontier=front))
                 for name, family in paper.items()}
    designed = {}
    for name, family in design_families(steps).items():
        if name not in config.designs:
            continue
        result = design(problem, family, target, steps=config.design_steps, spectrum=spec,
                        frontier=front)
        designed[name] = point(result) | {"params": family.describe(result.params)}
    replay = curves["replay_sd"]
    # Replay-SD at the target: its curve is monotone in λ; interpolate in log λ.
    log_lam = float(np.interp(target, np.asarray(replay.task_loss), np.log(np.asarray(lams))))
    replay_at = pareto(problem, ReplaySD, jnp.exp(jnp.asarray([log_lam])), spectrum=spec)
    at_target["replay_sd"] = {"task_loss": float(replay_at.task_loss[0]),
                              "forgetting": float(replay_at.forgetting[0]),
                              "lam": float(np.exp(log_lam))}
    at_target["replay_sd"]["ratio"] = float(frontier_ratio(front, replay_at)[0])
    return {
        "shape": {"d_I": problem.x_img.shape[0], "n": problem.n, "k": problem.w0.shape[0],
                  "m_pre": problem.x_pre.shape[1], "rank": int(spec.rank)},
        "steps": steps, "floor": float(trade.floor), "w0_task_loss": float(trade.most_task_loss),
        "target": target, "lams": np.asarray(lams).tolist(),
        "direct": {"task_loss": float(trade.floor),
                   "forgetting": float(trade.forgetting(jnp.ones_like(trade.d)))},
        "curves": {name: {"task_loss": np.asarray(c.task_loss).tolist(),
                          "forgetting": np.asarray(c.forgetting).tolist(),
                          "ratio": np.asarray(frontier_ratio(front, c)).tolist(),
                          "middle_ratio": _middle(c, front, trade)}
                   for name, c in curves.items()},
        "oracle": {"task_loss": np.asarray(oracle.task_loss).tolist(),
                   "forgetting": np.asarray(oracle.forgetting).tolist()},
        "at_target": at_target, "designed": designed,
    }


def _middle(curve, front, trade) -> list[float] | None:
    """``[min, max]`` forgetting ratio to the oracle over the curve's points whose task loss lies
    between 10% and 90% of the way from Direct FT's to W⁰'s (``None`` if none does): the
    ends of every curve touch the frontier trivially."""
    floor, most = float(trade.floor), float(trade.most_task_loss)
    loss = np.asarray(curve.task_loss)
    inside = (loss >= floor + 0.1 * (most - floor)) & (loss <= floor + 0.9 * (most - floor))
    if not inside.any():
        return None
    ratio = np.asarray(frontier_ratio(front, curve))[inside]
    return [float(ratio.min()), float(ratio.max())]


def random_problems(config: ParetoConfig) -> dict[str, LinearProblem]:
    d, n, d_txt, k, m = SHAPE
    return {name: random_problem(d, n, d_txt, k, m_pre=m, seed=0, **RANDOM[name])
            for name in config.random}


def deep_problem(model: str, config: ParetoConfig, cache: Path, progress: bool
                 ) -> tuple[LinearProblem, int]:
    """The linearization of the ``model``'s seed-0 pretrained CLIP (its checkpoint from
    ``cache`` or pretrained there) with ``X_pre``, and its finetuning steps."""
    from .experiment import ExperimentConfig, pretrained_model
    from .theory import clip_config, linear_problem

    experiment = (ExperimentConfig(mnist=config.mnist) if model == "toy"
                  else clip_config(model, mnist=config.mnist))
    data = experiment.data()
    pretrained = pretrained_model(experiment, data, cache, 0, progress)
    problem = linear_problem(pretrained, data, n=config.n, n_pre=config.n_pre)
    return problem, experiment.finetune.steps


def run_pareto(config: ParetoConfig, out_dir: str | Path = "results/pareto", *,
               cache: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the study (float64), write ``pareto.json`` and, when the toy is in it,
    ``designed_kernel.json`` (the free-form kernel designed on the toy's linearization, for
    ``tracer-theory teachers --kernel``). Returns the payload."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = out if cache is None else Path(cache)
    results: dict[str, Any] = {}
    with jax.enable_x64(True):
        jobs = [(f"random, {name}", lambda p=p: (p, config.steps))
                for name, p in random_problems(config).items()]
        jobs += [(f"{model} CLIP", lambda m=model: deep_problem(m, config, cache, progress))
                 for model in config.models]
        for name, build in progress_bar(jobs, desc="pareto", disable=not progress):
            problem, steps = build()
            results[name] = analyse(problem, steps, config)
    payload = {"config": dataclasses.asdict(config), "problems": results,
               "machine": {"platform": platform.platform(), "jax": jax.__version__}}
    payload["verdicts"] = verdicts(payload)
    write_json_atomic(out / "pareto.json", payload)
    if "toy CLIP" in results:
        grid = results["toy CLIP"]["designed"]["grid"]
        write_json_atomic(out / "designed_kernel.json",
                          {"log_values": grid["params"]["log_values"],
                           "lam": grid["params"]["lam"],
                           "source": "GridFamily designed on the toy CLIP's linearization at "
                                     "static SD's (λ = 1) task loss (tracer-theory pareto)"})
    return payload


def label_of(key: str) -> str:
    """The name of a curve's strategy (the vocabulary's label, hyperparameters spelled out) or
    of a designed family (``Family.label``)."""
    return FAMILIES[key].label if key in FAMILIES else entry(key).full_label


def _kernel(params: dict[str, Any]) -> str:
    if "a" in params:
        return f"a = {params['a']:.2f}, b = {params['b']:.2f}, λ = {params['lam']:.3g}"
    if "momentum_from" in params:
        return (f"m {params['momentum_from']:.3f} → {params['momentum']:.4f}, "
                f"λ = {params['lam']:.3g}")
    if "momentum" in params:
        return f"m = {params['momentum']:.4f}, λ = {params['lam']:.3g}"
    if "log_values" in params:
        v = np.exp(np.asarray(params["log_values"]))
        third = max(1, len(v) // 3)
        ends = 0.5 * (v[:third].mean() + v[-third:].mean())
        return (f"ends/middle weight {ends / v[third:-third].mean():.2f}, "
                f"early/late {v[:third].mean() / v[-third:].mean():.2f}, λ = {params['lam']:.3g}")
    lams = np.asarray(params["lams"])
    return f"λ_i from {lams.min():.3g} to {lams.max():.3g}"


def verdicts(payload: dict[str, Any]) -> dict[str, list[str]]:
    """Per problem, sentences with the numbers: how far the paper's teachers sit from the oracle
    at the target task loss, what each designed family reaches and finds, where replay-SD
    sits, and the closest each λ curve gets to the frontier."""
    out = {}
    for name, r in payload["problems"].items():
        at, designed = r["at_target"], r["designed"]
        lines = [
            f"At {label_of('static_sd')}'s (λ = 1) task loss {r['target']:.4g} "
            f"({label_of('direct')} {r['floor']:.3g}, "
            f"W⁰ {r['w0_task_loss']:.4g}), the paper's strategies forget "
            + ", ".join(f"{label_of(k)} {at[k]['ratio']:.2f}×" for k in ("static_sd", "ema_sd",
                                                                       "wma_sd"))
            + " the oracle's least forgetting over per-direction filters.",
            "Designed by gradient through the exact dynamics: "
            + "; ".join(f"{label_of(k)} {designed[k]['ratio']:.2f}× "
                        f"({_kernel(designed[k]['params'])}"
                        + ("" if designed[k]["reached"] else
                           f"; cannot reach the target in {r['steps']} steps, task loss "
                           f"{designed[k]['task_loss']:.4g}") + ")"
                        for k in DESIGNED if k in designed) + ".",
            f"{label_of('replay_sd')} (distillation on X_pre) forgets "
            f"{at['replay_sd']['ratio']:.3g}× the "
            "filter oracle at that task loss: it is the frontier over all encoders, below the "
            "filters' wherever X_pre leaves the task eigenbasis.",
            "Along the λ curves, over the middle of the task-loss range (10–90% of the way "
            f"from {label_of('direct')} to W⁰): "
            + ", ".join(f"{label_of(k)} {c['middle_ratio'][0]:.2f}–{c['middle_ratio'][1]:.2f}×"
                        for k, c in r["curves"].items()
                        if k != "replay_sd" and c["middle_ratio"] is not None) + ".",
        ]
        out[name] = lines
    return out


def format_pareto(payload: dict[str, Any]) -> str:
    """A text table: forgetting over the oracle's at the target, per problem and strategy."""
    keys = ["static_sd", "ema_sd", "wma_sd", *DESIGNED, "replay_sd"]
    header = f"{'problem':<22}" + "".join(f"{label_of(k)[:14]:>16}" for k in keys)
    rows = [header, "-" * len(header)]
    for name, r in payload["problems"].items():
        values = {**{k: r["at_target"][k]["ratio"] for k in r["at_target"]},
                  **{k: v["ratio"] for k, v in r["designed"].items()}}
        rows.append(f"{name:<22}" + "".join(f"{values[k]:>16.3g}" if k in values
                                            else f"{'—':>16}" for k in keys))
    lines = [line for sentences in payload["verdicts"].values() for line in sentences]
    return "\n".join([*rows, "", *lines])
