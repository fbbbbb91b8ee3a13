"""`researcher serve`: a local checkpoint behind an OpenAI-compatible HTTP API (the `serving`
package; its arguments are in `serving/cli.py`).

    researcher serve --model runs/models/base [--host 127.0.0.1] [--port 8000]
"""

from __future__ import annotations

import argparse
import sys

from harness.commands import standalone, subcommand
from serving.cli import add_arguments, serve

HELP = "serve a checkpoint over an OpenAI-compatible HTTP API"


def add_parser(sub: argparse._SubParsersAction) -> None:
    subcommand(sub, "serve", HELP, add_arguments, serve)


def main(argv: list[str] | None = None) -> int:
    return standalone("serve", HELP, add_arguments, serve, argv)


if __name__ == "__main__":
    sys.exit(main())
