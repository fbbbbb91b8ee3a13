"""The CUDA path of our kernelized experts: a fused mixture-of-experts forward and backward in Triton.

    y_TD = triton_experts(x_TD, w_gate_up_E2ID, w_down_EDI, topk_ids_TK, topk_weights_TK)

computes, for every token t, sum_k w[t,k] * down[e] @ (silu(gate[e] @ x[t]) * (up[e] @ x[t])) with
e = topk_ids[t,k], exactly what `transformers`' eager `MiniMaxM2Experts` does, and is differentiable
in x, both weight tensors and the routing weights. The module imports triton, so import it only on
CUDA (or in tests, under TRITON_INTERPRET=1).

Shapes (suffixes of tensor names):
    T  tokens                      D  hidden size
    K  experts per token (top-k)   I  intermediate size of one expert (gate_up has 2I rows: gate, then up)
    E  experts                     S  (token, expert) pairs = T*K; pair s = t*K + k
    P  sorted rows: the S pairs grouped by expert, each group padded to a multiple of BLOCK_M
    NB row blocks = P / BLOCK_M; every block belongs to one expert

The design follows vLLM's fused MoE (vllm/model_executor/layers/fused_moe/fused_moe.py):
- `moe_align_block_size` has vLLM's contract: `sorted_pair_ids` (P,) holds pair ids grouped by
  expert, each group padded by the sentinel S, `block_expert_ids` (NB,) the expert of each block,
  `num_padded` (1,) vLLM's `num_tokens_post_padded`. vLLM does it in a CUDA op; here it is one small
  Triton kernel, because at decode the whole layer is launch-bound and a torch-op version alone
  costs about twenty launches. Buffers are sized for the worst case so nothing waits on the GPU
  (no host sync, CUDA-graph friendly); blocks past `num_padded` return at once.
- `_grouped_gemm_kernel` is vLLM's `fused_moe_kernel`: one program per (row block, column tile),
  the expert weight chosen by the block, token rows read through `sorted_pair_ids // K` (no gathered
  copy of x), the routing weight multiplied in the epilogue (vLLM's MUL_ROUTED_WEIGHT).
- Unlike vLLM, the gate/up GEMM computes the gate and the up tile of the same columns in one program
  and writes silu(gate) * up directly (no separate silu_and_mul pass), and intermediates are stored
  in sorted-row order, so the down GEMM reads contiguous rows instead of gathering a second time.
- The down GEMM writes one row per pair, (S, D), and the K rows of a token are summed afterwards
  (vLLM's moe_sum): deterministic, no atomics.
- vLLM is inference-only; the backward here reuses the same grouped GEMM with other operands
  (dH = dY @ W_down, dX = dGU @ W_gate_up), a small kernel for the SiLU-times-up derivative and the
  routing-weight gradient, and `_expert_weight_grad_kernel` for dW = A^T @ B summed over each
  expert's blocks, one program per output tile: again no atomics, so gradients are deterministic.
All GEMMs accumulate in fp32; fp32 inputs use IEEE fp32 dots unless torch allows TF32
(`torch.set_float32_matmul_precision`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

# ---------------------------------------------------------------------------------------------
# Routing: pairs sorted by expert and padded into blocks of one expert each
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Routing:
    """Where every (token, expert) pair sits in the block-aligned, expert-sorted order."""

    sorted_pair_ids: torch.Tensor  # (P,) int32: pair id, or the sentinel num_pairs on padding rows
    block_expert_ids: torch.Tensor  # (NB,) int32: the expert of each block
    num_padded: torch.Tensor  # (1,) int32: rows in use (vLLM's num_tokens_post_padded)
    expert_block_offsets: torch.Tensor  # (E+1,) int32: expert e owns blocks [offsets[e], offsets[e+1])
    num_pairs: int
    top_k: int
    block_m: int

    @property
    def num_blocks(self) -> int:
        return self.block_expert_ids.numel()


_ALIGN_BLOCK_S = 256  # pairs the alignment kernel reads per step


@triton.jit
def _moe_align_kernel(
    topk_ids_ptr, sorted_pair_ids_ptr, block_expert_ids_ptr, num_padded_ptr, expert_block_offsets_ptr,
    num_pairs,
    BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, NUM_BINS: tl.constexpr,
):
    """One program per expert: place that expert's pairs, in pair order, at its padded rows.

    Every program counts the pairs of all experts itself (a histogram over the S ids) to find
    where its rows start: redundant work, but a single launch and no global synchronization.
    """
    expert = tl.program_id(0)
    counts = tl.zeros((NUM_BINS,), dtype=tl.int32)
    for s0 in range(0, num_pairs, BLOCK_S):
        pairs = s0 + tl.arange(0, BLOCK_S)
        in_range = pairs < num_pairs
        ids = tl.load(topk_ids_ptr + pairs, mask=in_range, other=0).to(tl.int32)
        counts += tl.histogram(ids, NUM_BINS, mask=in_range)
    blocks = (counts + BLOCK_M - 1) // BLOCK_M
    block_ends = tl.cumsum(blocks, 0)
    mine = tl.arange(0, NUM_BINS) == expert
    my_count = tl.sum(tl.where(mine, counts, 0), 0)
    my_blocks = tl.sum(tl.where(mine, blocks, 0), 0)
    first_block = tl.sum(tl.where(mine, block_ends, 0), 0) - my_blocks
    start = first_block * BLOCK_M

    placed = 0
    for s0 in range(0, num_pairs, BLOCK_S):
        pairs = s0 + tl.arange(0, BLOCK_S)
        in_range = pairs < num_pairs
        ids = tl.load(topk_ids_ptr + pairs, mask=in_range, other=0).to(tl.int32)
        hit = (ids == expert) & in_range
        rows = start + placed + tl.cumsum(hit.to(tl.int32), 0) - 1
        tl.store(sorted_pair_ids_ptr + rows, pairs, mask=hit)
        placed += tl.sum(hit.to(tl.int32), 0)
    # The tail of the expert's last block is padding: the sentinel num_pairs marks it.
    tail = start + my_count + tl.arange(0, BLOCK_M)
    tl.store(sorted_pair_ids_ptr + tail, num_pairs, mask=tail < start + my_blocks * BLOCK_M)
    for b0 in range(0, my_blocks, BLOCK_M):
        block = b0 + tl.arange(0, BLOCK_M)
        tl.store(block_expert_ids_ptr + first_block + block, expert, mask=block < my_blocks)

    if expert == 0:
        bins = tl.arange(0, NUM_BINS)
        tl.store(expert_block_offsets_ptr + 1 + bins, block_ends, mask=bins < tl.num_programs(0))
        tl.store(expert_block_offsets_ptr, 0)
        tl.store(num_padded_ptr, tl.sum(blocks, 0) * BLOCK_M)


def moe_align_block_size(topk_ids_TK: torch.Tensor, num_experts: int, block_m: int) -> Routing:
    """Group the T*K pairs by expert, padding each group to a multiple of `block_m` rows.

    One kernel launch (decode is launch-bound: a torch-op version costs some twenty launches).
    Buffers are sized for the worst case; rows and blocks past `num_padded` are left unwritten and
    every kernel stops before them. Ids must lie in [0, num_experts); they are not checked because
    that would wait on the GPU.
    """
    device = topk_ids_TK.device
    num_tokens, top_k = topk_ids_TK.shape
    num_pairs = num_tokens * top_k
    # At most min(E, S) experts are hit and each wastes fewer than block_m rows.
    num_blocks = triton.cdiv(num_pairs + min(num_experts, num_pairs) * (block_m - 1), block_m)
    routing = Routing(
        sorted_pair_ids=torch.empty(num_blocks * block_m, dtype=torch.int32, device=device),
        block_expert_ids=torch.empty(num_blocks, dtype=torch.int32, device=device),
        num_padded=torch.empty(1, dtype=torch.int32, device=device),
        expert_block_offsets=torch.empty(num_experts + 1, dtype=torch.int32, device=device),
        num_pairs=num_pairs,
        top_k=top_k,
        block_m=block_m,
    )
    if num_pairs == 0:
        routing.num_padded.zero_()
        routing.expert_block_offsets.zero_()
        return routing
    _moe_align_kernel[(num_experts,)](
        topk_ids_TK.contiguous(), routing.sorted_pair_ids, routing.block_expert_ids, routing.num_padded,
        routing.expert_block_offsets, num_pairs,
        BLOCK_M=block_m, BLOCK_S=_ALIGN_BLOCK_S, NUM_BINS=triton.next_power_of_2(num_experts),
    )
    return routing


# ---------------------------------------------------------------------------------------------
# Tiles
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tiles:
    """Tile sizes of every kernel of one call; block_m is also the routing's block alignment."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3


