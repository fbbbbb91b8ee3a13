"""The paired comparison, the keep/revert/reeval rule, merging re-evaluations, the noise floor and
a keep's held-out change.

Results are synthetic: a per-example score matrix turned into the `result.json` shape.
"""

import numpy as np
import pytest

from harness.compare import (Verdict, decide, deterministic, heldout_change, merge_results, noise_floor,
                             on_more_examples, with_calibration)
from rl_pipeline.evaluate import summarize
from rl_pipeline.stats import bootstrap_mean_ci

N = 200
SEEDS = [0, 1, 2]


def make_result(scores, seeds=SEEDS, **metrics) -> dict:
    """An ok result from an examples x seeds 0/1 matrix; other metrics default to fixed values."""
    scores = np.asarray(scores, dtype=int)
    per_example = {f"ex{i:03d}": [int(s) for s in row] for i, row in enumerate(scores)}
    return {
        "status": "ok",
        "seeds": list(seeds),
        "scaffold": {"content_hash": "abc"},
        "metrics": {"accuracy": float(scores.mean()), "accuracy_ci95": [0.0, 1.0],
                    "accuracy_by_seed": {str(s): float(scores[:, j].mean()) for j, s in enumerate(seeds)},
                    "format_valid_rate": 0.9, "mean_completion_tokens": 5.0, "truncation_rate": 0.0,
                    "repetition_rate": 0.1} | metrics,
        "per_example": per_example,
        "failures": {"wrong_answer": {"count": int((scores == 0).sum()), "examples": [{"id": "ex000"}]}},
        "timings": {"eval_s": 1.0},
    }


def base_scores(correct: int, n_seeds: int = len(SEEDS)) -> np.ndarray:
    """The first `correct` examples right under every seed, the rest wrong."""
    scores = np.zeros((N, n_seeds), dtype=int)
    scores[:correct] = 1
    return scores


def test_identical_results_give_zero_delta_and_revert():
    result = make_result(base_scores(100))
    verdict = decide(result, result, margin=0.0, reeval_band=0.05, can_reeval=True)
    assert verdict.decision == "revert"
    assert verdict.delta == 0.0 and verdict.ci95 == (0.0, 0.0)
    assert (verdict.n_examples, verdict.n_seeds) == (N, 3)
    assert all(v == 0.0 for v in verdict.metric_deltas.values())


def test_clearly_better_candidate_is_kept():
    incumbent = make_result(base_scores(100))
    candidate = make_result(base_scores(140), format_valid_rate=0.95)
    verdict = decide(candidate, incumbent, margin=0.0, reeval_band=0.05, can_reeval=True)
    assert verdict.decision == "keep"
    assert verdict.delta == pytest.approx(0.2)
    assert verdict.ci95[0] > 0.1
    assert verdict.metric_deltas["accuracy"] == pytest.approx(0.2)
    assert verdict.metric_deltas["format_valid_rate"] == pytest.approx(0.05)
    assert "+0.200" in verdict.reason and "200 examples x 3 seeds" in verdict.reason


def test_small_noisy_improvement_is_reevaluated_only_when_allowed():
    inc = base_scores(100)
    cand = inc.copy()
    cand[100:106] = 1  # six gains
    cand[0:2] = 0      # two losses: +0.02 with an interval that reaches below zero
    incumbent, candidate = make_result(inc), make_result(cand)
    allowed = decide(candidate, incumbent, margin=0.0, reeval_band=0.05, can_reeval=True)
    assert allowed.decision == "reeval"
    assert allowed.delta == pytest.approx(0.02)
    assert -0.05 < allowed.ci95[0] <= 0.0
    refused = decide(candidate, incumbent, margin=0.0, reeval_band=0.05, can_reeval=False)
    assert refused.decision == "revert"
    too_far = decide(candidate, incumbent, margin=0.0, reeval_band=0.001, can_reeval=True)
    assert too_far.decision == "revert"


def test_worse_candidate_is_reverted():
    verdict = decide(make_result(base_scores(80)), make_result(base_scores(100)),
                     margin=0.0, reeval_band=0.05, can_reeval=True)
    assert verdict.decision == "revert" and verdict.delta == pytest.approx(-0.1)


