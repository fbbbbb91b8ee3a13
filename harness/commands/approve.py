"""`researcher approve`: answer a campaign's pending approval, from any terminal.

    researcher approve demo --note "looks right"
    researcher approve demo --reject --note "touches the reward"
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from harness.approvals import approve
from harness.campaigns import campaign_dir, runs_dir_arg
from harness.commands import standalone, subcommand

HELP = "answer a campaign's pending approval"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    parser.add_argument("overrides", nargs="*", metavar="runs_dir=PATH")
    parser.add_argument("--reject", action="store_true")
    parser.add_argument("--note", default="")


def run(args: argparse.Namespace) -> int:
    decision = approve(campaign_dir(args.name, runs_dir_arg(args.overrides)), reject=args.reject, note=args.note)
    Console().print(f"{decision['decision']} round {decision['round']} ({decision['point']}) by {decision['who']}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    subcommand(sub, "approve", HELP, arguments, run)


def main(argv: list[str] | None = None) -> int:
    return standalone("approve", HELP, arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
