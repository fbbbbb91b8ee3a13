"""The keep rule across training seeds, on result.json files written and read as the runner's are.

Each training seed gives a candidate and an incumbent result folder; the scores are set per example,
so the paired change of each training seed, and of their average, is known exactly.
"""

import numpy as np
import pytest

from harness.compare import decide
from harness.training_noise import changes_training, retrain_dir, reusable, training_seed_verdict, worth_retraining
from rl_pipeline.result import SCHEMA_VERSION, failed_result, read_result, write_result

N = 200
EVAL_SEEDS = [0, 1, 2]


def write(folder, correct: range, *, train_seed: int, key: str, commit: str = "c1", seeds=EVAL_SEEDS):
    """An ok result.json in `folder`: the examples in `correct` right under every evaluation seed."""
    scores = np.zeros((N, len(seeds)), dtype=int)
    scores[list(correct)] = 1
    write_result(folder, {
        "schema_version": SCHEMA_VERSION, "status": "ok", "seeds": list(seeds),
        "scaffold": {"path": "s", "commit": commit, "content_hash": key},
        "training": {"key": f"{key}-{train_seed}", "cached": False, "train_seed": train_seed},
        "metrics": {"accuracy": float(scores.mean()), "accuracy_ci95": [0.0, 1.0], "format_valid_rate": 1.0},
        "per_example": {f"ex{i:03d}": [int(s) for s in row] for i, row in enumerate(scores)},
        "failures": {}, "timings": {}})
    return folder


def pairs(tmp_path, candidate: dict[int, range], incumbent: range = range(100)) -> dict:
    """Per training seed, the candidate's folder (its correct examples as given) and the incumbent's."""
    out = {}
    for train_seed, correct in candidate.items():
        cand = write(retrain_dir(tmp_path / "001", train_seed), correct, train_seed=train_seed, key="cand")
        inc = write(retrain_dir(tmp_path / "000", train_seed), incumbent, train_seed=train_seed, key="inc")
        out[train_seed] = (cand, inc)
    return out


def test_a_gain_of_one_lucky_training_run_is_reverted(tmp_path):
    """+0.040 with training seed 0 (a keep on evaluation seeds alone); with seeds 1 and 2 the
    candidate trains a policy as good as the incumbent's, right on other examples."""
    runs = pairs(tmp_path, {0: range(108), 1: range(4, 104), 2: range(8, 108)})
    first = decide(read_result(runs[0][0]), read_result(runs[0][1]), margin=0.0, reeval_band=0.0, can_reeval=False)
    assert first.decision == "keep" and first.delta == pytest.approx(0.04)

    out = training_seed_verdict(runs, margin=0.0)
    assert [(p["train_seed"], p["delta"]) for p in out["per_seed"]] == [(0, pytest.approx(0.04)), (1, 0.0), (2, 0.0)]
    verdict = out["verdict"]
    assert verdict["decision"] == "revert" and verdict["delta"] == pytest.approx(0.04 / 3)
    assert verdict["ci95"][0] <= 0.0 < verdict["ci95"][1]
    assert (verdict["n_examples"], verdict["n_seeds"]) == (N, 9)
    assert "by training seed: 0 +0.040, 1 +0.000, 2 +0.000" in verdict["reason"]
    assert "the first training's gain did not hold on fresh ones" in verdict["reason"]


def test_a_gain_beyond_the_noise_floor_that_one_training_run_cannot_settle_is_retrained_and_kept(tmp_path):
    """+0.015 with training seed 0, its interval reaching below 0 (a revert on evaluation seeds
    alone), but above the noise floor's half-width: re-trained, the recipe gains +0.06 with seeds 1
    and 2, and the pooled verdict keeps it. A gain inside the noise floor is not worth the training."""
    incumbent = [i for i in range(N) if i % 2 == 0]  # half right, spread over the examples
    lucky_less = incumbent[:-12] + [i for i in range(N) if i % 2][:15]  # 12 lost, 15 won: +0.015
    more = incumbent + [i for i in range(N) if i % 2][:12]
    runs = pairs(tmp_path, {0: lucky_less, 1: more, 2: more}, incumbent=incumbent)
    first = decide(read_result(runs[0][0]), read_result(runs[0][1]), margin=0.0, reeval_band=0.0096,
                   can_reeval=True).to_dict()
    assert first["decision"] == "revert" and first["delta"] == pytest.approx(0.015) and first["ci95"][0] < 0
    assert worth_retraining(first, margin=0.0, band=0.0096)
    assert not worth_retraining(first, margin=0.0, band=0.02)  # inside a wider floor: not worth it
    assert not worth_retraining(first | {"delta": -0.03}, margin=0.0, band=0.0)
    assert not worth_retraining(first | {"delta": None}, margin=0.0, band=0.0)  # a failed run
    assert worth_retraining(first | {"decision": "keep", "delta": 0.001}, margin=0.0, band=0.0096)
    verdict = training_seed_verdict(runs, margin=0.0)["verdict"]
    assert verdict["decision"] == "keep" and verdict["delta"] == pytest.approx((0.015 + 0.06 + 0.06) / 3)


