"""Fast rollouts against `model.generate` and the library's logits processors.

Greedy decoding must match `model.generate` token for token, on random weights and on weights
trained for a few steps (which emit EOS, so finished rows are exercised); the sampling knobs are
checked on their own math and on what they do to completions.
"""

import copy
import random

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from model import build_policy, build_tokenizer
from model.experts import transposed_weights
from model.generate import Completion, SamplingParams, generate, generate_ids, use_fast_generate
from model.sampling import Penalties, openai_penalties, sample, warp

PROMPTS = ["1", "2 3", "0 1 2", "Q: 12 + 34 = ? A:", "4", "The researcher analyzes failed runs and"]
NEW_TOKENS = 40


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These matmuls are small: a second thread gains little, and on shared cores it waits a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def random_policy(tokenizer):
    return build_policy("tiny", tokenizer, seed=0)


@pytest.fixture(scope="module")
def trained_policy(tokenizer):
    """A few steps on short counting sequences that end in EOS: confident logits, and greedy
    completions that stop at different lengths."""
    rng = random.Random(0)
    texts = [" ".join(str(a + i) for i in range(k)) for a, k in
             [(rng.randint(0, 4), rng.randint(2, 5)) for _ in range(16)]]
    encoded = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    width = max(map(len, encoded))
    ids = torch.tensor([e + [tokenizer.pad_token_id] * (width - len(e)) for e in encoded])
    labels = ids.masked_fill(ids == tokenizer.pad_token_id, -100)
    policy = build_policy("tiny", tokenizer, seed=1).train()
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    for _ in range(20):
        loss = policy(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return policy.eval()


def library_generate(policy, **kwargs):
    """The library's own `generate`, even on an instance whose `generate` was replaced."""
    with torch.no_grad():
        return type(policy).generate(policy, **kwargs)


# ---------------------------------------------------------------------------------------------
# greedy decoding equals model.generate
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weights", ["random_policy", "trained_policy"])
def test_greedy_matches_model_generate(weights, tokenizer, request):
    policy = request.getfixturevalue(weights)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    expected = library_generate(policy, **batch, do_sample=False, max_new_tokens=NEW_TOKENS)
    assert torch.equal(generate_ids(policy, **batch, do_sample=False, max_new_tokens=NEW_TOKENS), expected)

    # the text API pads the same way, so it decodes the same tokens
    completions = generate(policy, tokenizer, PROMPTS, SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS))
    P = batch["input_ids"].shape[1]
    for [completion], row in zip(completions, expected[:, P:].tolist()):
        assert completion.token_ids == row[: len(completion.token_ids)]
        assert all(t == tokenizer.pad_token_id for t in row[len(completion.token_ids):])


def test_greedy_matches_model_generate_reading_the_same_weight_copies(trained_policy, tokenizer):
    """Inside `transposed_weights` the library's loop reads the experts' weights as ours does, so
    the two must agree to the bit by construction of the decode step, not by the luck of rounding."""
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with transposed_weights(trained_policy):
        expected = library_generate(trained_policy, **batch, do_sample=False, max_new_tokens=NEW_TOKENS)
    assert torch.equal(generate_ids(trained_policy, **batch, do_sample=False, max_new_tokens=NEW_TOKENS), expected)


def test_greedy_matches_model_generate_without_padding(random_policy, tokenizer):
    """Prompts of one length: the library drops the all-ones mask and attention runs unmasked."""
    batch = tokenizer(["1 2", "3 4", "5 6"], return_tensors="pt", padding=True)
    assert bool(batch["attention_mask"].all())
    expected = library_generate(random_policy, **batch, do_sample=False, max_new_tokens=NEW_TOKENS)
    assert torch.equal(generate_ids(random_policy, **batch, do_sample=False, max_new_tokens=NEW_TOKENS), expected)


def test_trained_policy_stops_some_rows_early(trained_policy, tokenizer):
    """The trained weights exercise finished rows: some greedy completions end on EOS early."""
    completions = [c for [c] in generate(trained_policy, tokenizer, PROMPTS,
                                         SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS))]
    assert "stop" in {c.finish_reason for c in completions}
    for c in completions:
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == tokenizer.eos_token_id and len(c.token_ids) < NEW_TOKENS
        else:
            assert len(c.token_ids) == NEW_TOKENS and tokenizer.eos_token_id not in c.token_ids


def test_installed_generate_matches_model_generate(trained_policy, tokenizer):
    fast = use_fast_generate(copy.deepcopy(trained_policy))
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    # greedy as a GenerationConfig (the way TRL passes it), with a repetition penalty
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, repetition_penalty=1.3,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=[tokenizer.eos_token_id])
    expected = library_generate(trained_policy, **batch, generation_config=config)
    assert torch.equal(fast.generate(**batch, generation_config=config), expected)


