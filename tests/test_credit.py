"""The credit model: which knob values a Bayesian model of measured deltas expects to help, and
how the evidence (the context of each measurement) changes that."""

import numpy as np
import pytest

from harness.analyze import Evidence
from harness.researchers.context import DRIFT, FEATURES, blank_context, evidence_context, target_features
from harness.researchers.credit import TARGET_GAIN, CreditModel, position

SPECS = {"sampling.top_p": {"type": "float", "min": 0.05, "max": 1.0},
         "grpo.learning_rate": {"type": "float", "min": 1e-7, "max": 1e-3, "log": True},
         "grpo.loss_type": {"type": "str", "choices": ["grpo", "dr_grpo", "dapo", "bnpo"]},
         "reward.format": {"type": "float", "min": 0.0, "max": 1.0}}
CURRENT = {"sampling.top_p": 1.0, "grpo.learning_rate": 1e-6, "grpo.loss_type": "dapo", "reward.format": 0.0}


def observation(knob, old, new, delta, half_width=0.03):
    return {"knob": knob, "from": old, "to": new, "delta": delta, "ci95": [delta - half_width, delta + half_width]}


def test_position_follows_the_knob_scale():
    assert position(SPECS["sampling.top_p"], 0.05) == 0.0
    assert position(SPECS["sampling.top_p"], 1.0) == 1.0
    assert position(SPECS["grpo.learning_rate"], 1e-5) == pytest.approx(0.5)  # halfway in log space
    assert position(SPECS["reward.format"], 7.0) == 1.0  # out of range is clipped, not extrapolated


def test_an_untrained_model_expects_nothing_and_is_unsure_of_everything():
    mean, sd = CreditModel(SPECS).predict([("sampling.top_p", 0.5), ("grpo.loss_type", "grpo")], CURRENT)
    assert np.allclose(mean, 0.0)
    assert (sd > 0.02).all()


def test_one_good_step_down_says_which_way_to_go():
    model = CreditModel(SPECS)
    model.fit([observation("sampling.top_p", 1.0, 0.683, 0.085)])
    now = CURRENT | {"sampling.top_p": 0.683}  # the step was kept
    mean, _ = model.predict([("sampling.top_p", v) for v in (0.05, 0.367, 0.842, 1.0)], now)
    further, bit_further, back_a_bit, back = mean
    assert further > 0 and bit_further > 0  # keep going down
    assert back < 0 and back_a_bit < 0      # going back up loses what was won
    assert back == pytest.approx(-0.085, abs=0.02)  # undoing the step is predicted to cost about what it won


def test_knobs_that_never_moved_the_score_fade_and_knobs_that_did_stand_out():
    model = CreditModel(SPECS)
    model.fit([observation("reward.format", 0.0, 0.5, 0.0, 0.0), observation("reward.format", 0.0, 1.0, 0.0, 0.0),
               observation("sampling.top_p", 1.0, 0.5, -0.2)])
    _, sd = model.predict([("reward.format", 0.25), ("grpo.learning_rate", 1e-4), ("sampling.top_p", 0.05)],
                          CURRENT)
    silent, untried, loud = sd
    assert silent < untried / 2  # two exact zeros: this knob does nothing, explore it less
    assert loud > untried        # a big effect: there is more to learn on this knob


def test_a_choice_is_learned_per_choice():
    model = CreditModel(SPECS)
    model.fit([observation("grpo.loss_type", "dapo", "grpo", 0.05, 0.01)])
    mean, sd = model.predict([("grpo.loss_type", "grpo"), ("grpo.loss_type", "bnpo")], CURRENT)
    assert mean[0] == pytest.approx(0.05, abs=0.01) and sd[0] < 0.01
    assert 0 < mean[1] < mean[0] and sd[1] > sd[0] * 3  # dapo now looks worse than an untried choice


def test_failed_rounds_and_knobs_off_the_surface_are_ignored():
    model = CreditModel(SPECS)
    model.fit([{"knob": "sampling.top_p", "from": 1.0, "to": 0.5, "delta": None, "ci95": None},
               observation("sampling.gone", 1, 2, 0.3)])
    assert model.counts == dict.fromkeys(SPECS, 0)
    assert np.allclose(model.predict([("sampling.top_p", 0.5)], CURRENT)[0], 0.0)


