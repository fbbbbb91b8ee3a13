"""The fixed evaluator: generate with a scaffold's sampling settings, score exactly, summarize.

Scoring is the task's strict scorer (rl_pipeline.tasks); a scaffold only decides the prompt text
and the sampling knobs. The prompts come in as strings (formatted by the scaffold's prompt.py in
the sandbox): this module never runs scaffold code. Every example is scored under every seed, and the per-example scores
are kept so a later step can compare two results pair by pair (same examples, same seeds).
The evaluator always stops a completion at the first newline: the answer protocol reads only
that line, so what follows could never count.

    result = evaluate(policy, tokenizer, scaffold, dataset, prompts, seeds=[0, 1, 2])
    result["metrics"]["accuracy"], result["metrics"]["accuracy_ci95"]
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict

from model.generate import SamplingParams, generate
from rl_pipeline.stats import bootstrap_mean_ci
from rl_pipeline.tasks import get_task

ANSWER_STOP = "\n"
EXAMPLES_PER_CATEGORY = 3
RATE_FIELDS = {"format_valid_rate": "format_ok", "truncation_rate": "truncated", "repetition_rate": "repetitive"}


def sampling_params(scaffold, seed: int) -> SamplingParams:
    """The scaffold's sampling knobs as generation settings, with the evaluator's own stop."""
    knobs = scaffold.config["sampling"]
    return SamplingParams(
        max_new_tokens=knobs["max_new_tokens"],
        temperature=knobs["temperature"],
        top_p=knobs["top_p"],
        top_k=knobs["top_k"],
        frequency_penalty=knobs["frequency_penalty"],
        presence_penalty=knobs["presence_penalty"],
        repetition_penalty=knobs["repetition_penalty"],
        stop=(ANSWER_STOP,),
        seed=seed,
    )


def is_repetitive(token_ids: list[int]) -> bool:
    """A completion that repeats itself: some token 3-gram occurs twice, or a token 4 times in a row."""
    grams = Counter(tuple(token_ids[i:i + 3]) for i in range(len(token_ids) - 2))
    if grams and max(grams.values()) > 1:
        return True
    run = 1
    for prev, cur in zip(token_ids, token_ids[1:]):
        run = run + 1 if prev == cur else 1
        if run >= 4:
            return True
    return False


def evaluate(policy, tokenizer, scaffold, dataset, prompts: list[str], *, seeds: list[int],
             split: str = "eval") -> dict:
    """Score `dataset` (prompted with `prompts`, one per example) under each seed; metrics,
    per-example scores, failures and timings. Of `scaffold` only the task and knobs are read."""
    if not seeds:
        raise ValueError("evaluation needs at least one seed")
    task = get_task(scaffold.task)
    examples = [dict(row) for row in dataset]
    if len(prompts) != len(examples) or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError("prompt.py: format_prompt() must return a non-empty string for every question")

    records = []
    generate_seconds = score_seconds = 0.0
    for seed in seeds:
        start = time.perf_counter()
        per_prompt = generate(policy, tokenizer, prompts, sampling_params(scaffold, seed))
        generate_seconds += time.perf_counter() - start
        start = time.perf_counter()
        for example, (completion,) in zip(examples, per_prompt):
            score = task.score(completion.text, example)
            records.append({
                "id": example["id"],
                "seed": seed,
                "correct": bool(score.correct),
                "format_ok": bool(score.format_ok),
                "category": score.category,
                "completion": completion.text,
                "tokens": len(completion.token_ids),
                "truncated": completion.finish_reason == "length",
                "repetitive": is_repetitive(completion.token_ids),
            })
        score_seconds += time.perf_counter() - start

    return summarize(records, examples, seeds, split) | {
        "timings": {"generate_s": round(generate_seconds, 3), "score_s": round(score_seconds, 3)}
    }


def summarize(records: list[dict], examples: list[dict], seeds: list[int], split: str) -> dict:
    """Metrics with a confidence interval, per-example scores by seed, failures by category."""
    n = len(records)
    per_example: dict[str, list[int]] = defaultdict(lambda: [0] * len(seeds))
    seed_pos = {seed: i for i, seed in enumerate(seeds)}
    for r in records:
        per_example[r["id"]][seed_pos[r["seed"]]] = int(r["correct"])
    example_means = [sum(v) / len(v) for v in per_example.values()]
    low, high = bootstrap_mean_ci(example_means)

    def by_seed(field: str) -> dict[str, float]:
        return {str(s): sum(r[field] for r in records if r["seed"] == s) / len(examples) for s in seeds}

    metrics = {
        "accuracy": sum(r["correct"] for r in records) / n,
        "accuracy_ci95": [low, high],
        "accuracy_by_seed": by_seed("correct"),
        "format_valid_rate": sum(r["format_ok"] for r in records) / n,
        "mean_completion_tokens": sum(r["tokens"] for r in records) / n,
        "truncation_rate": sum(r["truncated"] for r in records) / n,
        "repetition_rate": sum(r["repetitive"] for r in records) / n,
    }
    # The failure rates seed by seed too, so that a candidate's can be compared with an incumbent's
    # on the seeds both cover (an incumbent re-evaluated on more seeds than the candidate).
    for rate, field in RATE_FIELDS.items():
        metrics[f"{rate}_by_seed"] = by_seed(field)
    by_id = {ex["id"]: ex for ex in examples}
    failures: dict[str, dict] = {}
    for r in records:
        if r["correct"]:
            continue
        group = failures.setdefault(r["category"], {"count": 0, "examples": []})
        group["count"] += 1
        if len(group["examples"]) < EXAMPLES_PER_CATEGORY:
            ex = by_id[r["id"]]
            group["examples"].append({"id": r["id"], "question": ex["question"], "expected": ex["answer"],
                                      "completion": r["completion"], "seed": r["seed"]})
    return {
        "split": split,
        "seeds": list(seeds),
        "num_examples": len(examples),
        "metrics": metrics,
        "per_example": dict(per_example),
        "failures": dict(sorted(failures.items(), key=lambda kv: -kv[1]["count"])),
        "records": records,
    }
