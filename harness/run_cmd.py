"""`researcher run`: the main job (`make run`).

Pretrains the base policy if it is missing, then evaluates the default scaffold (training with
GRPO at its default knobs) with the held-out split, and prints the result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

console = Console()


def ensure_base(base: str, seed: int = 0) -> None:
    """Pretrain the base policy into `base` unless a checkpoint is already there."""
    if (Path(base) / "config.json").is_file():
        console.print(f"base policy: {base} (found)")
        return
    from rl_pipeline.corpus import pretrain_base

    console.print(f"base policy: {base} missing, pretraining it")
    pretrain_base(out=base, seed=seed)


def _run(args) -> int:
    from harness.eval_cmd import show_result
    from rl_pipeline.run import run_scaffold

    ensure_base(args.base)
    console.rule(f"evaluating {args.scaffold}")
    with console.status("training (GRPO) and evaluating"):
        result = run_scaffold(args.scaffold, args.out, heldout=True, base=args.base)
    show_result(result)
    return 0 if result["status"] == "ok" else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="the main job: pretrain the base if missing, then run the default scaffold")
    run.add_argument("--base", default="runs/models/base")
    run.add_argument("--scaffold", default="scaffolds/arith")
    run.add_argument("--out", default="runs/eval/main")
    run.set_defaults(func=_run)
