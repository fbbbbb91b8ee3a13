"""The pretraining step: no mask needed over right padding, the loss goes down, a NaN stops it."""

import pytest
import torch

from model import build_policy, build_tokenizer
from model.pretrain import PretrainConfig, _batch, encode_pairs, lr_schedule, make_optimizer, train_step

PAIRS = [("Q: 1 + 1?\nA: ", "2"), ("Q: What is 12 times 12?\nA: ", "144"), ("Q: 7 - 9?\nA: ", "-2")]


def test_right_padding_needs_no_mask():
    tokenizer = build_tokenizer()
    policy = build_policy("tiny", tokenizer, seed=0).train()
    encoded = encode_pairs(tokenizer, PAIRS)
    input_ids, labels = _batch(encoded, [0, 1, 2], tokenizer.pad_token_id)
    lengths = torch.tensor([len(ids) for ids, _ in encoded])
    assert len(set(lengths.tolist())) > 1  # some rows are padded
    mask = (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()

    grads = []
    for attention_mask in (mask, None):
        policy.zero_grad(set_to_none=True)
        loss = policy(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in policy.parameters() if p.grad is not None]))
    (masked_loss, masked), (loss, unmasked) = grads
    assert torch.allclose(loss, masked_loss, rtol=1e-6)
    assert len(masked) == len(unmasked)
    for a, b in zip(unmasked, masked):  # fp32 rounding apart, as any two kernels are
        assert (a - b).norm() <= 1e-5 * b.norm()


def test_train_step_lowers_the_loss():
    tokenizer = build_tokenizer()
    config = PretrainConfig(learning_rate=3e-3, warmup_steps=1, steps=20)
    policy = build_policy("tiny", tokenizer, seed=0).train()
    optimizer = make_optimizer(policy, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(config))
    input_ids, labels = _batch(encode_pairs(tokenizer, PAIRS), [0, 1, 2], tokenizer.pad_token_id)
    losses = [train_step(policy, optimizer, scheduler, input_ids, labels) for _ in range(config.num_steps)]
    assert losses[-1] < 0.5 * losses[0]


def test_a_non_finite_loss_stops_with_the_step():
    tokenizer = build_tokenizer()
    config = PretrainConfig(steps=5)
    policy = build_policy("tiny", tokenizer, seed=0).train()
    optimizer = make_optimizer(policy, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(config))
    input_ids, labels = _batch(encode_pairs(tokenizer, PAIRS), [0, 1, 2], tokenizer.pad_token_id)
    train_step(policy, optimizer, scheduler, input_ids, labels)
    with torch.no_grad():
        policy.lm_head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="diverged at step 1: loss=nan"):
        train_step(policy, optimizer, scheduler, input_ids, labels)


def test_the_rate_comes_down_over_decay_steps_then_stays_at_its_floor():
    """Stopped by a calibration, the cosine spans `decay_steps`, and the rate stays at a tenth of
    its peak after it (a cosine run past its end would climb back up); `steps=N` spans N."""
    config = PretrainConfig(warmup_steps=10, decay_steps=100, max_steps=300)
    rate = lr_schedule(config)
    assert [rate(s) for s in (0, 9)] == [0.1, 1.0]
    cosine = [rate(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(cosine, cosine[1:])) and 0.5 < rate(55) < 0.6
    assert [rate(s) for s in (100, 200, 299)] == pytest.approx([0.1, 0.1, 0.1])
    assert config.num_steps == 300 and config.schedule_steps == 100
    exact = PretrainConfig(warmup_steps=10, decay_steps=100, steps=400)
    assert exact.schedule_steps == 400 and 0.5 < lr_schedule(exact)(205) < 0.6
    assert PretrainConfig(decay_steps=1000, max_steps=30).schedule_steps == 30
