"""Self-critique: it says what changed and what to do next, and every number it states is given."""

import random

import pytest

from harness.critique import check_critique, critique
from harness.proposal import parse_proposal

KNOBS = {"sampling.temperature": 1.0, "sampling.max_new_tokens": 32, "grpo.loss_type": "dapo",
         "grpo.learning_rate": 1e-6}


def result(accuracy, *, knobs=KNOBS, truncation=0.02, seeds=(0, 1), **metrics):
    return {"status": "ok", "seeds": list(seeds), "num_examples": 200, "knobs": dict(knobs),
            "failures": {"wrong_answer": {"count": 57, "examples": []}},
            "metrics": {"accuracy": accuracy, "accuracy_ci95": [accuracy - 0.05, accuracy + 0.05],
                        "format_valid_rate": 0.95, "truncation_rate": truncation, "repetition_rate": 0.01,
                        "mean_completion_tokens": 5.25} | metrics}


def verdict(decision, delta, low, high, margin=0.0):
    return {"decision": decision, "delta": delta, "ci95": [low, high], "margin": margin, "n_examples": 200,
            "n_seeds": 2, "reason": f"{decision}: accuracy {delta:+.3f}", "metric_deltas": {"accuracy": delta}}


def knob_proposal(knob, value):
    return parse_proposal({"hypothesis": "h", "edits": [{"knob": knob, "value": value}]})


FAILED = {"status": "failed", "seeds": [0, 1], "reason": "timeout: training ran past 300 s at step 17"}
FAILED_VERDICT = {"decision": "revert", "delta": None, "ci95": None, "margin": 0.0, "n_examples": 0, "n_seeds": 0,
                  "reason": "revert: the candidate failed to run (timeout: training ran past 300 s at step 17).",
                  "metric_deltas": {}}


def test_a_kept_change_reports_metrics_noise_and_direction():
    incumbent = result(0.41234)
    candidate = result(0.4556, knobs=KNOBS | {"sampling.temperature": 0.7}, truncation=0.08)
    v = verdict("keep", 0.0433, 0.012, 0.071)
    text = critique(knob_proposal("sampling.temperature", 0.7), candidate, incumbent, v)
    assert "`sampling.temperature`: 1.0 -> 0.7 (lowered)" in text
    assert "| accuracy | 0.412 | 0.456 | +0.043 |" in text
    assert "| truncation_rate | 0.020 | 0.080 | +0.060 |" in text
    assert "95% CI [+0.012, +0.071]) over 200 examples x 2 seeds" in text
    assert "Beyond noise?** Yes" in text
    assert "Truncation rose: lower the token limits" in text
    assert "push `sampling.temperature` further in the same direction, beyond 0.7" in text
    assert check_critique(text, candidate, incumbent, v) == []


@pytest.mark.parametrize("v, advice", [
    (verdict("revert", -0.01, -0.04, 0.02), "No measurable effect: leave `grpo.loss_type`"),
    (verdict("revert", 0.01, -0.02, 0.04), "Promising but within noise"),
    (verdict("revert", -0.08, -0.12, -0.04), "Refuted: `grpo.loss_type` this way hurts"),
    (verdict("reeval", 0.03, -0.005, 0.065), "Promising but within noise"),
])
def test_advice_follows_the_verdict(v, advice):
    incumbent, candidate = result(0.4), result(0.4 + v["delta"], knobs=KNOBS | {"grpo.loss_type": "grpo"})
    text = critique(knob_proposal("grpo.loss_type", "grpo"), candidate, incumbent, v)
    assert advice in text
    assert "`grpo.loss_type`: dapo -> grpo" in text
    assert check_critique(text, candidate, incumbent, v) == []


def test_a_failed_run_quotes_its_reason_and_states_no_invented_value():
    incumbent = result(0.4)
    text = critique(knob_proposal("grpo.learning_rate", 1e-4), FAILED, incumbent, FAILED_VERDICT)
    assert "the run failed (timeout: training ran past 300 s at step 17)" in text
    assert "1e-06 -> the proposed value" in text
    assert "time limit" in text
    assert check_critique(text, FAILED, incumbent, FAILED_VERDICT) == []


