"""The `researcher` subcommands, one module each, the leaves of the import graph.

Each module has `add_parser(sub)` (it becomes a subcommand of `researcher`) and `main(argv)` (it
runs alone: `python -m harness.commands.start name=demo`), both made by `command` from the
module's name, help, arguments and run function. Top-level imports stay light, so that
`--help`, a mistyped subcommand or a bad override answer at once; what needs torch, mlflow or
matplotlib is imported by the library function that uses it, once the arguments are checked.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from harness.approvals import ApprovalError
from harness.journal import CampaignBusy, JournalError
from rl_pipeline.env import use_offline_env
from rl_pipeline.files import disk_full

# What a command may raise for bad input or a busy campaign: a one-line error, exit code 2.
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, CampaignBusy, ApprovalError, JournalError)

Arguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


def subcommand(sub: argparse._SubParsersAction, name: str, help: str, arguments: Arguments, run: Run) -> None:
    """Add command `name` to the `researcher` parser."""
    parser = sub.add_parser(name, help=help, description=help)
    arguments(parser)
    parser.set_defaults(func=run)


def run_guarded(run: Run, args: argparse.Namespace) -> int:
    """`run(args)`, with a user's mistake shown as one red line and exit code 2, and a full disk as
    one red line and exit code 1 (what a campaign wrote before is whole: every write is atomic, so
    it resumes once there is room)."""
    try:
        return int(run(args) or 0)
    except USER_ERRORS as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}")
        return 2
    except Exception as err:
        if not disk_full(err, Path.cwd()):
            raise
        Console(stderr=True).print(
            f"[bold red]error:[/] the disk is full: {err}. Every file written before "
            "is whole; free some space (a runs folder's cache/ of trained policies can go) and run the command "
            "again: a campaign resumes where it stopped.", soft_wrap=True)
        return 1


def standalone(name: str, help: str, arguments: Arguments, run: Run, argv: list[str] | None) -> int:
    """Parse `argv` for command `name` alone and run it, as `researcher NAME` would."""
    use_offline_env()
    parser = argparse.ArgumentParser(prog=f"researcher {name}", description=help)
    arguments(parser)
    return run_guarded(run, parser.parse_args(argv))


def command(name: str, help: str, arguments: Arguments, run: Run):
    """The `add_parser(sub)` and `main(argv)` of command `name`."""
    def add_parser(sub: argparse._SubParsersAction) -> None:
        subcommand(sub, name, help, arguments, run)

    def main(argv: list[str] | None = None) -> int:
        return standalone(name, help, arguments, run, argv)

    return add_parser, main