def test_a_gain_that_holds_on_every_training_seed_is_kept(tmp_path):
    runs = pairs(tmp_path, {0: range(120), 1: range(116), 2: range(124)})
    out = training_seed_verdict(runs, margin=0.0)
    verdict = out["verdict"]
    assert verdict["decision"] == "keep" and verdict["ci95"][0] > 0.0
    assert [p["delta"] for p in out["per_seed"]] == pytest.approx([0.10, 0.08, 0.12])
    assert verdict["delta"] == pytest.approx(0.10)
    assert verdict["metric_deltas"] == {"accuracy": pytest.approx(0.10), "format_valid_rate": 0.0}
    # The same runs against a margin the averaged interval does not clear.
    assert training_seed_verdict(runs, margin=0.09)["verdict"]["decision"] == "revert"


def test_a_candidate_that_fails_with_a_fresh_seed_is_reverted(tmp_path):
    runs = pairs(tmp_path, {0: range(120), 1: range(120), 2: range(120)})
    write_result(runs[2][0], failed_result({"scaffold": "s", "seeds": EVAL_SEEDS}, "training diverged: loss=nan"))
    verdict = training_seed_verdict(runs, margin=0.0)["verdict"]
    assert verdict["decision"] == "revert" and verdict["delta"] is None
    assert verdict["reason"] == "revert: the candidate failed with training seed 2 (training diverged: loss=nan)."


def test_a_training_seed_the_incumbent_fails_with_is_left_out(tmp_path):
    runs = pairs(tmp_path, {0: range(120), 1: range(120), 2: range(100)})
    write_result(runs[2][1], failed_result({"scaffold": "s", "seeds": EVAL_SEEDS}, "timed out"))
    out = training_seed_verdict(runs, margin=0.0)
    assert [p["train_seed"] for p in out["per_seed"]] == [0, 1]
    assert out["left_out"] == [{"train_seed": 2, "reason": "timed out"}]
    assert out["verdict"]["decision"] == "keep" and out["verdict"]["delta"] == pytest.approx(0.10)
    assert "Left out, the incumbent failing to train: training seed 2 (timed out)." in out["verdict"]["reason"]


def test_only_a_change_to_training_is_checked_and_earlier_runs_are_reused(tmp_path):
    sampling_only = write(tmp_path / "a", range(100), train_seed=0, key="inc")
    same_training = write(tmp_path / "b", range(110), train_seed=0, key="inc")
    other_training = write(tmp_path / "c", range(110), train_seed=0, key="cand")
    assert not changes_training(read_result(same_training), read_result(sampling_only))
    assert changes_training(read_result(other_training), read_result(sampling_only))

    folder = write(retrain_dir(tmp_path / "000", 1), range(100), train_seed=1, key="inc", commit="c1")
    assert reusable(folder, commit="c1", seeds=EVAL_SEEDS, train_seed=1)["training"]["train_seed"] == 1
    assert reusable(folder, commit="c2", seeds=EVAL_SEEDS, train_seed=1) is None  # another incumbent
    assert reusable(folder, commit="c1", seeds=[0, 1], train_seed=1) is None
    assert reusable(folder, commit="c1", seeds=EVAL_SEEDS, train_seed=2) is None
    assert reusable(folder, commit="c1", seeds=EVAL_SEEDS, train_seed=1, calibration=True) is None  # none scored
    assert reusable(retrain_dir(tmp_path / "000", 2), commit="c1", seeds=EVAL_SEEDS, train_seed=2) is None


def test_the_best_of_several_candidates_is_judged_across_training_seeds_at_the_level_they_call_for(tmp_path):
    """The same gain over three training seeds: kept when the change was the only candidate of its
    round, reverted when it was the best of 8 (its first training seed is the one it was chosen on,
    so the pooled interval is at 1 - 0.05/8, as the re-test on fresh evaluation seeds is)."""
    incumbent = [i for i in range(N) if i % 2 == 0]
    better = incumbent + [i for i in range(N) if i % 2][:5]  # 5 won: +0.025
    runs = pairs(tmp_path, {0: better, 1: better, 2: better}, incumbent=incumbent)
    alone = training_seed_verdict(runs, margin=0.0)["verdict"]
    best_of_8 = training_seed_verdict(runs, margin=0.0, count=8)["verdict"]
    assert alone["delta"] == best_of_8["delta"] == pytest.approx(0.025)
    assert alone["decision"] == "keep" and "(95% CI" in alone["reason"]
    assert best_of_8["decision"] == "revert" and best_of_8["ci95"][0] <= 0.0 < alone["ci95"][0]
    assert "(99.38% CI, the level 8 candidates call for," in best_of_8["reason"]
