"""The keep rule of a round of K candidates: choose the best on the evaluation seeds, re-test it on
fresh seeds, and keep it only if its gain clears the margin at a level that accounts for the K it
was chosen from.

Choosing the best of K by its measured gain also chooses the luckiest: among K candidates none of
which is better than the incumbent, one clears a 95% interval about K times as often as a single
candidate does, and the best one's gain is biased upward (the winner's curse). So the chosen
candidate is evaluated again on seeds none of the K was chosen on (`reeval_seeds`), and kept only
if the lower bound of a 1 - 0.05/K interval (Bonferroni) of its paired gain over all its seeds
clears the margin. Whichever candidate is chosen, a keep then needs some candidate to pass a test
that each useless one passes at most 0.05/K of the time, so a round of K useless candidates keeps
one at most about as often as a round of one; tests/test_selection.py measures both on simulated
rounds, and that a better candidate is still found.

    k = choose([verdict_1, verdict_2, ...])     # index of the best evaluated candidate, or None
    verdict = confirm(all_seeds, incumbent, count=K, margin=0.0)
"""

from __future__ import annotations

from harness.compare import Verdict, metric_deltas, paired_differences
from rl_pipeline.stats import bootstrap_mean_ci

ALPHA = 0.05  # one candidate's false-keep rate, shared among the K


def selection_level(count: int) -> float:
    """The level of the interval that judges the best of `count` candidates: 1 - ALPHA/count."""
    return 1 - ALPHA / count


def choose(verdicts: list[dict | None]) -> int | None:
    """The index of the candidate with the highest paired gain (the first of equals); None when no
    candidate has one (none was evaluated, or every one failed)."""
    measured = [(v["delta"], -i) for i, v in enumerate(verdicts) if v is not None and v.get("delta") is not None]
    return -max(measured)[1] if measured else None


def promising(verdict: dict) -> bool:
    """Whether the chosen candidate's verdict on the evaluation seeds is worth a re-test: it would
    have been kept, or re-evaluated, had it been alone."""
    return verdict["decision"] in ("keep", "reeval")


def confirm(candidate: dict, incumbent: dict, *, count: int, margin: float) -> Verdict:
    """Keep or revert the chosen one of `count` candidates from its result on all its seeds (the
    ones it was chosen on and the fresh ones), paired with the incumbent's on the same seeds."""
    if candidate.get("status") != "ok":
        reason = candidate.get("reason") or "no reason given"
        return Verdict("revert", None, None, margin, 0, 0, f"revert: the candidate failed to run ({reason}).")
    level = selection_level(count)
    diff, ids, seeds = paired_differences(candidate, incumbent)
    delta = float(diff.mean())
    low, high = bootstrap_mean_ci(diff, level=level)
    decision = "keep" if low > margin else "revert"
    why = "above" if decision == "keep" else "not above"
    reason = (f"{decision}: the best of {count} candidates, re-tested: accuracy {delta:+.3f} ({level:.2%} CI "
              f"{low:+.3f} to {high:+.3f}, the level {count} candidates call for) over {len(ids)} examples x "
              f"{len(seeds)} seeds; the lower bound is {why} the margin {margin:+.3f}.")
    return Verdict(decision, delta, (low, high), margin, len(ids), len(seeds), reason,
                   metric_deltas(candidate, incumbent))
