"""Our experts kernel (`model.experts`) against `transformers`' eager experts, forward and backward.

Every case runs one `MiniMaxM2Experts` twice, switching `config._experts_implementation` between
"eager" and ours, and compares the output and the gradients of hidden_states, top_k_weights,
gate_up_proj and down_proj under a loss with a random incoming gradient. The CPU path's row layout
is forced in turn to per-expert matmuls only, one padded bmm only, and a bmm plus per-expert
matmuls for the overflow, so each is checked whatever shapes pick it in practice.
"""

from __future__ import annotations

import pytest
import torch
from transformers import MiniMaxM2Config
from transformers.models.minimax_m2.modeling_minimax_m2 import MiniMaxM2Experts

import model.experts as experts
from model import EXPERTS_IMPL, build_policy, build_tokenizer

TOL = 1e-5  # relative error, fp32


def make_experts(num_experts: int, hidden: int, intermediate: int, top_k: int, seed: int = 0) -> MiniMaxM2Experts:
    config = MiniMaxM2Config(
        hidden_size=hidden, intermediate_size=intermediate, num_local_experts=num_experts,
        num_experts_per_tok=top_k, experts_implementation="eager",
    )
    module = MiniMaxM2Experts(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the module's weights start uninitialized
        module.gate_up_proj.copy_(torch.randn(module.gate_up_proj.shape, generator=gen) * hidden**-0.5)
        module.down_proj.copy_(torch.randn(module.down_proj.shape, generator=gen) * intermediate**-0.5)
    return module


def random_routing(num_tokens: int, num_experts: int, top_k: int, gen: torch.Generator):
    """Distinct experts per token with renormalized sigmoid weights, as the library's router makes them."""
    scores = torch.sigmoid(torch.randn(num_tokens, num_experts, generator=gen))
    top_k_weights, top_k_index = torch.topk(scores, top_k, dim=-1)
    return top_k_index, top_k_weights / top_k_weights.sum(-1, keepdim=True)


def run(module, implementation, x_TD, top_k_index, top_k_weights, g_TD):
    """Output and gradients (hidden_states, top_k_weights, gate_up_proj, down_proj) of sum(out * g)."""
    module.config._experts_implementation = implementation
    module.zero_grad(set_to_none=True)
    x_TD = x_TD.clone().requires_grad_()
    top_k_weights = top_k_weights.clone().requires_grad_()
    out_TD = module(x_TD, top_k_index, top_k_weights)
    (out_TD * g_TD).sum().backward()
    grads = [x_TD.grad, top_k_weights.grad, module.gate_up_proj.grad, module.down_proj.grad]
    return [out_TD.detach()] + [torch.zeros(0) if g is None else g for g in grads]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def assert_matches_eager(module, x_TD, top_k_index, top_k_weights, seed=0):
    """Output and the four gradients within TOL of eager, and the output again without autograd,
    plain and reading the transposed copies a rollout gives."""
    g_TD = torch.randn(x_TD.shape, generator=torch.Generator().manual_seed(seed + 1))
    ours = run(module, EXPERTS_IMPL, x_TD, top_k_index, top_k_weights, g_TD)
    ref = run(module, "eager", x_TD, top_k_index, top_k_weights, g_TD)
    for name, a, b in zip(["out", "d_hidden", "d_top_k_weights", "d_gate_up", "d_down"], ours, ref):
        assert rel_err(a, b) <= TOL, f"{name}: relative error {rel_err(a, b):.2e}"
    module.config._experts_implementation = EXPERTS_IMPL
    with torch.no_grad():
        assert rel_err(module(x_TD, top_k_index, top_k_weights), ref[0]) <= TOL
        with experts.transposed_weights(module):  # as a rollout runs it
            assert rel_err(module(x_TD, top_k_index, top_k_weights), ref[0]) <= TOL


# C, the rows per padded expert block, of each forced layout; experts over C get their own matmul
LAYOUTS = {
    "streamed": None,  # one expert at a time (many pairs per expert)
    "sorted": lambda counts: 0,
    "padded": lambda counts: max(counts, default=0),
    "mixed": lambda counts: sorted(counts)[len(counts) // 2],
}


@pytest.fixture(params=list(LAYOUTS))
def layout(request, monkeypatch):
    """Force one CPU layout: streamed per expert, per-expert matmuls, one padded bmm, or a bmm plus
    matmuls for the rest."""
    if LAYOUTS[request.param] is None:
        monkeypatch.setattr(experts, "_STREAM_MIN_ROWS", 0)
    else:
        monkeypatch.setattr(experts, "_STREAM_MIN_ROWS", 10**9)
        monkeypatch.setattr(experts, "_block_rows", LAYOUTS[request.param])
    return request.param


# ---- random shapes -------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_random_shapes_match_eager(layout, seed):
    gen = torch.Generator().manual_seed(seed)
    num_experts = int(torch.randint(2, 17, (1,), generator=gen))
    top_k = int(torch.randint(1, num_experts + 1, (1,), generator=gen))
    num_tokens = int(torch.randint(1, 150, (1,), generator=gen))
    hidden = 16 * int(torch.randint(1, 4, (1,), generator=gen))
    intermediate = 8 * int(torch.randint(1, 4, (1,), generator=gen))
    module = make_experts(num_experts, hidden, intermediate, top_k, seed)
    top_k_index, top_k_weights = random_routing(num_tokens, num_experts, top_k, gen)
    x_TD = torch.randn(num_tokens, hidden, generator=gen)
    assert_matches_eager(module, x_TD, top_k_index, top_k_weights, seed)


def test_tiny_preset_sizes_match_eager(layout):
    gen = torch.Generator().manual_seed(7)
    module = make_experts(32, 256, 128, 4)
    top_k_index, top_k_weights = random_routing(64, 32, 4, gen)
    assert_matches_eager(module, torch.randn(64, 256, generator=gen), top_k_index, top_k_weights)


# ---- edge cases ----------------------------------------------------------------------------------

def test_experts_without_tokens(layout):
    """Only experts 2 and 5 of 8 are routed to; the others must get exactly zero gradient."""
    gen = torch.Generator().manual_seed(1)
    module = make_experts(8, 32, 16, 2)
    top_k_index = torch.tensor([[2, 5], [5, 2], [2, 5]])
    top_k_weights = torch.rand(3, 2, generator=gen)
    x_TD = torch.randn(3, 32, generator=gen)
    assert_matches_eager(module, x_TD, top_k_index, top_k_weights)
    _, _, _, d_gate_up, d_down = run(module, EXPERTS_IMPL, x_TD, top_k_index, top_k_weights, torch.randn(3, 32))
    idle = [e for e in range(8) if e not in (2, 5)]
    assert d_gate_up[idle].abs().max() == 0 and d_down[idle].abs().max() == 0


def test_single_token(layout):
    gen = torch.Generator().manual_seed(2)
    module = make_experts(16, 48, 24, 4)
    top_k_index, top_k_weights = random_routing(1, 16, 4, gen)
    assert_matches_eager(module, torch.randn(1, 48, generator=gen), top_k_index, top_k_weights)


def test_top_k_equals_num_experts(layout):
    gen = torch.Generator().manual_seed(3)
    module = make_experts(6, 32, 16, 6)
    top_k_index, top_k_weights = random_routing(40, 6, 6, gen)
    assert_matches_eager(module, torch.randn(40, 32, generator=gen), top_k_index, top_k_weights)


def test_no_tokens(layout):
    """An empty batch gives an empty output and zero gradients (eager's output has no graph here)."""
    module = make_experts(8, 32, 16, 2)
    x_TD = torch.randn(0, 32)
    out, d_x, d_w, d_gate_up, d_down = run(
        module, EXPERTS_IMPL, x_TD, torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2), torch.randn(0, 32)
    )
    assert out.shape == d_x.shape == (0, 32) and d_w.shape == (0, 2)
    assert d_gate_up.abs().max() == 0 and d_down.abs().max() == 0


def test_int32_index_and_frozen_weights(layout):
    """int32 expert ids work, and gradients nobody asked for are not computed."""
    gen = torch.Generator().manual_seed(4)
    module = make_experts(8, 32, 16, 2)
    module.requires_grad_(False)
    module.config._experts_implementation = EXPERTS_IMPL
    top_k_index, top_k_weights = random_routing(10, 8, 2, gen)
    x_TD = torch.randn(10, 32, generator=gen, requires_grad=True)
    module(x_TD, top_k_index.int(), top_k_weights).sum().backward()
    module.config._experts_implementation = "eager"
    x_ref = x_TD.detach().clone().requires_grad_()
    module(x_ref, top_k_index, top_k_weights).sum().backward()
    assert rel_err(x_TD.grad, x_ref.grad) <= TOL
    assert module.gate_up_proj.grad is None and module.down_proj.grad is None


def test_block_rows_choice():
    """Few pairs per expert (decode) go to padded blocks; many (training) to blocks without padding
    to speak of, plus per-expert matmuls for the rest."""
    def counts(num_tokens):
        top_k_index, _ = random_routing(num_tokens, 32, 4, torch.Generator().manual_seed(0))
        return torch.bincount(top_k_index.flatten(), minlength=32).tolist()

    decode, train = counts(64), counts(4096)
    assert sum(decode) / len(decode) <= experts._block_rows(decode) <= max(decode)
    padding = sum(max(experts._block_rows(train) - n, 0) for n in train)
    assert padding <= 0.02 * sum(train)
    assert experts._block_rows([0] * 8) == 0
    assert experts._block_rows([5] * 8) == 5  # one bmm, no padding
    assert experts._block_rows([0] * 7 + [5]) == 0  # one expert: one matmul beats seven empty blocks


def test_streamed_only_without_autograd(monkeypatch):
    """Many pairs per expert stream one expert at a time when no gradient is needed; under autograd
    the grouped path (with its backward) runs whatever the size."""
    calls = []
    streamed = experts._streamed_experts
    monkeypatch.setattr(experts, "_streamed_experts", lambda *a: calls.append(1) or streamed(*a))
    gen = torch.Generator().manual_seed(5)
    module = make_experts(4, 32, 16, 2)
    module.config._experts_implementation = EXPERTS_IMPL
    top_k_index, top_k_weights = random_routing(experts._STREAM_MIN_ROWS * 2, 4, 2, gen)
    x_TD = torch.randn(top_k_index.shape[0], 32, generator=gen)
    with torch.no_grad():
        module(x_TD, top_k_index, top_k_weights)
    assert len(calls) == 1
    module(x_TD, top_k_index, top_k_weights).sum().backward()
    assert len(calls) == 1 and module.down_proj.grad is not None
    with torch.no_grad():
        module(x_TD[:2], top_k_index[:2], top_k_weights[:2])  # decode-sized: grouped
    assert len(calls) == 1
    assert_matches_eager(module, x_TD, top_k_index, top_k_weights)


def test_transposed_weights_only_inside_their_block():
    """Inside `transposed_weights` the no-grad forward reads contiguous transposed copies and still
    matches eager; the copies are made on entry, so weights changed between two blocks (an
    optimizer step, which moves no version counter when fused) show in the next one, and they are
    gone after the block, an exception included."""
    gen = torch.Generator().manual_seed(6)
    module = make_experts(8, 32, 16, 2)
    top_k_index, top_k_weights = random_routing(12, 8, 2, gen)
    x_TD = torch.randn(12, 32, generator=gen)

    def in_block():
        module.config._experts_implementation = "eager"
        with torch.no_grad():
            ref = module(x_TD, top_k_index, top_k_weights)
        module.config._experts_implementation = EXPERTS_IMPL
        with torch.inference_mode(), experts.transposed_weights(module):
            assert experts._TRANSPOSED in module.__dict__
            out = module(x_TD, top_k_index, top_k_weights)
        assert experts._TRANSPOSED not in module.__dict__
        assert rel_err(out, ref) <= TOL
        return out

    before = in_block()
    optimizer = torch.optim.AdamW(module.parameters(), lr=0.1, fused=True)
    module(x_TD, top_k_index, top_k_weights).sum().backward()
    optimizer.step()
    assert rel_err(in_block(), before) > 1e-3  # the step changed the output, and the copies followed
    with pytest.raises(RuntimeError, match="inside"):
        with experts.transposed_weights(module):
            raise RuntimeError("inside")
    assert experts._TRANSPOSED not in module.__dict__


# ---- the whole model -----------------------------------------------------------------------------

def test_tiny_policy_matches_eager():
    tokenizer = build_tokenizer()
    ours = build_policy("tiny", tokenizer)
    eager = build_policy("tiny", tokenizer, experts_implementation="eager")
    eager.load_state_dict(ours.state_dict())
    assert ours.config._experts_implementation == EXPERTS_IMPL
    input_ids = torch.randint(0, len(tokenizer), (2, 24), generator=torch.Generator().manual_seed(0))

    logits = [m(input_ids).logits for m in (ours, eager)]
    assert rel_err(*logits) <= TOL

    losses = []
    for m in (ours, eager):
        loss = m(input_ids, labels=input_ids).loss
        loss.backward()
        losses.append(loss.detach())
    assert rel_err(*losses) <= TOL
    eager_grads = dict(eager.named_parameters())
    for name, p in ours.named_parameters():
        assert rel_err(p.grad, eager_grads[name].grad) <= TOL, name


# ---- bad input -----------------------------------------------------------------------------------

@pytest.fixture
def ours():
    module = make_experts(8, 32, 16, 2)
    module.config._experts_implementation = EXPERTS_IMPL
    return module


def routed(num_tokens=5, top_k=2):
    return random_routing(num_tokens, 8, top_k, torch.Generator().manual_seed(0))


def test_bad_dtype(ours):
    top_k_index, top_k_weights = routed()
    with pytest.raises(ValueError, match="bfloat16.*float32"):
        ours(torch.randn(5, 32, dtype=torch.bfloat16), top_k_index, top_k_weights)
    with pytest.raises(ValueError, match="integers"):
        ours(torch.randn(5, 32), top_k_index.float(), top_k_weights)


def test_bad_device(ours):
    top_k_index, top_k_weights = routed()
    with pytest.raises(ValueError, match="meta"):
        ours(torch.randn(5, 32, device="meta"), top_k_index, top_k_weights)
    with pytest.raises(ValueError, match="top_k_index is on meta"):
        ours(torch.randn(5, 32), top_k_index.to("meta"), top_k_weights)


def test_bad_shapes(ours):
    top_k_index, top_k_weights = routed()
    with pytest.raises(ValueError, match="hidden_states must be"):
        ours(torch.randn(1, 5, 32), top_k_index, top_k_weights)
    with pytest.raises(ValueError, match="hidden_states must be"):
        ours(torch.randn(5, 31), top_k_index, top_k_weights)
    with pytest.raises(ValueError, match="top_k_index must be"):
        ours(torch.randn(6, 32), top_k_index, top_k_weights)
    with pytest.raises(ValueError, match="top_k_weights"):
        ours(torch.randn(5, 32), top_k_index, top_k_weights[:, :1])


@pytest.mark.parametrize("bad_id", [8, -1])
def test_expert_id_out_of_range(ours, bad_id):
    top_k_index, top_k_weights = routed()
    top_k_index[3, 1] = bad_id
    with pytest.raises(ValueError, match=r"outside \[0, 7\]"):
        ours(torch.randn(5, 32), top_k_index, top_k_weights)


def test_unsupported_activation():
    module = make_experts(8, 32, 16, 2)
    module.config.hidden_act = "gelu"
    module.config._experts_implementation = EXPERTS_IMPL
    with pytest.raises(ValueError, match="SiLU"):
        module(torch.randn(5, 32), *routed())


# ---- GPU ------------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_eager():
    gen = torch.Generator().manual_seed(5)
    module = make_experts(32, 256, 128, 4)
    top_k_index, top_k_weights = random_routing(300, 32, 4, gen)
    x_TD, g_TD = torch.randn(300, 256, generator=gen), torch.randn(300, 256, generator=gen)
    module.cuda()
    args = [t.cuda() for t in (x_TD, top_k_index, top_k_weights, g_TD)]
    ours = run(module, EXPERTS_IMPL, *args)
    ref = run(module, "eager", *args)
    for name, a, b in zip(["out", "d_hidden", "d_top_k_weights", "d_gate_up", "d_down"], ours, ref):
        assert rel_err(a, b) <= 2e-3, name  # loose: the Triton kernel may multiply in TF32
