"""Time our experts kernel against `transformers`' grouped_mm and eager experts, side by side.

    .venv/bin/python bench/experts.py                 # the default table
    .venv/bin/python bench/experts.py --threads 1     # torch intra-op threads (default: torch's)
    .venv/bin/python bench/experts.py --clock cpu     # CPU time of this process instead of wall time

One `MiniMaxM2Experts` of the tiny preset's sizes (fp32, CPU) runs under each implementation by
switching `config._experts_implementation`, at a rollout-decode shape (64 tokens) and a training
shape (4096 tokens), forward only (no grad) and forward+backward (loss sum(out * g) with a random
g, gradients for hidden states, routing weights and both expert weights). Routing comes from the
library's own router (sigmoid, top-k, renormalize) on random router weights. The implementations
take turns inside every repeat, so a burst of load from elsewhere hits all of them alike; the
table shows median milliseconds, our speed-up and whether it meets the target.

The last column is our kernel's matmul work per second as a share of the dense-matmul rate
measured in the same process, in the same turns: one (S, D) x (D, 3I) matmul, S the routed pairs,
the same multiply-adds as the experts forward (three times them for forward+backward).

Our kernel runs as our rollout loop runs it: inside `model.experts.transposed_weights`, which
gives the no-grad forward contiguous transposed copies of the weights for the whole rollout (the
decode shape reads them; the training shape's no-grad forward streams one expert at a time and
does not). Making the copies is paid once a rollout, not a call: its time is printed below the
table, with what it adds to each step of a 32-token rollout.

On a machine other jobs share, `--clock cpu` times each call by this process's CPU time
(`time.process_time`), which a busy neighbour disturbs far less than the wall clock.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from transformers import MiniMaxM2Config
from transformers.models.minimax_m2.modeling_minimax_m2 import MiniMaxM2Experts, MiniMaxM2TopKRouter

from model import EXPERTS_IMPL, PRESETS
from model.experts import transposed_weights

IMPLEMENTATIONS = [EXPERTS_IMPL, "grouped_mm", "eager", "dense"]
# (name, tokens, least speed-up over grouped_mm), for forward and forward+backward alike
SHAPES = [("decode", 64, 1.5), ("train", 4096, 1.2)]
ROLLOUT_STEPS = 32  # decode steps of a rollout, to spread the transposition over (bench/generate.py's)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=float, default=1.0, help="scale the number of timed repeats")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="time by the wall clock or by this process's CPU time")
    return parser


# ---- setup ---------------------------------------------------------------------------------------

def make_layer(seed: int):
    """Experts and router of the tiny preset, with random weights."""
    sizes = PRESETS["tiny"]
    config = MiniMaxM2Config(
        hidden_size=sizes["hidden_size"], intermediate_size=sizes["intermediate_size"],
        num_local_experts=sizes["num_local_experts"], num_experts_per_tok=sizes["num_experts_per_tok"],
        experts_implementation=EXPERTS_IMPL,
    )
    torch.manual_seed(seed)
    experts, router = MiniMaxM2Experts(config), MiniMaxM2TopKRouter(config)
    with torch.no_grad():
        for w in (experts.gate_up_proj, experts.down_proj, router.weight):
            w.normal_(0.0, w.shape[-1] ** -0.5)
    return experts, router


def make_inputs(router, num_tokens: int):
    x_TD = torch.randn(num_tokens, router.hidden_dim)
    with torch.no_grad():
        _, topk_weights_TK, topk_ids_TK = router(x_TD, torch.zeros(router.num_experts))
    return x_TD, topk_ids_TK, topk_weights_TK, torch.randn_like(x_TD)


# ---- timing --------------------------------------------------------------------------------------

def dense_step(experts, inputs, backward: bool, clock) -> float:
    """Seconds of the dense matmuls with the experts' multiply-adds (the rate reference)."""
    x_TD, topk_ids_TK, _, _ = inputs
    x_SD = x_TD.repeat_interleave(topk_ids_TK.shape[1], 0)
    w_DJ = torch.randn(x_TD.shape[1], 3 * experts.intermediate_dim)
    start = clock()
    for _ in range(3 if backward else 1):
        torch.mm(x_SD, w_DJ)
    return clock() - start


