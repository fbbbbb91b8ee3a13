"""`researcher report`: write a campaign's progress.png and summary.md, and show the summary.

    researcher report demo
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from harness.campaigns import campaign_dir, runs_dir_arg
from harness.commands import command

HELP = "write progress.png and summary.md for a campaign"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    parser.add_argument("overrides", nargs="*", metavar="runs_dir=PATH")


def run(args: argparse.Namespace) -> int:
    from harness.report import write_report  # matplotlib: only once the campaign is found

    plot, summary = write_report(campaign_dir(args.name, runs_dir_arg(args.overrides)), args.name)
    console = Console()
    console.print(summary.read_text())
    console.print(f"plot: {plot}\nsummary: {summary}")
    return 0


add_parser, main = command("report", HELP, arguments, run)


if __name__ == "__main__":
    sys.exit(main())
