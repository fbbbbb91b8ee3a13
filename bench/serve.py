"""Throughput of `researcher serve` under 1, 8 and 32 concurrent clients.

    .venv/bin/python bench/serve.py [--model runs/models/base] [--max-tokens 32] [--threads 2]

Serves `runs/models/base` when it exists, else a fresh tiny policy (random weights) saved to a
temporary folder, in a child process (`serving.launch.served`). Each level starts that many
client threads, each with its own `openai` client, each sending chat requests back to back
(temperature 1.0, no seed, so every request may share a generate call) until the level has sent
its quota. It prints, per level: requests/s, completion tokens/s, the median latency, and the
batching ratio (requests per generate call, from the server's GET /v1/stats). One warm-up
request runs first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from rl_pipeline.env import use_offline_env  # noqa: E402

use_offline_env()

import httpx2  # noqa: E402
import openai  # noqa: E402

from serving.launch import served  # noqa: E402

KEY = "bench-key"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "runs/models/base"),
                        help="checkpoint folder (a fresh tiny policy when it does not exist)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrency levels")
    parser.add_argument("--requests", type=int, default=64, help="requests per level (at least one per client)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request")
    parser.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    parser.add_argument("--batch-window-ms", type=float, default=5.0)
    return parser


def question(i: int) -> list[dict]:
    """Arithmetic questions of varying length, like the RL tasks' prompts."""
    return [{"role": "user", "content": f"Q: {17 * i % 1000} + {i * i % 97} * {i % 7 + 1} = ? A:"}]


def stats(base_url: str) -> dict:
    return httpx2.get(f"{base_url}/stats", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()


def level(base_url: str, name: str, clients: int, total: int, max_tokens: int) -> dict:
    """Send `total` requests from `clients` threads; the level's throughput and batching."""
    quota = [total // clients + (c < total % clients) for c in range(clients)]
    latencies: list[float] = []
    tokens = [0] * clients
    failures: list[BaseException] = []
    start_together = threading.Barrier(clients + 1)

    def client_loop(c: int) -> None:
        client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=600)
        start_together.wait()
        try:
            for r in range(quota[c]):
                sent = time.perf_counter()
                answer = client.chat.completions.create(model=name, messages=question(c * 1000 + r),
                                                        max_tokens=max_tokens, temperature=1.0)
                latencies.append(time.perf_counter() - sent)
                tokens[c] += answer.usage.completion_tokens
        except BaseException as err:  # reported after the level, not lost in a thread
            failures.append(err)

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    before = stats(base_url)
    start_together.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    after = stats(base_url)
    if failures:
        raise RuntimeError(f"{len(failures)} client(s) failed; the first: {failures[0]!r}")
    calls = after["generate_calls"] - before["generate_calls"]
    return {"clients": clients, "requests": total, "seconds": seconds, "requests_per_s": total / seconds,
            "tokens_per_s": sum(tokens) / seconds, "p50_latency_s": statistics.median(latencies),
            "requests_per_call": (after["requests"] - before["requests"]) / calls,
            "busy": (after["busy_seconds"] - before["busy_seconds"]) / seconds}


def main() -> int:
    args = build_parser().parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        model = Path(args.model)
        if not (model / "config.json").is_file():
            from model import build_policy, build_tokenizer, save_policy

            tokenizer = build_tokenizer()
            model = save_policy(build_policy("tiny", tokenizer, seed=0), tokenizer, Path(tmp) / "tiny")
            print(f"no checkpoint at {args.model}: serving a fresh tiny policy (random weights)")
        serve_args = ["--threads", str(args.threads), "--batch-window-ms", str(args.batch_window_ms),
                      "--max-rows", str(max(128, max(args.clients))), "--log-level", "warning"]
        with served(model, env={"RESEARCHER_API_KEY": KEY}, args=serve_args) as base_url:
            client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0)
            name = client.models.list().data[0].id
            client.chat.completions.create(model=name, messages=question(0), max_tokens=args.max_tokens)
            print(f"model {model} ({name}), max_tokens {args.max_tokens}, server threads {args.threads}, "
                  f"batch window {args.batch_window_ms} ms")
            print(f"{'clients':>7} {'requests':>8} {'seconds':>8} {'req/s':>7} {'tok/s':>7} {'p50 s':>6} "
                  f"{'req/call':>8} {'busy':>5}")
            for clients in args.clients:
                row = level(base_url, name, clients, max(args.requests, clients), args.max_tokens)
                print(f"{row['clients']:>7} {row['requests']:>8} {row['seconds']:>8.2f} "
                      f"{row['requests_per_s']:>7.2f} {row['tokens_per_s']:>7.0f} {row['p50_latency_s']:>6.2f} "
                      f"{row['requests_per_call']:>8.2f} {row['busy']:>5.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
