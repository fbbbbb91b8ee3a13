"""Noise-aware comparison of a candidate's result with the incumbent's, and the keep/revert rule.

Two results are compared pair by pair: the same examples under the same seeds, so the noise that
both share (which problems are hard, which seed draws a bad sample) cancels out. Per example we
take the difference of mean scores over the common seeds; the headline is the mean of those
differences with a seeded paired-bootstrap 95% interval.

    floor = noise_floor([result_seed_0_1, result_seed_2_3])        # once, at campaign start
    verdict = decide(candidate, incumbent, margin=0.0, reeval_band=floor["halfwidth"], can_reeval=True)
    if verdict.decision == "reeval":
        candidate = merge_results(candidate, more_seeds_of_the_candidate)
    if deterministic(candidate) and deterministic(incumbent):  # greedy: more seeds add nothing
        verdict = decide(with_calibration(candidate, its_calibration_part),
                         with_calibration(incumbent, the_incumbents_calibration_part), ...)
    change = heldout_change(new_incumbent_heldout_result, previous_incumbent_heldout_result)  # for the record
    change = heldout_change(new, old, retrained={1: (new_seed_1, old_seed_1)})  # a keep over training seeds
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from rl_pipeline.stats import bootstrap_mean_ci

# The evaluator keeps this many example completions per failure category; a merge keeps the same.
FAILURE_EXAMPLES = 3
BY_SEED = "_by_seed"  # a metric given seed by seed: {"0": ..., "1": ...}


# ---------------------------------------------------------------- pairing

def _scores(result: dict, ids: list[str], seeds: list[int]) -> np.ndarray:
    """The examples x seeds score matrix of `result`, restricted to `seeds` in that order."""
    position = {seed: i for i, seed in enumerate(result["seeds"])}
    columns = [position[s] for s in seeds]
    return np.array([[result["per_example"][i][c] for c in columns] for i in ids], dtype=float)


def paired_differences(candidate: dict, incumbent: dict) -> tuple[np.ndarray, list[str], list[int]]:
    """Per-example differences of mean score (candidate - incumbent) over the common seeds.

    Returns the differences, the example ids (sorted) and the common seeds (the incumbent's order).
    Raises ValueError when the two results do not cover the same examples or share no seed.
    """
    cand_ids, inc_ids = set(candidate["per_example"]), set(incumbent["per_example"])
    if cand_ids != inc_ids:
        raise ValueError(f"results cover different examples: {len(cand_ids - inc_ids)} only in the candidate, "
                         f"{len(inc_ids - cand_ids)} only in the incumbent; compare on the same split")
    seeds = [s for s in incumbent["seeds"] if s in set(candidate["seeds"])]
    if not seeds:
        raise ValueError(f"results share no seed (candidate {candidate['seeds']}, incumbent "
                         f"{incumbent['seeds']}); evaluate both with the same seeds")
    ids = sorted(cand_ids)
    diff = _scores(candidate, ids, seeds).mean(axis=1) - _scores(incumbent, ids, seeds).mean(axis=1)
    return diff, ids, seeds


def metric_deltas(candidate: dict, incumbent: dict) -> dict[str, float]:
    """Candidate minus incumbent for the scalar metrics both results report, on the same seeds.

    Accuracy is the paired change over the common seeds (the verdict's delta). A rate both results
    give seed by seed (`format_valid_rate_by_seed`, ...) changes by its mean over the seeds both
    cover, so a 3-seed candidate against an incumbent re-evaluated on 6 still shows its format and
    truncation changes. The other metrics are aggregates over each result's own seeds, so they are
    compared only when both results cover the same seeds, rather than as changes that mix seeds.
    """
    cand, inc = candidate["metrics"], incumbent["metrics"]
    deltas = {}
    if set(candidate["seeds"]) == set(incumbent["seeds"]):
        deltas = {name: float(cand[name] - inc[name]) for name in cand
                  if name in inc and isinstance(cand[name], (int, float)) and isinstance(inc[name], (int, float))}
    for name, per_seed in cand.items():  # a rate both give seed by seed: its change on the seeds both cover
        base = name.removesuffix(BY_SEED)
        common = sorted(set(per_seed) & set(inc.get(name) or {})) if name.endswith(BY_SEED) else []
        if base != "accuracy" and common:
            deltas[base] = float(np.mean([per_seed[s] - inc[name][s] for s in common]))
    if "per_example" in candidate and "per_example" in incumbent:
        deltas["accuracy"] = float(paired_differences(candidate, incumbent)[0].mean())
    return deltas


def deterministic(result: dict) -> bool:
    """Whether every example of `result` got the same score under each of its seeds (greedy
    decoding, or a policy whose sampling never changes an answer's fate): more seeds then add
    nothing to a comparison, only more examples do. False with a single seed (nothing to tell)."""
    return len(result["seeds"]) > 1 and all(len(set(scores)) == 1 for scores in result["per_example"].values())


def with_calibration(result: dict, part: dict) -> dict:
    """`result`'s eval examples and its calibration `part`'s as one result, on the seeds both cover:
    the examples a comparison pairs when it needs more of them than eval has. Calibration ids are
    prefixed so that none can collide with an eval id. Raises ValueError when they share no seed."""
    seeds = [s for s in part["seeds"] if s in set(result["seeds"])]
    if not seeds:
        raise ValueError(f"the calibration part (seeds {part['seeds']}) shares no seed with its result "
                         f"({result['seeds']})")
    per_example = {}
    for prefix, source in (("", result), ("calibration/", part)):
        position = {seed: i for i, seed in enumerate(source["seeds"])}
        for i, scores in source["per_example"].items():
            per_example[prefix + i] = [scores[position[s]] for s in seeds]
    means = [sum(v) / len(v) for v in per_example.values()]
    return {"status": "ok", "seeds": seeds, "per_example": per_example,
            "metrics": {"accuracy": sum(means) / len(means)}}


# ---------------------------------------------------------------- the noise floor

def noise_floor(results: list[dict]) -> dict:
    """How much one scaffold's score moves between seeds, from several evaluations of it.

    All seed columns of all `results` (same examples) are pooled. `seed_std` and `seed_range` are
    the spread of per-seed accuracy. The pooled seeds are then split in two halves (first half,
    second half) and compared pair by pair as if they were two scaffolds: `split_delta` and
    `split_ci95` are that comparison, and `halfwidth` (half its interval's width) is the paired
    interval a null change gets, a natural `reeval_band`. Each half has half the seeds, so this is
    a conservative estimate for comparisons run with all of them.
    """
    if not results:
        raise ValueError("noise_floor needs at least one evaluation")
    if any(r["status"] != "ok" for r in results):
        raise ValueError("noise_floor needs successful evaluations; one of them failed")
    ids = sorted(results[0]["per_example"])
    if any(sorted(r["per_example"]) != ids for r in results):
        raise ValueError("noise_floor needs evaluations of the same examples")
    scores = np.concatenate([_scores(r, ids, list(r["seeds"])) for r in results], axis=1)
    n_seeds = scores.shape[1]
    if n_seeds < 2:
        raise ValueError("noise_floor needs at least two seeds in all")
    per_seed = scores.mean(axis=0)
    half = n_seeds // 2
    diff = scores[:, half:].mean(axis=1) - scores[:, :half].mean(axis=1)
    low, high = bootstrap_mean_ci(diff)
    return {
        "n_evaluations": len(results),
        "n_examples": len(ids),
        "n_seeds": n_seeds,
        "accuracy": float(scores.mean()),
        "accuracy_by_seed": [float(a) for a in per_seed],
        "seed_std": float(per_seed.std(ddof=1)),
        "seed_range": float(per_seed.max() - per_seed.min()),
        "split_delta": float(diff.mean()),
        "split_ci95": (low, high),
        "halfwidth": (high - low) / 2,
    }


# ---------------------------------------------------------------- the decision

@dataclass
class Verdict:
    """The outcome of one comparison; `delta`/`ci95` are None when the candidate failed to run."""

    decision: str  # "keep" | "revert" | "reeval"
    delta: float | None
    ci95: tuple[float, float] | None
    margin: float
    n_examples: int
    n_seeds: int
    reason: str
    metric_deltas: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Verdict:
        ci95 = tuple(data["ci95"]) if data.get("ci95") is not None else None
        return cls(**(data | {"ci95": ci95}))


def decide(candidate: dict, incumbent: dict, *, margin: float, reeval_band: float, can_reeval: bool) -> Verdict:
    """Keep, revert or re-evaluate the candidate against the incumbent.

    With `delta` the mean paired difference in accuracy and `[low, high]` its 95% interval:
      - a failed candidate is reverted, with its failure reason;
      - keep when `low > margin`: the improvement clears the margin beyond noise;
      - reeval when `can_reeval`, `delta > margin` and `margin - reeval_band < low <= margin`:
        the point estimate clears the margin but its interval reaches below it, by less than
        `reeval_band`, so more seeds could settle it;
      - revert otherwise.
    Raises ValueError when the incumbent is not a successful result or the two do not pair up.
    """
    if incumbent.get("status") != "ok":
        raise ValueError("the incumbent's result must be a successful evaluation")
    if candidate.get("status") != "ok":
        reason = candidate.get("reason") or "no reason given"
        return Verdict("revert", None, None, margin, 0, 0, f"revert: the candidate failed to run ({reason}).")

    diff, ids, seeds = paired_differences(candidate, incumbent)
    delta = float(diff.mean())
    low, high = bootstrap_mean_ci(diff)
    numbers = (f"accuracy {delta:+.3f} (95% CI {low:+.3f} to {high:+.3f}) over {len(ids)} examples "
               f"x {len(seeds)} seeds")
    if low > margin:
        decision, why = "keep", f"the lower bound is above the margin {margin:+.3f}"
    elif can_reeval and delta > margin and low > margin - reeval_band:
        decision, why = "reeval", (f"the estimate is above the margin {margin:+.3f} but the lower bound "
                                   f"is not; more seeds may settle it")
    elif delta > margin:
        decision, why = "revert", f"the lower bound does not clear the margin {margin:+.3f}"
    else:
        decision, why = "revert", f"the estimate is not above the margin {margin:+.3f}"
    return Verdict(decision, delta, (low, high), margin, len(ids), len(seeds), f"{decision}: {numbers}; {why}.",
                   metric_deltas(candidate, incumbent))


DETERMINISTIC = "every seed gives the same scores (deterministic decoding)"


def on_more_examples(verdict: Verdict) -> Verdict:
    """A verdict on eval and calibration examples pooled (`with_calibration`), saying why."""
    return replace(verdict, reason=f"{DETERMINISTIC}, so eval's examples are pooled with the calibration "
                                   f"split's: {verdict.reason}")


# ---------------------------------------------------------------- a keep on held-out, for the record

def heldout_part(result: dict) -> dict:
    """The held-out split of a result as a result of its own: its scores and the seeds they cover."""
    held = result["heldout"]
    return held | {"seeds": list(held.get("seeds", result["seeds"]))}


def _heldout_delta(new: dict, old: dict) -> tuple[float, bool]:
    """The held-out change from `old` to `new`, and whether it is paired per example."""
    a, b = heldout_part(new), heldout_part(old)
    if "per_example" in a and "per_example" in b:
        try:
            return float(paired_differences(a, b)[0].mean()), True
        except ValueError:  # other examples or no common seed: the plain difference is all there is
            pass
    return float(a["metrics"]["accuracy"] - b["metrics"]["accuracy"]), False


def heldout_change(new: dict, old: dict, retrained: dict[int, tuple[dict, dict]] | None = None) -> dict:
    """How a keep moved the held-out score: the new incumbent's held-out accuracy minus the previous
    incumbent's. Paired per example over the common seeds when both carry per-example scores of the
    same examples on a shared seed (the noise they share cancels, as in `decide`), else the plain
    difference of accuracies. A change that is not positive makes the keep a false keep: what won on
    eval did not carry over. Recorded only: held-out decides nothing.

    `retrained` maps each further training seed a keep was decided on (a change to training is kept
    on its gain averaged over training seeds) to the (new, old) held-out results trained with it:
    the change is then averaged over training seed 0's and theirs, the same claim the keep made,
    and `heldout_by_train_seed` holds each one's.
    """
    by_seed = {0: _heldout_delta(new, old)} | {t: _heldout_delta(*pair) for t, pair in (retrained or {}).items()}
    delta = float(np.mean([d for d, _ in by_seed.values()]))
    change = {"heldout_delta": delta, "heldout_paired": all(p for _, p in by_seed.values()), "false_keep": delta <= 0}
    if retrained:
        change["heldout_by_train_seed"] = {str(t): d for t, (d, _) in sorted(by_seed.items())}
    return change


# ---------------------------------------------------------------- merging re-evaluations

def _merge_split(a: dict, b: dict, a_seeds: int, b_seeds: int) -> dict:
    """Merge the `metrics` and `per_example` of one split evaluated twice, on disjoint seeds."""
    if set(a["per_example"]) != set(b["per_example"]):
        raise ValueError("cannot merge evaluations of different examples")
    per_example = {i: list(a["per_example"][i]) + list(b["per_example"][i]) for i in a["per_example"]}
    example_means = [sum(v) / len(v) for v in per_example.values()]
    # Every scalar metric is a mean over examples x seeds, so the merged one weighs by seed count.
    metrics = {name: (a["metrics"][name] * a_seeds + b["metrics"][name] * b_seeds) / (a_seeds + b_seeds)
               for name, value in a["metrics"].items()
               if isinstance(value, (int, float)) and isinstance(b["metrics"].get(name), (int, float))}
    metrics["accuracy"] = sum(example_means) / len(example_means)
    metrics["accuracy_ci95"] = list(bootstrap_mean_ci(example_means))
    for name in a["metrics"]:  # accuracy and the failure rates, seed by seed
        if name.endswith(BY_SEED) and isinstance(b["metrics"].get(name), dict):
            metrics[name] = a["metrics"][name] | b["metrics"][name]
    return {"metrics": metrics, "per_example": per_example}


def merge_results(a: dict, b: dict) -> dict:
    """One result from two successful evaluations of the same scaffold on disjoint seeds.

    Seeds and per-example scores are concatenated (a's first); accuracy and its interval are
    recomputed from the merged scores, the other metrics are seed-weighted means, failure counts
    add up (two runs that scored held-out only have no eval scores to merge). A held-out part is
    merged when both have one, or kept as it is when only one has it; either way it carries its
    own `seeds`, so its per-example lists say what they cover.
    """
    if a.get("status") != "ok" or b.get("status") != "ok":
        raise ValueError("only successful evaluations can be merged")
    hash_a, hash_b = (r.get("scaffold", {}).get("content_hash") for r in (a, b))
    if hash_a and hash_b and hash_a != hash_b:
        raise ValueError(f"cannot merge evaluations of different scaffolds ({hash_a} vs {hash_b})")
    shared = set(a["seeds"]) & set(b["seeds"])
    if shared:
        raise ValueError(f"cannot merge evaluations that share seeds {sorted(shared)}: scores would count twice")

    if ("per_example" in a) != ("per_example" in b):
        raise ValueError("cannot merge a run that scored eval with one that scored held-out only")

    merged = dict(a)
    merged["seeds"] = list(a["seeds"]) + list(b["seeds"])
    if "per_example" in a:  # not in runs that scored held-out only
        merged |= _merge_split(a, b, len(a["seeds"]), len(b["seeds"]))
        failures: dict[str, dict] = {}
        for source in (a, b):
            for category, group in source.get("failures", {}).items():
                into = failures.setdefault(category, {"count": 0, "examples": []})
                into["count"] += group["count"]
                into["examples"] = (into["examples"] + group["examples"])[:FAILURE_EXAMPLES]
        merged["failures"] = dict(sorted(failures.items(), key=lambda kv: -kv[1]["count"]))

    timings_a, timings_b = a.get("timings", {}), b.get("timings", {})
    merged["timings"] = {k: timings_a.get(k, 0) + timings_b.get(k, 0) for k in timings_a | timings_b}

    # A held-out part may already cover fewer seeds than its result (an earlier one-sided merge).
    held = [(r["heldout"], list(r["heldout"].get("seeds", r["seeds"]))) for r in (a, b) if "heldout" in r]
    if len(held) == 2:
        (held_a, seeds_a), (held_b, seeds_b) = held
        merged["heldout"] = _merge_split(held_a, held_b, len(seeds_a), len(seeds_b)) | {"seeds": seeds_a + seeds_b}
    elif held:
        merged["heldout"] = held[0][0] | {"seeds": held[0][1]}
    return merged
