"""Finetune any CLIP on any task with every strategy, measure forgetting, and ask the theory.

``run_task(clip, tokenize, task, config, out_dir)``: per seed, the pretrained ``clip`` with a
fresh linear head (seeded ``fold_in(key(seed), 1)``, as the toy experiment's) is finetuned on
``task.train`` with every strategy of ``config`` through the one loop (``loop.finetune``: held
on the device or streamed, ``config.source``), each run resumable (its JSON keyed by the task's
and the weights' fingerprints, the seed, the sampler, the strategy and its training; its
training state checkpointed). Every evaluation set is scored after finetuning through the
finetuned classifier (accuracy, dataset-level ECE) and zero-shot; the forgetting on a proxy set
is its zero-shot accuracy before minus after (``forgetting``: the first proxy set's). WiSE-FT
interpolates Direct FT post hoc. With ``config.theory`` the linearization at the loaded model
on a class-balanced sample of the training images predicts each strategy's forgetting on the
first proxy set (rung R0 of the error budget: its closed form or exact finite-horizon teacher
dynamics), beside the measurement, with Spearman ρ; with the ``prompts`` objective rung R1 (the
last layer trained by the deep step on the same sample, features fixed) as well.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..._cache import array_digest, cache_key, read_record
from ..._io import write_json_atomic
from ..._progress import bar as progress_bar
from ...errors import InputError, MemoryBudgetExceeded
from ...linear.closed_forms import solve
from ..data.images import Preprocessing
from ..data.task import Split, Task, balanced
from ..finetune.config import FinetuneConfig
from ..finetune.finetunee import Finetunee
from ..finetune.loop import SAMPLER, finetune, finetune_on
from ..finetune.memory import step_memory
from ..finetune.strategies import (
    FLYP,
    Direct,
    Restricted,
    Strategy,
    describe,
    has_teacher,
    registered,
)
from ..finetune.stream import SOURCES, Source, check_workers
from ..models import DualEncoder
from ..parallel import Mesh, to_host
from .evaluation import _logits_task, _logits_zero_shot, _scores, chunked, gap_summary, wise_ft
from .experiment import summarize
from .theory import ZeroShotProbe, compare, linearize, predicted_forgetting


@dataclasses.dataclass(frozen=True)
class TaskRunConfig:
    """A run set: ``strategies`` ((name, strategy) pairs), their shared training
    ``finetune``, the ``seeds``, WiSE-FT's ``wise_alphas``, the data ``source`` and loader
    ``workers``; ``theory`` compares with the linear theory on ``theory_samples`` training
    images under ``theory_memory_gb``; ``save`` a layout (``"hf"``, ``"open_clip"``) to write
    each finetuned model in with ``save_clip``."""

    strategies: tuple[tuple[str, Strategy], ...]
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    seeds: tuple[int, ...] = (0,)
    wise_alphas: tuple[float, ...] = (0.25, 0.5, 0.75)
    source: Source = "auto"
    workers: int = 0
    theory: bool = False
    theory_samples: int = 500
    theory_memory_gb: float = 4.0
    save: str | None = None

    def __post_init__(self):
        strategies = tuple((str(n), s) for n, s in self.strategies)
        if not strategies:
            raise ValueError("strategies must name at least one strategy")
        names = [n for n, _ in strategies]
        if len(set(names)) != len(names):
            raise ValueError(f"strategy names must be distinct, got {names}")
        for name, strategy in strategies:
            if not isinstance(strategy, Strategy):
                raise TypeError(f"strategy {name!r} must be a Strategy, got "
                                f"{type(strategy).__name__}")
        object.__setattr__(self, "strategies", strategies)
        seeds = tuple(self.seeds)
        if not seeds or len(set(seeds)) != len(seeds) or any(
                isinstance(s, bool) or not isinstance(s, int | np.integer) or not 0 <= s < 2**32
                for s in seeds):
            raise ValueError(f"seeds must be distinct integers in [0, 2**32), got {list(seeds)}")
        object.__setattr__(self, "seeds", tuple(int(s) for s in seeds))
        if not all(0 <= a <= 1 for a in self.wise_alphas):
            raise ValueError(f"wise_alphas must be in [0, 1], got {list(self.wise_alphas)}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        check_workers(self.workers, 1)
        if isinstance(self.theory_samples, bool) or not isinstance(
                self.theory_samples, int) or self.theory_samples < 2:
            raise ValueError(f"theory_samples must be an integer >= 2, got "
                             f"{self.theory_samples!r}")
        if not self.theory_memory_gb > 0:
            raise ValueError(f"theory_memory_gb must be > 0, got {self.theory_memory_gb!r}")
        if self.save not in (None, "hf", "open_clip"):
            raise ValueError(f"save must be None, 'hf' or 'open_clip', got {self.save!r}")


#: Strategies a task runs beyond the registry's (``finetune_strategies``): FLYP needs a task's
#: class prompts, so the toy experiments, which run the whole registry, leave it out.
TASK_STRATEGIES: dict[str, Strategy] = {"flyp": FLYP()}


def finetune_strategies(names: tuple[str, ...]) -> tuple[tuple[str, Strategy], ...]:
    """``(name, strategy)`` of ``names`` from the registry and ``TASK_STRATEGIES``; a
    ``ValueError`` lists the known names."""
    known = {**registered(), **TASK_STRATEGIES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; known: {list(known)}")
    return tuple((n, known[n]) for n in names)


def evaluate_task(model: Finetunee, task: Task, prompts: np.ndarray, objective: str,
                  zero_shot_only: bool = False) -> dict[str, float]:
    """Per evaluation set ``s`` (scored over its own classes): ``s_zs_acc`` / ``s_zs_ece``
    (zero-shot with ``model``'s class embeddings of ``prompts`` (K, P, L), the text tower as
    finetuned) and, unless ``zero_shot_only``, ``s_acc`` / ``s_ece`` through the finetuning
    classifier (``objective``)."""
    clip = model.clip
    emb = clip.class_embeddings(jnp.asarray(prompts))
    out: dict[str, float] = {}
    for name, split in task.evals.items():
        cols = task.columns(split)
        labels = _local(split, cols)
        scores = _scores(chunked(lambda x, e=emb[cols]: _logits_zero_shot(clip, x, e),
                                 split.images), labels)
        out[f"{name}_zs_acc"], out[f"{name}_zs_ece"] = scores["acc"], scores["ece"]
        if not zero_shot_only:
            logits = chunked(lambda x: _logits_task(model, x, emb, objective), split.images)
            scores = _scores(logits[:, cols], labels)
            out[f"{name}_acc"], out[f"{name}_ece"] = scores["acc"], scores["ece"]
    return out


def _local(split: Split, cols: np.ndarray) -> np.ndarray:
    """``split``'s labels as positions among ``cols`` (the classes it is scored over)."""
    position = np.full(int(cols.max()) + 1, -1)
    position[cols] = np.arange(len(cols))
    return position[split.labels]


