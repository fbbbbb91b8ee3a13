"""The evidence as a context: the few numbers the credit model conditions an edit's effect on.

Each feature is read off the incumbent's result (harness.analyze.Evidence) and lies in [0, 1]:

    format_failure   1 - format_valid_rate: answers the strict parse could not read
    truncation       truncation_rate: completions cut at the token limit
    repetition       repetition_rate: completions that repeat themselves
    wrong_answer     the share of failures that were well-formed but wrong (wrong_answer, wrong_numbers)
    near_miss        the share of failures that were nearly right (off_by_small, sign_error)

Beside them a context may carry `policy_drift` (DRIFT): how far training moved the incumbent's policy
from the base, its relative weight change on a log scale, 0 at DRIFT_NONE and below, 1 at DRIFT_FULL
and above. It is not a feature but a scale: where training leaves the policy as it was (TRL's lr
1e-6 on a budget of 768 completions), a reward move scores the same as no move, and that zero says
nothing of what the move does once a rate that moves the policy is kept; the credit model scales a
reward edit's effect by it (`credit.py`). A context without it (a result from before the measure,
or blanked evidence) leaves reward edits unscaled.

The names and their order are fixed: observations saved in a checkpoint carry their context by name,
so one written by an older version still reads. A name missing from a saved context counts as 0,
which is also what blanked evidence (the local researcher's `evidence: false`) is everywhere.
The last round's delta and interval are not features: each round's delta is an observation of its
own in the credit model. Held-out scores are never in the evidence, so never in a context.

`CATEGORY_FEATURES` says which failure categories a feature measures, so that a move's declared
`targets` (moves.yaml) can be read as the features under which it is expected to help.

    context = evidence_context(evidence)     # {"format_failure": 0.31, ..., "policy_drift": 0.86}
    targeted = target_features(("bad_format", "no_answer"))    # ("format_failure",)
"""

from __future__ import annotations

import math

from harness.analyze import Evidence

FEATURES = ("format_failure", "truncation", "repetition", "wrong_answer", "near_miss")
CATEGORY_FEATURES = {"format_failure": ("bad_format", "no_answer", "invalid_expression"),
                     "wrong_answer": ("wrong_answer", "wrong_numbers"),
                     "near_miss": ("off_by_small", "sign_error")}

# The features that are rates of all answers: per feature, the result's metric it is read from and
# the sign of a cut in that metric (fewer format failures is a higher format_valid_rate).
FAILURE_RATES = {"format_failure": ("format_valid_rate", 1), "truncation": ("truncation_rate", -1),
                 "repetition": ("repetition_rate", -1)}
RATES = tuple(rate for rate, _ in FAILURE_RATES.values())

DRIFT = "policy_drift"
DRIFT_NONE = 2e-4   # relative weight change: 768 completions at lr 1e-6 move the make run base by 1.8e-4
DRIFT_FULL = 1e-2   # ... at 3.42e-5 by 5.8e-3, and its greedy answers go from none well-formed to most


def _unit(x: float) -> float:
    return min(max(float(x), 0.0), 1.0)


def evidence_context(evidence: Evidence) -> dict[str, float]:
    """The context of `evidence`: every feature of FEATURES, 0 where the evidence does not say."""
    metrics = evidence.incumbent_metrics
    counts = {category: group["count"] for category, group in evidence.failures.items()}
    failed = sum(counts.values())

    def share(feature: str) -> float:
        return sum(counts.get(c, 0) for c in CATEGORY_FEATURES[feature]) / failed if failed else 0.0

    context = {"format_failure": _unit(1.0 - metrics.get("format_valid_rate", 1.0)),
               "truncation": _unit(metrics.get("truncation_rate", 0.0)),
               "repetition": _unit(metrics.get("repetition_rate", 0.0)),
               "wrong_answer": _unit(share("wrong_answer")),
               "near_miss": _unit(share("near_miss"))}
    return context if evidence.weight_change is None else context | {DRIFT: drift_scale(evidence.weight_change)}


def drift_scale(weight_change: float) -> float:
    """`policy_drift` of a relative weight change: its log position between DRIFT_NONE and DRIFT_FULL."""
    if weight_change <= DRIFT_NONE:
        return 0.0
    return _unit(math.log(weight_change / DRIFT_NONE) / math.log(DRIFT_FULL / DRIFT_NONE))


def blank_context() -> dict[str, float]:
    """The context of blanked evidence: nothing known, every feature 0."""
    return dict.fromkeys(FEATURES, 0.0)


def target_features(categories: tuple[str, ...]) -> tuple[str, ...]:
    """The features that measure any of these failure categories, in FEATURES order."""
    return tuple(f for f, covered in CATEGORY_FEATURES.items() if set(covered) & set(categories))
