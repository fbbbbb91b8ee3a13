"""`researcher eval`: evaluate one scaffold through the sandboxed runner and show the result.

On a fresh machine the base policy is pretrained first (a few minutes, once).

    researcher eval --scaffold scaffolds/arith sampling.temperature=0.7 --heldout
    python -m harness.commands.eval --scaffold scaffolds/arith        # the same, alone
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness.commands import command
from rl_pipeline.run import run_scaffold
from rl_pipeline.scaffold import load_scaffold, parse_overrides

console = Console()


def show_result(result: dict) -> None:
    """A table of the metrics and one of the failure categories, with examples."""
    if result["status"] != "ok":
        console.print(f"[bold red]failed:[/] {result['reason']}")
        if result.get("traceback"):
            console.print(result["traceback"], markup=False, highlight=False)
        return
    m = result["metrics"]
    low, high = m["accuracy_ci95"]
    table = Table(title=f"{result['task']} - {result['num_examples']} examples x seeds {result['seeds']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("accuracy", f"{m['accuracy']:.3f}  [{low:.3f}, {high:.3f}]")
    if "heldout" in result:
        hm = result["heldout"]["metrics"]
        table.add_row("held-out accuracy", f"{hm['accuracy']:.3f}  [{hm['accuracy_ci95'][0]:.3f}, "
                                           f"{hm['accuracy_ci95'][1]:.3f}]")
    for name in ("format_valid_rate", "mean_completion_tokens", "truncation_rate", "repetition_rate"):
        table.add_row(name.replace("_", " "), f"{m[name]:.3f}")
    training = result["training"]
    table.add_row("training", f"{'cached' if training['cached'] else 'trained'}: {training['completions']} "
                              f"completions in {training['steps']} steps")
    table.add_row("time", f"{result['timings'].get('total_s', 0):.1f}s")
    console.print(table)

    failures = Table(title="failure categories")
    for column in ("category", "count", "example question", "expected", "completion"):
        failures.add_column(column)
    for category, group in result["failures"].items():
        first = group["examples"][0]
        failures.add_row(category, str(group["count"]), first["question"], first["expected"],
                         repr(first["completion"]))
    console.print(failures)


HELP = "train (if needed) and evaluate one scaffold in the sandboxed runner"


def run(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.overrides)
    load_scaffold(args.scaffold, overrides, import_code=False)  # a wrong folder or knob fails before any pretraining
    from rl_pipeline.corpus import ensure_base  # heavy (datasets, torch): after the scaffold and knobs are checked

    ensure_base(args.base)
    out = args.out or str(Path("runs/eval") / Path(args.scaffold).resolve().name)
    with console.status(f"evaluating {args.scaffold} (training if needed, then {len(args.seeds)} seeds)"):
        result = run_scaffold(args.scaffold, out, overrides=overrides, heldout=args.heldout,
                              seeds=args.seeds, base=args.base, timeout_s=args.timeout)
    show_result(result)
    console.print(f"result: {out}/result.json")
    return 0 if result["status"] == "ok" else 1


def arguments(ev: argparse.ArgumentParser) -> None:
    ev.add_argument("--scaffold", default="scaffolds/arith", help="scaffold folder")
    ev.add_argument("overrides", nargs="*", metavar="KNOB=VALUE", help="knob overrides, e.g. sampling.temperature=0.7")
    ev.add_argument("--out", default=None, help="result folder (default runs/eval/<scaffold>)")
    ev.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ev.add_argument("--heldout", action="store_true", help="also score the held-out split")
    ev.add_argument("--base", default="runs/models/base", help="base policy checkpoint")
    ev.add_argument("--timeout", type=float, default=900.0, help="seconds before the run is killed")


add_parser, main = command("eval", HELP, arguments, run)


if __name__ == "__main__":
    sys.exit(main())
