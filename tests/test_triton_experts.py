"""The Triton experts kernels against `transformers`' eager `MiniMaxM2Experts`, forward and backward.

The kernels run on the CPU under the Triton interpreter, which reads TRITON_INTERPRET when triton is
first imported; so the checks run in a child process (this file run as a script prints one JSON
line, check name -> failure or null), whatever the pytest process imported before. Shapes are tiny
because the interpreter executes every program in numpy.

The interpreter has no bfloat16 `tl.dot` (it multiplies the raw bits), so float16 stands in for the
16-bit path here and bf16 is checked on a GPU by `bench/triton_experts.py`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from unittest import mock

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CHECKS = {}


def check(fn):
    CHECKS[fn.__name__.removeprefix("check_")] = fn
    return fn


# ---------------------------------------------------------------------------------------------
# Child side: runs under TRITON_INTERPRET=1
# ---------------------------------------------------------------------------------------------


def _kernels():
    # Imported here, never at module level: it imports triton, which must not happen in pytest's process.
    import model.triton_experts as kernels

    return kernels


def _eager_experts(w_gate_up_E2ID, w_down_EDI, top_k):
    """The library's eager experts module holding copies of the given weights (fp32)."""
    from transformers import MiniMaxM2Config
    from transformers.models.minimax_m2.modeling_minimax_m2 import MiniMaxM2Experts

    num_experts, two_i, hidden = w_gate_up_E2ID.shape
    config = MiniMaxM2Config(hidden_size=hidden, intermediate_size=two_i // 2, num_local_experts=num_experts,
                             num_experts_per_tok=top_k, experts_implementation="eager")
    experts = MiniMaxM2Experts(config)
    experts.gate_up_proj = torch.nn.Parameter(w_gate_up_E2ID.detach().float().clone())
    experts.down_proj = torch.nn.Parameter(w_down_EDI.detach().float().clone())
    return experts


def _routing(num_tokens, num_experts, top_k, *, hit_experts=None, generator):
    """Distinct experts per token drawn from the first `hit_experts`; router-like weights summing to 1."""
    hit_experts = hit_experts or num_experts
    ids_TK = torch.rand(num_tokens, hit_experts, generator=generator).argsort(dim=-1)[:, :top_k]
    weights_TK = torch.rand(num_tokens, top_k, generator=generator) + 0.1
    return ids_TK, weights_TK / weights_TK.sum(dim=-1, keepdim=True)


def _relative_error(ours, reference):
    err = (ours.float() - reference.float()).norm()
    scale = reference.float().norm()
    return err.item() if scale == 0 else (err / scale).item()


def _compare_with_eager(num_tokens, hidden, inter, num_experts, top_k, *, dtype=torch.float32, tol=1e-5,
                        hit_experts=None, ids_TK=None, noncontiguous=False, seed=0):
    """Forward and all four gradients of a loss (y * g).sum() agree with the eager experts."""
    gen = torch.Generator().manual_seed(seed)
    routed_ids, weights_TK = _routing(num_tokens, num_experts, top_k, hit_experts=hit_experts, generator=gen)
    ids_TK = routed_ids if ids_TK is None else ids_TK
    # Inputs are rounded to `dtype` first so both sides see the same values.
    x_TD = torch.randn(num_tokens, hidden, generator=gen).to(dtype)
    w_gate_up_E2ID = (torch.randn(num_experts, 2 * inter, hidden, generator=gen) / hidden**0.5).to(dtype)
    w_down_EDI = (torch.randn(num_experts, hidden, inter, generator=gen) / inter**0.5).to(dtype)
    if noncontiguous:  # same values, transposed memory: the kernels must follow strides
        w_down_EDI, weights_TK, ids_TK = (t.transpose(-1, -2).contiguous().transpose(-1, -2)
                                          for t in (w_down_EDI, weights_TK, ids_TK))
    g_TD = torch.randn(num_tokens, hidden, generator=gen)

    leaves = [t.clone().requires_grad_() for t in (x_TD, w_gate_up_E2ID, w_down_EDI, weights_TK)]  # keeps strides
    x, w_gate_up, w_down, weights = leaves
    y_TD = _kernels().triton_experts(x, w_gate_up, w_down, ids_TK, weights)
    (y_TD.float() * g_TD).sum().backward()

    experts = _eager_experts(w_gate_up_E2ID, w_down_EDI, top_k)
    x_ref = x_TD.float().requires_grad_()
    weights_ref = weights_TK.clone().requires_grad_()
    y_ref = experts(x_ref, ids_TK, weights_ref)
    (y_ref * g_TD).sum().backward()

    assert y_TD.shape == y_ref.shape and y_TD.dtype == dtype, (y_TD.shape, y_TD.dtype)
    pairs = {"y": (y_TD, y_ref), "dx": (x.grad, x_ref.grad),
             "dgate_up": (w_gate_up.grad, experts.gate_up_proj.grad),
             "ddown": (w_down.grad, experts.down_proj.grad),
             "dtopk_weights": (weights.grad, weights_ref.grad)}
    errors = {name: _relative_error(ours, ref) for name, (ours, ref) in pairs.items()}
    assert all(err <= tol for err in errors.values()), f"relative errors above {tol}: {errors}"


