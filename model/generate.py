"""Fast batched rollouts: many prompts at once, a preallocated KV cache and a lean decode step.

Two entry points share one decode loop:

    from model.generate import SamplingParams, generate, use_fast_generate
    rollouts = generate(policy, tokenizer, ["1+1=", "2+2="], SamplingParams(temperature=0.7, n=4, seed=0))
    rollouts[1][3].text, rollouts[1][3].finish_reason     # prompt 1, completion 3

    use_fast_generate(policy)   # policy.generate(input_ids=..., attention_mask=..., generation_config=...)
                                # now runs the fast loop: what TRL's GRPOTrainer calls for rollouts

Where the time goes: on the CPU a decode step is dominated by the model's own matmuls (the
experts most of all), which both loops run alike; `bench/generate.py` measures the difference.
This loop saves what the library's loop repeats or keeps: per-step KV-cache concatenation, mask
building and processor objects (the KV cache is copied once into buffers sized for the whole
rollout, and each step calls the model's submodules directly: embedding, norms, projections,
rotary, attention, and the experts through the layer's `mlp`); `torch.multinomial`, which draws
one random number per vocabulary entry (one per row here); and, when sampling, the prefill of a
prompt repeated in several rows (n completions, GRPO groups), run once, and the rows that
finished, dropped from the batch once they are a quarter of it.

For the whole rollout the experts read contiguous transposed copies of their weights
(`model.experts.transposed_weights`): a CPU bmm reads them about twice as fast as the transposed
views the library's layout gives, which made rollouts about 6% faster here (bench/generate.py's
"copies" column).

Why greedy output equals `model.generate`'s token for token: the decode step applies the same
ops in the same order on tensors of the same shapes as `MiniMaxM2Model.forward` with a
`DynamicCache` (only the strides of the cached keys and values differ, which the tests show
leaves the attention's arithmetic unchanged), and greedy decoding keeps the library's batch
whole, finished rows fed padding as the library does: a CPU matmul's rounding depends on its
row count, so sharing the prefill or dropping rows would change the arithmetic of the others.
The experts' transposed copies are the one exception: their matmuls round differently (by about
4e-7 on outputs of order 1), so `model.generate` run inside the same `transposed_weights` block
gives the same tokens to the bit, and outside it the same tokens unless two logits are that
close (on every prompt the tests try).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, GenerationConfig, MiniMaxM2ForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.minimax_m2.modeling_minimax_m2 import apply_rotary_pos_emb

from model.experts import transposed_weights
from model.sampling import Penalties, SamplingParams, choose

__all__ = ["Completion", "SamplingParams", "generate", "generate_ids", "use_fast_generate"]

# When sampling, the batch drops its finished rows once they are this fraction of it: the copy
# of the KV cache that dropping costs is then repaid by the cheaper steps that follow.
_COMPACT_FRACTION = 0.25


@dataclass(frozen=True)
class Completion:
    """One completion of one prompt."""

    text: str  # decoded without special tokens, cut before the first stop string
    token_ids: list[int]  # every sampled token, through the EOS or the token completing a stop string
    finish_reason: str  # "stop" (EOS or stop string) or "length" (max_new_tokens reached)
    prompt_tokens: int  # tokens of the prompt, <bos> included, padding not


# ---------------------------------------------------------------------------------------------
# The decode loop
# ---------------------------------------------------------------------------------------------

def _check_model(model) -> None:
    if not isinstance(model, MiniMaxM2ForCausalLM):
        raise ValueError(f"fast generation mirrors MiniMaxM2ForCausalLM's forward; got {type(model).__name__}")
    if model.config._attn_implementation != "sdpa":
        raise ValueError(
            f"fast generation needs attn_implementation='sdpa', the model uses "
            f"{model.config._attn_implementation!r}"
        )
    if model.training and model.is_activation_checkpointing:
        # checkpointed layers drop the KV cache; TRL turns checkpointing off while it generates
        raise ValueError("fast generation needs gradient checkpointing off (model.activation_checkpointing_disable())")


def _prefill(model, ids_BP, mask_BP, pos_BP, total_len: int, *, share: bool):
    """The model's own forward over the prompts; returns the last logits and KV buffers of
    `total_len` positions holding the prompts' keys and values. With `share`, a prompt that
    appears in several rows (n completions, GRPO groups) is run once and its cache copied."""
    B, P = ids_BP.shape
    src_B = None  # the prefilled row that fills each batch row, when they differ
    if share:
        key_BX = ids_BP if mask_BP is None else torch.cat([ids_BP, mask_BP], dim=1)
        _, inverse_B = torch.unique(key_BX, dim=0, return_inverse=True)
        U = int(inverse_B.max()) + 1
        if U < B:
            first_U = torch.full((U,), B, device=ids_BP.device).scatter_reduce(
                0, inverse_B, torch.arange(B, device=ids_BP.device), "amin")
            ids_BP, pos_BP = ids_BP[first_U], pos_BP[first_U]
            mask_BP = None if mask_BP is None else mask_BP[first_U]
            src_B = inverse_B
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids_BP, attention_mask=mask_BP, position_ids=pos_BP, past_key_values=cache,
                use_cache=True, logits_to_keep=1, return_dict=True)
    logits_BV = out.logits[:, -1].to(copy=True, dtype=torch.float32)
    kv = []
    for layer in cache.layers:
        keys, values = layer.keys, layer.values
        if src_B is not None:
            keys, values = keys[src_B], values[src_B]
        _, H, _, D = keys.shape
        k_BHLD = keys.new_empty(B, H, total_len, D)
        v_BHLD = values.new_empty(B, H, total_len, D)
        k_BHLD[:, :, :P] = keys
        v_BHLD[:, :, :P] = values
        kv.append((k_BHLD, v_BHLD))
    return (logits_BV if src_B is None else logits_BV[src_B]), kv


def _decode_step(model, tokens_B, pos_B1, mask_B11L, kv, cache_len: int) -> torch.Tensor:
    """One token per row through the model, `MiniMaxM2Model.forward` op for op; writes this
    position's keys and values at `cache_len` and returns the next logits in float32."""
    inner = model.model
    B = tokens_B.shape[0]
    n = cache_len + 1
    h = inner.embed_tokens(tokens_B[:, None])
    cos, sin = inner.rotary_emb(h, pos_B1)
    for layer, (k_cache, v_cache) in zip(inner.layers[: model.config.num_hidden_layers], kv):
        attn = layer.self_attn
        residual = h
        x = layer.input_layernorm(h)
        q = attn.q_norm(attn.q_proj(x)).view(B, 1, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_norm(attn.k_proj(x)).view(B, 1, -1, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(B, 1, -1, attn.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k_cache[:, :, cache_len:n] = k
        v_cache[:, :, cache_len:n] = v
        out, _ = sdpa_attention_forward(attn, q, k_cache[:, :, :n], v_cache[:, :, :n], mask_B11L,
                                        dropout=attn.attention_dropout if attn.training else 0.0,
                                        scaling=attn.scaling)
        h = residual + attn.o_proj(out.reshape(B, 1, -1).contiguous())
        residual = h
        h = residual + layer.mlp(layer.post_attention_layernorm(h))
    h = inner.norm(h)
    return model.lm_head(h)[:, -1].to(copy=True, dtype=torch.float32)


class _StopStrings:
    """Spots stop strings in the newest tokens of each row without decoding whole completions."""

    def __init__(self, tokenizer, stop: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.stop = stop
        # A match that ends in the newest token spans at most one token per byte, plus the token
        # it starts inside of.
        self.window = max(len(s.encode()) for s in stop) + 1

    def hits(self, tail_rows: list[list[int]]) -> list[bool]:
        texts = self.tokenizer.batch_decode(tail_rows, skip_special_tokens=True)
        return [any(s in text for s in self.stop) for text in texts]


@dataclass
class _Rollout:
    tokens_BT: torch.Tensor  # sampled tokens, pad after a row's last one
    length_B: torch.Tensor  # tokens each row sampled
    stopped_B: torch.Tensor  # the row ended on EOS or a stop string


def _decode(model, ids_BP, mask_BP, params: SamplingParams, *, eos_ids: Sequence[int], pad_id: int,
            generator: torch.Generator | None, stop: _StopStrings | None = None,
            on_token: Callable[[int, int], None] | None = None) -> _Rollout:
    """Prefill left-padded prompts, then decode every row until EOS, a stop string or
    `params.max_new_tokens`; `on_token(row, token_id)` hears each token a row samples, as it is
    sampled. The experts read their weights transposed for the whole rollout."""
    with transposed_weights(model):
        return _decode_rows(model, ids_BP, mask_BP, params, eos_ids=eos_ids, pad_id=pad_id, generator=generator,
                            stop=stop, on_token=on_token)


def _decode_rows(model, ids_BP, mask_BP, params: SamplingParams, *, eos_ids: Sequence[int], pad_id: int,
                 generator: torch.Generator | None, stop: _StopStrings | None,
                 on_token: Callable[[int, int], None] | None) -> _Rollout:
    B, P = ids_BP.shape
    T = params.max_new_tokens
    device = ids_BP.device
    # The library drops an all-ones mask, which sends attention down its unmasked path; so do we.
    padded = not bool(mask_BP.all())
    pos_BP = (mask_BP.long().cumsum(-1) - 1).masked_fill(mask_BP == 0, 0)
    # Sharing the prefill changes its batch, hence its rounding: greedy keeps the library's batch.
    logits_AV, kv = _prefill(model, ids_BP, mask_BP if padded else None, pos_BP, P + T, share=not params.greedy)
    mask_A11L = None
    if padded:
        mask_A11L = torch.cat([mask_BP.bool(), mask_BP.new_ones(B, T, dtype=torch.bool)], 1)[:, None, None, :]
    next_pos_A1 = pos_BP[:, -1:] + 1
    penalties = Penalties(params, ids_BP, logits_AV.shape[-1])
    eos_E = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device)

    tokens_BT = torch.full((B, T), pad_id, dtype=torch.long, device=device)
    length_B = torch.full((B,), T, dtype=torch.long, device=device)
    stopped_B = torch.zeros(B, dtype=torch.bool, device=device)
    row_A = torch.arange(B, device=device)  # the rollout row of each batch row
    live_A = torch.ones(B, dtype=torch.bool, device=device)  # batch rows still sampling
    for t in range(T):
        logits_AV = penalties.apply(logits_AV)
        if t < params.min_new_tokens and eos_E.numel():
            logits_AV[:, eos_E] = -float("inf")
        next_A = choose(logits_AV, params, generator)
        next_A = torch.where(live_A, next_A, pad_id)  # finished rows are fed padding, as the library does
        tokens_BT[row_A, t] = next_A
        penalties.record(next_A)
        if on_token is not None:  # the only per-step copy to Python, paid only by a listener
            for row, token in zip(row_A[live_A].tolist(), next_A[live_A].tolist()):
                on_token(row, token)

        done_A = live_A & torch.isin(next_A, eos_E)
        if stop is not None:
            live_rows = row_A[live_A]
            tails = tokens_BT[live_rows, max(0, t + 1 - stop.window): t + 1].tolist()
            done_A[live_A] |= torch.tensor(stop.hits(tails), device=device)
        if bool(done_A.any()):
            length_B[row_A[done_A]] = t + 1
            stopped_B[row_A[done_A]] = True
            live_A &= ~done_A
        if t == T - 1 or not bool(live_A.any()):
            break
        if not params.greedy and int((~live_A).sum()) >= _COMPACT_FRACTION * live_A.numel():
            keep_A = live_A.nonzero().squeeze(1)
            row_A, next_A, next_pos_A1 = row_A[keep_A], next_A[keep_A], next_pos_A1[keep_A]
            live_A = live_A[keep_A]
            kv = [(k[keep_A], v[keep_A]) for k, v in kv]
            mask_A11L = None if mask_A11L is None else mask_A11L[keep_A]
            penalties.keep(keep_A)
        mask_now = None if mask_A11L is None else mask_A11L[..., : P + t + 1]
        logits_AV = _decode_step(model, next_A, next_pos_A1 + t, mask_now, kv, P + t)
    return _Rollout(tokens_BT, length_B, stopped_B)


# ---------------------------------------------------------------------------------------------
# Text in, completions out
# ---------------------------------------------------------------------------------------------

def generate(model, tokenizer, prompts: Sequence[str], params: SamplingParams | None = None, *,
             on_token: Callable[[int, int, int], None] | None = None) -> list[list[Completion]]:
    """Sample `params.n` completions of each prompt; `result[i][j]` is completion j of prompt i.

    The prompts are tokenized with the tokenizer's special tokens (<bos>) and left-padded. EOS is
    the model's generation_config EOS (or the tokenizer's). Sampling draws from a generator
    seeded with `params.seed`, never from the global RNG.

    `on_token(i, j, token_id)`, when given, is called on this thread for each token completion j
    of prompt i samples, as soon as it is sampled: in order, through its EOS or stop-string token,
    so the tokens it hears for (i, j) are `result[i][j].token_ids`. Streaming servers use it.
    """
    params = params or SamplingParams()
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompts[{i}] is a {type(p).__name__}, not a string")
    _check_model(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = model.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    eos_ids = [eos] if isinstance(eos, int) else list(eos)

    encoded = tokenizer(list(prompts))["input_ids"]
    width = max(len(ids) for ids in encoded)
    device = model.device
    ids_BP = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in encoded], device=device)
    mask_BP = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=device)
    ids_BP, mask_BP = ids_BP.repeat_interleave(params.n, 0), mask_BP.repeat_interleave(params.n, 0)

    generator = torch.Generator(device=device)
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    stop = _StopStrings(tokenizer, params.stop) if params.stop else None
    on_row = None
    if on_token is not None:
        def on_row(row: int, token: int) -> None:
            on_token(row // params.n, row % params.n, token)
    with torch.inference_mode():
        out = _decode(model, ids_BP, mask_BP, params, eos_ids=eos_ids, pad_id=pad_id, generator=generator, stop=stop,
                      on_token=on_row)
    rows = out.tokens_BT.tolist()
    lengths = out.length_B.tolist()
    stopped = out.stopped_B.tolist()

    completions = []
    for r, (row, length, ended) in enumerate(zip(rows, lengths, stopped)):
        token_ids = row[:length]
        text = tokenizer.decode(token_ids, skip_special_tokens=True)
        cuts = [i for i in (text.find(s) for s in params.stop) if i >= 0]
        if cuts:
            text, ended = text[: min(cuts)], True
        completions.append(Completion(text, token_ids, "stop" if ended else "length",
                                      len(encoded[r // params.n])))
    return [completions[i * params.n: (i + 1) * params.n] for i in range(len(prompts))]


# ---------------------------------------------------------------------------------------------
# `model.generate`'s calling convention, for TRL
# ---------------------------------------------------------------------------------------------

# GenerationConfig fields the fast path reads.
_READ_FIELDS = {
    "max_new_tokens", "max_length", "min_new_tokens", "min_length", "do_sample", "temperature", "top_k",
    "top_p", "min_p", "repetition_penalty", "num_return_sequences", "eos_token_id", "pad_token_id",
}
# Fields that change how the library computes, not what it returns (the prompt is given, so
# bos_token_id is never used); the fast path has its own way.
_IGNORED_FIELDS = {
    "bos_token_id", "use_cache", "cache_implementation", "cache_config", "max_cache_len", "disable_compile",
    "compile_config", "prefill_chunk_size", "transformers_version", "_from_model_config",
}


def _check_supported(config: GenerationConfig) -> None:
    """A ValueError naming the first setting the fast path would otherwise silently ignore."""
    defaults = GenerationConfig._get_default_generation_params()
    for key, value in config.to_dict().items():
        if key in _READ_FIELDS or key in _IGNORED_FIELDS:
            continue
        # None is unset and False is off for every flag
        if value is None or value is False or value == defaults.get(key):
            continue
        raise ValueError(f"fast generation does not support the generation setting {key}={value!r}")


def generate_ids(model, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                 generation_config: GenerationConfig | None = None, **kwargs) -> torch.LongTensor:
    """`model.generate(input_ids, attention_mask, generation_config, **kwargs)` on the fast loop.

    Settings resolve as the library resolves them (kwargs > `generation_config` >
    `model.generation_config` > library defaults). Returns the prompts followed by the sampled
    tokens, rows that finished early padded with `pad_token_id`, as wide as the longest rollout.
    Sampling draws its seed from the global torch RNG, so `transformers.set_seed` makes a run
    reproducible as it does for `model.generate`.
    """
    _check_model(model)
    config, model_kwargs = model._prepare_generation_config(generation_config, **kwargs)
    model_kwargs.pop("use_cache", None)
    if model_kwargs:
        raise ValueError(f"fast generation does not support the arguments {sorted(model_kwargs)}")
    _check_supported(config)
    if input_ids is None or input_ids.dim() != 2 or input_ids.shape[0] == 0:
        raise ValueError("input_ids must be a non-empty (batch, length) tensor")

    eos = config.eos_token_id
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    pad_id = config.pad_token_id if config.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    if attention_mask is None:
        # the library's inference: padding can be told apart only when it is not also EOS
        if pad_id in input_ids and pad_id not in eos_ids:
            attention_mask = input_ids.ne(pad_id).long()
        else:
            attention_mask = torch.ones_like(input_ids)
    P = input_ids.shape[1]
    max_new = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - P
    if config.do_sample and not config.temperature:
        raise ValueError("do_sample=True needs a temperature > 0; use do_sample=False to decode greedily")
    params = SamplingParams(
        max_new_tokens=max_new,
        temperature=config.temperature if config.do_sample else 0.0,
        top_k=config.top_k or 0,
        top_p=config.top_p if config.top_p is not None else 1.0,
        min_p=config.min_p or 0.0,
        repetition_penalty=config.repetition_penalty if config.repetition_penalty is not None else 1.0,
        min_new_tokens=max(config.min_new_tokens or 0, (config.min_length or 0) - P),
        n=config.num_return_sequences or 1,
    )
    ids_BP = input_ids.repeat_interleave(params.n, 0)
    mask_BP = attention_mask.repeat_interleave(params.n, 0)
    generator = None
    if not params.greedy:
        generator = torch.Generator(device=input_ids.device).manual_seed(int(torch.randint(2**62, (1,))))
    with torch.inference_mode():
        out = _decode(model, ids_BP, mask_BP, params, eos_ids=eos_ids, pad_id=pad_id, generator=generator)
        width = int(out.length_B.max())
        sequences = torch.cat([ids_BP, out.tokens_BT[:, :width]], dim=1)
    # outside inference mode, so the caller may feed the result to a forward that builds a graph
    return sequences.clone()


def use_fast_generate(model):
    """Route this model instance's `generate` through `generate_ids`; returns the model."""
    _check_model(model)
    model.generate = types.MethodType(generate_ids, model)
    return model
