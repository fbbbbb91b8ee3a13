"""`researcher serve`: a local checkpoint behind an OpenAI-compatible HTTP API (the `serving`
package; its arguments are in `serving/cli.py`).

    researcher serve --model runs/models/base [--host 127.0.0.1] [--port 8000]
"""

from __future__ import annotations

import sys

from harness.commands import command
from serving.cli import add_arguments, serve

HELP = "serve a checkpoint over an OpenAI-compatible HTTP API"


add_parser, main = command("serve", HELP, add_arguments, serve)


if __name__ == "__main__":
    sys.exit(main())
