"""The kernelized experts forward, registered in `transformers`' `ExpertsInterface` as `EXPERTS_IMPL`.

Importing this module registers `experts_forward` under the name "ar_fused"; a `MiniMaxM2Config`
with `experts_implementation="ar_fused"` sends every `MiniMaxM2Experts.forward` through it. The
math is the library's eager experts: for every token t and each of its K routed experts e,

    out_t += w_te * down_e(silu(gate_e(x_t)) * up_e(x_t))

On CUDA it calls the Triton kernel in `model.triton_experts` (imported there only, so importing
this module never imports triton), or the library's `grouped_mm` forward when triton is missing.
On the CPU one `torch.autograd.Function` with a hand-written backward does the work, so autograd
records one node per layer instead of a dozen gathers, scatters and per-expert matmuls, and keeps
only what the backward needs.

Its rows are the routed (token, expert) pairs grouped by expert (`_Groups`): first E blocks of C
rows, block e holding expert e's first pairs (zero-padded), which one `torch.bmm` multiplies by
all E experts' weights at once; then, for each expert with more than C pairs, a span of the rest
and one matmul. `_block_rows` picks C by a cost model in matmul rows. With few pairs per expert
(decode) per-call overhead dominates and C comes out near the largest count: one bmm per
projection, some padding. With many (training, prefill) C comes out near the smallest count: the
bmm does the bulk without padding and the spans the rest.

Without autograd and with many pairs per expert (prefill, evaluation), `_streamed_experts` runs
the same math one expert at a time instead, so each expert's rows stay in cache from the gather
to the scatter (see the comment above it). With few, inside `transposed_weights(model)` (our
rollout loop), it reads contiguous transposed copies of the weights made once a rollout.

Three more things save time over the library's `grouped_mm` path: the routing weight multiplies
the SiLU*up activations (I wide) instead of the down output (D wide), which the linearity of the
down projection allows; the K expert outputs of a token are summed by one `index_add_` instead of
an inverse permutation and a reshape-sum; and the gate and up halves of the [gate; up] weight go
through separate matmuls (the same matmul time as one on the concatenated weight) so that each
comes out contiguous, where SiLU and its gradient run several times faster than on the two
halves of one (R, 2I) tensor.

Shape legend (torchtitan style: a name ends in the sizes of its dims):
    T  tokens                    D  hidden size
    E  experts                   I  per-expert intermediate size ([gate; up] has 2I rows)
    K  experts per token         S  routed (token, expert) pairs, T * K
    C  rows per expert block     R  rows: E * C in blocks, then the spans
    x_TD            hidden states          out_TD           experts output
    w_gate_up_E2ID  [gate; up] weights     w_down_EDI       down weights
    topk_ids_TK     routed experts         topk_weights_TK  routing weights
    src_R           token of each row (T for a padding row)
    row_S           row of each pair, pairs in (token, k) order
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, grouped_mm_experts_forward

EXPERTS_IMPL = "ar_fused"

# The fixed cost of one more small matmul call on the CPU, in rows of a bmm's work: what a padding
# row must save to be worth it. Measured on 2 cores with the tiny preset's experts: a bmm over 32
# experts costs ~0.4 us per row of its blocks, a matmul call on a few rows 7 to 13 us.
_ROWS_PER_CALL = 24


def _check_inputs(self, x_TD: torch.Tensor, topk_ids_TK: torch.Tensor, topk_weights_TK: torch.Tensor) -> None:
    """Raise a ValueError for every input the kernels would otherwise turn into a wrong result."""
    if getattr(self, "has_bias", False) or getattr(self, "is_transposed", False) or not getattr(self, "has_gate", True):
        raise ValueError(f"{EXPERTS_IMPL} supports gated experts without bias in (E, out, in) layout only")
    if not getattr(self, "is_concatenated", True):
        raise ValueError(f"{EXPERTS_IMPL} needs the [gate; up] weight concatenated, not interleaved")
    act = getattr(getattr(self, "config", None), "hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{EXPERTS_IMPL} implements SiLU experts only, got hidden_act={act!r}")

    w_gate_up_E2ID, w_down_EDI = self.gate_up_proj, self.down_proj
    if w_gate_up_E2ID.dim() != 3 or w_down_EDI.dim() != 3:
        raise ValueError(
            f"expert weights must be 3-D, got gate_up_proj {tuple(w_gate_up_E2ID.shape)} "
            f"and down_proj {tuple(w_down_EDI.shape)}"
        )
    E, I2, D = w_gate_up_E2ID.shape
    if I2 % 2 or tuple(w_down_EDI.shape) != (E, D, I2 // 2):
        raise ValueError(
            f"gate_up_proj {tuple(w_gate_up_E2ID.shape)} and down_proj {tuple(w_down_EDI.shape)} "
            f"are not (E, 2I, D) and (E, D, I)"
        )
    if x_TD.dim() != 2 or x_TD.shape[1] != D:
        raise ValueError(f"hidden_states must be (tokens, {D}), got {tuple(x_TD.shape)}")
    if topk_ids_TK.dim() != 2 or topk_ids_TK.shape[0] != x_TD.shape[0]:
        raise ValueError(f"top_k_index must be (tokens={x_TD.shape[0]}, k), got {tuple(topk_ids_TK.shape)}")
    if topk_weights_TK.shape != topk_ids_TK.shape:
        raise ValueError(
            f"top_k_weights {tuple(topk_weights_TK.shape)} must have the shape of top_k_index "
            f"{tuple(topk_ids_TK.shape)}"
        )
    if topk_ids_TK.dtype.is_floating_point or topk_ids_TK.dtype.is_complex or topk_ids_TK.dtype == torch.bool:
        raise ValueError(f"top_k_index must hold integers, got {topk_ids_TK.dtype}")
    if not topk_weights_TK.dtype.is_floating_point:
        raise ValueError(f"top_k_weights must be floating point, got {topk_weights_TK.dtype}")
    for name, w in (("gate_up_proj", w_gate_up_E2ID), ("down_proj", w_down_EDI)):
        if w.dtype != x_TD.dtype:
            raise ValueError(f"hidden_states are {x_TD.dtype} but {name} is {w.dtype}; cast one to the other")
    for name, t in (("gate_up_proj", w_gate_up_E2ID), ("down_proj", w_down_EDI),
                    ("top_k_index", topk_ids_TK), ("top_k_weights", topk_weights_TK)):
        if t.device != x_TD.device:
            raise ValueError(f"hidden_states are on {x_TD.device} but {name} is on {t.device}")
    if topk_ids_TK.numel():
        lo, hi = (int(v) for v in torch.aminmax(topk_ids_TK))
        if lo < 0 or hi >= E:
            raise ValueError(f"top_k_index holds expert ids in [{lo}, {hi}], outside [0, {E - 1}]")


class _Groups:
    """Which rows belong to which expert, and the matmuls of each expert's rows with its weights.

    The first E * C rows are E blocks of C rows, block e holding expert e's first pairs (zero
    padding when it has fewer than C), one `torch.bmm` for all blocks. The pairs an expert has
    beyond C follow, in one span per such expert and one matmul per span. C = 0 leaves only spans
    (one matmul per active expert), C = the largest count only blocks (one bmm).
    """

    def __init__(self, counts: list[int], block_rows: int):
        self.num_experts = len(counts)
        self.block_rows = block_rows
        self.idle = [e for e, n in enumerate(counts) if n == 0]
        self.spans = []  # (expert, first row, end row) of each expert's pairs beyond its block
        start = self.num_experts * block_rows
        for e, n in enumerate(counts):
            if n > block_rows:
                self.spans.append((e, start, start + n - block_rows))
                start += n - block_rows
        self.num_rows = start
        self.padded = self.num_experts * block_rows > sum(min(n, block_rows) for n in counts)

    def _blocks(self, rows_RX: torch.Tensor) -> torch.Tensor:
        return rows_RX[: self.num_experts * self.block_rows].view(self.num_experts, self.block_rows, -1)

    def matmul_t(self, a_RX: torch.Tensor, w_EYX: torch.Tensor) -> torch.Tensor:
        """Each row of expert e times w[e].T: the forward projections."""
        out_RY = a_RX.new_empty(a_RX.shape[0], w_EYX.shape[1])
        if self.block_rows:
            torch.bmm(self._blocks(a_RX), w_EYX.transpose(1, 2), out=self._blocks(out_RY))
        for e, a, b in self.spans:
            torch.mm(a_RX[a:b], w_EYX[e].t(), out=out_RY[a:b])
        return out_RY

    def matmul(self, g_RY: torch.Tensor, w_EYX: torch.Tensor, out_RX: torch.Tensor, accumulate: bool = False):
        """Each row of expert e times w[e], into (or, accumulating, onto) out: input gradients."""
        if self.block_rows:
            if accumulate:
                self._blocks(out_RX).baddbmm_(self._blocks(g_RY), w_EYX)
            else:
                torch.bmm(self._blocks(g_RY), w_EYX, out=self._blocks(out_RX))
        for e, a, b in self.spans:
            if accumulate:
                out_RX[a:b].addmm_(g_RY[a:b], w_EYX[e])
            else:
                torch.mm(g_RY[a:b], w_EYX[e], out=out_RX[a:b])

    def weight_grad(self, g_RY: torch.Tensor, a_RX: torch.Tensor, out_EYX: torch.Tensor):
        """Into out[e], the sum over the rows of expert e of g_r^T a_r: the gradient of w[e] in a @ w[e].T."""
        if self.block_rows:  # idle experts have all-padding blocks, so a zero gradient
            torch.bmm(self._blocks(g_RY).transpose(1, 2), self._blocks(a_RX), out=out_EYX)
            for e, a, b in self.spans:
                out_EYX[e].addmm_(g_RY[a:b].t(), a_RX[a:b])
            return
        for e in self.idle:
            out_EYX[e].zero_()
        for e, a, b in self.spans:
            torch.mm(g_RY[a:b].t(), a_RX[a:b], out=out_EYX[e])


def _gather_rows(t_TD: torch.Tensor, src_R: torch.Tensor, padded: bool) -> torch.Tensor:
    """The token row of each grouped row; padding rows (src T) read zeros."""
    if padded:
        t_TD = torch.cat([t_TD, t_TD.new_zeros(1, t_TD.shape[1])])
    return t_TD.index_select(0, src_R)


def _sum_rows(rows_RD: torch.Tensor, src_R: torch.Tensor, num_tokens: int, padded: bool) -> torch.Tensor:
    """Sum the grouped rows of each token; padding rows land in a dropped extra row."""
    out = rows_RD.new_zeros(num_tokens + padded, rows_RD.shape[1]).index_add_(0, src_R, rows_RD)
    return out[:num_tokens] if padded else out


def _row_weights(topk_weights_TK: torch.Tensor, groups: _Groups, row_S: torch.Tensor) -> torch.Tensor:
    """The routing weight of each grouped row, (R, 1); zero on padding rows."""
    w_R1 = topk_weights_TK.new_zeros(groups.num_rows, 1)
    w_R1.view(-1).index_copy_(0, row_S, topk_weights_TK.reshape(-1))
    return w_R1


def _experts_rows(x_TD, topk_weights_TK, w_gate_up_E2ID, w_down_EDI, groups, src_R, row_S):
    """The experts output, and the row tensors its backward needs."""
    I = w_down_EDI.shape[2]
    x_RD = _gather_rows(x_TD, src_R, groups.padded)
    w_R1 = _row_weights(topk_weights_TK, groups, row_S)

    gate_RI = groups.matmul_t(x_RD, w_gate_up_E2ID[:, :I])
    up_RI = groups.matmul_t(x_RD, w_gate_up_E2ID[:, I:])
    silu_RI = F.silu(gate_RI)
    actw_RI = (silu_RI * up_RI).mul_(w_R1)
    y_RD = groups.matmul_t(actw_RI, w_down_EDI)
    out_TD = _sum_rows(y_RD, src_R, x_TD.shape[0], groups.padded)
    return out_TD, (x_RD, gate_RI, up_RI, silu_RI, actw_RI, w_R1)


class _GroupedExperts(torch.autograd.Function):
    """`_experts_rows` with its hand-written backward."""

    @staticmethod
    def forward(ctx, x_TD, topk_weights_TK, w_gate_up_E2ID, w_down_EDI, groups, src_R, row_S):
        out_TD, rows = _experts_rows(x_TD, topk_weights_TK, w_gate_up_E2ID, w_down_EDI, groups, src_R, row_S)
        ctx.save_for_backward(*rows, src_R, row_S, w_gate_up_E2ID, w_down_EDI)
        ctx.groups = groups
        ctx.topk_shape = topk_weights_TK.shape
        return out_TD

    @staticmethod
    def backward(ctx, g_TD):
        (x_RD, gate_RI, up_RI, silu_RI, actw_RI, w_R1, src_R, row_S,
         w_gate_up_E2ID, w_down_EDI) = ctx.saved_tensors
        need_x, need_w, need_gate_up, need_down = ctx.needs_input_grad[:4]
        groups = ctx.groups
        I = w_down_EDI.shape[2]
        g_RD = _gather_rows(g_TD, src_R, groups.padded)

        d_down_EDI = None
        if need_down:
            d_down_EDI = torch.empty_like(w_down_EDI)
            groups.weight_grad(g_RD, actw_RI, d_down_EDI)
        d_actw_RI = actw_RI.new_empty(actw_RI.shape)
        groups.matmul(g_RD, w_down_EDI, d_actw_RI)

        # actw = silu(gate) * up * w, so with t = d_actw * up: d_w = <t, silu>, d_gate = silu'(gate) * t * w
        t_RI = d_actw_RI * up_RI
        d_w_TK = None
        if need_w:  # back from rows to (token, k) order
            d_w_TK = torch.linalg.vecdot(t_RI, silu_RI).index_select(0, row_S).view(ctx.topk_shape)
        d_gate_RI = torch.ops.aten.silu_backward(t_RI.mul_(w_R1), gate_RI)
        d_up_RI = d_actw_RI.mul_(w_R1).mul_(silu_RI)

        d_gate_up_E2ID = None
        if need_gate_up:
            d_gate_up_E2ID = torch.empty_like(w_gate_up_E2ID)
            groups.weight_grad(d_gate_RI, x_RD, d_gate_up_E2ID[:, :I])
            groups.weight_grad(d_up_RI, x_RD, d_gate_up_E2ID[:, I:])
        d_x_TD = None
        if need_x:
            d_x_RD = x_RD.new_empty(x_RD.shape)
            groups.matmul(d_gate_RI, w_gate_up_E2ID[:, :I], d_x_RD)
            groups.matmul(d_up_RI, w_gate_up_E2ID[:, I:], d_x_RD, accumulate=True)
            d_x_TD = _sum_rows(d_x_RD, src_R, g_TD.shape[0], groups.padded)
        return d_x_TD, d_w_TK, d_gate_up_E2ID, d_down_EDI, None, None, None


# ---- streamed: one expert at a time, its rows hot in cache (no autograd) ------------------------
#
# With many pairs per expert (prefill, evaluation of long batches) the row-wide passes of the
# grouped path (gather every row, SiLU and the products over every row, scatter every row) each
# stream R x D or R x I floats through memory, a large share of the time on a machine whose memory
# is slow. The streamed path runs the whole chain for one expert's rows (gather, [gate; up]
# matmul, SiLU * up * w, down matmul, index_add into the output) before the next expert's, so its
# intermediates, ~S/E rows, stay in cache. It pays ~7 small ops per active expert, which
# decode-sized batches cannot afford: `_STREAM_MIN_ROWS` sets where it starts. Under autograd the
# grouped path stays: a streamed backward (tried) recomputes or re-gathers per expert and came out
# 10-20% slower than the grouped one's batched weight gradients.

_STREAM_MIN_ROWS = 64  # mean pairs per expert from which streaming is faster (2 cores, tiny preset)


def _sorted_pairs(topk_ids_TK: torch.Tensor, num_experts: int):
    """Pairs sorted by expert: (pair of each sorted row, token of each sorted row, (e, a, b) spans)."""
    K = topk_ids_TK.shape[1]
    ids_S = topk_ids_TK.reshape(-1)
    _, order_J = torch.sort(ids_S, stable=True)
    counts = torch.bincount(ids_S, minlength=num_experts).tolist()
    spans, start = [], 0
    for e, n in enumerate(counts):
        if n:
            spans.append((e, start, start + n))
        start += n
    return order_J, order_J // K, spans


def _streamed_experts(x_TD, topk_ids_TK, topk_weights_TK, w_gate_up_E2ID, w_down_EDI) -> torch.Tensor:
    """The experts output, one expert at a time (N: that expert's pairs); no autograd."""
    I = w_down_EDI.shape[2]
    order_J, tok_J, spans = _sorted_pairs(topk_ids_TK, w_gate_up_E2ID.shape[0])
    w_J1 = topk_weights_TK.reshape(-1).index_select(0, order_J).to(x_TD.dtype)[:, None]
    out_TD = torch.zeros_like(x_TD)
    for e, a, b in spans:
        src = tok_J[a:b]
        x_ND = x_TD.index_select(0, src)
        gate_up_N2I = torch.mm(x_ND, w_gate_up_E2ID[e].t())
        act_NI = F.silu(gate_up_N2I[:, :I]).mul_(gate_up_N2I[:, I:]).mul_(w_J1[a:b])
        out_TD.index_add_(0, src, torch.mm(act_NI, w_down_EDI[e].t()))
    return out_TD


# ---- without autograd: the weights transposed once a rollout -----------------------------------
#
# A CPU `torch.bmm` whose second operand is a transposed view, as `_Groups.matmul_t` multiplies by
# the (E, out, in) weights, runs at about half the speed of one on a contiguous (E, in, out) copy
# (measured on the tiny preset's decode shape: 0.90 ms against 0.51 ms for [gate; up]), and a
# decode step is bound by reading the weights, so the layout shows in full. Transposing costs a
# few decode steps' worth of time, so it pays only across many calls with the same weights: inside
# `transposed_weights(model)` (a rollout, during which nothing updates the weights) each experts
# module carries contiguous copies, dropped at its end. No cache outlives the block: an optimizer
# step may change the weights without moving their version counter (fused AdamW does not), so
# nothing outside it could tell a stale copy.

_TRANSPOSED = "_ar_fused_transposed"  # the attribute the copies live in, on each experts module


@contextlib.contextmanager
def transposed_weights(model):
    """For the block's duration, the no-grad forward of every experts module under `model` that
    runs our implementation on the CPU reads its weights from contiguous (E, D, 2I) and (E, I, D)
    copies; a module under another implementation gets none (it would never read them)."""
    modules = [m for m in model.modules()
               if getattr(getattr(m, "config", None), "_experts_implementation", None) == EXPERTS_IMPL
               and isinstance(getattr(m, "gate_up_proj", None), torch.Tensor)
               and isinstance(getattr(m, "down_proj", None), torch.Tensor) and m.gate_up_proj.device.type == "cpu"
               and m.gate_up_proj.dim() == 3 and m.down_proj.dim() == 3 and _TRANSPOSED not in m.__dict__]
    try:
        with torch.no_grad():
            for m in modules:
                m.__dict__[_TRANSPOSED] = (m.gate_up_proj.transpose(1, 2).contiguous(),
                                           m.down_proj.transpose(1, 2).contiguous())
        yield model
    finally:
        for m in modules:
            m.__dict__.pop(_TRANSPOSED, None)


def _inference_rows(x_TD, topk_weights_TK, w_gate_up_ED2I, w_down_EID, groups, src_R, row_S) -> torch.Tensor:
    """`_experts_rows`' output from the transposed weights, one matmul for [gate; up]."""
    I = w_down_EID.shape[1]
    x_RD = _gather_rows(x_TD, src_R, groups.padded)
    w_R1 = _row_weights(topk_weights_TK, groups, row_S)
    gate_up_R2I = x_RD.new_empty(groups.num_rows, 2 * I)
    groups.matmul(x_RD, w_gate_up_ED2I, gate_up_R2I)
    actw_RI = F.silu(gate_up_R2I[:, :I]).mul_(gate_up_R2I[:, I:]).mul_(w_R1)
    y_RD = x_RD.new_empty(groups.num_rows, w_down_EID.shape[2])
    groups.matmul(actw_RI, w_down_EID, y_RD)
    return _sum_rows(y_RD, src_R, x_TD.shape[0], groups.padded)


# ---- the grouped path's layout and dispatch ------------------------------------------------------

def _block_rows(counts: list[int]) -> int:
    """The C of `_Groups` that costs the fewest matmul rows, counting a matmul call as
    `_ROWS_PER_CALL` rows; 0 when no blocks are worth their padding."""
    E = len(counts)
    desc = sorted(counts, reverse=True)
    best_C, best_cost = 0, sum(n + _ROWS_PER_CALL for n in counts if n)
    above = 0  # rows of the k largest experts
    for k, C in enumerate(desc):
        # the k experts counted in `above` overflow the blocks, each in one call
        if C and (k == 0 or desc[k - 1] > C):
            cost = E * C + above - k * C + k * _ROWS_PER_CALL
            if cost < best_cost:
                best_C, best_cost = C, cost
        above += C
    return best_C


def _cpu_experts(self, x_TD: torch.Tensor, topk_ids_TK: torch.Tensor, topk_weights_TK: torch.Tensor) -> torch.Tensor:
    T, K = topk_ids_TK.shape
    E = self.gate_up_proj.shape[0]
    needs_grad = torch.is_grad_enabled() and (
        x_TD.requires_grad or topk_weights_TK.requires_grad or self.gate_up_proj.requires_grad
        or self.down_proj.requires_grad)
    if not needs_grad and T * K >= _STREAM_MIN_ROWS * E:
        return _streamed_experts(x_TD, topk_ids_TK, topk_weights_TK, self.gate_up_proj, self.down_proj)
    ids_S = topk_ids_TK.reshape(-1)
    ids_J, order_J = torch.sort(ids_S, stable=True)  # J: the pairs sorted by expert
    counts_E = torch.bincount(ids_S, minlength=E)
    counts = counts_E.tolist()
    groups = _Groups(counts, _block_rows(counts))
    C = groups.block_rows

    row_J = torch.arange(T * K, device=x_TD.device)
    tok_J = order_J // K
    if C:
        # sorted pair j is expert e's pair number r = j - start_e: row e*C + r of the blocks
        # while r < C; past that, the spans hold the overflowing pairs in sorted order
        rank_J = row_J - (counts_E.cumsum(0) - counts_E)[ids_J]
        row_J = ids_J * C + rank_J
        if groups.spans:
            over_J = rank_J >= C
            row_J = torch.where(over_J, over_J.cumsum(0) + (E * C - 1), row_J)
        src_R = torch.full((groups.num_rows,), T, device=x_TD.device).index_copy_(0, row_J, tok_J)
    else:
        src_R = tok_J
    row_S = torch.empty_like(row_J).index_copy_(0, order_J, row_J)
    args = (x_TD, topk_weights_TK.to(x_TD.dtype), self.gate_up_proj, self.down_proj, groups, src_R, row_S)
    if needs_grad:
        return _GroupedExperts.apply(*args)
    copies = self.__dict__.get(_TRANSPOSED)  # one read: another thread's block may end meanwhile
    if copies is not None:  # a rollout: the weights in the layout the bmm reads fastest
        return _inference_rows(x_TD, args[1], *copies, groups, src_R, row_S)
    return _experts_rows(*args)[0]  # no autograd node, nothing kept


def experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor) -> torch.Tensor:
    """`ExpertsInterface` entry: (T, D) hidden states, (T, K) expert ids and weights -> (T, D)."""
    _check_inputs(self, hidden_states, top_k_index, top_k_weights)
    if hidden_states.device.type == "cuda":
        try:
            from model.triton_experts import triton_experts
        except ImportError:
            return grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)
        return triton_experts(hidden_states, self.gate_up_proj, self.down_proj, top_k_index, top_k_weights)
    return _cpu_experts(self, hidden_states, top_k_index, top_k_weights)


ALL_EXPERTS_FUNCTIONS.register(EXPERTS_IMPL, experts_forward)
