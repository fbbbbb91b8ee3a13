"""Benchmark our Triton experts against `transformers`' grouped_mm experts on one CUDA GPU, in bf16.

    python bench/triton_experts.py [--rep-ms 200] [--no-m2]

Shapes: the tiny preset at decode (64 tokens) and prefill (4096 tokens), and an M2-like layer
(D=3072, I=1536, E=256, top-8) at decode. For each it prints the bf16 agreement with grouped_mm,
forward times and their ratio (the target is >= 1.5x at decode), and the achieved bandwidth: bytes
of the expert weights actually hit plus x and y, over the forward time, next to a measured
device-to-device copy bandwidth (the practical roofline of a memory-bound decode step). For the
tiny preset it also times forward + backward and checks the gradients.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch

DECODE_TARGET = 1.5  # forward speedup over grouped_mm we aim for at decode
BF16_TOLERANCE = 2e-2  # relative error between two bf16 implementations (bf16 has 8 mantissa bits)


@dataclass(frozen=True)
class Shape:
    name: str
    tokens: int
    hidden: int
    inter: int
    experts: int
    top_k: int
    backward: bool  # also time and check forward + backward


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rep-ms", type=int, default=200, help="time budget of each measurement (ms)")
    parser.add_argument("--no-m2", action="store_true", help="skip the M2-like shape (about 7.3 GB of weights)")
    return parser


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours.float() - reference.float()).norm() / reference.float().norm()).item()


def _train_comparison(ours, library, experts, x_TD, weights_TK, bench_ms) -> tuple[float, float]:
    """Forward + backward of a loss (y * g).sum(): the speedup over grouped_mm and the worst relative
    error of the four gradients against it."""
    x_TD.requires_grad_()
    weights_TK.requires_grad_()
    g_TD = torch.randn_like(x_TD)
    leaves = (x_TD, experts.gate_up_proj, experts.down_proj, weights_TK)

    def step(forward):
        (forward().float() * g_TD).sum().backward()

    def grads(forward):
        for t in leaves:
            t.grad = None
        step(forward)
        return [t.grad for t in leaves]

    worst = max(relative_error(a, b) for a, b in zip(grads(ours), grads(library)))
    speedup = (bench_ms(lambda: step(library), grad_to_none=leaves)
               / bench_ms(lambda: step(ours), grad_to_none=leaves))
    x_TD.requires_grad_(False)
    weights_TK.requires_grad_(False)
    return speedup, worst


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench/triton_experts.py needs a CUDA GPU and none is available; nothing was measured.")

    # Imported only now: the kernels module imports triton, which a CPU-only machine may lack.
    import triton.testing
    from transformers import MiniMaxM2Config
    from transformers.integrations.moe import grouped_mm_experts_forward
    from transformers.models.minimax_m2.modeling_minimax_m2 import MiniMaxM2Experts

    from model.presets import PRESETS
    from model.triton_experts import triton_experts

    device = torch.device("cuda")
    dtype = torch.bfloat16

    def bench_ms(fn, **kwargs) -> float:
        return triton.testing.do_bench(fn, rep=args.rep_ms, return_mode="median", **kwargs)

    # --- roofline: device-to-device copy -----------------------------------------------------
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_gbps = 2 * src.numel() / bench_ms(lambda: dst.copy_(src)) / 1e6  # read + write
    del src, dst
    print(f"{torch.cuda.get_device_name()}: device-to-device copy {copy_gbps:.0f} GB/s")

    # --- shapes ------------------------------------------------------------------------------
    tiny = PRESETS["tiny"]
    tiny_dims = dict(hidden=tiny["hidden_size"], inter=tiny["intermediate_size"],
                     experts=tiny["num_local_experts"], top_k=tiny["num_experts_per_tok"])
    shapes = [
        Shape("tiny decode", 64, **tiny_dims, backward=True),
        Shape("tiny prefill", 4096, **tiny_dims, backward=True),
    ]
    if not args.no_m2:
        shapes.append(Shape("M2-like decode", 64, hidden=3072, inter=1536, experts=256, top_k=8, backward=False))

    speedups, worst_error = {}, 0.0
    print(f"{'shape':<16}{'bf16 rel err':>13}{'triton ms':>11}{'grouped ms':>12}{'speedup':>9}"
          f"{'GB/s':>8}{'% copy':>8}{'fwd+bwd speedup':>20}")
    for shape in shapes:
        torch.manual_seed(0)
        config = MiniMaxM2Config(hidden_size=shape.hidden, intermediate_size=shape.inter,
                                 num_local_experts=shape.experts, num_experts_per_tok=shape.top_k,
                                 experts_implementation="grouped_mm")
        with device:  # built on the GPU: the M2-like weights would take 14.5 GB of host memory in fp32
            experts = MiniMaxM2Experts(config).to(dtype)
        with torch.no_grad():
            experts.gate_up_proj.normal_(std=shape.hidden**-0.5)
            experts.down_proj.normal_(std=shape.inter**-0.5)
        x_TD = torch.randn(shape.tokens, shape.hidden, device=device, dtype=dtype)
        # Router-like: distinct experts per token, fp32 weights that sum to one.
        ids_TK = torch.rand(shape.tokens, shape.experts, device=device).topk(shape.top_k, dim=-1).indices
        weights_TK = torch.softmax(torch.randn(shape.tokens, shape.top_k, device=device), dim=-1)

        def ours():
            return triton_experts(x_TD, experts.gate_up_proj, experts.down_proj, ids_TK, weights_TK)

        def library():
            return grouped_mm_experts_forward(experts, x_TD, ids_TK, weights_TK)

        with torch.no_grad():
            err = relative_error(ours(), library())
            ours_ms, library_ms = bench_ms(ours), bench_ms(library)

        hit = torch.unique(ids_TK).numel()
        weight_bytes = hit * 3 * shape.inter * shape.hidden * experts.down_proj.element_size()
        activation_bytes = 2 * x_TD.numel() * x_TD.element_size()  # x read, y written
        gbps = (weight_bytes + activation_bytes) / ours_ms / 1e6

        train_cell = "-"
        if shape.backward:
            train_speedup, grad_err = _train_comparison(ours, library, experts, x_TD, weights_TK, bench_ms)
            worst_error = max(worst_error, grad_err)
            train_cell = f"{train_speedup:.2f}x (err {grad_err:.0e})"
        speedups[shape.name] = library_ms / ours_ms
        worst_error = max(worst_error, err)
        print(f"{shape.name:<16}{err:>13.2e}{ours_ms:>11.3f}{library_ms:>12.3f}{library_ms / ours_ms:>8.2f}x"
              f"{gbps:>8.0f}{100 * gbps / copy_gbps:>7.0f}%{train_cell:>20}")
        del experts, x_TD
        torch.cuda.empty_cache()

    # --- summary -----------------------------------------------------------------------------
    verdict = "ok" if worst_error <= BF16_TOLERANCE else "FAIL"
    print(f"bf16 agreement with grouped_mm (outputs and gradients): {verdict} "
          f"(worst relative error {worst_error:.1e}, tolerance {BF16_TOLERANCE:.0e})")
    for name, speedup in speedups.items():
        if "decode" in name:
            met = "met" if speedup >= DECODE_TARGET else "NOT met"
            print(f"decode target >= {DECODE_TARGET}x over grouped_mm, {name}: {speedup:.2f}x, {met}")


if __name__ == "__main__":
    main()