def test_failed_candidate_is_reverted_with_its_reason():
    failed = {"status": "failed", "reason": "training timed out after 300 s", "seeds": SEEDS}
    verdict = decide(failed, make_result(base_scores(100)), margin=0.0, reeval_band=0.05, can_reeval=True)
    assert verdict.decision == "revert"
    assert verdict.delta is None and verdict.ci95 is None
    assert "training timed out after 300 s" in verdict.reason


def test_mismatched_examples_or_seeds_raise():
    incumbent = make_result(base_scores(100))
    fewer = make_result(base_scores(100)[:150])
    with pytest.raises(ValueError, match="different examples"):
        decide(fewer, incumbent, margin=0.0, reeval_band=0.05, can_reeval=True)
    other_seeds = make_result(base_scores(100), seeds=[7, 8, 9])
    with pytest.raises(ValueError, match="share no seed"):
        decide(other_seeds, incumbent, margin=0.0, reeval_band=0.05, can_reeval=True)


def test_only_common_seeds_are_compared():
    incumbent = make_result(base_scores(100))
    # Seeds 1 and 2 match the incumbent; seed 5 is all wrong and must not count.
    scores = np.concatenate([base_scores(100, 2), np.zeros((N, 1), dtype=int)], axis=1)
    candidate = make_result(scores, seeds=[1, 2, 5])
    verdict = decide(candidate, incumbent, margin=0.0, reeval_band=0.05, can_reeval=True)
    assert verdict.delta == 0.0 and verdict.n_seeds == 2


def test_merge_results_concatenates_seeds_and_recomputes_accuracy():
    rng = np.random.default_rng(1)
    a_scores, b_scores = rng.integers(0, 2, (N, 3)), rng.integers(0, 2, (N, 2))
    a = make_result(a_scores, format_valid_rate=0.8)
    b = make_result(b_scores, seeds=[3, 4], format_valid_rate=0.9)
    merged = merge_results(a, b)
    assert merged["seeds"] == [0, 1, 2, 3, 4]
    assert merged["per_example"]["ex007"] == list(a_scores[7]) + list(b_scores[7])
    both = np.concatenate([a_scores, b_scores], axis=1)
    assert merged["metrics"]["accuracy"] == pytest.approx(both.mean())
    low, high = merged["metrics"]["accuracy_ci95"]
    assert low < both.mean() < high and high - low < 0.2
    assert merged["metrics"]["format_valid_rate"] == pytest.approx((0.8 * 3 + 0.9 * 2) / 5)
    assert set(merged["metrics"]["accuracy_by_seed"]) == {"0", "1", "2", "3", "4"}
    assert merged["failures"]["wrong_answer"]["count"] == int((both == 0).sum())
    assert merged["timings"]["eval_s"] == 2.0
    assert a["seeds"] == [0, 1, 2]  # the inputs are left as they were


def evaluated(seeds, format_ok) -> dict:
    """A result summarized by the evaluator from per-answer records: 4 examples, all wrong,
    `format_ok(example, seed)` saying which answers were well-formed."""
    examples = [{"id": f"ex{i}", "question": "1 + 1", "answer": "2"} for i in range(4)]
    records = [{"id": ex["id"], "seed": seed, "correct": False, "format_ok": format_ok(i, seed),
                "category": "bad_format", "completion": "", "tokens": 3, "truncated": False, "repetitive": False}
               for seed in seeds for i, ex in enumerate(examples)]
    return {"status": "ok", "seeds": list(seeds), "scaffold": {}} | summarize(records, examples, seeds, "eval")


