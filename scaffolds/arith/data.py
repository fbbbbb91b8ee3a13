"""Training-example selection of the arith scaffold (used by GRPO only, never by the evaluator).

GRPO meets the examples in the order returned here and its budget of completions reaches only the
first ones (768 completions in groups of 8 are 96 prompts), so the order is also the selection.
An example is {"id", "task", "question", "answer", "meta"}; meta holds the problem's operands and
operator ("a", "op", "b") and its question form ("format", 0-3). Only examples given can be
returned (matched by id, repeats allowed): selection cannot change an answer.
"""


def training_examples(examples: list[dict], rng) -> list[dict]:
    """The training examples in the order GRPO takes them: all of them, shuffled by `rng`."""
    rng.shuffle(examples)
    return examples
