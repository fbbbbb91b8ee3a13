"""Joint proposals: which edit of each knob a draw of the credit model sets, and when there is none."""

import numpy as np

from harness.researchers.joint import joint_pick

OFFERED = [("lr a", "grpo.learning_rate"), ("lr b", "grpo.learning_rate"), ("top_p a", "sampling.top_p"),
           ("top_p b", "sampling.top_p"), ("beta a", "grpo.beta"), ("move", "move:reward_partial_credit")]
EVERY = {text for text, _ in OFFERED}


def accept_all(order):
    return True


MEANS = np.full(len(OFFERED), 0.001)


def test_each_knob_at_its_best_value_where_the_draw_and_the_mean_predict_a_gain():
    gains = np.array([0.01, 0.04, -0.02, 0.03, -0.01, 0.002])
    pick = joint_pick(gains, MEANS, OFFERED, EVERY, EVERY, accept_all, set())
    # lr at its better value, top_p at its only gain, the move; beta predicts a loss and stays
    assert [OFFERED[i][0] for i in pick.order] == ["move", "top_p b", "lr b"]  # by gain, the largest last
    assert pick.text == "move + top_p b + lr b"
    # the move's mean predicts no gain (never measured, say): it stays; lr's best draw has a mean
    # below 0: lr stays, though its other value's mean is positive (the draw picks the value)
    means = np.array([0.001, -0.001, 0.0, 0.001, 0.0, 0.0])
    assert joint_pick(gains, means, OFFERED, EVERY, EVERY, accept_all, set()) is None  # top_p alone: no joint
    means[5] = 0.001
    assert joint_pick(gains, means, OFFERED, EVERY, EVERY, accept_all, set()).text == "move + top_p b"
    # no knob predicts a gain, or one alone: no joint proposal (a single edit does that)
    assert joint_pick(-np.abs(gains), MEANS, OFFERED, EVERY, EVERY, accept_all, set()) is None
    assert joint_pick(np.array([0.01, 0.0, -1, -1, -1, -1]), MEANS, OFFERED, EVERY, EVERY, accept_all, set()) is None


def test_only_values_measured_in_the_campaign_are_set():
    gains = np.array([0.01, 0.04, -0.02, 0.03, -0.01, 0.002])
    # lr b and the move were never measured: lr at its measured value a, the move stays
    pick = joint_pick(gains, MEANS, OFFERED, EVERY - {"lr b", "move"}, EVERY, accept_all, set())
    assert pick.text == "lr a + top_p b"
    assert joint_pick(gains, MEANS, OFFERED, {"top_p b", "beta a"}, EVERY, accept_all, set()) is None


def test_the_learned_edit_is_the_best_the_model_could_propose_alone():
    gains = np.array([0.01, 0.04, -0.02, 0.03, -0.01, 0.002])
    # "lr b" was tried alone against this incumbent, so the model did not score it this round
    pick = joint_pick(gains, MEANS, OFFERED, EVERY, EVERY - {"lr b"}, accept_all, set())
    assert [OFFERED[i][0] for i in pick.order] == ["move", "lr b", "top_p b"]
    assert joint_pick(gains, MEANS, OFFERED, EVERY, {"beta a"}, accept_all, set()) is None  # none of its edits: no pick


def test_the_smallest_gains_go_until_the_scaffold_accepts_the_set_and_a_tried_set_is_not_proposed():
    gains = np.array([0.01, 0.04, -0.02, 0.03, 0.02, 0.002])
    seen = []

    def accepts(order):
        seen.append([OFFERED[i][0] for i in order])
        return not {3, 5} <= set(order)  # say top_p b and the move conflict: a set with both is refused

    pick = joint_pick(gains, MEANS, OFFERED, EVERY, EVERY, accepts, set())
    assert seen == [["move", "beta a", "top_p b", "lr b"], ["beta a", "top_p b", "lr b"]]
    assert pick.text == "beta a + top_p b + lr b"
    assert joint_pick(gains, MEANS, OFFERED, EVERY, EVERY, accepts, {"beta a + top_p b + lr b"}) is None
    assert joint_pick(gains, MEANS, OFFERED, EVERY, EVERY, lambda order: len(order) < 2, set()) is None