def fresh_model(clip: DualEncoder, n_classes: int, seed: int) -> Finetunee:
    """``clip`` with a new linear head (width → ``n_classes``), seeded as the toy experiment's
    (``fold_in(key(seed), 1)``)."""
    head = eqx.nn.Linear(clip.image_proj.in_features, n_classes, dtype=jnp.float32,
                         key=jax.random.fold_in(jax.random.key(seed), 1))
    return Finetunee(clip, head)


def run_task(clip: DualEncoder, tokenize, task: Task, config: TaskRunConfig,
             out_dir: str | Path, *, progress: bool = True, mesh: Mesh | None = None,
             overwrite: bool = False, preprocessing: Preprocessing | None = None,
             checkpoint: str = "") -> dict[str, Any]:
    """Run (or resume) every strategy of ``config`` on ``task`` (see the module); returns the
    payload, written to ``<out_dir>/summary.json``. ``tokenize``: texts → (n, L) token ids (the
    model's tokenizer); ``preprocessing``: written with saved models; ``checkpoint``: where
    ``clip`` came from (recorded)."""
    out_dir = Path(out_dir)
    proxies = task.proxies()
    if not proxies:
        raise InputError("the task has no evaluation set with role 'proxy': forgetting is the "
                         "zero-shot accuracy drop on one (e.g. --eval NAME=DIR:proxy)")
    ft = config.finetune
    prompts = task.prompts(tokenize)
    class_emb = clip.class_embeddings(jnp.asarray(prompts))
    # strategies that need the task's class prompts (FLYP's captions) get them here
    config = dataclasses.replace(config, strategies=tuple(
        (name, s.with_prompts(prompts)) for name, s in config.strategies))
    needs_replay = [n for n, s in config.strategies if s.hybrid_size(ft.batch_size)]
    if needs_replay and task.replay is None:
        raise InputError(f"strategies {needs_replay} mix replay images into their batches: the "
                         "task needs replay data (--replay DIR)")
    if len(task.train) < ft.batch_size:
        raise InputError(f"the training split has {len(task.train)} images, fewer than "
                         f"batch_size = {ft.batch_size} (--batch-size)")
    theory_sample = None
    if config.theory:
        theory_sample = _theory_sample(clip, task, config)  # memory checked before any work
    weights = array_digest(eqx.filter(clip, eqx.is_array))
    fingerprint = task.fingerprint()
    base = fresh_model(clip, len(task.classes), config.seeds[0])
    before = evaluate_task(base, task, prompts, ft.objective, zero_shot_only=True)
    results: dict[str, Any] = {"pretrained": {}, "runs": {}}
    first = next(iter(proxies))
    for seed in config.seeds:
        pretrained = fresh_model(clip, len(task.classes), seed)
        results["pretrained"][str(seed)] = before
        for name, strategy in config.strategies:
            key = cache_key({"task": fingerprint, "weights": weights, "seed": seed,
                             "sampler": SAMPLER, "strategy": describe(strategy),
                             "training": dataclasses.asdict(ft),
                             "wise_alphas": list(config.wise_alphas)})
            path = out_dir / "runs" / f"seed{seed}_{name}.json"
            done = read_record(path, key, overwrite=overwrite, fields=("forgetting",))
            if done is not None:
                results["runs"].setdefault(name, {})[str(seed)] = done
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            run = finetune_on(
                task, pretrained, strategy, ft, class_emb=class_emb, prompts=prompts, seed=seed,
                mesh=mesh, progress=f"seed {seed} {name}" if progress else None,
                checkpoint=path.with_suffix(".ckpt"), checkpoint_key=key, overwrite=overwrite,
                source=config.source, workers=config.workers)
            run = run._replace(model=to_host(run.model))  # sharded over processes: gathered
            record = {"config": key, **_scored(run.model, task, prompts, ft.objective, before,
                                               first),
                      "curves": {k: np.asarray(v).tolist() for k, v in run.curves.items()}}
            if has_teacher(strategy):
                record["gap"] = gap_summary(run.curves)
            if isinstance(strategy, Direct):
                record["wise_ft"] = {f"{a:g}": _scored(wise_ft(pretrained, run.model, a), task,
                                                       prompts, ft.objective, before, first)
                                     for a in config.wise_alphas}
            if config.save is not None:
                from ..models.weights import save_clip

                save_clip(run.model.clip, out_dir / "models" / f"seed{seed}_{name}", config.save,
                          preprocessing=preprocessing)
            write_json_atomic(path, record)
            path.with_suffix(".ckpt").unlink(missing_ok=True)
            results["runs"].setdefault(name, {})[str(seed)] = record
        for per_seed in list(results["runs"].values()):
            for alpha, rec in per_seed.get(str(seed), {}).get("wise_ft", {}).items():
                results["runs"].setdefault(f"wise_ft({alpha})", {})[str(seed)] = rec
    payload = {"task": {"name": task.name, "source": task.source, "classes": list(task.classes),
                        "evals": {n: s.role for n, s in task.evals.items()},
                        "sizes": {"train": len(task.train), "val": len(task.val),
                                  **{n: len(s) for n, s in task.evals.items()}},
                        "fingerprint": fingerprint},
               "checkpoint": checkpoint, "weights": weights,
               "config": json.loads(json.dumps(_describe(config), default=str)),
               "environment": {"jax": jax.__version__, "backend": jax.default_backend(),
                               "python": platform.python_version()},
               "proxy": first, **results, "summary": summarize(results),
               "memory": {name: step_memory(base, s, ft, mesh)._asdict()
                          for name, s in config.strategies}}
    if theory_sample is not None:
        payload["theory"] = _theory(clip, task, config, prompts, payload, theory_sample,
                                    out_dir, progress, mesh, overwrite)
    write_json_atomic(out_dir / "summary.json", payload)
    return payload