def test_thompson_samples_are_reproducible_and_centred_on_the_posterior_mean():
    model = CreditModel(SPECS)
    model.fit([observation("sampling.top_p", 1.0, 0.683, 0.085), observation("reward.format", 0.0, 1.0, 0.0, 0.0)])
    edits = [("sampling.top_p", 0.367), ("reward.format", 0.5), ("grpo.loss_type", "bnpo")]
    first = model.sample(edits, CURRENT, np.random.default_rng(3))
    assert np.array_equal(first, model.sample(edits, CURRENT, np.random.default_rng(3)))
    draws = np.array([model.sample(edits, CURRENT, np.random.default_rng(seed)) for seed in range(2000)])
    mean, sd = model.predict(edits, CURRENT)
    assert np.allclose(draws.mean(axis=0), mean, atol=4 * sd.max() / np.sqrt(2000))
    assert np.allclose(draws.std(axis=0), sd, rtol=0.1)


# ---------------------------------------------------------------- the evidence as a context

MOVE = "move:reward_malformed_penalty"
WITH_MOVE = SPECS | {MOVE: {"type": "bool", "choices": [False, True]}}
OFF = CURRENT | {MOVE: False}


def evidence(format_valid_rate, failures):
    return Evidence(round=3, incumbent_accuracy=0.4, incumbent_ci95=(0.35, 0.45),
                    incumbent_metrics={"format_valid_rate": format_valid_rate, "truncation_rate": 0.1,
                                       "repetition_rate": 0.0, "mean_completion_tokens": 4.0},
                    knobs={}, failures={c: {"count": n, "examples": []} for c, n in failures.items()})


MALFORMED = evidence_context(evidence(0.2, {"bad_format": 70, "no_answer": 10, "wrong_answer": 20}))
TIDY = evidence_context(evidence(0.98, {"wrong_answer": 50, "off_by_small": 40, "bad_format": 2}))


def test_the_context_is_read_off_the_evidence_in_unit_range():
    assert MALFORMED == {"format_failure": pytest.approx(0.8), "truncation": 0.1, "repetition": 0.0,
                         "wrong_answer": pytest.approx(0.2), "near_miss": 0.0}
    assert TIDY["format_failure"] == pytest.approx(0.02) and TIDY["near_miss"] == pytest.approx(40 / 92)
    assert evidence_context(evidence(1.0, {})) == blank_context() | {"truncation": 0.1}  # no failures: no shares
    assert list(blank_context()) == list(FEATURES) and set(blank_context().values()) == {0.0}
    assert target_features(("bad_format", "no_answer")) == ("format_failure",)
    assert target_features(("sign_error", "wrong_answer")) == ("wrong_answer", "near_miss")
    assert target_features(("truncated",)) == ()


def test_the_policy_drift_is_how_far_training_moved_the_weights_on_a_log_scale():
    def drift(weight_change):
        return evidence_context(Evidence(**evidence(0.2, {}).to_dict() | {"weight_change": weight_change}))

    assert DRIFT not in MALFORMED  # a result that does not say: no drift, so nothing is scaled
    assert drift(1.8e-4)[DRIFT] == 0.0  # TRL's lr 1e-6 on the make run base: the policy as it was
    assert drift(5.8e-3)[DRIFT] == pytest.approx(0.86, abs=0.01)  # lr 3.42e-5: greedy answers well-formed
    assert drift(2e-4 * 50 ** 0.5)[DRIFT] == pytest.approx(0.5) and drift(0.3)[DRIFT] == 1.0
    assert drift(0.0)[DRIFT] == 0.0 and drift(5.8e-3)["format_failure"] == MALFORMED["format_failure"]
    assert "training moved the weights by 5.80e-03" in Evidence(**evidence(0.2, {}).to_dict()
                                                                | {"weight_change": 5.8e-3}).summary()


