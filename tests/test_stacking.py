"""Stacking: which earlier proposals are near misses, and which edit is added to one."""

import numpy as np

from harness.researchers.stacking import (CUT_WORTH, EDIT_KEYS, REFINE_SHARE, TARGET_PULL, measured_on, near_misses,
                                         pick_stack, stack_chance, target_pull)

LR = '{"knob": "grpo.learning_rate", "value": 4.64e-05}'
FORMAT = '{"knob": "reward.format", "value": 0.5}'
TOP_P = '{"knob": "sampling.top_p", "value": 0.525}'
MOVE = '{"move": "reward_partial_credit"}'
CURRENT = {"grpo.learning_rate": 1e-6, "reward.format": 0.0, "sampling.top_p": 1.0, "move:reward_partial_credit": False}


def obs(knob, old, new, text, delta, round_no, stacked=()):
    record = {"knob": knob, "from": old, "to": new, "text": text, "delta": delta, "round": round_no}
    return record | ({"stacked": list(stacked)} if stacked else {})


LR_OBS = obs("grpo.learning_rate", 1e-6, 4.64e-05, LR, 0.008, 7)
LR_FORMAT_OBS = obs("reward.format", 0.0, 0.5, FORMAT, 0.02, 12, stacked=[{k: LR_OBS[k] for k in EDIT_KEYS}])


def test_a_near_miss_gained_and_still_applies_to_the_incumbent():
    observations = [LR_OBS, obs("reward.format", 0.0, 0.5, FORMAT, 0.0, 8),
                    obs("sampling.top_p", 1.0, 0.525, TOP_P, 0.01, 9),
                    obs("move:reward_partial_credit", False, True, MOVE, 0.004, 10),
                    {"knob": "sampling.top_k", "from": 0, "to": 2, "delta": 0.05}]  # saved before texts were kept
    offered = {LR, FORMAT, TOP_P, MOVE}
    assert [m.texts for m in near_misses(observations, CURRENT, offered)] == [(LR,), (TOP_P,), (MOVE,)]
    # top_p was kept at another value since, and the move no longer applies: only the rate is left
    now = CURRENT | {"sampling.top_p": 0.367}
    assert [m.texts for m in near_misses(observations, now, offered - {MOVE})] == [(LR,)]
    # the latest measurement of an edit counts: measured again at a loss, it is no near miss
    assert near_misses([LR_OBS, obs("grpo.learning_rate", 1e-6, 4.64e-05, LR, -0.01, 30)], CURRENT, offered) == []
    # a stack that gained is a near miss of its own, with its edits in order
    base = {k: LR_OBS[k] for k in EDIT_KEYS}
    stack = obs("reward.format", 0.0, 0.5, FORMAT, 0.02, 12, stacked=[base])
    (miss,) = [m for m in near_misses([stack], CURRENT, offered)]
    assert miss.texts == (LR, FORMAT) and miss.describe() == f"{LR} + {FORMAT} (+0.020 in round 12, not kept)"
    # but only where the added edit added something over the near miss it was built on
    assert [m.texts for m in near_misses([LR_OBS, stack], CURRENT, offered)] == [(LR,), (LR, FORMAT)]
    inert = obs("reward.format", 0.0, 0.5, FORMAT, 0.008, 12, stacked=[base])
    assert [m.texts for m in near_misses([LR_OBS, inert], CURRENT, offered)] == [(LR,)]