@check
def check_experts_without_tokens():
    # Experts 5..7 of 8 receive nothing.
    _compare_with_eager(16, 32, 16, 8, 2, hit_experts=5)


@check
def check_deterministic_and_no_grad():
    # Two runs give bitwise-equal outputs and gradients; the no-grad path gives the same output.
    gen = torch.Generator().manual_seed(2)
    ids_TK, weights_TK = _routing(10, 4, 2, generator=gen)
    inputs = [torch.randn(10, 32, generator=gen), torch.randn(4, 32, 32, generator=gen) / 6,
              torch.randn(4, 32, 16, generator=gen) / 4, weights_TK]
    g_TD = torch.randn(10, 32, generator=gen)
    runs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in inputs]
        y_TD = _kernels().triton_experts(*leaves[:3], ids_TK, leaves[3])
        (y_TD * g_TD).sum().backward()
        runs.append([y_TD.detach()] + [t.grad for t in leaves])
    assert all(torch.equal(a, b) for a, b in zip(*runs)), "two runs differ"
    with torch.no_grad():
        y_no_grad = _kernels().triton_experts(*leaves[:3], ids_TK, leaves[3])
    assert torch.equal(y_no_grad, runs[0][0]), "no-grad forward differs from the autograd forward"


@check
def check_single_token():
    _compare_with_eager(1, 32, 16, 4, 2)


@check
def check_topk_equals_num_experts():
    _compare_with_eager(6, 32, 16, 4, 4)


@check
def check_no_tokens():
    # The eager experts build no graph for zero tokens, so check the contract directly.
    leaves = [t.requires_grad_() for t in (torch.randn(0, 32), torch.randn(4, 32, 32), torch.randn(4, 32, 16),
                                           torch.rand(0, 2))]
    y_TD = _kernels().triton_experts(*leaves[:3], torch.zeros(0, 2, dtype=torch.long), leaves[3])
    assert y_TD.shape == (0, 32), y_TD.shape
    y_TD.sum().backward()
    assert [tuple(t.grad.shape) for t in leaves] == [tuple(t.shape) for t in leaves]
    assert not leaves[1].grad.any() and not leaves[2].grad.any(), "weights of unused experts get a gradient"


@check
def check_multi_block_small_tiles():
    # 16x16x16 tiles: loops over several K steps, ragged N and K edges (D=48, I=24), an expert with
    # more rows than one block (every token routes to expert 0), and non-contiguous inputs.
    kernels = _kernels()
    gen = torch.Generator().manual_seed(1)
    others_TK = 1 + torch.rand(20, 3, generator=gen).argsort(dim=-1)[:, :2]
    ids_TK = torch.cat([torch.zeros(20, 1, dtype=torch.long), others_TK], dim=1)
    with mock.patch.object(kernels, "pick_tiles", lambda *_: kernels.Tiles(block_m=16, block_n=16, block_k=16)):
        _compare_with_eager(20, 48, 24, 4, 3, ids_TK=ids_TK, noncontiguous=True)


