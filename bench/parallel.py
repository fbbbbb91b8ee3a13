"""The machine's own ceiling for two workers: the same training work in one process and in two at once.

The Ray throughput target (issue 14: two workers of one thread each evaluate >= 1.6x the
candidates per hour of one) assumes two cores that do not slow each other. This measures what the
cores allow before any runner is involved: each process runs forward and backward passes of the
tiny policy (the base's preset, GRPO's shape: 64 sequences of 48 tokens) on one torch thread for
a fixed number of steps; the ratio is steps per second of two processes together over one alone.
A ratio near 2 leaves the target to the runner; well under it, the cores share more than they say
(SMT siblings on the host, memory bandwidth, a noisy neighbour).

    .venv/bin/python bench/parallel.py [--steps 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BATCH, TOKENS = 64, 48


def work(steps: int, start, done) -> None:
    """`steps` forward+backward passes on one thread, timed from the shared start signal."""
    import torch

    from model import build_policy, build_tokenizer

    torch.set_num_threads(1)
    tokenizer = build_tokenizer(["Q: 12 + 34\nA: 46"])
    policy = build_policy("tiny", tokenizer, seed=0)
    ids = torch.randint(0, len(tokenizer), (BATCH, TOKENS))
    policy(input_ids=ids, labels=ids).loss.backward()  # warm-up, outside the timing
    start.wait()
    began = time.perf_counter()
    for _ in range(steps):
        policy.zero_grad(set_to_none=True)
        policy(input_ids=ids, labels=ids).loss.backward()
    done.put(time.perf_counter() - began)


def rate(processes: int, steps: int) -> float:
    """Steps per second of `processes` running at once, all of them together."""
    ctx = mp.get_context("spawn")
    start, done = ctx.Barrier(processes + 1), ctx.Queue()
    workers = [ctx.Process(target=work, args=(steps, start, done)) for _ in range(processes)]
    for w in workers:
        w.start()
    start.wait()
    seconds = [done.get() for _ in workers]
    for w in workers:
        w.join()
    return processes * steps / max(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="forward+backward passes per process")
    parser.add_argument("--repeats", type=int, default=3, help="alternating one/two-process measurements")
    args = parser.parse_args()
    ratios = []
    for repeat in range(args.repeats):
        one, two = rate(1, args.steps), rate(2, args.steps)
        ratios.append(two / one)
        print(f"repeat {repeat + 1}: one process {one:.2f} steps/s, two processes {two:.2f} steps/s: {two / one:.2f}x",
              flush=True)
    ratios.sort()
    print(f"two processes of one thread / one: median {ratios[len(ratios) // 2]:.2f}x "
          f"(range {ratios[0]:.2f}-{ratios[-1]:.2f}x over {args.repeats} repeats)")


if __name__ == "__main__":
    main()