def test_each_knob_is_stacked_onto_a_near_miss_once():
    candidates = [(LR, "grpo.learning_rate"), (FORMAT, "reward.format"), ('{"knob": "reward.format", "value": 1.0}',
                  "reward.format"), (TOP_P, "sampling.top_p"), (MOVE, "move:reward_partial_credit")]
    probs = np.array([0.1, 0.0, 0.5, 0.2, 0.2])
    observations = [LR_OBS]
    misses = near_misses(observations, CURRENT, {text for text, _ in candidates})
    knobs = []
    for _ in range(3):
        pick = pick_stack(np.random.default_rng(len(knobs)), misses, candidates, probs, observations)
        text, knob = candidates[pick.index]
        knobs.append(knob)
        if knob == "reward.format":
            assert text != FORMAT  # within a knob the researcher's scores decide: this value has none
        observations.append(obs(knob, None, None, text, 0.0, 8 + len(knobs), stacked=[dict(LR_OBS)]))
    assert sorted(knobs) == ["move:reward_partial_credit", "reward.format", "sampling.top_p"]
    assert pick_stack(np.random.default_rng(0), misses, candidates, probs, observations) is None  # all paired


def test_an_added_edit_that_targets_common_failures_is_drawn_more_often():
    candidates = [(FORMAT, "reward.format"), (TOP_P, "sampling.top_p"), (MOVE, "move:reward_partial_credit")]
    misses = near_misses([LR_OBS], CURRENT, {LR, FORMAT, TOP_P, MOVE})
    targets = {"move:reward_partial_credit": ("format_failure",), "move:reward_near_miss_credit": ("near_miss",)}
    pull = target_pull(targets, {"format_failure": 0.5, "near_miss": 0.0})
    assert pull == {"move:reward_partial_credit": 1 + 0.5 * TARGET_PULL, "move:reward_near_miss_credit": 1.0}

    def share(pull):
        rng = np.random.default_rng(0)
        knobs = [candidates[pick_stack(rng, misses, candidates, np.ones(3) / 3, [], pull=pull).index][1]
                 for _ in range(3000)]
        return knobs.count("move:reward_partial_credit") / len(knobs)
    steered = (1 + 0.5 * TARGET_PULL) / (2 + 1 + 0.5 * TARGET_PULL)
    assert abs(share(pull) - steered) < 0.03
    assert abs(share(target_pull(targets, {})) - 1 / 3) < 0.03  # blank evidence: uniform
    assert abs(share(None) - 1 / 3) < 0.03


def test_near_misses_are_drawn_in_proportion_to_their_gain():
    candidates = [(FORMAT, "reward.format")]
    misses = near_misses([LR_OBS, obs("sampling.top_p", 1.0, 0.525, TOP_P, 0.024, 9)], CURRENT, {LR, TOP_P, FORMAT})
    rng = np.random.default_rng(0)
    drawn = [pick_stack(rng, misses, candidates, np.ones(1), []).miss.texts for _ in range(2000)]
    assert abs(drawn.count((TOP_P,)) / 2000 - 0.75) < 0.04  # 0.024 against 0.008
    # a pair already picked this round is not picked twice
    assert pick_stack(rng, misses[:1], candidates, np.ones(1), [], taken={((LR,), "reward.format", FORMAT)}) is None


def test_a_lone_small_gain_rarely_takes_a_round_and_several_large_ones_take_most():
    one_answer = near_misses([obs("grpo.learning_rate", 1e-6, 4.64e-05, LR, 1 / 600, 7)], CURRENT, {LR})
    several = near_misses([LR_OBS, obs("sampling.top_p", 1.0, 0.525, TOP_P, 0.02, 9)], CURRENT, {LR, TOP_P})
    assert stack_chance([]) == 0.0
    assert stack_chance(one_answer) < 0.15 and stack_chance(several) > 0.7