def test_rate_changes_are_paired_on_the_seeds_both_results_cover():
    # an incumbent re-evaluated on six seeds (its last three well-formed throughout), a candidate on
    # three: the format change is the one on seeds 0-2, not a mix of the incumbent's six
    incumbent = merge_results(evaluated([0, 1, 2], lambda i, seed: i < 1), evaluated([3, 4, 5], lambda i, seed: True))
    assert incumbent["metrics"]["format_valid_rate_by_seed"] == {"0": 0.25, "1": 0.25, "2": 0.25,
                                                                 "3": 1.0, "4": 1.0, "5": 1.0}
    candidate = evaluated([0, 1, 2], lambda i, seed: i < 2 + (seed == 2))
    deltas = decide(candidate, incumbent, margin=0.0, reeval_band=0.05, can_reeval=True).metric_deltas
    assert deltas["format_valid_rate"] == pytest.approx((0.25 + 0.25 + 0.5) / 3)
    assert deltas["truncation_rate"] == 0.0 and deltas["accuracy"] == 0.0
    assert "mean_completion_tokens" not in deltas  # no seed-by-seed values: left out as before


def test_merge_results_refuses_shared_seeds_and_failed_runs():
    a = make_result(base_scores(100))
    with pytest.raises(ValueError, match="share seeds"):
        merge_results(a, a)
    with pytest.raises(ValueError, match="successful"):
        merge_results(a, {"status": "failed", "reason": "x", "seeds": [9]})


def test_runs_that_scored_heldout_only_merge_their_heldout_parts_alone():
    def heldout_only(scores, seeds) -> dict:
        held = make_result(scores, seeds)
        return {"status": "ok", "seeds": list(seeds), "scaffold": {"content_hash": "abc"},
                "timings": {"heldout_s": 1.0}, "heldout": {"metrics": held["metrics"], "per_example": held["per_example"]}}

    scores = base_scores(120, n_seeds=3)
    merged = merge_results(heldout_only(scores[:, :1], [0]), heldout_only(scores[:, 1:], [1, 2]))
    whole = heldout_only(scores, [0, 1, 2])["heldout"]
    assert merged["seeds"] == merged["heldout"]["seeds"] == [0, 1, 2]
    assert merged["heldout"]["per_example"] == whole["per_example"]
    assert merged["heldout"]["metrics"]["accuracy"] == pytest.approx(whole["metrics"]["accuracy"])
    assert not {"metrics", "per_example", "failures"} & set(merged) and merged["timings"] == {"heldout_s": 2.0}
    with pytest.raises(ValueError, match="held-out only"):
        merge_results(make_result(base_scores(100)), heldout_only(scores[:, :1], [7]))


def test_reevaluation_with_more_seeds_can_settle_a_decision():
    rng = np.random.default_rng(2)
    p = rng.uniform(0.2, 0.8, N)

    def draw(shift, seeds):
        return make_result((rng.uniform(size=(N, len(seeds))) < (p + shift)[:, None]).astype(int), seeds=seeds)

    incumbent = merge_results(draw(0.0, [0, 1]), draw(0.0, [2, 3, 4, 5, 6, 7]))
    candidate = merge_results(draw(0.08, [0, 1]), draw(0.08, [2, 3, 4, 5, 6, 7]))
    verdict = decide(candidate, incumbent, margin=0.0, reeval_band=0.05, can_reeval=False)
    assert verdict.n_seeds == 8 and verdict.decision == "keep"


def test_noise_floor_on_repeated_evaluations():
    rng = np.random.default_rng(3)
    p = rng.uniform(0.1, 0.9, N)
    results = [make_result((rng.uniform(size=(N, 2)) < p[:, None]).astype(int), seeds=seeds)
               for seeds in ([0, 1], [2, 3], [4, 5])]
    floor = noise_floor(results)
    assert floor["n_seeds"] == 6 and floor["n_evaluations"] == 3 and floor["n_examples"] == N
    assert len(floor["accuracy_by_seed"]) == 6
    assert 0.0 < floor["seed_std"] < 0.1
    assert floor["seed_range"] >= floor["seed_std"]
    low, high = floor["split_ci95"]
    assert low < 0.0 < high  # the same scaffold against itself: no difference beyond noise
    assert 0.0 < floor["halfwidth"] < 0.1
    assert noise_floor(results) == floor

    deterministic = noise_floor([make_result(base_scores(100)), make_result(base_scores(100), seeds=[3, 4, 5])])
    assert deterministic["seed_std"] == 0.0 and deterministic["halfwidth"] == 0.0
    with pytest.raises(ValueError, match="two seeds"):
        noise_floor([make_result(base_scores(100, 1), seeds=[0])])