def pick_tiles(num_pairs: int, num_experts: int, element_size: int) -> Tiles:
    """Smaller row blocks when experts get few rows (decode), so little of each block is padding;
    half the reduction depth for fp32, so the gate/up kernel's pipelined tiles fit in shared memory."""
    rows_per_expert = num_pairs / max(num_experts, 1)
    if rows_per_expert <= 16:
        tiles = Tiles(block_m=16, block_n=64, block_k=128)
    elif rows_per_expert <= 64:
        tiles = Tiles(block_m=32, block_n=64, block_k=64)
    else:
        tiles = Tiles(block_m=64, block_n=128, block_k=64, num_warps=8)
    if element_size > 2:
        tiles = replace(tiles, block_k=tiles.block_k // 2)
    return tiles


def _dot_precision(dtype: torch.dtype) -> str:
    """IEEE fp32 dots unless torch itself allows TF32 for fp32 matmuls; ignored for 16-bit inputs."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _block_rows(sorted_pair_ids_ptr, block, num_pairs, BLOCK_M: tl.constexpr):
    """Sorted-row positions of `block`, the pair on each row, and which rows are real (not padding)."""
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    pair_ids = tl.load(sorted_pair_ids_ptr + rows)
    return rows.to(tl.int64), pair_ids.to(tl.int64), pair_ids < num_pairs


@triton.jit
def _gate_up_silu_kernel(
    x_ptr, w_ptr, h_ptr, gate_up_ptr,
    sorted_pair_ids_ptr, block_expert_ids_ptr, num_padded_ptr,
    I, D, num_pairs, top_k,
    stride_xt, stride_xd, stride_we, stride_wd, stride_wn, stride_hp, stride_hi, stride_gp, stride_gn,
    SAVE_GATE_UP: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """h_PI = silu(x @ gate^T) * (x @ up^T) for one (row block, column tile); x rows gathered by token.

    w is gate_up viewed as (E, D, 2I). Gate column n and up column I+n are computed by the same
    program so the activation is applied in registers. With SAVE_GATE_UP the pre-activations are
    kept for the backward.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    rows, pair_ids, row_mask = _block_rows(sorted_pair_ids_ptr, pid_m, num_pairs, BLOCK_M)
    expert = tl.load(block_expert_ids_ptr + pid_m).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < I
    offs_k = tl.arange(0, BLOCK_K)

    x_ptrs = x_ptr + (pair_ids // top_k)[:, None] * stride_xt + offs_k[None, :] * stride_xd
    gate_ptrs = w_ptr + expert * stride_we + offs_k[:, None] * stride_wd + cols[None, :] * stride_wn
    up_ptrs = gate_ptrs + I * stride_wn
    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        k_mask = offs_k < D - k0
        x = tl.load(x_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w_mask = k_mask[:, None] & col_mask[None, :]
        acc_gate = tl.dot(x, tl.load(gate_ptrs, mask=w_mask, other=0.0), acc_gate, input_precision=PRECISION)
        acc_up = tl.dot(x, tl.load(up_ptrs, mask=w_mask, other=0.0), acc_up, input_precision=PRECISION)
        x_ptrs += BLOCK_K * stride_xd
        gate_ptrs += BLOCK_K * stride_wd
        up_ptrs += BLOCK_K * stride_wd

    out_mask = row_mask[:, None] & col_mask[None, :]
    if SAVE_GATE_UP:
        gate_up_ptrs = gate_up_ptr + rows[:, None] * stride_gp + cols[None, :] * stride_gn
        tl.store(gate_up_ptrs, acc_gate.to(gate_up_ptr.dtype.element_ty), mask=out_mask)
        tl.store(gate_up_ptrs + I * stride_gn, acc_up.to(gate_up_ptr.dtype.element_ty), mask=out_mask)
    h = acc_gate * tl.sigmoid(acc_gate) * acc_up
    h_ptrs = h_ptr + rows[:, None] * stride_hp + cols[None, :] * stride_hi
    tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _grouped_gemm_kernel(
    a_ptr, b_ptr, c_ptr, topk_weights_ptr,
    sorted_pair_ids_ptr, block_expert_ids_ptr, num_padded_ptr,
    N, K, num_pairs, top_k,
    stride_am, stride_ak, stride_be, stride_bk, stride_bn, stride_cm, stride_cn,
    GATHER_A: tl.constexpr, SCATTER_C: tl.constexpr, SCALE_ROWS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """C[row] = A[row] @ B[expert of the row's block], one (row block, column tile) per program.

    B is (E, K, N) through its strides. A rows are the sorted rows themselves, or with GATHER_A the
    token of each pair (x, dY); C rows are the sorted rows, or with SCATTER_C the pair id. SCALE_ROWS
    multiplies each row by its routing weight in the epilogue. Padding rows are neither read nor
    written.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    rows, pair_ids, row_mask = _block_rows(sorted_pair_ids_ptr, pid_m, num_pairs, BLOCK_M)
    expert = tl.load(block_expert_ids_ptr + pid_m).to(tl.int64)
    if GATHER_A:
        a_rows = pair_ids // top_k
    else:
        a_rows = rows
    if SCATTER_C:
        c_rows = pair_ids
    else:
        c_rows = rows
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    offs_k = tl.arange(0, BLOCK_K)

    a_ptrs = a_ptr + a_rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + expert * stride_be + offs_k[:, None] * stride_bk + cols[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    if SCALE_ROWS:
        acc *= tl.load(topk_weights_ptr + pair_ids, mask=row_mask, other=0.0).to(tl.float32)[:, None]
    c_ptrs = c_ptr + c_rows[:, None] * stride_cm + cols[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def _silu_mul_backward_kernel(
    dh_ptr, gate_up_ptr, h_ptr, dgate_up_ptr, topk_weights_ptr, dtopk_weights_ptr,
    sorted_pair_ids_ptr, num_padded_ptr,
    I, num_pairs,
    stride_dhp, stride_dhi, stride_gp, stride_gn, stride_hp, stride_hi, stride_dgp, stride_dgn,
    BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr,
):
    """From dH_u = dY[token] @ W_down (before the routing weight), per block of sorted rows:
    the routing-weight gradient <dH_u, h> (h = silu(gate) * up) and dGU = d(gate, up) of w * dH_u.
    """
    pid_m = tl.program_id(0)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    rows, pair_ids, row_mask = _block_rows(sorted_pair_ids_ptr, pid_m, num_pairs, BLOCK_M)
    route_w = tl.load(topk_weights_ptr + pair_ids, mask=row_mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_M,), dtype=tl.float32)
    offs_i = tl.arange(0, BLOCK_I)
    for i0 in range(0, I, BLOCK_I):
        cols = i0 + offs_i
        mask = row_mask[:, None] & (cols < I)[None, :]
        dh_ptrs = dh_ptr + rows[:, None] * stride_dhp + cols[None, :] * stride_dhi
        dh = tl.load(dh_ptrs, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + rows[:, None] * stride_hp + cols[None, :] * stride_hi, mask=mask, other=0.0)
        h = h.to(tl.float32)
        gate_ptrs = gate_up_ptr + rows[:, None] * stride_gp + cols[None, :] * stride_gn
        gate = tl.load(gate_ptrs, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(gate_ptrs + I * stride_gn, mask=mask, other=0.0).to(tl.float32)
        # The forward output used the stored (rounded) h, so its gradient does too.
        dw += tl.sum(dh * h, axis=1)
        dh *= route_w[:, None]
        sig = tl.sigmoid(gate)
        dgate = dh * up * sig * (1.0 + gate * (1.0 - sig))
        dup = dh * gate * sig
        dgate_ptrs = dgate_up_ptr + rows[:, None] * stride_dgp + cols[None, :] * stride_dgn
        tl.store(dgate_ptrs, dgate.to(dgate_up_ptr.dtype.element_ty), mask=mask)
        tl.store(dgate_ptrs + I * stride_dgn, dup.to(dgate_up_ptr.dtype.element_ty), mask=mask)
    tl.store(dtopk_weights_ptr + pair_ids, dw, mask=row_mask)


@triton.jit
def _expert_weight_grad_kernel(
    a_ptr, b_ptr, out_ptr, topk_weights_ptr,
    sorted_pair_ids_ptr, expert_block_offsets_ptr,
    N, K, num_pairs, top_k,
    stride_am, stride_an, stride_bm, stride_bk, stride_oe, stride_on, stride_ok,
    GATHER_A: tl.constexpr, GATHER_B: tl.constexpr, SCALE_B: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[e] = sum over the rows routed to e of A[row]^T B[row], one (expert, output tile) per program.

    The program walks its expert's row blocks, so each output element is written once (no atomics)
    and an expert without rows gets zeros. GATHER_A/B read rows by token as in the grouped GEMM;
    SCALE_B multiplies B rows by their routing weight.
    """
    expert = tl.program_id(0).to(tl.int64)  # expert * stride_oe passes 2**31 at M2 sizes
    pid = tl.program_id(1)
    num_k_tiles = tl.cdiv(K, BLOCK_K)
    offs_n = (pid // num_k_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = (pid % num_k_tiles) * BLOCK_K + tl.arange(0, BLOCK_K)
    n_mask = offs_n < N
    k_mask = offs_k < K

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    first = tl.load(expert_block_offsets_ptr + expert)
    last = tl.load(expert_block_offsets_ptr + expert + 1)
    for block in range(first, last):
        rows, pair_ids, row_mask = _block_rows(sorted_pair_ids_ptr, block, num_pairs, BLOCK_M)
        if GATHER_A:
            a_rows = pair_ids // top_k
        else:
            a_rows = rows
        if GATHER_B:
            b_rows = pair_ids // top_k
        else:
            b_rows = rows
        a_t = tl.load(a_ptr + a_rows[None, :] * stride_am + offs_n[:, None] * stride_an,
                      mask=row_mask[None, :] & n_mask[:, None], other=0.0)  # (BLOCK_N, BLOCK_M)
        b = tl.load(b_ptr + b_rows[:, None] * stride_bm + offs_k[None, :] * stride_bk,
                    mask=row_mask[:, None] & k_mask[None, :], other=0.0)  # (BLOCK_M, BLOCK_K)
        if SCALE_B:
            route_w = tl.load(topk_weights_ptr + pair_ids, mask=row_mask, other=0.0).to(tl.float32)
            b = (b.to(tl.float32) * route_w[:, None]).to(b_ptr.dtype.element_ty)
        acc = tl.dot(a_t, b, acc, input_precision=PRECISION)
    out_ptrs = out_ptr + expert * stride_oe + offs_n[:, None] * stride_on + offs_k[None, :] * stride_ok
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=n_mask[:, None] & k_mask[None, :])


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def _gate_up_silu(x_TD, w_gate_up_E2ID, routing: Routing, tiles: Tiles, *, save_gate_up: bool):
    """h_PI and, when asked, the pre-activations gate_up_P2I (else None)."""
    _, two_i, hidden = w_gate_up_E2ID.shape
    inter = two_i // 2
    rows = routing.sorted_pair_ids.numel()
    h_PI = x_TD.new_empty(rows, inter)
    gate_up_P2I = x_TD.new_empty(rows, two_i) if save_gate_up else None
    if routing.num_blocks == 0:
        return h_PI, gate_up_P2I
    w_EDN = w_gate_up_E2ID.transpose(1, 2)
    gate_up_arg = gate_up_P2I if save_gate_up else h_PI  # never written when not saving
    grid = (routing.num_blocks, triton.cdiv(inter, tiles.block_n))
    _gate_up_silu_kernel[grid](
        x_TD, w_EDN, h_PI, gate_up_arg,
        routing.sorted_pair_ids, routing.block_expert_ids, routing.num_padded,
        inter, hidden, routing.num_pairs, routing.top_k,
        *x_TD.stride(), *w_EDN.stride(), *h_PI.stride(), *gate_up_arg.stride(),
        SAVE_GATE_UP=save_gate_up, PRECISION=_dot_precision(x_TD.dtype),
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )
    return h_PI, gate_up_P2I


def _grouped_gemm(a, b_EKN, routing: Routing, tiles: Tiles, *, gather_a: bool, scatter_c: bool,
                  row_weights_S: torch.Tensor | None = None) -> torch.Tensor:
    """Rows of `a` (tokens if gather_a, else sorted rows) times their block's expert matrix of b_EKN.

    Returns (S, N) indexed by pair if scatter_c, else (P, N) indexed by sorted row.
    """
    n = b_EKN.shape[2]
    c = a.new_empty(routing.num_pairs if scatter_c else routing.sorted_pair_ids.numel(), n)
    if routing.num_blocks == 0:
        return c
    scale = row_weights_S is not None
    grid = (routing.num_blocks, triton.cdiv(n, tiles.block_n))
    _grouped_gemm_kernel[grid](
        a, b_EKN, c, row_weights_S if scale else c,
        routing.sorted_pair_ids, routing.block_expert_ids, routing.num_padded,
        n, b_EKN.shape[1], routing.num_pairs, routing.top_k,
        *a.stride(), *b_EKN.stride(), *c.stride(),
        GATHER_A=gather_a, SCATTER_C=scatter_c, SCALE_ROWS=scale, PRECISION=_dot_precision(a.dtype),
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )
    return c


def _silu_mul_backward(dh_PI, gate_up_P2I, h_PI, topk_weights_S, routing: Routing, tiles: Tiles):
    """dgate_up_P2I (in the input dtype) and the routing-weight gradient dtopk_weights_S (fp32)."""
    inter = h_PI.shape[1]
    dgate_up_P2I = torch.empty_like(gate_up_P2I)
    # Every pair sits on exactly one row, so the kernel writes every entry.
    dtopk_weights_S = torch.empty(routing.num_pairs, dtype=torch.float32, device=h_PI.device)
    if routing.num_blocks == 0:
        return dgate_up_P2I, dtopk_weights_S
    _silu_mul_backward_kernel[(routing.num_blocks,)](
        dh_PI, gate_up_P2I, h_PI, dgate_up_P2I, topk_weights_S, dtopk_weights_S,
        routing.sorted_pair_ids, routing.num_padded,
        inter, routing.num_pairs,
        *dh_PI.stride(), *gate_up_P2I.stride(), *h_PI.stride(), *dgate_up_P2I.stride(),
        BLOCK_M=tiles.block_m, BLOCK_I=min(tiles.block_n, triton.next_power_of_2(inter)),
        num_warps=tiles.num_warps,
    )
    return dgate_up_P2I, dtopk_weights_S


def _expert_weight_grad(a, b, out_shape, routing: Routing, tiles: Tiles, *, gather_a: bool, gather_b: bool,
                        b_row_weights_S: torch.Tensor | None = None) -> torch.Tensor:
    """(E, N, K): for each expert, the sum over its rows of a[row]^T b[row] (a: (., N), b: (., K))."""
    num_experts, n, k = out_shape
    if routing.num_pairs == 0:
        return a.new_zeros(out_shape)
    out = a.new_empty(out_shape)
    scale = b_row_weights_S is not None
    grid = (num_experts, triton.cdiv(n, tiles.block_n) * triton.cdiv(k, tiles.block_k))
    _expert_weight_grad_kernel[grid](
        a, b, out, b_row_weights_S if scale else out,
        routing.sorted_pair_ids, routing.expert_block_offsets,
        n, k, routing.num_pairs, routing.top_k,
        *a.stride(), *b.stride(), *out.stride(),
        GATHER_A=gather_a, GATHER_B=gather_b, SCALE_B=scale, PRECISION=_dot_precision(a.dtype),
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )
    return out


# ---------------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------------


def _forward(x_TD, w_gate_up_E2ID, w_down_EDI, topk_ids_TK, topk_weights_TK, *, for_backward: bool):
    """y_TD, and with for_backward what the backward reads: routing, tiles, flat routing weights,
    h_PI and gate_up_P2I (else None)."""
    num_tokens, top_k = topk_ids_TK.shape
    num_experts, _, hidden = w_gate_up_E2ID.shape
    tiles = pick_tiles(num_tokens * top_k, num_experts, x_TD.element_size())
    routing = moe_align_block_size(topk_ids_TK, num_experts, tiles.block_m)
    topk_weights_S = topk_weights_TK.contiguous().view(-1)  # kernels index it by pair id

    h_PI, gate_up_P2I = _gate_up_silu(x_TD, w_gate_up_E2ID, routing, tiles, save_gate_up=for_backward)
    y_SD = _grouped_gemm(h_PI, w_down_EDI.transpose(1, 2), routing, tiles,
                         gather_a=False, scatter_c=True, row_weights_S=topk_weights_S)
    # Summing the K rows of a token in torch keeps the result deterministic (no atomics) and
    # accumulates 16-bit inputs in fp32.
    y_TD = y_SD.view(num_tokens, top_k, hidden).sum(dim=1)
    return y_TD, ((routing, tiles, topk_weights_S, h_PI, gate_up_P2I) if for_backward else None)


class _TritonExperts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, w_gate_up_E2ID, w_down_EDI, topk_ids_TK, topk_weights_TK):
        y_TD, (routing, tiles, topk_weights_S, h_PI, gate_up_P2I) = _forward(
            x_TD, w_gate_up_E2ID, w_down_EDI, topk_ids_TK, topk_weights_TK, for_backward=True
        )
        ctx.save_for_backward(x_TD, w_gate_up_E2ID, w_down_EDI, topk_weights_S, h_PI, gate_up_P2I)
        ctx.routing, ctx.tiles = routing, tiles
        ctx.topk_weights_dtype = topk_weights_TK.dtype
        return y_TD

    @staticmethod
    def backward(ctx, dy_TD):
        x_TD, w_gate_up_E2ID, w_down_EDI, topk_weights_S, h_PI, gate_up_P2I = ctx.saved_tensors
        routing, tiles = ctx.routing, ctx.tiles
        need_x, need_gate_up, need_down, _, need_topk_weights = ctx.needs_input_grad
        num_tokens, top_k = x_TD.shape[0], routing.top_k
        dy_TD = dy_TD.to(x_TD.dtype)
        dx_TD = dw_gate_up = dw_down = dtopk_weights_TK = None

        if need_down:
            # dW_down[e] = sum over e's rows of dY[token]^T (w * h)
            dw_down = _expert_weight_grad(dy_TD, h_PI, w_down_EDI.shape, routing, tiles,
                                          gather_a=True, gather_b=False, b_row_weights_S=topk_weights_S)
        if need_x or need_gate_up or need_topk_weights:
            dh_PI = _grouped_gemm(dy_TD, w_down_EDI, routing, tiles, gather_a=True, scatter_c=False)
            dgate_up_P2I, dtopk_weights_S = _silu_mul_backward(dh_PI, gate_up_P2I, h_PI, topk_weights_S,
                                                               routing, tiles)
            if need_topk_weights:
                dtopk_weights_TK = dtopk_weights_S.view(num_tokens, top_k).to(ctx.topk_weights_dtype)
            if need_x:
                dx_SD = _grouped_gemm(dgate_up_P2I, w_gate_up_E2ID, routing, tiles, gather_a=False, scatter_c=True)
                dx_TD = dx_SD.view(num_tokens, top_k, x_TD.shape[1]).sum(dim=1)
            if need_gate_up:
                # dW_gate_up[e] = sum over e's rows of dGU^T x[token]
                dw_gate_up = _expert_weight_grad(dgate_up_P2I, x_TD, w_gate_up_E2ID.shape, routing, tiles,
                                                 gather_a=False, gather_b=True)
        return dx_TD, dw_gate_up, dw_down, None, dtopk_weights_TK


def _validate(x_TD, w_gate_up_E2ID, w_down_EDI, topk_ids_TK, topk_weights_TK) -> None:
    named = {"x_TD": x_TD, "w_gate_up_E2ID": w_gate_up_E2ID, "w_down_EDI": w_down_EDI,
             "topk_ids_TK": topk_ids_TK, "topk_weights_TK": topk_weights_TK}
    ranks = {"x_TD": 2, "w_gate_up_E2ID": 3, "w_down_EDI": 3, "topk_ids_TK": 2, "topk_weights_TK": 2}
    for name, ndim in ranks.items():
        if named[name].dim() != ndim:
            raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(named[name].shape)}")
    devices = {name: t.device for name, t in named.items()}
    if len(set(devices.values())) != 1:
        raise ValueError(f"all inputs must be on one device, got {devices}")
    if x_TD.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"x_TD must be float32, bfloat16 or float16, got {x_TD.dtype}")
    if w_gate_up_E2ID.dtype != x_TD.dtype or w_down_EDI.dtype != x_TD.dtype:
        raise ValueError(f"x_TD and the expert weights must share a dtype, got x {x_TD.dtype}, "
                         f"gate_up {w_gate_up_E2ID.dtype}, down {w_down_EDI.dtype}")
    if topk_ids_TK.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"topk_ids_TK must be int32 or int64, got {topk_ids_TK.dtype}")
    if not topk_weights_TK.is_floating_point():
        raise ValueError(f"topk_weights_TK must be floating point, got {topk_weights_TK.dtype}")

    num_tokens, hidden = x_TD.shape
    num_experts, two_i, gate_up_hidden = w_gate_up_E2ID.shape
    if gate_up_hidden != hidden or two_i % 2:
        raise ValueError(f"w_gate_up_E2ID must be (E, 2I, D={hidden}), got {tuple(w_gate_up_E2ID.shape)}")
    if tuple(w_down_EDI.shape) != (num_experts, hidden, two_i // 2):
        raise ValueError(f"w_down_EDI must be (E={num_experts}, D={hidden}, I={two_i // 2}), "
                         f"got {tuple(w_down_EDI.shape)}")
    if topk_ids_TK.shape[0] != num_tokens or topk_ids_TK.shape != topk_weights_TK.shape:
        raise ValueError(f"topk_ids_TK and topk_weights_TK must both be (T={num_tokens}, K), got "
                         f"{tuple(topk_ids_TK.shape)} and {tuple(topk_weights_TK.shape)}")


def triton_experts(x_TD: torch.Tensor, w_gate_up_E2ID: torch.Tensor, w_down_EDI: torch.Tensor,
                   topk_ids_TK: torch.Tensor, topk_weights_TK: torch.Tensor) -> torch.Tensor:
    """The experts' output y_TD = sum_k w[t,k] * down[e] @ (silu(gate[e] @ x[t]) * (up[e] @ x[t])).

    x_TD and both weights share one dtype (float32, bfloat16 or float16); topk_ids_TK (int32 or
    int64) must lie in [0, E); topk_weights_TK may be any float dtype (the router's are fp32) and
    gets a gradient of its own dtype. Differentiable in x_TD, both weights and topk_weights_TK.
    """
    _validate(x_TD, w_gate_up_E2ID, w_down_EDI, topk_ids_TK, topk_weights_TK)
    inputs = (x_TD, w_gate_up_E2ID, w_down_EDI, topk_ids_TK, topk_weights_TK)
    # Inside autograd.Function.forward grad mode is off and needs_input_grad ignores no_grad, so
    # the choice to keep intermediates for a backward is made here.
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _TritonExperts.apply(*inputs)
    return _forward(*inputs, for_backward=False)[0]