def test_a_reward_edit_tried_where_training_moved_nothing_is_not_written_off():
    """Ten zeros of a reward move where training left the policy as it was (drift 0): for a reward
    edit they say nothing, so once a kept rate moves the policy (drift 1) the move is as open as
    before it was tried; a knob of the optimizer is not scaled, and the same zeros do write it off."""
    still = MALFORMED | {DRIFT: 0.0}
    moving = MALFORMED | {DRIFT: 1.0}
    zeros = [observation(MOVE, False, True, 0.0, 0.004) | {"context": still}] * 10
    scaled = CreditModel(WITH_MOVE, targets={MOVE: ("format_failure",)}, scaled={MOVE, "reward.format"})
    untried = CreditModel(WITH_MOVE, targets={MOVE: ("format_failure",)}, scaled={MOVE, "reward.format"})
    scaled.fit(zeros)
    (mean,), (sd,) = scaled.predict([(MOVE, True)], OFF, moving)
    (prior_mean,), (prior_sd,) = untried.predict([(MOVE, True)], OFF, moving)
    assert mean == pytest.approx(prior_mean) == pytest.approx(TARGET_GAIN * 0.8) and sd == pytest.approx(prior_sd)
    assert scaled.predict([(MOVE, True)], OFF, still) == (0.0, 0.0)  # where nothing moves, neither does it
    unscaled = CreditModel(WITH_MOVE, targets={MOVE: ("format_failure",)})
    unscaled.fit(zeros)
    (mean,), (sd,) = unscaled.predict([(MOVE, True)], OFF, moving)
    assert abs(mean) < 0.005 and sd < prior_sd / 4
    # a reward edit measured where the policy moves is learned as before, and expected to show half
    # as much where the policy moves half as far
    scaled.fit([observation("reward.format", 0.0, 0.5, 0.04, 0.004) | {"context": moving}])
    assert scaled.predict([("reward.format", 0.5)], CURRENT, moving)[0][0] == pytest.approx(0.04, abs=0.005)
    assert scaled.predict([("reward.format", 0.5)], CURRENT, MALFORMED | {DRIFT: 0.5})[0][0] \
        == pytest.approx(0.02, abs=0.003)
    # blanked evidence carries no drift: nothing is scaled
    assert scaled.scale(MOVE, blank_context()) == 1.0 and scaled.scale("grpo.learning_rate", still) == 1.0


def test_a_move_that_helped_only_under_format_failures_is_expected_to_help_only_there():
    helped = observation(MOVE, False, True, 0.06, 0.01) | {"context": MALFORMED}
    idle = observation(MOVE, False, True, 0.0, 0.01) | {"context": TIDY}
    model = CreditModel(WITH_MOVE)
    model.fit([helped, idle])
    (high,), _ = model.predict([(MOVE, True)], OFF, MALFORMED)
    (low,), _ = model.predict([(MOVE, True)], OFF, TIDY)
    assert high == pytest.approx(0.06, abs=0.01) and low == pytest.approx(0.0, abs=0.01)
    # the same rounds with the evidence blanked: one context, so one expectation, the average
    blanked = CreditModel(WITH_MOVE)
    blanked.fit([o | {"context": blank_context()} for o in (helped, idle)])
    (high,), _ = blanked.predict([(MOVE, True)], OFF, blank_context())
    (low,), _ = blanked.predict([(MOVE, True)], OFF, blank_context())
    assert high == low == pytest.approx(0.03, abs=0.01)
    # and the knobs it never saw interact with nothing: their expectation is the same in any context
    assert np.allclose(model.predict([("sampling.top_p", 0.5)], CURRENT, MALFORMED)[0], 0.0)


def test_a_declared_target_is_a_prior_the_outcomes_overturn():
    model = CreditModel(WITH_MOVE, targets={MOVE: ("format_failure",)})
    (high,), (sd,) = model.predict([(MOVE, True)], OFF, MALFORMED)
    assert high == pytest.approx(TARGET_GAIN * 0.8)
    assert model.predict([(MOVE, True)], OFF, TIDY)[0][0] == pytest.approx(TARGET_GAIN * 0.02)
    assert model.predict([(MOVE, True)], OFF, blank_context())[0][0] == 0.0
    assert sd > high  # weak: well within what one draw may say
    # tried twice where format failures abound, it cost accuracy both times: now it is expected to
    model.fit([observation(MOVE, False, True, -0.03, 0.01) | {"context": MALFORMED}] * 2)
    assert model.predict([(MOVE, True)], OFF, MALFORMED)[0][0] == pytest.approx(-0.03, abs=0.01)


def test_a_stacked_round_is_read_as_the_sum_of_its_edits():
    stacked = observation("reward.format", 0.0, 0.5, 0.1, 0.01) | {
        "stacked": [{"knob": "grpo.learning_rate", "from": 1e-6, "to": 1e-4, "text": "..."}]}
    model = CreditModel(SPECS)
    model.fit([stacked])
    (fmt, rate), _ = model.predict([("reward.format", 0.5), ("grpo.learning_rate", 1e-4)], CURRENT)
    assert fmt > 0.02 and rate > 0.02 and fmt + rate == pytest.approx(0.1, abs=0.02)
    # a stacked round on a knob no longer on the surface is left out whole
    gone = dict(stacked, stacked=[{"knob": "grpo.gone", "from": 0, "to": 1, "text": "..."}])
    model.fit([gone])
    assert np.allclose(model.predict([("reward.format", 0.5)], CURRENT)[0], 0.0)
