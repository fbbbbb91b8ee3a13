"""`researcher diff`: the diff a round proposed, as a patch `git apply` takes.

    researcher diff demo 7
"""

from __future__ import annotations

import argparse
import sys

from harness.campaigns import campaign_dir, runs_dir_arg
from harness.commands import command

HELP = "the diff a round proposed"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    parser.add_argument("round", type=int)
    parser.add_argument("overrides", nargs="*", metavar="runs_dir=PATH")


def run(args: argparse.Namespace) -> int:
    patch = campaign_dir(args.name, runs_dir_arg(args.overrides)) / "rounds" / f"{args.round:03d}" / "diff.patch"
    if not patch.is_file():
        raise FileNotFoundError(f"round {args.round} of {args.name} has no diff (not recorded yet, or no candidate)")
    sys.stdout.write(patch.read_text())
    return 0


add_parser, main = command("diff", HELP, arguments, run)


if __name__ == "__main__":
    sys.exit(main())
