"""Sampling settings and the per-step logits math of rollout generation, as batched tensor ops.

`SamplingParams` holds every knob of a rollout and checks it. The functions below turn a step's
raw logits into next tokens with the semantics people expect from each knob:

- `repetition_penalty`: `transformers`' (CTRL) rule over every token of the row so far, prompt
  (padding included, as `transformers` does) and completion: a seen token's logit is divided by
  the penalty when positive and multiplied by it when negative.
- `frequency_penalty`, `presence_penalty`: OpenAI's rule over the completion's own tokens only:
  `logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty`.
- then, as `transformers` orders its processors: EOS is masked until `min_new_tokens`, then the
  temperature, top-k, top-p and min-p warpers; the warpers are the library's, op for op, so
  filtered logits match its processors bit for bit.

Shape legend: B rows being decoded, V vocabulary size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """The knobs of one rollout call. `temperature=0` decodes greedily (the warpers are skipped)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0  # nucleus mass in (0, 1]; 1 keeps every token
    top_k: int = 0  # keep the k most likely tokens; 0 keeps every token
    min_p: float = 0.0  # drop tokens below min_p times the top token's probability; 0 keeps all
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0  # EOS is masked until a completion has this many tokens
    stop: tuple[str, ...] = ()  # completion text is cut before the first of these (a str or list is fine)
    n: int = 1  # completions per prompt
    seed: int | None = None  # same seed, same prompts -> same completions; None draws a fresh seed

    def __post_init__(self):
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (list, tuple)):
            raise ValueError(f"stop must be a string or a list of strings, got {type(stop).__name__}")
        object.__setattr__(self, "stop", tuple(stop))
        _check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        _check_int("min_new_tokens", self.min_new_tokens, minimum=0)
        _check_int("top_k", self.top_k, minimum=0)
        _check_int("n", self.n, minimum=1)
        if self.seed is not None:
            _check_int("seed", self.seed, minimum=0)
        for name in ("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty",
                     "repetition_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 decodes greedily), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 is off), got {self.repetition_penalty}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty strings, got {s!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _check_int(name: str, value, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class Penalties:
    """The per-row token statistics the penalties need, kept up to date as tokens are chosen.

    Only the statistics an active penalty reads are kept, so a rollout without penalties pays
    nothing per step.
    """

    def __init__(self, params: SamplingParams, prompt_ids_BP: torch.Tensor, vocab_size: int):
        self.params = params
        B = prompt_ids_BP.shape[0]
        self.seen_BV = None  # every token of the row so far, for repetition_penalty
        self.counts_BV = None  # completion token counts, for the frequency and presence penalties
        if params.repetition_penalty != 1.0:
            self.seen_BV = torch.zeros(B, vocab_size, dtype=torch.bool, device=prompt_ids_BP.device)
            self.seen_BV.scatter_(1, prompt_ids_BP, True)
        if params.frequency_penalty != 0.0 or params.presence_penalty != 0.0:
            self.counts_BV = torch.zeros(B, vocab_size, dtype=torch.float32, device=prompt_ids_BP.device)

    def apply(self, logits_BV: torch.Tensor) -> torch.Tensor:
        p = self.params
        if self.seen_BV is not None:
            penalized = torch.where(logits_BV < 0, logits_BV * p.repetition_penalty,
                                    logits_BV / p.repetition_penalty)
            logits_BV = torch.where(self.seen_BV, penalized, logits_BV)
        if self.counts_BV is not None:
            logits_BV = openai_penalties(logits_BV, self.counts_BV, p.frequency_penalty, p.presence_penalty)
        return logits_BV

    def record(self, tokens_B: torch.Tensor) -> None:
        """Count the tokens just chosen (one per row)."""
        if self.seen_BV is not None:
            self.seen_BV.scatter_(1, tokens_B[:, None], True)
        if self.counts_BV is not None:
            self.counts_BV.scatter_add_(1, tokens_B[:, None], torch.ones_like(tokens_B[:, None], dtype=torch.float32))

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these rows (the batch dropped its finished rows)."""
        if self.seen_BV is not None:
            self.seen_BV = self.seen_BV[rows]
        if self.counts_BV is not None:
            self.counts_BV = self.counts_BV[rows]


def openai_penalties(logits_BV: torch.Tensor, counts_BV: torch.Tensor, frequency_penalty: float,
                     presence_penalty: float) -> torch.Tensor:
    """OpenAI's frequency and presence penalties, from each token's count in the completion."""
    return logits_BV - (counts_BV * frequency_penalty + (counts_BV > 0).to(logits_BV.dtype) * presence_penalty)


def warp(logits_BV: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p filtering (filtered tokens get -inf)."""
    if params.temperature != 1.0:
        logits_BV = logits_BV / params.temperature
    if params.top_k:
        k = min(params.top_k, logits_BV.shape[-1])
        kth_B1 = torch.topk(logits_BV, k)[0][..., -1, None]
        logits_BV = logits_BV.masked_fill(logits_BV < kth_B1, -float("inf"))
    if params.top_p < 1.0:
        sorted_BV, order_BV = torch.sort(logits_BV, descending=False)
        cumulative_BV = sorted_BV.softmax(dim=-1).cumsum(dim=-1)
        # drop the least likely tokens whose mass stays within 1 - top_p; the top token always stays
        drop_sorted_BV = cumulative_BV <= (1 - params.top_p)
        drop_sorted_BV[..., -1:] = False
        drop_BV = drop_sorted_BV.scatter(1, order_BV, drop_sorted_BV)
        logits_BV = logits_BV.masked_fill(drop_BV, -float("inf"))
    if params.min_p > 0.0:
        probs_BV = torch.softmax(logits_BV, dim=-1)
        drop_BV = probs_BV < params.min_p * probs_BV.amax(dim=-1, keepdim=True)
        drop_BV.scatter_(-1, torch.topk(probs_BV, 1, dim=-1).indices, False)
        logits_BV = logits_BV.masked_fill(drop_BV, -float("inf"))
    return logits_BV


def choose(logits_BV: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """The next token of each row: the argmax when greedy, else a draw from the warped softmax."""
    if params.greedy:
        return torch.argmax(logits_BV, dim=-1)
    return sample(torch.softmax(warp(logits_BV, params), dim=-1), generator)


def sample(probs_BV: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row drawn from `probs_BV` by inverting its CDF at one uniform per row.

    `torch.multinomial` draws an exponential variate per vocabulary entry on the CPU, which costs
    about 15x more than the rest of the sampling step at our sizes; this draws B numbers.
    """
    cdf_BV = probs_BV.to(torch.float64).cumsum(dim=-1)
    total_B1 = cdf_BV[:, -1:]
    u_B1 = torch.rand(total_B1.shape, generator=generator, dtype=torch.float64, device=probs_BV.device)
    # Kept strictly below the total, the point falls in the CDF step of a token of positive
    # probability: a zero-probability token has an empty step.
    x_B1 = torch.minimum(u_B1 * total_B1, torch.nextafter(total_B1, torch.zeros_like(total_B1)))
    return torch.searchsorted(cdf_BV, x_B1, right=True).squeeze(1)
