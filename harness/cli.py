"""The `researcher` command line: one console script, a subcommand per module of harness/commands/.

    researcher model new --preset tiny --out DIR        a fresh policy + tokenizer
    researcher model generate --model DIR "prompt"       sample from a checkpoint
    researcher model bench                               experts and rollout benchmarks
    researcher model pretrain [--out runs/models/base]   the base policy from the tasks' corpus
    researcher eval --scaffold scaffolds/arith [knob=value ...]
    researcher run                                       the main job (`make run`)
    researcher start [name=.. rounds=.. researcher=.. approvals=.. runs_dir=.. seed=..]
    researcher resume NAME | status [NAME] | approve NAME [--reject] [--note T]
    researcher diff NAME ROUND | report NAME | compare NAME NAME.. | ui
    researcher serve --model DIR [--host 127.0.0.1] [--port 8000]   an OpenAI-compatible HTTP API

The offline environment (`rl_pipeline.env`) is set before anything imports `transformers` or
`mlflow`, so nothing we run reaches the internet. Command modules import only light modules at
the top, so `researcher --help` and a mistyped subcommand answer at once.
"""

from __future__ import annotations

import argparse
import sys

from harness.commands import (approve, compare, diff, eval, model, report, resume, run, run_guarded, serve, start,
                              status, ui)
from rl_pipeline.env import use_offline_env

COMMANDS = (model, eval, run, start, resume, status, approve, diff, report, compare, ui, serve)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; each command module adds its own."""
    parser = argparse.ArgumentParser(prog="researcher", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    use_offline_env()
    args = build_parser().parse_args(argv)
    return run_guarded(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
