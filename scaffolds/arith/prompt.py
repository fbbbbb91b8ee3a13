"""Prompt format of the arith scaffold: how a task question is shown to the policy.

The base policy was pretrained on this format; a different one is a legitimate experiment.
"""


def format_prompt(question: str) -> str:
    """The text the policy completes; the evaluator reads its answer up to the first newline."""
    return f"Q: {question}\nA: "