def _scored(model, task, prompts, objective, before, first) -> dict[str, float]:
    """The evaluation of ``model`` with each proxy set's forgetting (and ``forgetting``, the
    first proxy set's)."""
    after = evaluate_task(model, task, prompts, objective)
    drops = {f"{p}_forgetting": before[f"{p}_zs_acc"] - after[f"{p}_zs_acc"]
             for p in task.proxies()}
    return {**after, **drops, "forgetting": drops[f"{first}_forgetting"]}


def _describe(config: TaskRunConfig) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    out["strategies"] = {name: describe(s) for name, s in config.strategies}
    return out


def theory_bytes(width: int, text_width: int, n: int, n_proxy: int) -> int:
    """The float64 bytes the comparison holds at once: the sample's image and text features,
    the proxy set's features and the closed forms' width × width and n × n matrices (four of
    each: the solver's products, factorizations and workspace)."""
    return 8 * (n * (width + text_width) + n_proxy * width + 4 * (width ** 2 + n ** 2))


def _theory_sample(clip: DualEncoder, task: Task, config: TaskRunConfig) -> np.ndarray:
    """The class-balanced training sample the theory linearizes on, after checking that the
    comparison fits ``config.theory_memory_gb`` (``MemoryBudgetExceeded`` naming the flags)."""
    n = min(config.theory_samples, len(task.train))
    proxy = next(iter(task.proxies().values()))
    need = theory_bytes(clip.image_proj.in_features, clip.text_proj.in_features, n, len(proxy))
    if need > config.theory_memory_gb * 2**30:
        raise MemoryBudgetExceeded(
            f"the theory on {n} training images and {len(proxy)} proxy images needs about "
            f"{need / 2**30:.2f} GiB, above theory_memory_gb = {config.theory_memory_gb:g} "
            "(--theory-memory-gb); lower --theory-samples or raise the budget")
    return balanced(task.train.labels, n)


