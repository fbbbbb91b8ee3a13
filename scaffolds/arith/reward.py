"""Training reward shaping of the arith scaffold (used by GRPO only, never by the evaluator).

`scores` come from the fixed scorer in rl_pipeline (correct, format_ok, category), so shaping can
weigh them but cannot redefine what a correct answer is.
"""


def rewards(completions: list[str], examples: list[dict], scores: list, weights: dict) -> list[float]:
    """One reward per completion: weighted correctness and format, minus a length cost."""
    out = []
    for completion, score in zip(completions, scores):
        reward = weights["correct"] * float(score.correct) + weights["format"] * float(score.format_ok)
        reward -= weights["length"] * min(len(completion), 64) / 64
        out.append(reward)
    return out
