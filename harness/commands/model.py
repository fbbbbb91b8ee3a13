"""`researcher model ...`: make, sample from, benchmark and pretrain the local policy.

    researcher model new --preset tiny --out runs/models/fresh
    researcher model generate --model runs/models/base "Q: 12 + 30" --temperature 0.7 -n 4
    researcher model bench [--quick]
    researcher model pretrain --out runs/models/base
    python -m harness.commands.model new --out runs/models/fresh     # the same, alone
"""

from __future__ import annotations

import argparse
import runpy
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness.commands import command

console = Console()
REPO = Path(__file__).resolve().parents[2]
HELP = "make, sample from, benchmark and pretrain the local policy"


def _new(args) -> int:
    from model import PRESETS, build_policy, build_tokenizer, save_policy

    if args.preset not in PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; choose one of: {', '.join(sorted(PRESETS))}")
    tokenizer = build_tokenizer(vocab_size=args.vocab_size)
    policy = build_policy(args.preset, tokenizer, seed=args.seed)
    save_policy(policy, tokenizer, args.out)
    n_params = sum(p.numel() for p in policy.parameters())
    console.print(f"[green]saved[/] {args.preset} policy ({n_params / 1e6:.1f}M parameters, "
                  f"{len(tokenizer)} tokens, experts={policy.config._experts_implementation}) to {args.out}")
    return 0


def _generate(args) -> int:
    from model import load_policy, load_tokenizer
    from model.generate import SamplingParams, generate

    policy, tokenizer = load_policy(args.model), load_tokenizer(args.model)
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, frequency_penalty=args.frequency_penalty,
        presence_penalty=args.presence_penalty, repetition_penalty=args.repetition_penalty,
        stop=tuple(args.stop or ()), n=args.n, seed=args.seed,
    )
    start = time.perf_counter()
    completions = generate(policy, tokenizer, args.prompts, params)
    seconds = time.perf_counter() - start
    table = Table("prompt", "completion", "finish", "tokens")
    for prompt, group in zip(args.prompts, completions):
        for completion in group:
            table.add_row(repr(prompt), repr(completion.text), completion.finish_reason,
                          str(len(completion.token_ids)))
    console.print(table)
    n_tokens = sum(len(c.token_ids) for group in completions for c in group)
    console.print(f"{n_tokens} tokens in {seconds:.2f}s ({n_tokens / seconds:.0f} tokens/s)")
    return 0


def _bench(args) -> int:
    for script in ("experts.py", "generate.py", "pretrain.py"):
        console.rule(f"bench/{script}")
        runpy.run_path(str(REPO / "bench" / script), run_name="__main__")
    return 0


def _pretrain(args) -> int:
    from rl_pipeline.corpus import pretrain_base

    pretrain_base(args.out, seed=args.seed, steps=args.steps, preset=args.preset)
    return 0


def arguments(model: argparse.ArgumentParser) -> None:
    msub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")

    new = msub.add_parser("new", help="a freshly initialized policy and tokenizer, saved to a folder")
    new.add_argument("--preset", default="tiny", help="tiny (default), small, or micro (for tests and smoke runs)")
    new.add_argument("--out", required=True, help="folder to save the checkpoint in")
    new.add_argument("--vocab-size", type=int, default=512)
    new.add_argument("--seed", type=int, default=0)
    new.set_defaults(action=_new)

    gen = msub.add_parser("generate", help="sample completions from a checkpoint")
    gen.add_argument("--model", required=True, help="checkpoint folder")
    gen.add_argument("prompts", nargs="+", help="one or more prompts")
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--frequency-penalty", type=float, default=0.0)
    gen.add_argument("--presence-penalty", type=float, default=0.0)
    gen.add_argument("--repetition-penalty", type=float, default=1.0)
    gen.add_argument("--stop", action="append", help="stop string (repeatable)")
    gen.add_argument("-n", type=int, default=1, help="completions per prompt")
    gen.add_argument("--seed", type=int, default=None)
    gen.set_defaults(action=_generate)

    bench = msub.add_parser("bench", help="run bench/experts.py, bench/generate.py and bench/pretrain.py")
    bench.set_defaults(action=_bench)

    pre = msub.add_parser("pretrain", help="train the base policy on the tasks' supervised corpus")
    pre.add_argument("--out", default="runs/models/base")
    pre.add_argument("--preset", default="tiny")
    pre.add_argument("--steps", type=int, default=None,
                     help="exactly this many optimizer steps (default: until the calibration band is reached)")
    pre.add_argument("--seed", type=int, default=0)
    pre.set_defaults(action=_pretrain)


def _dispatch(args: argparse.Namespace) -> int:
    return args.action(args)


add_parser, main = command("model", HELP, arguments, _dispatch)


if __name__ == "__main__":
    sys.exit(main())
