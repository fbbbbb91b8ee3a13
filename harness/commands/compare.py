"""`researcher compare`: campaigns side by side: final and held-out accuracy, when each came near
the best incumbent, mean incumbent; and one plot of their incumbents by round.

    researcher compare default random [runs_dir=runs] [--out compare.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from harness.campaigns import campaign_dir, runs_dir_arg
from harness.commands import command
from harness.journal import Journal

HELP = "campaigns side by side: a table and one plot of their incumbents"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME", help="two or more campaigns, and runs_dir=PATH")
    parser.add_argument("--out", default=None, help="the plot's path (default: runs_dir/compare-NAMES.png)")


def run(args: argparse.Namespace) -> int:
    names = [n for n in args.names if "=" not in n]
    runs = runs_dir_arg([n for n in args.names if "=" in n])
    if len(names) < 2:
        raise ValueError("compare needs at least two campaigns")
    histories = {name: Journal(campaign_dir(name, runs)).get("history") or [] for name in names}
    from harness.report import comparison_markdown, comparison_plot  # matplotlib: once the campaigns are found

    plot = comparison_plot(histories, Path(args.out) if args.out else runs / f"compare-{'-'.join(names)}.png")
    console = Console()
    console.print(comparison_markdown(histories), soft_wrap=True, markup=False)
    console.print(f"plot: {plot}")
    return 0


add_parser, main = command("compare", HELP, arguments, run)


if __name__ == "__main__":
    sys.exit(main())