def test_only_deltas_against_the_current_incumbent_make_near_misses():
    # round 7 gained against the first incumbent; a keep since made another one, against which
    # the same edit was measured again at a loss, and a stack on it from before the keep is stale too
    before, after = "incumbent-0", "incumbent-1"
    stale_stack = obs("reward.format", 0.0, 0.5, FORMAT, 0.02, 12, stacked=[{k: LR_OBS[k] for k in EDIT_KEYS}])
    observations = [LR_OBS | {"state": before}, stale_stack | {"state": before},
                    obs("grpo.learning_rate", 1e-6, 4.64e-05, LR, -0.002, 54) | {"state": after},
                    obs("sampling.top_p", 1.0, 0.525, TOP_P, 0.01, 55) | {"state": after},
                    obs("reward.format", 0.0, 0.5, FORMAT, 0.03, 3)]  # saved before observations kept their state
    offered = {LR, FORMAT, TOP_P}
    assert [m.texts for m in near_misses(measured_on(observations, after), CURRENT, offered)] == [(TOP_P,)]
    assert [m.texts for m in near_misses(measured_on(observations, before), CURRENT, offered)] == [(LR,), (LR, FORMAT)]
    assert measured_on(observations, "another") == []


def test_a_near_miss_of_two_edits_can_be_refined_on_one_of_its_knobs_at_each_value_once():
    other_lr, third_lr = ('{"knob": "grpo.learning_rate", "value": %s}' % v for v in ("8.27e-05", "3.42e-05"))
    candidates = [(LR, "grpo.learning_rate"), (other_lr, "grpo.learning_rate"), (FORMAT, "reward.format")]
    offered = {text for text, _ in candidates} | {third_lr}
    observations = [LR_FORMAT_OBS]
    (miss,) = near_misses(observations, CURRENT, offered)
    # the near miss's own edits are no partners, and the lone format edit is not a stack: the rate at another value
    pick = pick_stack(np.random.default_rng(0), [miss], candidates, np.ones(3) / 3, observations)
    assert (pick.index, pick.knob) == (1, "grpo.learning_rate")
    assert [e["text"] for e in pick.kept] == [FORMAT] and pick.text(other_lr) == f"{FORMAT} + {other_lr}"
    # measured, it is paired with the near miss it refined, and a near miss when it gained over that one
    refined = obs("grpo.learning_rate", 1e-6, 8.27e-05, other_lr, 0.03, 13,
                  stacked=[{k: LR_FORMAT_OBS[k] for k in EDIT_KEYS}]) | {"onto": [LR, FORMAT]}
    observations.append(refined)
    assert pick_stack(np.random.default_rng(0), [miss], candidates, np.ones(3) / 3, observations) is None
    # the rate is refined again while it has a value not yet tried on the near miss, and no more
    more = [*candidates, (third_lr, "grpo.learning_rate")]
    pick = pick_stack(np.random.default_rng(0), [miss], more, np.ones(4) / 4, observations)
    assert pick.refines and more[pick.index][0] == third_lr
    assert pick_stack(np.random.default_rng(0), [miss], more, np.ones(4) / 4, observations,
                      taken={((LR, FORMAT), "grpo.learning_rate", third_lr)}) is None
    assert [m.texts for m in near_misses(observations, CURRENT, offered)] == [(LR, FORMAT), (FORMAT, other_lr)]
    worse = refined | {"delta": 0.015}  # a gain, but less than the near miss it refined
    assert [m.texts for m in near_misses([LR_FORMAT_OBS, worse], CURRENT, offered)] == [(LR, FORMAT)]
    # a near miss of one edit is never refined: another value of its knob alone is a plain proposal
    assert pick_stack(np.random.default_rng(0), near_misses([LR_OBS], CURRENT, offered), candidates[:2],
                      np.ones(2) / 2, [LR_OBS]) is None


def test_a_near_miss_that_can_be_both_refined_and_added_to_is_refined_in_a_share_of_stacks():
    other_lr = '{"knob": "grpo.learning_rate", "value": 8.27e-05}'
    candidates = [(other_lr, "grpo.learning_rate"), (TOP_P, "sampling.top_p"), (MOVE, "move:reward_partial_credit")]
    (miss,) = near_misses([LR_FORMAT_OBS], CURRENT, {LR, FORMAT, *(text for text, _ in candidates)})
    rng = np.random.default_rng(0)
    picks = [pick_stack(rng, [miss], candidates, np.ones(3) / 3, [LR_FORMAT_OBS]) for _ in range(3000)]
    # one rate against two knobs to add: without the share, a third of the stacks would refine
    assert abs(sum(pick.refines for pick in picks) / 3000 - REFINE_SHARE) < 0.04


