"""The MNIST → ColoredMNIST forgetting experiment (THEORY §6), end to end, for the toy CNN CLIP
or a transformer CLIP preset.

``run_experiment(config, out_dir)``: fixed stratified splits; per seed, contrastive pretraining
on gray digits (cached as an equinox checkpoint); every strategy of the protocol finetuned on
ColoredMNIST (p = 0.95) with its metrics written to one JSON file per (seed, strategy), so an
interrupted run resumes where it stopped; WiSE-FT evaluated post hoc from Direct FT; then the
summary (mean ± std over seeds) written atomically to ``<out_dir>/<name>.json``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..._cache import cache_key, check_keyed, key_digest, keyed_header, read_record
from ..._io import write_json_atomic
from ..finetune.checkpoints import load_model, save_model
from ..finetune.config import FinetuneConfig, PretrainConfig
from ..finetune.finetunee import Finetunee
from ..finetune.loop import SAMPLER, finetune_on
from ..finetune.pretraining import pretrain
from ..finetune.strategies import Direct, Strategy, describe, has_teacher
from ..models import make_model, preset
from ..parallel import Mesh
from .arrays import ExperimentData
from .evaluation import evaluate, gap_summary, wise_ft
from .geometry import decomposition, task_bases
from .protocols import PROTOCOLS, Fair, Protocol


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: protocol, objective, seeds, data, budgets. ``finetune`` is the base
    training config the protocol builds each strategy's from; ``quick`` shrinks everything for
    tests (a 1,000-digit subset, tiny budgets, one seed)."""

    protocol: Protocol = dataclasses.field(default_factory=Fair)
    objective: Literal["head", "prompts"] = "head"
    seeds: tuple[int, ...] = (0, 1, 2)
    mnist: str | None = None
    pretrain: PretrainConfig = dataclasses.field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    wise_alphas: tuple[float, ...] = (0.25, 0.5, 0.75)
    quick: bool = False

    def __post_init__(self) -> None:
        seeds = tuple(self.seeds)
        if not seeds:
            raise ValueError("seeds must name at least one seed")
        for seed in seeds:
            if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not (
                    0 <= seed < 2**32):
                raise ValueError(f"seeds must be integers in [0, 2**32), got {seed!r}")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {list(seeds)}")
        object.__setattr__(self, "seeds", tuple(int(s) for s in seeds))

    @property
    def name(self) -> str:
        model = "" if self.pretrain.model == "toy" else f"{preset(self.pretrain.model).name}_"
        return f"{model}{self.protocol.name}_{self.objective}" + ("_quick" if self.quick else "")

    def plan(self, n_train: int) -> dict[str, tuple[Strategy, FinetuneConfig]]:
        """``{name: (strategy, training config)}`` of every run, from the protocol."""
        base = dataclasses.replace(self.finetune, objective=self.objective)
        return self.protocol.plan(base, n_train, self.quick)

    def data(self) -> ExperimentData:
        """The experiment's arrays."""
        return ExperimentData(self.mnist, self.pretrain.model, self.quick)

    def describe(self) -> dict[str, Any]:
        """The configuration as JSON-ready values (strategies by ``describe``)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["protocol"] = self.protocol.name
        fields["strategies"] = {name: describe(strategy)
                                for name, (strategy, _) in self.plan(1).items()}
        for key in ("pretrain", "finetune"):
            fields[key] = dataclasses.asdict(fields[key])
        return json.loads(json.dumps(fields, default=str))


def quick_config(**overrides: Any) -> ExperimentConfig:
    """A configuration that runs the whole pipeline in well under a minute."""
    base = dict(seeds=(0,), quick=True, pretrain=PretrainConfig(steps=30, batch_size=64),
                finetune=FinetuneConfig(steps=6, batch_size=64, log_every=3))
    return ExperimentConfig(**(base | overrides))


#: The toy experiment's three tables, as (protocol, objective).
TOY_PLAN = (("fair", "head"), ("paper", "head"), ("fair", "prompts"))


def toy_configs(plan: Sequence[tuple[str, str]], *, quick: bool,
                seeds: Sequence[int] | None = None, mnist: str | None = None
                ) -> list[ExperimentConfig]:
    """One configuration per (protocol name, objective) of ``plan``: ``quick_config`` or the
    full budgets, over ``seeds`` (default: seed 0 when ``quick``, else seeds 0, 1, 2)."""
    seeds = ((0,) if quick else (0, 1, 2)) if seeds is None else tuple(seeds)
    make = quick_config if quick else ExperimentConfig
    return [make(protocol=PROTOCOLS[p], objective=o, mnist=mnist, seeds=seeds) for p, o in plan]


def run_key(config: ExperimentConfig, data: ExperimentData, seed: int, strategy: Strategy,
            training: FinetuneConfig) -> dict[str, Any]:
    """Everything one run's result depends on, JSON-ready: the data's fingerprint, the seed,
    how batches are drawn (``loop.SAMPLER``), pretraining, the strategy and its training (and
    the WiSE-FT α grid for Direct FT). A
    result file is reused only when its key equals this."""
    key = {"data": data.fingerprint, "seed": seed, "sampler": SAMPLER,
           "pretrain": dataclasses.asdict(config.pretrain), "strategy": describe(strategy),
           "training": dataclasses.asdict(training)}
    if isinstance(strategy, Direct):
        key["wise_alphas"] = list(config.wise_alphas)
    return cache_key(key)


def run_experiment(config: ExperimentConfig, out_dir: str | Path = "results/toy", *,
                   progress: bool = True, mesh: Mesh | None = None,
                   data: ExperimentData | None = None, overwrite: bool = False
                   ) -> dict[str, Any]:
    """Run (or resume) the experiment; returns and writes ``<out_dir>/<name>.json``.

    ``config.pretrain.model`` picks the toy CNN CLIP or a transformer CLIP preset; ``mesh`` (a
    ``parallel.data_mesh``) splits every batch over its devices; ``data`` the experiment's
    arrays when the caller has already built them. A finished (seed, strategy) file in
    ``out_dir`` is reused only when it was written for the same data and configuration
    (``run_key``), else ``ResumeMismatch``; ``overwrite`` reruns and replaces it. Folders are
    created with the first result, so a run that fails early leaves nothing behind."""
    out_dir = Path(out_dir)
    run_dir = out_dir / config.name
    data = config.data() if data is None else data
    plan = config.plan(len(data.train_labels))
    keys = {(seed, name): run_key(config, data, seed, strategy, ft_config)
             for seed in config.seeds for name, (strategy, ft_config) in plan.items()}
    # finished runs, read once; a folder of other settings is refused before any training
    finished = {at: read_record(run_dir / f"seed{at[0]}_{at[1]}.json", key, overwrite=overwrite,
                            fields=("forgetting", "gray_acc", "id_acc"))
                for at, key in keys.items()}
    check_pretrained(config, data, out_dir, overwrite)
    results: dict[str, Any] = {"pretrained": {}, "runs": {}}
    for seed in config.seeds:
        pretrained = pretrained_model(config, data, out_dir, seed, progress, mesh, overwrite)
        before = evaluate(pretrained, data, config.objective)
        bases = task_bases(pretrained, data)
        results["pretrained"][str(seed)] = before
        class_emb = pretrained.clip.class_embeddings(jnp.asarray(data.captions))
        task = data.task()  # what the loop runs on: the training split, replay and probes
        for name, (strategy, ft_config) in plan.items():
            path = run_dir / f"seed{seed}_{name}.json"
            key, done = keys[seed, name], finished[seed, name]
            if done is not None:
                results["runs"].setdefault(name, {})[str(seed)] = done
                continue
            model, curves, _ = finetune_on(
                task, pretrained, strategy, ft_config, class_emb=class_emb,
                prompts=data.captions, seed=seed, mesh=mesh,
                progress=f"seed {seed} {name}" if progress else None)
            after = evaluate(model, data, config.objective)
            record = {"config": key, **after, "forgetting": before["gray_acc"] - after["gray_acc"],
                      **decomposition(pretrained, model, bases)}
            if has_teacher(strategy):
                record["gap"] = gap_summary(curves)
            if isinstance(strategy, Direct):  # WiSE-FT interpolates Direct FT post hoc
                record["wise_ft"] = {}
                for alpha in config.wise_alphas:
                    mixed = evaluate(wise_ft(pretrained, model, alpha), data, config.objective)
                    record["wise_ft"][f"{alpha:g}"] = {
                        **mixed, "forgetting": before["gray_acc"] - mixed["gray_acc"]}
            write_json_atomic(path, record)
            results["runs"].setdefault(name, {})[str(seed)] = record
        # WiSE-FT rows, from fresh and resumed Direct-FT records alike
        for per_seed in list(results["runs"].values()):
            for alpha, rec in per_seed.get(str(seed), {}).get("wise_ft", {}).items():
                results["runs"].setdefault(f"wise_ft({alpha})", {})[str(seed)] = rec
    summary = summarize(results)
    payload = {"config": config.describe(), "data": data.source,
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


def pretrain_key(config: ExperimentConfig, data: ExperimentData, seed: int) -> dict[str, Any]:
    """Everything a seed's pretrained model depends on (its config, the data's fingerprint, the
    sampler and the seed): the key its checkpoint is written with and reused for."""
    return cache_key({"model": "pretrained", "pretrain": dataclasses.asdict(config.pretrain),
                      "data": data.fingerprint, "sampler": SAMPLER, "seed": seed})


def pretrained_path(config: ExperimentConfig, data: ExperimentData, out_dir: Path, seed: int
                    ) -> Path:
    """Where the seed's pretrained model is cached: named after a hash of its key without the
    seed, so protocols share one checkpoint per seed and other settings never collide."""
    key = pretrain_key(config, data, 0)
    del key["seed"]
    return Path(out_dir) / f"pretrained_{key_digest(key, 10)}_seed{seed}.eqx"


def pretrained_model(config: ExperimentConfig, data: ExperimentData, out_dir: Path, seed: int,
                     progress: bool, mesh: Mesh | None = None, overwrite: bool = False
                     ) -> Finetunee:
    """The seed's pretrained model with a fresh 10-class head, from its checkpoint in
    ``out_dir`` (reused only for the same ``pretrain_key``; a damaged one is a
    ``DamagedArtifact`` naming it, or with ``overwrite`` made anew) or pretrained now and saved
    (an interrupted pretraining resumes from its ``.run`` checkpoint)."""
    key = jax.random.key(seed)
    ckpt = pretrained_path(config, data, out_dir, seed)
    cached = pretrain_key(config, data, seed)
    clip = make_model(config.pretrain.model, key=key, width=config.pretrain.width,
                      dim=config.pretrain.dim)
    skeleton = Finetunee(clip, eqx.nn.Linear(clip.image_proj.in_features, 10,
                                             dtype=jnp.float32, key=jax.random.fold_in(key, 1)))
    loaded = load_model(ckpt, skeleton, cached, overwrite=overwrite)
    if loaded is not None:
        return loaded
    clip = pretrain(data.gray_train, data.train_labels, data.captions, config.pretrain,
                    key=key, seed=seed, progress=f"pretrain seed {seed}" if progress else None,
                    mesh=mesh, checkpoint=ckpt.with_suffix(".run"), overwrite=overwrite)
    pretrained = eqx.tree_at(lambda m: m.clip, skeleton, clip)
    save_model(ckpt, pretrained, cached)
    ckpt.with_suffix(".run").unlink(missing_ok=True)
    return pretrained


def check_pretrained(config: ExperimentConfig, data: ExperimentData, out_dir: Path,
                     overwrite: bool = False) -> None:
    """Refuse, before any work, a pretrained checkpoint (or interrupted pretraining) of one of
    ``config.seeds`` in ``out_dir`` written for other settings or damaged (nothing with
    ``overwrite``: they are made anew)."""
    for seed in config.seeds:
        path = pretrained_path(config, data, out_dir, seed)
        check_keyed(path, pretrain_key(config, data, seed), replace=overwrite)
        if not overwrite and path.with_suffix(".run").exists():
            keyed_header(path.with_suffix(".run"))  # a damaged interrupted pretraining