def test_installed_generate_with_grpo_config(random_policy, tokenizer):
    """The GenerationConfig TRL's GRPOTrainer builds: prompts kept, pad after EOS, a normal tensor."""
    fast = use_fast_generate(copy.deepcopy(random_policy))
    eos_ids = list(range(3, 80))  # many EOS ids, so rows finish at different steps
    config = GenerationConfig(max_new_tokens=24, do_sample=True, pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids, temperature=1.0,
                              top_p=0.95, top_k=0, min_p=None, repetition_penalty=1.0,
                              cache_implementation=None, disable_compile=True)
    batch = tokenizer([p for p in PROMPTS for _ in range(4)], return_tensors="pt", padding=True)
    torch.manual_seed(0)
    out = fast.generate(**batch, generation_config=config)
    torch.manual_seed(0)
    assert torch.equal(fast.generate(**batch, generation_config=config), out)  # seeded by set_seed
    P = batch["input_ids"].shape[1]
    assert torch.equal(out[:, :P], batch["input_ids"]) and P < out.shape[1] <= P + 24
    for row in out[:, P:].tolist():
        ends = [i for i, t in enumerate(row) if t in eos_ids]
        if ends:
            assert all(t == tokenizer.pad_token_id for t in row[ends[0] + 1:])
    # TRL trains on the result: it must not be an inference tensor
    assert not out.is_inference()
    fast.model.embed_tokens(out).sum().backward()


# ---------------------------------------------------------------------------------------------
# sampling: seeds, penalties, warpers
# ---------------------------------------------------------------------------------------------

def test_same_seed_same_completions_other_seed_other_completions(random_policy, tokenizer):
    def run(seed):
        params = SamplingParams(max_new_tokens=12, n=2, seed=seed)
        return [[c.token_ids for c in group] for group in generate(random_policy, tokenizer, PROMPTS[:3], params)]

    state = torch.random.get_rng_state()
    assert run(7) == run(7)
    assert run(7) != run(8)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG was never drawn from


def test_huge_presence_penalty_never_repeats_a_generated_token(random_policy, tokenizer):
    for temperature in (0.0, 1.0):
        params = SamplingParams(temperature=temperature, presence_penalty=1e4, max_new_tokens=NEW_TOKENS, seed=0)
        for [c] in generate(random_policy, tokenizer, PROMPTS, params):
            assert len(set(c.token_ids)) == len(c.token_ids)


def test_openai_penalties_math():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    counts = torch.tensor([[0.0, 1.0, 3.0, 0.0]])
    out = openai_penalties(logits, counts, frequency_penalty=0.5, presence_penalty=0.25)
    assert torch.equal(out, torch.tensor([[1.0, 2.0 - 0.5 - 0.25, 3.0 - 1.5 - 0.25, 4.0]]))


def test_frequency_and_presence_count_completion_tokens_only():
    params = SamplingParams(frequency_penalty=1.0, presence_penalty=0.5)
    penalties = Penalties(params, torch.tensor([[2, 2, 3]]), vocab_size=5)
    logits = torch.zeros(1, 5)
    assert torch.equal(penalties.apply(logits), logits)  # the prompt's tokens are not penalized
    penalties.record(torch.tensor([2]))
    penalties.record(torch.tensor([2]))
    penalties.record(torch.tensor([4]))
    assert torch.equal(penalties.apply(logits), torch.tensor([[0.0, 0.0, -2.5, 0.0, -1.5]]))


def test_repetition_penalty_matches_library():
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (3, 7))
    logits = torch.randn(3, 50)
    expected = RepetitionPenaltyLogitsProcessor(1.7)(ids, logits.clone())
    assert torch.equal(Penalties(SamplingParams(repetition_penalty=1.7), ids, 50).apply(logits), expected)


@pytest.mark.parametrize("knobs", [dict(temperature=0.7), dict(top_k=5), dict(top_p=0.6), dict(min_p=0.2),
                                   dict(temperature=1.3, top_k=20, top_p=0.9, min_p=0.05)])
def test_warpers_match_library(knobs):
    torch.manual_seed(0)
    logits = torch.randn(4, 60) * 3
    expected = logits.clone()
    if "temperature" in knobs:
        expected = TemperatureLogitsWarper(knobs["temperature"])(None, expected)
    if "top_k" in knobs:
        expected = TopKLogitsWarper(knobs["top_k"])(None, expected)
    if "top_p" in knobs:
        expected = TopPLogitsWarper(knobs["top_p"])(None, expected)
    if "min_p" in knobs:
        expected = MinPLogitsWarper(knobs["min_p"])(None, expected)
    assert torch.equal(warp(logits, SamplingParams(**knobs)), expected)


def test_sample_follows_probabilities_and_never_picks_filtered_tokens():
    probs = torch.tensor([[0.5, 0.0, 0.25, 0.25, 0.0]]).repeat(4000, 1)
    drawn = sample(probs, torch.Generator().manual_seed(0))
    counts = torch.bincount(drawn, minlength=5).float() / len(drawn)
    assert counts[1] == 0 and counts[4] == 0
    assert torch.allclose(counts[[0, 2, 3]], torch.tensor([0.5, 0.25, 0.25]), atol=0.03)