def _theory(clip, task: Task, config: TaskRunConfig, prompts, payload, index, out_dir: Path,
            progress: bool, mesh, overwrite: bool) -> dict[str, Any]:
    """Rung R0 (and R1 with the prompts objective) for every strategy with a linear
    counterpart, against the measured forgetting (``theory.compare``)."""
    ft = config.finetune
    name, proxy = next(iter(task.proxies().items()))
    cols = task.columns(proxy)
    pretrained = fresh_model(clip, len(task.classes), config.seeds[0])
    images = np.asarray(task.train.images[index])
    labels = task.train.labels[index]
    with jax.enable_x64(True):
        problem = linearize(pretrained, images, prompts[labels, 0])
    probe = ZeroShotProbe.on(pretrained, proxy.images, _local(proxy, cols), prompts[cols])
    rows, r1 = [], {}
    for strategy_name, strategy in progress_bar(config.strategies, desc="theory", leave=False,
                                        disable=not progress):
        with jax.enable_x64(True):
            try:
                linear = strategy.linear(problem, ft.steps)
            except ValueError:  # no linear counterpart (LP-FT, data hybrid, ...): not compared
                continue
            w = np.asarray(solve(problem, linear))
            predicted = predicted_forgetting(probe, np.asarray(problem.w0), w)
        if ft.objective == "prompts":
            r1[strategy_name] = _rung_r1(pretrained, strategy, ft, images, labels, prompts,
                                         task, payload, name, out_dir, progress, mesh,
                                         overwrite)
        for seed, record in payload["runs"][strategy_name].items():
            rows.append({"seed": int(seed), "strategy": strategy_name, "lam_field": "",
                         "lam": 0.0, "measured_forgetting": float(record["forgetting"]),
                         **predicted})
    out = compare(rows) if rows else {"points": [], "rows": [],
                                       "spearman_predicted_forgetting": None,
                                       "spearman_predicted_logit_change": None}
    out.update({"proxy": name, "samples": len(index), "R1": r1})
    return out


