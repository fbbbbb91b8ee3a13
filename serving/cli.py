"""The server's arguments and entry point: `researcher serve` and `python -m serving` run this.

    researcher serve --model runs/models/base [--host 127.0.0.1] [--port 8000]
    RESEARCHER_API_KEY=secret researcher serve --model runs/models/base      # clients must send the key
    python -m serving --model runs/models/base                                # the same, alone

One uvicorn worker: the model is loaded once and a single batcher thread runs every generate
(see `serving/engine.py`). It binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import ipaddress
import os

from rich.console import Console

from rl_pipeline.env import use_offline_env

console = Console(stderr=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args) -> int:
    """Load the checkpoint and serve it until the process is stopped."""
    import torch
    import uvicorn

    from serving.app import create_app

    if args.threads:
        torch.set_num_threads(args.threads)
    app = create_app(args.model, api_key_env=args.api_key_env, served_name=args.served_name,
                     batch_window_ms=args.batch_window_ms, max_n=args.max_n, max_tokens_limit=args.max_tokens,
                     max_rows=args.max_rows)
    keyed = bool(os.environ.get(args.api_key_env))
    console.print(f"serving [bold]{args.model}[/] at http://{args.host}:{args.port}/v1 "
                  f"({'API key required' if keyed else f'no API key: {args.api_key_env} is not set'})")
    if not keyed and not _is_loopback(args.host):
        console.print(f"[bold yellow]warning:[/] {args.host} is reachable from other machines and "
                      f"{args.api_key_env} is not set: anyone who can reach it can use the model")
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level=args.log_level)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("where")
    where.add_argument("--model", required=True, help="checkpoint folder (from `researcher model new|pretrain`)")
    where.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    where.add_argument("--port", type=int, default=8000)
    where.add_argument("--served-name", default=None, help="model name clients ask for (default: the folder's name)")
    where.add_argument("--api-key-env", default="RESEARCHER_API_KEY",
                       help="environment variable holding the API key; unset or empty means no key")

    limits = parser.add_argument_group("batching and limits")
    limits.add_argument("--batch-window-ms", type=float, default=5.0,
                        help="how long the batcher waits for more requests before a generate call")
    limits.add_argument("--max-n", type=int, default=16, help="most completions per prompt")
    limits.add_argument("--max-tokens", type=int, default=512,
                        help="most tokens per completion; the default of a chat request that sets none")
    limits.add_argument("--max-rows", type=int, default=128,
                        help="most prompts x n in one request and in one generate call")
    limits.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    limits.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def main(argv: list[str] | None = None) -> int:
    use_offline_env()
    parser = argparse.ArgumentParser(prog="serve", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return serve(parser.parse_args(argv))