def test_check_flags_invented_numbers_and_accepts_derived_ones():
    incumbent, candidate = result(0.41234), result(0.4556, knobs=KNOBS | {"sampling.temperature": 0.7})
    v = verdict("keep", 0.0433, 0.012, 0.071)
    grounded = ("Accuracy rose from 41.2% to 0.46 (+0.043, CI 0.012 to 0.071, 95% level) over 200 examples, "
                "2 seeds, 57 wrong answers; temperature 1.0 -> 0.7; top_k2 and v3 are names, not numbers.")
    assert check_critique(grounded, candidate, incumbent, v) == []
    invented = grounded + " It will reach 0.987, or 12.5% more, after 3 rounds; seed 1e-05."
    assert check_critique(invented, candidate, incumbent, v) == ["0.987", "12.5%", "3", "1e-05"]
    assert check_critique("accuracy 0.4557", candidate, incumbent, v) == ["0.4557"]  # too precise to be 0.4556


def test_random_rounds_always_pass_the_check():
    rng = random.Random(0)
    for _ in range(300):
        incumbent = result(rng.random(), truncation=rng.random(), format_valid_rate=rng.random(),
                           repetition_rate=rng.random(), mean_completion_tokens=rng.uniform(1, 64),
                           seeds=range(rng.randint(1, 8)))
        knob, value = rng.choice([("sampling.temperature", round(rng.uniform(0, 2), rng.randint(1, 6))),
                                  ("sampling.max_new_tokens", rng.randint(4, 64)),
                                  ("grpo.loss_type", rng.choice(["grpo", "dr_grpo", "bnpo"])),
                                  ("grpo.learning_rate", 10 ** rng.uniform(-7, -3))])
        proposal = knob_proposal(knob, value)
        if rng.random() < 0.15:
            candidate, v = FAILED, FAILED_VERDICT
        else:
            candidate = result(rng.random(), knobs=KNOBS | {knob: value}, truncation=rng.random(),
                               mean_completion_tokens=rng.uniform(1, 64), seeds=incumbent["seeds"])
            low = rng.uniform(-0.3, 0.3)
            high = low + rng.uniform(0, 0.3)
            v = verdict(rng.choice(["keep", "revert", "reeval"]), rng.uniform(low, high), low, high,
                        margin=rng.choice([0.0, rng.uniform(0, 0.05)]))
            v["n_seeds"], v["n_examples"] = len(incumbent["seeds"]), rng.randint(1, 5000)
        text = critique(proposal, candidate, incumbent, v)
        assert check_critique(text, candidate, incumbent, v) == [], text


def scored(columns, seeds):
    """An ok result from per-seed lists of 0/1 scores over the same 200 examples."""
    per_example = {f"ex{i:03d}": [col[i] for col in columns] for i in range(200)}
    flat = [s for col in columns for s in col]
    return {"status": "ok", "seeds": list(seeds), "num_examples": 200, "knobs": dict(KNOBS), "failures": {},
            "per_example": per_example,
            "metrics": {"accuracy": sum(flat) / len(flat), "accuracy_ci95": [0.0, 1.0], "format_valid_rate": 0.9,
                        "truncation_rate": 0.1 * len(seeds), "repetition_rate": 0.0, "mean_completion_tokens": 6.0}}


def test_a_six_seed_incumbent_against_a_three_seed_candidate_states_one_change():
    """The table and the text give the paired change on the 3 common seeds, not the 6-vs-3 one."""
    from harness.compare import decide

    right = lambda k: [1] * k + [0] * (200 - k)  # noqa: E731 - the first k examples right
    incumbent = scored([right(90), right(90), right(90), right(60), right(60), right(60)], range(6))
    candidate = scored([right(80), right(75), right(80)], range(3))
    v = decide(candidate, incumbent, margin=0.0, reeval_band=0.0, can_reeval=False).to_dict()
    paired = (235 / 3 - 90) / 200
    unpaired = candidate["metrics"]["accuracy"] - incumbent["metrics"]["accuracy"]
    assert v["delta"] == pytest.approx(paired) and f"{paired:+.3f}" != f"{unpaired:+.3f}"
    assert v["metric_deltas"] == {"accuracy": pytest.approx(paired)}  # no rate change across seeds

    text = critique(knob_proposal("sampling.temperature", 1.0), candidate, incumbent, v)
    assert f"Paired accuracy change {paired:+.3f}" in text
    assert f"| accuracy | {90 / 200:.3f} | {235 / 600:.3f} | {paired:+.3f} |" in text
    assert f"{unpaired:+.3f}" not in text and "| accuracy | 0.375" not in text
    # the rates cover each result's own seeds: listed, with no change that mixes seeds
    assert "| truncation_rate | 0.600 | 0.300 |\n" in text
    assert "-0.300" not in text
    assert check_critique(text, candidate, incumbent, v) == []
    assert check_critique(f"accuracy changed by {unpaired:+.3f}", candidate, incumbent, v) == [f"{unpaired:+.3f}"]