def _rung_r1(pretrained, strategy, ft: FinetuneConfig, images, labels, prompts, task, payload,
             proxy: str, out_dir: Path, progress, mesh, overwrite) -> float:
    """Rung R1: the last layer trained by the deep step (encoder frozen) on the theory's
    sample; its forgetting on the proxy set (resumable, keyed like the runs)."""
    restricted = Restricted(strategy)
    key = cache_key({"rung": "R1", "task": payload["task"]["fingerprint"],
                     "weights": payload["weights"], "strategy": describe(restricted),
                     "training": dataclasses.asdict(ft), "sample": array_digest(labels)})
    path = out_dir / "runs" / f"R1_{describe(strategy)['type']}_{array_digest(key)}.json"
    done = read_record(path, key, overwrite=overwrite, fields=("forgetting",))
    if done is not None:
        return float(done["forgetting"])
    batch = min(ft.batch_size, len(labels))
    model = finetune(pretrained, images, labels, restricted,
                     dataclasses.replace(ft, batch_size=batch),
                     class_emb=pretrained.clip.class_embeddings(jnp.asarray(prompts)),
                     probe=images[:8], seed=0, mesh=mesh,
                     progress="R1" if progress else None).model
    only = dataclasses.replace(task, evals={proxy: task.evals[proxy]})
    after = evaluate_task(model, only, prompts, ft.objective, zero_shot_only=True)
    forgetting = payload["pretrained"][str(next(iter(payload["pretrained"])))][
        f"{proxy}_zs_acc"] - after[f"{proxy}_zs_acc"]
    write_json_atomic(path, {"config": key, "forgetting": forgetting})
    return float(forgetting)


def format_task_table(payload: dict[str, Any]) -> str:
    """The strategy × metric table (mean ± std over seeds): forgetting on every proxy set,
    then accuracy on every other evaluation set through the finetuned classifier."""
    evals = payload["task"]["evals"]
    columns = ["forgetting", *[f"{n}_forgetting" for n, r in evals.items() if r == "proxy"][1:]]
    columns += [f"{n}_zs_acc" for n, r in evals.items() if r == "proxy"]
    columns += [f"{n}_acc" for n, r in evals.items() if r != "proxy"]
    columns += [f"{n}_ece" for n, r in evals.items() if r == "id"]
    summary = payload["summary"]
    width = max(len(s) for s in summary) + 2
    head = "strategy".ljust(width) + "".join(c.rjust(max(17, len(c) + 2)) for c in columns)
    lines = [head, "-" * len(head)]
    for strategy, metrics in summary.items():
        cells = [(f"{metrics[c][0]:.2f} ± {metrics[c][1]:.2f}" if c in metrics else "—"
                  ).rjust(max(17, len(c) + 2)) for c in columns]
        lines.append(strategy.ljust(width) + "".join(cells))
    return "\n".join(lines)


__all__ = ["TASK_STRATEGIES", "TaskRunConfig", "evaluate_task", "finetune_strategies",
           "format_task_table", "fresh_model", "run_task", "theory_bytes"]
