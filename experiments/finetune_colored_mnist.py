"""End to end through the user's path: the project's own pretrained tiny CLIP saved as a Hugging
Face checkpoint, ColoredMNIST written as PNG image folders, and `tracer-theory finetune --theory`
with every registered strategy, against `tracer-theory clip`'s in-memory pipeline.

    python experiments/finetune_colored_mnist.py [--work DIR] [--out DIR] [--seeds 0 1]

Steps (each skipped when its output exists, so a rerun resumes): (1) pretrain the tiny CLIP of
`tracer-theory clip` (seed 0, its configuration `theory.clip_config("tiny")`) and save it with
`save_clip(..., "hf", preprocessing=Preprocessing(28, **UNNORMALIZED))`; (2) `tracer-theory
export-mnist`; (3) `tracer-theory finetune` with the clip experiment's finetuning settings
(100 steps, batch 128, lr 3e-3, 10 warm-up steps, cosine) and the toy's five caption templates
(`colored_mnist_templates.txt`); (4) the check: the zero-shot accuracy on the gray test folder
against the in-memory pipeline's pretrained gray accuracy of the same model, and each strategy's
forgetting against the committed `experiments/results/clip/tiny_fair_head.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
STRATEGIES = ("direct", "l2sp", "weight_decay", "static_sd", "ema_sd", "wma_sd", "lp_ft",
              "low_lr", "proj_only", "data_hybrid")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="results/finetune_colored_mnist/work",
                        help="checkpoint and image folders (not committed)")
    parser.add_argument("--out", default=str(HERE / "results" / "finetune_colored_mnist"))
    parser.add_argument("--seeds", nargs="+", default=["0", "1"])
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    from tracer_theory.cli import main as cli
    from tracer_theory.deep.data.images import UNNORMALIZED, Preprocessing
    from tracer_theory.deep.models.weights import save_clip
    from tracer_theory.deep.studies.evaluation import evaluate
    from tracer_theory.deep.studies.experiment import pretrained_model
    from tracer_theory.deep.studies.theory import clip_config

    work = Path(args.work)
    checkpoint, images = work / "tiny_clip_seed0", work / "colored_mnist"
    config = clip_config("tiny")
    data = config.data()
    pretrained = pretrained_model(config, data, work / "pretrained", 0, not args.quiet)
    if not checkpoint.exists():
        save_clip(pretrained.clip, checkpoint, "hf",
                  preprocessing=Preprocessing(28, **UNNORMALIZED))
    if not (images / "gray_train").exists():
        if cli(["export-mnist", "--out", str(images)]):
            return 1
    code = cli(["finetune", "--checkpoint", str(checkpoint),
                "--train", str(images / "train"), "--val", str(images / "val"),
                "--eval", f"gray={images / 'gray_test'}:proxy",
                "--eval", f"id={images / 'test_id'}:id",
                "--eval", f"ood_flipped={images / 'test_flipped'}:shifted",
                "--eval", f"ood_neutral={images / 'test_neutral'}:shifted",
                "--replay", str(images / "gray_train"),
                "--templates", str(HERE / "colored_mnist_templates.txt"),
                "--strategy", *STRATEGIES, "--seeds", *args.seeds,
                "--steps", "100", "--batch-size", "128", "--lr", "3e-3",
                "--warmup-steps", "10", "--log-every", "10", "--theory",
                "--out", args.out, *(["--quiet"] if args.quiet else [])])
    if code:
        return code
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    in_memory = evaluate(pretrained, data, "head")["gray_acc"]
    from_folders = summary["pretrained"][args.seeds[0]]["gray_zs_acc"]
    print(f"\npretrained gray zero-shot accuracy: in memory {in_memory!r}, from the folders "
          f"{from_folders!r} ({'equal' if in_memory == from_folders else 'DIFFERENT'})")
    clip_run = json.loads((HERE / "results" / "clip" / "tiny_fair_head.json").read_text())
    print(f"\n{'strategy':16s}{'finetune (folders)':>22s}{'clip (in memory)':>22s}  within")
    rows = {}
    for name in (*STRATEGIES, "wise_ft(0.25)", "wise_ft(0.5)", "wise_ft(0.75)"):
        ours, theirs = summary["summary"][name]["forgetting"], clip_run["summary"][name][
            "forgetting"]
        # within the seeds' spread: the mean ± std intervals overlap
        within = abs(ours[0] - theirs[0]) <= ours[1] + theirs[1]
        rows[name] = {"finetune": ours, "clip": theirs, "within": within}
        print(f"{name:16s}{ours[0]:12.2f} ± {ours[1]:5.2f}{theirs[0]:14.2f} ± {theirs[1]:5.2f}"
              f"  {'yes' if within else 'NO'}")
    comparison = {"pretrained_gray_acc": {"in_memory": in_memory, "folders": from_folders},
                  "forgetting": rows}
    from tracer_theory._io import write_json_atomic

    write_json_atomic(Path(args.out) / "comparison.json", comparison)
    return 0


if __name__ == "__main__":
    sys.exit(main())
