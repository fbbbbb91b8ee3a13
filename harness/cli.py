"""The `researcher` command line: one console script, with subcommands.

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

Every entry point sets HF_HUB_OFFLINE and MLFLOW_DISABLE_TELEMETRY before anything imports
`transformers` or `mlflow`, so nothing we run reaches the internet (and OMP_WAIT_POLICY=PASSIVE
before torch loads, so idle threads do not spin on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP: see the Makefile


def build_parser() -> argparse.ArgumentParser:
    """The parser for every subcommand; each subcommand module adds its own arguments."""
    from harness import campaign_cmd, eval_cmd, run_cmd, serve_cmd
    from model import cli as model_cli

    parser = argparse.ArgumentParser(prog="researcher", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_cli.add_parser(sub)
    eval_cmd.add_parser(sub)
    run_cmd.add_parser(sub)
    campaign_cmd.add_parsers(sub)
    serve_cmd.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from harness.approvals import ApprovalError
    from harness.journal import CampaignBusy, JournalError

    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, CampaignBusy, ApprovalError, JournalError) as err:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {err}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
