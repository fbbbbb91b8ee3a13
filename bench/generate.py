"""Rollout speed: our fast generation against `model.generate`, side by side on the same weights.

    .venv/bin/python bench/generate.py [--preset tiny] [--new-tokens 32] [--repeats 5] [--threads 1]

Both sample at temperature 1.0 with no top-k, top-p or min-p, and EOS is masked until the last
token (`min_new_tokens = max_new_tokens`), so every call yields exactly rows x new-tokens tokens
(checked). Three contenders on the same weights, interleaved after one warm-up call of each:

- `model.generate` as `transformers` runs this checkpoint by default (its `grouped_mm` experts):
  what TRL or any library user gets; the headline ratio (target >= 3x);
- `model.generate` with our experts kernel installed: isolates what our decode loop adds;
- ours: our decode loop with our experts kernel;
- ours without the weight copies: the same loop, its experts reading the library's transposed
  view of their weights instead of the contiguous copies a rollout makes
  (`model.experts.transposed_weights`): what the copies add (the "copies" column).

The medians give tokens per second. Two batch shapes of 64 rows:

- 64 distinct prompts: the headline shape;
- 8 prompts x 8 completions: a GRPO group shape, where our loop prefills each prompt once.

One thread by default: the matmuls here are small, and on a machine whose cores are shared a
second thread mostly adds scheduling noise to the timings.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from model import build_policy, build_tokenizer
import model.generate
from model.experts import transposed_weights
from model.generate import generate_ids

TARGET = 3.0
LIBRARY_EXPERTS = "grouped_mm"  # what transformers picks for this model when nothing is requested


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="model preset (random weights)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens sampled per row")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return parser


def prompts(n: int) -> list[str]:
    """Arithmetic questions of varying length, like the RL tasks' prompts."""
    return [f"Q: {17 * i % 1000} + {i * i % 97} * {i % 7 + 1} = ? Show the steps. A:" + " ok" * (i % 6)
            for i in range(n)]


def time_all(policy, batch: dict, new_tokens: int, repeats: int) -> tuple[float, float, float, float]:
    """Median seconds per call: library generate (library experts), library generate (ours), ours,
    ours without the transposed weight copies."""
    knobs = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                 min_new_tokens=new_tokens)
    expected_shape = (batch["input_ids"].shape[0], batch["input_ids"].shape[1] + new_tokens)
    ours_impl = policy.config._experts_implementation

    def library(impl):
        policy.config._experts_implementation = impl
        try:
            with torch.no_grad():
                return policy.generate(**batch, **knobs)
        finally:
            policy.config._experts_implementation = ours_impl

    def without_copies():
        model.generate.transposed_weights = lambda model: contextlib.nullcontext()
        try:
            return generate_ids(policy, **batch, **knobs)
        finally:
            model.generate.transposed_weights = transposed_weights

    contenders = [lambda: library(LIBRARY_EXPERTS), lambda: library(ours_impl),
                  lambda: generate_ids(policy, **batch, **knobs), without_copies]
    times: list[list[float]] = [[] for _ in contenders]
    for i in range(repeats + 1):
        for k, run in enumerate(contenders):
            start = time.perf_counter()
            out = run()
            elapsed = time.perf_counter() - start
            if tuple(out.shape) != expected_shape:
                raise RuntimeError(f"contender {k} made {tuple(out.shape)} tokens, expected {expected_shape}")
            if i:  # the first round warms every contender up
                times[k].append(elapsed)
    return tuple(statistics.median(t) for t in times)


def main(argv=None) -> float:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizer = build_tokenizer()
    policy = build_policy(args.preset, tokenizer, seed=0)
    torch.manual_seed(0)

    shapes = [("64 distinct prompts", prompts(64)),
              ("8 prompts x 8 completions", [p for p in prompts(8) for _ in range(8)])]
    print(f"preset={args.preset} threads={args.threads} new_tokens={args.new_tokens} repeats={args.repeats} "
          f"experts={policy.config._experts_implementation}")
    print(f"{'batch':28s} {'generate tok/s':>15s} {'+our experts':>13s} {'ours tok/s':>11s} "
          f"{'vs generate':>12s} {'vs +experts':>12s} {'copies':>7s}")
    speedups = []
    for name, texts in shapes:
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        library_s, library_ours_s, ours_s, no_copies_s = time_all(policy, batch, args.new_tokens, args.repeats)
        tokens = len(texts) * args.new_tokens
        speedups.append((library_s / ours_s, library_ours_s / ours_s))
        print(f"{name:28s} {tokens / library_s:15.0f} {tokens / library_ours_s:13.0f} {tokens / ours_s:11.0f} "
              f"{speedups[-1][0]:11.2f}x {speedups[-1][1]:11.2f}x {no_copies_s / ours_s:6.3f}x")
    headline, loop_only = speedups[0]
    verdict = "met" if headline >= TARGET else "not met"
    print(f"speedup: {headline:.2f}x vs model.generate as transformers runs it ({LIBRARY_EXPERTS} experts), "
          f"{loop_only:.2f}x vs model.generate with our experts (loop alone), 64 distinct prompts "
          f"(target >= {TARGET:.0f}x vs model.generate: {verdict})")
    return headline


if __name__ == "__main__":
    main()