def step(experts, implementation: str, inputs, backward: bool, clock=time.perf_counter) -> float:
    """Seconds for one forward (no grad) or forward+backward under `implementation`."""
    if implementation == "dense":
        return dense_step(experts, inputs, backward, clock)
    x_TD, topk_ids_TK, topk_weights_TK, g_TD = inputs
    experts.config._experts_implementation = implementation
    experts.zero_grad(set_to_none=True)
    if backward:
        x_TD = x_TD.detach().requires_grad_()
        topk_weights_TK = topk_weights_TK.detach().requires_grad_()
    start = clock()
    if backward:
        (experts(x_TD, topk_ids_TK, topk_weights_TK) * g_TD).sum().backward()
    else:
        with torch.no_grad():
            experts(x_TD, topk_ids_TK, topk_weights_TK)
    return clock() - start


def median_ms(experts, inputs, backward: bool, repeats: int, warmup: int = 3,
              clock=time.perf_counter) -> dict[str, float]:
    """Median milliseconds of each implementation, the implementations taking turns every repeat."""
    times = {name: [] for name in IMPLEMENTATIONS}
    for i in range(warmup + repeats):
        n = len(IMPLEMENTATIONS)
        order = IMPLEMENTATIONS[i % n:] + IMPLEMENTATIONS[:i % n]  # rotate so none always goes first
        for name in order:
            seconds = step(experts, name, inputs, backward, clock)
            if i >= warmup:
                times[name].append(seconds)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


# ---- main ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    experts, router = make_layer(args.seed)
    print(f"experts {EXPERTS_IMPL} vs grouped_mm vs eager | tiny preset: E={router.num_experts} "
          f"K={router.top_k} D={router.hidden_dim} I={experts.intermediate_dim} | fp32 CPU, "
          f"{torch.get_num_threads()} threads, {args.clock} clock, load average {os.getloadavg()[0]:.2f}")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    header = (f"{'shape':<14}{'pass':<10}{'ours ms':>9}{'grouped ms':>12}{'eager ms':>10}"
              f"{'vs grouped':>12}{'vs eager':>10}{'target':>8}  met{'of dense':>10}")
    print(header)
    print("-" * len(header))
    with transposed_weights(experts):
        all_met = table(experts, router, args, clock)
    start = clock()
    with transposed_weights(experts):
        transposing_ms = 1e3 * (clock() - start)
    print(f"transposing the weights, once a rollout: {transposing_ms:.2f} ms "
          f"({transposing_ms / ROLLOUT_STEPS:.3f} ms a decode step over a {ROLLOUT_STEPS}-step rollout)")
    print(f"targets met: {'all' if all_met else 'not all'}")
    return 0


def table(experts, router, args, clock) -> bool:
    """Print one row a shape and pass; whether every target was met."""
    all_met = True
    for shape, num_tokens, target in SHAPES:
        inputs = make_inputs(router, num_tokens)
        for backward in (False, True):
            repeats = max(5, int(args.repeats * (200 if num_tokens <= 256 else 15)))
            ms = median_ms(experts, inputs, backward, repeats, clock=clock)
            vs_grouped, vs_eager = ms["grouped_mm"] / ms[EXPERTS_IMPL], ms["eager"] / ms[EXPERTS_IMPL]
            met = vs_grouped >= target
            all_met &= met
            print(f"{shape + f' T={num_tokens}':<14}{'fwd+bwd' if backward else 'fwd':<10}"
                  f"{ms[EXPERTS_IMPL]:>9.3f}{ms['grouped_mm']:>12.3f}{ms['eager']:>10.3f}"
                  f"{vs_grouped:>11.2f}x{vs_eager:>9.2f}x{target:>7.1f}x  {'yes' if met else 'NO ':3s}"
                  f"{ms['dense'] / ms[EXPERTS_IMPL]:>9.0%}")
    return all_met


if __name__ == "__main__":
    raise SystemExit(main())
