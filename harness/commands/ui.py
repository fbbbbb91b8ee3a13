"""`researcher ui`: the MLflow UI over the campaigns' tracking store, bound to 127.0.0.1.

    researcher ui [runs_dir=runs] [--port 5000]

The server runs as one process tree (`harness.process_tree`): stopping `researcher ui` (Ctrl-C,
SIGTERM, a closed terminal, even kill -9) stops `mlflow ui`, uvicorn and the huey consumers too.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from harness.campaigns import runs_dir_arg
from harness.commands import command
from harness.process_tree import run_tree
from harness.tracking import default_tracking_uri

HELP = "the MLflow UI on 127.0.0.1 over our store"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="runs_dir=PATH")
    parser.add_argument("--port", type=int, default=5000)


def run(args: argparse.Namespace) -> int:
    uri = default_tracking_uri(runs_dir_arg(args.overrides))
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
               "--port", str(args.port), "--workers", "1"]
    Console().print(f"MLflow UI on http://127.0.0.1:{args.port} over {uri}")
    return run_tree(command)


add_parser, main = command("ui", HELP, arguments, run)


if __name__ == "__main__":
    sys.exit(main())