def test_low_temperature_sampling_matches_greedy(trained_policy, tokenizer):
    """The sampling path (shared prefill, finished rows dropped) computes the same logits."""
    greedy = generate(trained_policy, tokenizer, PROMPTS, SamplingParams(temperature=0, max_new_tokens=20))
    cold = generate(trained_policy, tokenizer, PROMPTS,
                    SamplingParams(temperature=1e-4, max_new_tokens=20, n=2, seed=0))
    for [g], group in zip(greedy, cold):
        assert [c.token_ids for c in group] == [g.token_ids, g.token_ids]


# ---------------------------------------------------------------------------------------------
# stop strings, n, finish reasons
# ---------------------------------------------------------------------------------------------

def test_stop_string_cuts_text_and_stops_generation(random_policy, tokenizer):
    params = SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS)
    [[full]] = generate(random_policy, tokenizer, [PROMPTS[3]], params)
    stop = full.text[10:12]
    [[cut]] = generate(random_policy, tokenizer, [PROMPTS[3]], SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS,
                                                                              stop=("never there", stop)))
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.finish_reason == "stop"
    assert len(cut.token_ids) < len(full.token_ids)
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)]
    assert stop in tokenizer.decode(cut.token_ids)  # its last token completed the stop string


def test_n_completions_per_prompt(random_policy, tokenizer):
    params = SamplingParams(max_new_tokens=5, n=3, seed=1)
    result = generate(random_policy, tokenizer, PROMPTS, params)
    assert [len(group) for group in result] == [3] * len(PROMPTS)
    for prompt, group in zip(PROMPTS, result):
        for c in group:
            assert isinstance(c, Completion)
            assert c.prompt_tokens == len(tokenizer(prompt)["input_ids"])
            assert c.finish_reason == "length" and len(c.token_ids) == 5
            assert c.text == tokenizer.decode(c.token_ids, skip_special_tokens=True)
        assert len({tuple(c.token_ids) for c in group}) > 1


def heard_tokens(policy, tokenizer, prompts, params):
    """generate's completions, and the tokens its on_token heard, by (prompt, choice)."""
    heard = {}
    result = generate(policy, tokenizer, prompts, params,
                      on_token=lambda i, j, token: heard.setdefault((i, j), []).append(token))
    return result, heard


def test_on_token_hears_each_completion_token_by_token(trained_policy, tokenizer):
    # sampled, n > 1, prompts of several lengths: rows finish at different steps and the batch
    # drops them (the trained policy stops early on EOS, so some do)
    params = SamplingParams(temperature=1.0, n=3, max_new_tokens=NEW_TOKENS, seed=3)
    result, heard = heard_tokens(trained_policy, tokenizer, PROMPTS, params)
    lengths = {len(c.token_ids) for group in result for c in group}
    assert len(lengths) > 2 and "stop" in {c.finish_reason for group in result for c in group}
    assert heard == {(i, j): c.token_ids for i, group in enumerate(result) for j, c in enumerate(group)}
    # listening changes nothing
    assert generate(trained_policy, tokenizer, PROMPTS, params) == result

    greedy = SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS)
    result, heard = heard_tokens(trained_policy, tokenizer, PROMPTS, greedy)
    assert heard == {(i, 0): c.token_ids for i, [c] in enumerate(result)}


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("knobs, name", [
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=-0.1), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=-1), "top_k"),
    (dict(min_p=1.0), "min_p"), (dict(n=0), "n"), (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(frequency_penalty=float("nan")), "frequency_penalty"), (dict(stop=("",)), "stop"), (dict(stop=3), "stop"),
    (dict(seed=-1), "seed"), (dict(max_new_tokens=2.5), "max_new_tokens"),
])
def test_bad_sampling_params(knobs, name):
    with pytest.raises(ValueError, match=name):
        SamplingParams(**knobs)


def test_bad_prompts(random_policy, tokenizer):
    with pytest.raises(ValueError, match="empty"):
        generate(random_policy, tokenizer, [])
    with pytest.raises(ValueError, match="list of strings"):
        generate(random_policy, tokenizer, "1+1=")
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        generate(random_policy, tokenizer, ["a", 3])


def test_unsupported_generation_settings(random_policy, tokenizer):
    batch = tokenizer(PROMPTS[:2], return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match="num_beams"):
        generate_ids(random_policy, **batch, num_beams=2)
    with pytest.raises(ValueError, match="streamer"):
        generate_ids(random_policy, **batch, streamer=object())
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_ids(random_policy, **batch, max_new_tokens=0)
    checkpointed = copy.deepcopy(random_policy).train()
    checkpointed.activation_checkpointing_enable()
    with pytest.raises(ValueError, match="gradient checkpointing"):
        generate_ids(checkpointed, **batch, max_new_tokens=2)