def test_comparison_is_deterministic_and_roundtrips():
    rng = np.random.default_rng(4)
    incumbent, candidate = make_result(rng.integers(0, 2, (N, 3))), make_result(rng.integers(0, 2, (N, 3)))
    first = decide(candidate, incumbent, margin=0.01, reeval_band=0.05, can_reeval=True)
    second = decide(candidate, incumbent, margin=0.01, reeval_band=0.05, can_reeval=True)
    assert first == second
    assert Verdict.from_dict(first.to_dict()) == first


def test_bootstrap_matches_the_normal_approximation():
    values = np.random.default_rng(5).integers(0, 2, 2000).astype(float)
    low, high = bootstrap_mean_ci(values)
    half = 1.96 * values.std() / np.sqrt(values.size)
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert bootstrap_mean_ci([]) == (0.0, 0.0)


# ---------------------------------------------------------------- a keep's held-out change

def with_heldout(scores, seeds=SEEDS) -> dict:
    """A result whose held-out part has these scores (its own seeds only when they differ, as after a merge)."""
    held = make_result(scores, seeds)
    return make_result(base_scores(100)) | {"heldout": {"metrics": held["metrics"], "per_example": held["per_example"]}
                                            | ({"seeds": list(seeds)} if list(seeds) != SEEDS else {})}


def test_the_heldout_change_is_paired_on_the_common_seeds():
    # The baseline's held-out ran on six seeds, the keep's on three. Over all of them the keep looks
    # 0.20 better (seeds 3-5 were bad luck for the baseline); on the seeds both have it is 0.05 worse.
    baseline = np.zeros((N, 6), dtype=int)
    baseline[:100, :3] = 1
    before = with_heldout(baseline, seeds=[0, 1, 2, 3, 4, 5])
    after = with_heldout(base_scores(90))
    assert after["heldout"]["metrics"]["accuracy"] - before["heldout"]["metrics"]["accuracy"] == pytest.approx(0.2)
    change = heldout_change(after, before)
    assert change == {"heldout_delta": pytest.approx(-0.05), "heldout_paired": True, "false_keep": True}
    assert heldout_change(with_heldout(base_scores(110)), before) == {
        "heldout_delta": pytest.approx(0.05), "heldout_paired": True, "false_keep": False}


def test_a_heldout_change_of_zero_is_a_false_keep_and_unpaired_scores_give_the_plain_difference():
    same = with_heldout(base_scores(100))
    assert heldout_change(same, same) == {"heldout_delta": 0.0, "heldout_paired": True, "false_keep": True}
    scores_only = make_result(base_scores(100)) | {"heldout": {"metrics": {"accuracy": 0.4}}}
    assert heldout_change(same, scores_only) == {"heldout_delta": pytest.approx(0.1), "heldout_paired": False,
                                                 "false_keep": False}
    other_seeds = with_heldout(base_scores(60, 2), seeds=[7, 8])
    assert heldout_change(other_seeds, same) == {"heldout_delta": pytest.approx(-0.2), "heldout_paired": False,
                                                 "false_keep": True}


