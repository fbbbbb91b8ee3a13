"""Calibration of the RL surface: can a training recipe beat the best decoder, and by how much?

    .venv/bin/python bench/calibration.py [--base runs/models/base] [--pretrain] [--seeds 0 1 2]
                                           [--train-seeds 0] [--recipes NAME ...] [--data-dir runs/data]
                                           [--split-size 800]

On one base (pretrained here with `--pretrain`, timed, or read from its pretrain.json):

1. sampling only: every setting of `SAMPLING` is scored on eval; the best one is scored on held-out;
2. each recipe of `RECIPES` (knob overrides and code moves of the arith scaffold) trains the base
   under the scaffold's compute budget, then every sampling setting is scored on eval and the best
   one on held-out, as a campaign would find it; with several `--train-seeds`, once a training
   seed, and the recipe's row is the mean over them (one training run is one draw of training
   noise, which the evaluation seeds' interval does not show).

Printed: the pretraining time, the base's calibration readings, a table of held-out accuracy with
its 95% interval for the best sampling-only setting and each recipe at its best sampling (over the
examples, each one's score its mean over the evaluation seeds, and over the training seeds too),
and each recipe's gain over sampling only (target: >= 5 points). Eval chooses, held-out reports,
as in a campaign.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness.config import compose_config
from model import load_policy, load_tokenizer
from rl_pipeline.corpus import pretrain_base
from rl_pipeline.data import load_splits
from rl_pipeline.evaluate import evaluate
from rl_pipeline.manifest import eval_sizes
from rl_pipeline.scaffold import load_scaffold
from rl_pipeline.stats import bootstrap_mean_ci
from rl_pipeline.train import train_grpo

REPO = Path(__file__).resolve().parents[1]
SCAFFOLD = REPO / "scaffolds" / "arith"
SAMPLING = {
    "greedy": {"sampling.temperature": 0.0},
    "T=0.3": {"sampling.temperature": 0.3},
    "T=0.7": {"sampling.temperature": 0.7},
    "T=1.0": {"sampling.temperature": 1.0},
    "T=1.0 top_k=2": {"sampling.temperature": 1.0, "sampling.top_k": 2},
}
PER_EXAMPLE = "heldout_per_example"  # a row's held-out score of each example, its mean over the seeds
# name -> (knob overrides, code moves); the scaffold starts from the libraries' defaults.
RECIPES = {
    "library defaults": ({}, []),
    "lr 3e-5": ({"grpo.learning_rate": 3e-5}, []),
    "lr 3e-5, format reward 0.5": ({"grpo.learning_rate": 3e-5, "reward.format": 0.5}, []),
    "lr 3e-5, malformed penalty": ({"grpo.learning_rate": 3e-5}, ["reward_malformed_penalty"]),
    "lr 1e-5, malformed penalty": ({"grpo.learning_rate": 1e-5}, ["reward_malformed_penalty"]),
    "lr 3e-5, malformed penalty, beta 0.04": ({"grpo.learning_rate": 3e-5, "grpo.beta": 0.04},
                                              ["reward_malformed_penalty"]),
    "lr 3e-5, malformed penalty, partial credit": ({"grpo.learning_rate": 3e-5},
                                                   ["reward_malformed_penalty", "reward_partial_credit"]),
    "lr 3e-5, malformed penalty, rollout T=0.7": ({"grpo.learning_rate": 3e-5, "grpo.temperature": 0.7},
                                                  ["reward_malformed_penalty"]),
    "lr 3e-5, malformed penalty, rollout T=0.5": ({"grpo.learning_rate": 3e-5, "grpo.temperature": 0.5},
                                                  ["reward_malformed_penalty"]),
    "lr 5e-5, malformed penalty, rollout T=0.7": ({"grpo.learning_rate": 5e-5, "grpo.temperature": 0.7},
                                                  ["reward_malformed_penalty"]),
    # what the default campaign (seed 0, 800 problems) kept: its rate, its code move, its KL weight
    "lr 3.42e-5, near-miss credit": ({"grpo.learning_rate": 3.42e-5}, ["reward_near_miss_credit"]),
    "lr 3.42e-5, near-miss credit, beta 0.167": ({"grpo.learning_rate": 3.42e-5, "grpo.beta": 0.167},
                                                 ["reward_near_miss_credit"]),
}


def scaffold_copy(moves: list[str], root: Path) -> Path:
    """The arith scaffold with `moves` applied, in a fresh folder under `root`."""
    folder = Path(tempfile.mkdtemp(dir=root))
    shutil.copytree(SCAFFOLD, folder, dirs_exist_ok=True)
    library = load_scaffold(folder, import_code=False).moves
    for name in moves:
        for patch in library[name].patches:
            path = folder / patch.file
            text = path.read_text()
            if text.count(patch.search) != 1:
                raise SystemExit(f"move {name}: its search text is not in {patch.file} exactly once")
            path.write_text(text.replace(patch.search, patch.replace))
    return folder


def best_sampling(policy, tokenizer, folder: Path, overrides: dict, splits, seeds: list[int]) -> dict:
    """Every sampling setting on eval; the best one (ties: the earlier) scored on held-out too."""
    scores = {}
    for name, sampling in SAMPLING.items():
        scaffold = load_scaffold(folder, overrides | sampling)
        prompts = [scaffold.prompt.format_prompt(q) for q in splits["eval"]["question"]]
        greedy = sampling["sampling.temperature"] == 0.0
        result = evaluate(policy, tokenizer, scaffold, splits["eval"], prompts, seeds=seeds[:1] if greedy else seeds)
        scores[name] = result["metrics"]["accuracy"]
    best = max(scores, key=scores.get)
    scaffold = load_scaffold(folder, overrides | SAMPLING[best])
    prompts = [scaffold.prompt.format_prompt(q) for q in splits["heldout"]["question"]]
    held = evaluate(policy, tokenizer, scaffold, splits["heldout"], prompts, seeds=seeds, split="heldout")
    metrics = held["metrics"]
    return {"sampling": best, "eval": scores[best], "eval_by_setting": scores, "heldout": metrics["accuracy"],
            "heldout_ci95": metrics["accuracy_ci95"], "format_valid_rate": metrics["format_valid_rate"],
            PER_EXAMPLE: {i: sum(v) / len(v) for i, v in held["per_example"].items()}}


def without_scores(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != PER_EXAMPLE}


def mean_row(by_seed: list[dict]) -> dict:
    """One recipe's row from its training seeds' rows: eval, held-out, format and training time
    averaged, the best sampling of each seed joined, every seed's row kept (without its
    per-example scores). The held-out interval is over the examples, each scored by its mean over
    the training seeds and the evaluation seeds, as the keep rule pools training seeds
    (harness.training_noise): evaluation noise at three draws of training, not the spread of
    training itself, which the seeds' own rows show."""
    rows = [without_scores(r) for r in by_seed]
    if len(by_seed) == 1:
        return rows[0] | {"by_seed": rows}
    def mean(key: str) -> float:
        return sum(r[key] for r in by_seed) / len(by_seed)

    ids = by_seed[0][PER_EXAMPLE]
    pooled = [sum(r[PER_EXAMPLE][i] for r in by_seed) / len(by_seed) for i in ids]
    return {"sampling": ", ".join(dict.fromkeys(r["sampling"] for r in by_seed)), "eval": mean("eval"),
            "heldout": mean("heldout"), "heldout_ci95": list(bootstrap_mean_ci(pooled)),
            "format_valid_rate": mean("format_valid_rate"), "train_s": round(mean("train_s"), 1),
            "by_seed": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="runs/models/base")
    parser.add_argument("--pretrain", action="store_true", help="pretrain the base into --base first, timed")
    parser.add_argument("--data-dir", default="runs/data",
                        help="where the task splits are cached (splits of another --split-size have a folder "
                             "of their own there)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="evaluation seeds")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0],
                        help="training seeds: each recipe trains once a seed; its row is their mean")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES), metavar="NAME")
    parser.add_argument("--split-size", type=int, default=compose_config([])["split_size"],
                        help="problems in eval and in held-out (default: those of a new campaign, "
                             "conf/campaign.yaml; the first 200 are the 200-problem splits'; arith holds "
                             "about 830 of each)")
    parser.add_argument("--out", default=None, help="write every number as JSON here too")
    args = parser.parse_args()
    console = Console()
    if not console.is_terminal:  # a log file: wide enough that the table's names are not cut
        console = Console(width=160)

    try:  # before any pretraining: a size the task cannot hold fails in seconds, not after minutes
        splits = load_splits("arith", data_dir=args.data_dir, sizes=eval_sizes(args.split_size))
    except (ValueError, RuntimeError) as err:  # a size below 1, or more problems than the task holds
        parser.error(f"--split-size {args.split_size}: {err}")
    if args.pretrain or not (Path(args.base) / "config.json").is_file():
        pretrain_base(args.base, data_dir=args.data_dir)
    pretrained = json.loads((Path(args.base) / "pretrain.json").read_text())
    calibration = pretrained.get("calibration", {})
    console.print(f"base {args.base}: {pretrained['steps']} steps in {pretrained['seconds']:.0f}s, calibration "
                  f"answer accuracy {calibration.get('answer_accuracy')} (band {calibration.get('band')})")

    report = {"pretrain": {"steps": pretrained["steps"], "seconds": pretrained["seconds"],
                           "calibration": calibration}, "rows": {}}
    with tempfile.TemporaryDirectory(prefix="calibration-") as tmp:
        root = Path(tmp)
        base = load_policy(args.base).eval(), load_tokenizer(args.base)
        report["rows"]["sampling only"] = without_scores(best_sampling(*base, scaffold_copy([], root), {}, splits,
                                                                       args.seeds))
        for name in args.recipes:
            overrides, moves = RECIPES[name]
            folder = scaffold_copy(moves, root)
            scaffold = load_scaffold(folder, overrides)
            by_seed = []
            for train_seed in args.train_seeds:
                start = time.perf_counter()
                summary = train_grpo(scaffold, base_dir=args.base, train_split=splits["train"],
                                     out_dir=str(root / "policy"), completions=scaffold.train_completions,
                                     seed=train_seed)
                trained = load_policy(root / "policy").eval(), load_tokenizer(root / "policy")
                row = best_sampling(*trained, folder, overrides, splits, args.seeds)
                by_seed.append(row | {"train_seed": train_seed, "train_s": round(time.perf_counter() - start, 1),
                                      "completions": summary["completions"], "steps": summary["steps"]})
                console.print(f"{name}, training seed {train_seed}: held-out {row['heldout']:.3f} at {row['sampling']}")
            report["rows"][name] = mean_row(by_seed)

    floor = report["rows"]["sampling only"]["heldout"]
    table = Table(title=f"held-out accuracy at the best sampling on eval (seeds {args.seeds}, "
                        f"{args.split_size} problems in eval and held-out)")
    for column in ("", "best sampling", "eval", "held-out", "95% CI", "by training seed", "format ok",
                   "vs sampling only", "train s"):
        table.add_column(column)
    for name, row in report["rows"].items():
        interval = "-" if row["heldout_ci95"] is None else "{:.3f}-{:.3f}".format(*row["heldout_ci95"])
        seeds = " ".join(f"{r['heldout']:.3f}" for r in row.get("by_seed", []))
        table.add_row(name, row["sampling"], f"{row['eval']:.3f}", f"{row['heldout']:.3f}", interval,
                      seeds, f"{row['format_valid_rate']:.2f}", f"{row['heldout'] - floor:+.3f}",
                      str(row.get("train_s", "")))
    console.print(table)
    best = max((r for n, r in report["rows"].items() if n != "sampling only"), key=lambda r: r["heldout"], default=None)
    if best is not None:
        gain = best["heldout"] - floor
        worst = min(r["heldout"] for r in best["by_seed"]) - floor
        console.print(f"best recipe over sampling only: {gain:+.3f} held-out, {len(best['by_seed'])} training "
                      f"seed(s), the worst {worst:+.3f} (target >= +0.050: {'met' if gain >= 0.05 else 'not met'})")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