def test_a_move_is_named_in_the_critique():
    proposal = parse_proposal({"hypothesis": "h", "edits": [{"move": "reward_partial_credit"}]})
    for v, advice in ((verdict("keep", 0.05, 0.02, 0.08), "It helped: keep the move `reward_partial_credit`"),
                      (verdict("revert", -0.08, -0.12, -0.04), "Refuted: the move `reward_partial_credit` this way")):
        text = critique(proposal, result(0.4 + v["delta"]), result(0.4), v)
        assert "- applied the move `reward_partial_credit` (its declared patch)" in text
        assert advice in text
        assert check_critique(text, result(0.4 + v["delta"]), result(0.4), v) == []
    broken = FAILED | {"reason": "reward.py: rewards() raised TypeError: bad operand"}
    text = critique(proposal, broken, result(0.4), FAILED_VERDICT)
    assert "The run failed with the move `reward_partial_credit`: read the reason above" in text


def retrained(decision, per_seed, delta, low, high, left_out=()):
    """The `retrain` step's output: the change by training seed and the verdict on their average."""
    return {"verdict": verdict(decision, delta, low, high) | {"n_seeds": 6},
            "per_seed": [{"train_seed": s, "delta": d, "ci95": [d - 0.03, d + 0.03], "n_seeds": 2}
                         for s, d in per_seed],
            "left_out": [{"train_seed": s, "reason": "timed out"} for s in left_out]}


def test_a_gain_that_did_not_hold_across_training_seeds_is_said_so():
    incumbent = result(0.4)
    candidate = result(0.44, knobs=KNOBS | {"grpo.learning_rate": 1e-5})
    first = verdict("keep", 0.04, 0.012, 0.068)
    training = retrained("revert", [(0, 0.04), (1, -0.005), (2, 0.002)], 0.0123, -0.008, 0.033, left_out=[3])
    text = critique(knob_proposal("grpo.learning_rate", 1e-5), candidate, incumbent, first, training)
    assert "**What it did.** Decision: revert. Paired accuracy change +0.040" in text
    assert "x 2 seeds of the first training run" in text and "Beyond noise?** Yes" in text
    assert ("the paired accuracy change by training seed was seed 0 +0.040, seed 1 -0.005, seed 2 +0.002; "
            "averaged over them +0.012 (95% CI [-0.008, +0.033]). No: the lower bound -0.008 does not clear "
            "the margin +0.000") in text
    assert "Training seed 3 is left out: the incumbent failed to train with it." in text
    assert "Promising but within noise" in text  # the advice follows the verdict across training seeds
    assert check_critique(text, candidate, incumbent, first, training) == []
    assert check_critique(text, candidate, incumbent, first) != []  # those numbers come from the re-training


def test_a_candidate_that_failed_a_fresh_training_seed():
    incumbent, candidate = result(0.4), result(0.45, knobs=KNOBS | {"grpo.learning_rate": 1e-5})
    first = verdict("keep", 0.05, 0.02, 0.08)
    training = {"verdict": FAILED_VERDICT | {"reason": "revert: the candidate failed with training seed 2 "
                                                       "(training diverged: loss=nan at step 17)."},
                "per_seed": [], "left_out": []}
    text = critique(knob_proposal("grpo.learning_rate", 1e-5), candidate, incumbent, first, training)
    assert "Decision: revert" in text and "re-trained with a fresh seed, the candidate failed (revert: the " \
        "candidate failed with training seed 2 (training diverged: loss=nan at step 17).)" in text
    assert check_critique(text, candidate, incumbent, first, training) == []