def test_a_keep_decided_over_training_seeds_has_its_heldout_change_averaged_over_them():
    # Training seed 0 alone makes it a false keep (-0.02); seeds 1 and 2, the same recipe trained
    # again, gain +0.05 and +0.03: the change the keep claimed holds on held-out, +0.02 on average.
    one_seed = with_heldout(base_scores(96)), with_heldout(base_scores(100))
    assert heldout_change(*one_seed)["false_keep"]
    retrained = {1: (with_heldout(base_scores(110, 1), seeds=[0]), with_heldout(base_scores(100, 1), seeds=[0])),
                 2: (with_heldout(base_scores(104, 1), seeds=[0]), with_heldout(base_scores(98, 1), seeds=[0]))}
    change = heldout_change(*one_seed, retrained=retrained)
    assert change == {"heldout_delta": pytest.approx(0.02), "heldout_paired": True, "false_keep": False,
                      "heldout_by_train_seed": {"0": pytest.approx(-0.02), "1": pytest.approx(0.05),
                                                "2": pytest.approx(0.03)}}
    # A seed whose results cannot be paired gives its plain difference, and the average says so.
    retrained[2] = (retrained[2][0], make_result(base_scores(98)) | {"heldout": {"metrics": {"accuracy": 0.6}}})
    change = heldout_change(*one_seed, retrained=retrained)
    assert change["heldout_paired"] is False and change["heldout_by_train_seed"]["2"] == pytest.approx(-0.08)
    assert change["heldout_delta"] == pytest.approx(-0.05 / 3) and change["false_keep"]


def mixed_scores(n: int, correct: int, lost: int, gained: int, n_seeds: int = 1) -> np.ndarray:
    """The first `correct` of `n` examples right, less the first `lost` of them, plus the `gained`
    after them: a change that wins some examples and loses others, the same under every seed."""
    scores = np.zeros((n, n_seeds), dtype=int)
    scores[lost:correct + gained] = 1
    return scores


def calibration_part(scores: np.ndarray, seeds=(0,)) -> dict:
    """A calibration part of the result shape from an examples x seeds matrix."""
    return {"seeds": list(seeds), "data_hash": "c" * 16, "metrics": {"accuracy": float(scores.mean())},
            "per_example": {f"ex{i:03d}": [int(v) for v in row] for i, row in enumerate(scores)}}


def test_deterministic_means_no_seed_changes_any_score():
    assert deterministic(make_result(base_scores(100)))
    flipped = base_scores(100)
    flipped[150, 2] = 1
    assert not deterministic(make_result(flipped))
    assert not deterministic(make_result(base_scores(100, 1), seeds=[0]))  # one seed tells nothing


def test_with_calibration_pools_both_splits_on_their_common_seeds():
    part = calibration_part(mixed_scores(400, 300, 0, 0, n_seeds=2), seeds=(5, 0))
    pooled = with_calibration(make_result(base_scores(100)), part)
    assert pooled["seeds"] == [0] and len(pooled["per_example"]) == N + 400
    assert pooled["per_example"]["ex000"] == [1] and pooled["per_example"]["calibration/ex399"] == [0]
    assert pooled["metrics"]["accuracy"] == pytest.approx((100 + 300) / 600)
    with pytest.raises(ValueError, match="shares no seed"):
        with_calibration(make_result(base_scores(100)), calibration_part(mixed_scores(400, 300, 0, 0), seeds=(7,)))


def test_more_examples_settle_what_more_seeds_cannot_under_greedy_decoding():
    """+4 points on 200 examples (10 lost, 18 won) is within noise whatever the number of identical
    seeds; the same change on 400 more examples is not."""
    incumbent, candidate = make_result(base_scores(100)), make_result(mixed_scores(N, 100, 10, 18, 3))
    on_eval = decide(candidate, incumbent, margin=0.0, reeval_band=0.05, can_reeval=False)
    more_seeds = decide(make_result(mixed_scores(N, 100, 10, 18, 6), seeds=range(6)),
                        make_result(base_scores(100, 6), seeds=range(6)), margin=0.0, reeval_band=0.05,
                        can_reeval=False)
    assert on_eval.decision == more_seeds.decision == "revert" and on_eval.ci95 == more_seeds.ci95
    pooled = on_more_examples(decide(with_calibration(candidate, calibration_part(mixed_scores(400, 200, 20, 36))),
                                     with_calibration(incumbent, calibration_part(mixed_scores(400, 200, 0, 0))),
                                     margin=0.0, reeval_band=0.05, can_reeval=False))
    assert pooled.decision == "keep" and pooled.delta == pytest.approx(0.04) and pooled.n_examples == 600
    assert pooled.reason.startswith("every seed gives the same scores") and "600 examples x 1 seeds" in pooled.reason
