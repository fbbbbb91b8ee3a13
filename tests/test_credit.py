"""The credit model: which knob values an additive Bayesian model of measured deltas expects to help."""

import numpy as np
import pytest

from harness.researchers.credit import CreditModel, position

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