@check
def check_float16():
    _compare_with_eager(12, 32, 16, 4, 2, dtype=torch.float16, tol=5e-3)


def _check_routing(routing, ids_TK, num_experts, block_m):
    """The invariants every kernel relies on, on the rows in use."""
    used = int(routing.num_padded)
    sorted_ids = routing.sorted_pair_ids[:used]
    num_pairs = ids_TK.numel()
    counts = torch.bincount(ids_TK.reshape(-1), minlength=num_experts)
    blocks = (counts + block_m - 1) // block_m
    assert used == int(blocks.sum()) * block_m, (used, blocks)
    assert routing.expert_block_offsets.tolist() == [0] + blocks.cumsum(0).tolist()
    assert sorted(sorted_ids[sorted_ids < num_pairs].tolist()) == list(range(num_pairs)), "every pair exactly once"
    assert int((sorted_ids == num_pairs).sum()) == used - num_pairs, "the other rows hold the sentinel"
    flat_ids = ids_TK.reshape(-1)
    for block in range(used // block_m):
        expert = int(routing.block_expert_ids[block])
        assert routing.expert_block_offsets[expert] <= block < routing.expert_block_offsets[expert + 1]
        pairs = sorted_ids[block * block_m:(block + 1) * block_m]
        pairs = pairs[pairs < num_pairs]
        assert bool((flat_ids[pairs] == expert).all()), f"block {block} mixes experts"
        assert pairs.tolist() == sorted(pairs.tolist()), "pairs of one expert keep token order"


@check
def check_alignment():
    kernels = _kernels()
    # expert 0: 3 pairs, 2: 5, 3: 2, experts 1 and 4: none -> 1 + 2 + 1 blocks of 4 rows
    ids_TK = torch.tensor([[2, 0], [2, 3], [0, 2], [2, 0], [3, 2]])
    routing = kernels.moe_align_block_size(ids_TK, num_experts=5, block_m=4)
    assert routing.expert_block_offsets.tolist() == [0, 1, 1, 3, 4, 4]
    _check_routing(routing, ids_TK, 5, 4)
    # More pairs than the kernel reads per step, int32 ids, 6 experts (not a power of two).
    ids_TK = torch.randint(0, 6, (150, 4), generator=torch.Generator().manual_seed(3), dtype=torch.int32)
    _check_routing(kernels.moe_align_block_size(ids_TK, num_experts=6, block_m=16), ids_TK, 6, 16)


@check
def check_invalid_inputs():
    kernels = _kernels()
    x, w_gate_up, w_down = torch.randn(3, 8), torch.randn(2, 8, 8), torch.randn(2, 8, 4)
    ids, weights = torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 1)
    bad_calls = {
        "dtype": (x.double(), w_gate_up, w_down, ids, weights),
        "weights dtype": (x, w_gate_up.half(), w_down, ids, weights),
        "device": (x.to("meta"), w_gate_up, w_down, ids, weights),
        "hidden": (torch.randn(3, 6), w_gate_up, w_down, ids, weights),
        "down shape": (x, w_gate_up, torch.randn(2, 4, 8), ids, weights),
        "topk shape": (x, w_gate_up, w_down, ids, torch.ones(3, 2)),
        "ids dtype": (x, w_gate_up, w_down, ids.float(), weights),
        "rank": (x[None], w_gate_up, w_down, ids, weights),
    }
    for what, args in bad_calls.items():
        try:
            kernels.triton_experts(*args)
        except ValueError:
            continue
        raise AssertionError(f"no ValueError for a bad {what}")


def _run_checks() -> dict[str, str | None]:
    results = {}
    for name, fn in CHECKS.items():
        try:
            fn()
            results[name] = None
        except Exception:  # noqa: BLE001  (every failure is reported to the parent, not raised)
            results[name] = traceback.format_exc(limit=-3)
    return results


# ---------------------------------------------------------------------------------------------
# Parent side: pytest
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def interpreted_results():
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"interpreted checks crashed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(CHECKS))
def test_triton_experts_interpreted(name, interpreted_results):
    failure = interpreted_results[name]
    assert failure is None, failure


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(_run_checks()))