def test_a_refinement_draws_its_value_uniformly_whatever_the_scores():
    rates = [f'{{"knob": "grpo.learning_rate", "value": {v}}}' for v in (1.41e-05, 3.42e-05, 8.27e-05)]
    candidates = [(LR, "grpo.learning_rate"), *((r, "grpo.learning_rate") for r in rates)]
    probs = np.array([0.0, 0.98, 0.01, 0.01])  # the scores all but rule out the two higher rates
    (miss,) = near_misses([LR_FORMAT_OBS], CURRENT, {text for text, _ in candidates} | {FORMAT})
    rng = np.random.default_rng(0)
    drawn = [candidates[pick_stack(rng, [miss], candidates, probs, [LR_FORMAT_OBS]).index][0] for _ in range(3000)]
    assert LR not in drawn and all(abs(drawn.count(r) / 3000 - 1 / 3) < 0.04 for r in rates)


def test_a_proposal_that_cut_a_failure_rate_is_a_near_miss_with_the_evidence_on():
    # the round that lost 1.3 points but took the well-formed answers from 38% to 48%
    lost = obs("grpo.learning_rate", 1e-6, 4.64e-05, LR, -0.0125, 2) | {"rates": {"format_valid_rate": 0.095}}
    noise = obs("sampling.top_p", 1.0, 0.525, TOP_P, -0.002, 3) | {"rates": {"format_valid_rate": 0.03,
                                                                            "truncation_rate": -0.01}}
    offered = {LR, TOP_P, FORMAT}
    assert near_misses([lost, noise], CURRENT, offered) == []  # accuracy alone: neither gained
    (miss,) = near_misses([lost, noise], CURRENT, offered, by_cut=True)
    assert miss.texts == (LR,) and miss.cut == ("format_failure", 0.095)
    assert miss.gain == CUT_WORTH * 0.095
    assert miss.describe() == f"{LR} (-0.013 in round 2, format failure cut by 0.095, not kept)"
    # it takes rounds like a gain of a tenth of the cut would, and its stacks draw onto it
    assert stack_chance([miss]) == stack_chance(near_misses([obs("x", 0, 1, LR, 0.0095, 2)], {"x": 0}, {LR}))
    longer = obs("sampling.top_p", 1.0, 0.525, TOP_P, -0.02, 4) | {"rates": {"truncation_rate": -0.2}}
    (cut,) = near_misses([longer], CURRENT, offered, by_cut=True)
    assert cut.cut == ("truncation", 0.2)
    # a stack onto it is a near miss where it gained accuracy, or cut the same failure by CUT_MIN more
    base = [{k: lost[k] for k in EDIT_KEYS}]
    deeper = obs("reward.format", 0.0, 0.5, FORMAT, -0.01, 5, stacked=base) | {"rates": {"format_valid_rate": 0.2}}
    level = obs("reward.format", 0.0, 0.5, FORMAT, -0.01, 5, stacked=base) | {"rates": {"format_valid_rate": 0.12}}
    won = obs("reward.format", 0.0, 0.5, FORMAT, 0.03, 5, stacked=base) | {"rates": {"format_valid_rate": 0.1}}
    assert [m.texts for m in near_misses([lost, deeper], CURRENT, offered, by_cut=True)] == [(LR,), (LR, FORMAT)]
    assert [m.texts for m in near_misses([lost, level], CURRENT, offered, by_cut=True)] == [(LR,)]
    (_, stack) = near_misses([lost, won], CURRENT, offered, by_cut=True)
    assert stack.cut is None and stack.gain == 0.03  # near by accuracy; its cut added nothing over its base's
