"""Stacking: a proposal that adds one edit to an earlier near miss, so changes that win only
together can be found one edit at a time.

Some changes pay off only in combination. On the arith base, a higher learning rate with a format
reward beats the best decoder by 10 points, while each alone is neutral (a format reward does
nothing at a rate that does not move the policy; the rate alone moves it without a dense signal).
A researcher that proposes one edit a round and keeps only what clears the noise on its own never
reaches such a pair, and its credit model, having seen each part do nothing, stops proposing them.

A near miss is an earlier proposal of this campaign that raised the score of the incumbent it was
measured against, the current one, without being kept (positive paired delta, interval not clear of
the margin), whose every edit still applies to it: each knob still has the value the delta was
measured from, and each move is still on offer. Once a keep makes a new incumbent, every earlier
delta is a delta from another policy (a campaign stacked 44 rounds onto a +0.007 measured before a
keep that, re-measured after it, was -0.002), so pairing starts again from what is measured against
the new one (`measured_on`). A proposal can also be a near miss by what it did to the evidence:
one that cut a failure rate of the incumbent (format failures, truncation, repetition: the
context's features) by CUT_MIN of all answers or more, whatever its accuracy did, weighs as a gain
of CUT_WORTH times the cut (`failure_cut`; only with the evidence on). On a base whose answers
were 61% malformed, lr 3.42e-5 lost 1.3 points alone but raised the well-formed answers from 38% to
48%; with the near-miss credit move and greedy decoding it gives +6.8 held-out points over the
best decoder, yet with only accuracy gains counted it was never built on, and the campaign kept a
decoder alone. A stacked proposal is a near miss plus one more edit on a knob (or move) that no
proposal has yet stacked onto that near miss. The knob may be one the near miss
already sets (when it sets another too): the stack then sets it to another value instead (a
refinement), so a pair found at one learning rate can move to a better one (a campaign's 36
stacks all grew from one near miss at lr 2e-4, a rate where the arithmetic suffers, because a
stack could only add knobs). A round stacks with probability `stack` times g / (g + GAIN_SCALE),
g the near misses' gains summed: a lone gain of one answer in six hundred is most likely noise and
rarely takes a round; several gains of a point or more take most of them. The near miss is drawn
in proportion to its gain. An added knob is drawn among those not yet paired with it (each pair
once: coverage of pairs, not the credit model's preference, which has learned that each part alone
does nothing), its value by the researcher's own scores within that knob. The draw is steered by
the evidence: a move whose `targets` are common failures of the incumbent weighs 1 + TARGET_PULL
times the share of answers with them (`target_pull`), any other knob 1. Drawn uniformly, a good
pair's reward move was one add in twenty-odd: a campaign whose answers were 61% malformed stacked
ten edits onto its best near misses (lr 3.42e-5 or 8.27e-5 with greedy decoding, +0.026), none of
them the partial-credit move that makes that rate pay (+0.074 held-out, README), and a keep of a
decoder then reset them. With `evidence: false` every weight is 1. A refinement
tries each value of a knob once (drawn uniformly: the scores price a value alone, not within the
pair), and takes REFINE_SHARE of the stacks that could do either: with one try per knob, two
campaigns refined the rate of a pair found at a poor one once each, at 1.41e-5, 2.42e-6 and
5.85e-6, and never reached 3.42e-5 or 8.27e-5, where the pair with a reward move wins. A
stacked proposal that gains more than the near miss it was built on is a near miss in turn, so a
third edit can follow; one whose added edit added nothing is not (in the first campaign with
stacking, chains of seven edits grew that way, each addition inert).

Observations (the local researcher's state) record a stacked proposal as its last edit plus
`stacked`, the near miss's edits that it kept: `{"knob", "from", "to", "text"}` each, and `onto`,
the texts of the near miss it was built on; every observation keeps its incumbent's state key,
`state`, and its failure rates' changes, `rates` (`{"format_valid_rate": 0.095, ...}`). The credit
model reads a stacked delta as the sum of its edits' effects.

    observations = measured_on(all_observations, state)  # against the incumbent keyed `state`
    misses = near_misses(observations, current, offered={text for text, _ in candidates}, by_cut=True)
    pull = target_pull({"move:reward_partial_credit": ("format_failure",)}, context)   # {...: 4.7} at 61%
    pick = pick_stack(rng, misses, [(text, knob) for ...], probs, observations, pull=pull)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from harness.researchers.base import same_value
from harness.researchers.context import FAILURE_RATES

JOIN = " + "  # between the texts of a stacked proposal's edits, in its tried key
TARGET_PULL = 6.0  # an add that targets failures of half the answers weighs 4 times an untargeted one
GAIN_SCALE = 0.01  # near misses whose gains sum to this make half the rounds stack (at stack=1)
REFINE_SHARE = 0.5  # of the stacks onto a near miss that could both refine and add, those that refine
EDIT_KEYS = ("knob", "from", "to", "text")  # an edit as observations record it
CUT_MIN = 0.05  # a failure rate cut by this much (of all answers) is a near miss: beyond the noise of 800 x 3
CUT_WORTH = 0.1  # a near miss by a cut weighs as an accuracy gain of a tenth of the cut


@dataclass(frozen=True)
class NearMiss:
    """An earlier proposal that gained without a keep: its edits (`{"knob", "from", "to", "text"}`,
    the last one the edit its round proposed), its paired delta and its round; `cut`, the failure
    feature it cut and by how much (`failure_cut`), where that is what makes it one."""
    edits: tuple[dict, ...]
    delta: float
    round: int | None
    onto: tuple[str, ...] | None = None  # the texts of the near miss a stack was built on
    cut: tuple[str, float] | None = None

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(edit["text"] for edit in self.edits)

    @property
    def knobs(self) -> set[str]:
        return {edit["knob"] for edit in self.edits}

    @property
    def gain(self) -> float:
        """What it promises, as an accuracy gain: its delta, or CUT_WORTH of its cut if that is more."""
        return max(self.delta, CUT_WORTH * self.cut[1] if self.cut else 0.0)

    def describe(self) -> str:
        when = f" in round {self.round}" if self.round is not None else ""
        cut = f", {self.cut[0].replace('_', ' ')} cut by {self.cut[1]:.3f}" if self.cut else ""
        return f"{JOIN.join(self.texts)} ({self.delta:+.3f}{when}{cut}, not kept)"


def observation_edits(obs: dict) -> tuple[dict, ...] | None:
    """An observation's edits, the stacked ones first; None for one saved before texts were kept."""
    last = {key: obs.get(key) for key in EDIT_KEYS}
    if last["text"] is None:
        return None
    return (*obs.get("stacked", []), last)


def measured_on(observations: list[dict], state: str) -> list[dict]:
    """The observations measured against the incumbent whose state key (knob values and editable
    files) is `state`; one saved before observations kept their incumbent's key is in none."""
    return [obs for obs in observations if obs.get("state") == state]


def _applies(edit: dict, current: dict, offered: set[str]) -> bool:
    """The edit is on offer now (a grid value the scaffold accepts, a move that applies) from the
    value it was measured from."""
    return edit["text"] in offered and same_value(current.get(edit["knob"]), edit["from"])


def failure_cut(obs: dict) -> tuple[str, float] | None:
    """The failure feature (`context.py`) an observation cut the most, and by how much, from the rate
    changes it was saved with (`rates`); None when it cut none by CUT_MIN."""
    rates = obs.get("rates") or {}
    cuts = {feature: sign * rates[rate] for feature, (rate, sign) in FAILURE_RATES.items() if rate in rates}
    feature = max(cuts, key=cuts.get, default=None)
    return (feature, float(cuts[feature])) if feature is not None and cuts[feature] >= CUT_MIN else None


def near_misses(observations: list[dict], current: dict, offered: set[str], by_cut: bool = False) -> list[NearMiss]:
    """Every near miss that still applies to the incumbent `current` (knob values, moves as
    `move:<name>` False), the latest measurement of each: a proposal that gained accuracy, or with
    `by_cut` one that cut a failure rate by CUT_MIN; a stack only where it gained more than its base
    (by accuracy, or by a further CUT_MIN of the same failure)."""
    latest: dict[tuple[str, ...], NearMiss] = {}
    for obs in observations:
        edits = observation_edits(obs)
        if edits is None or obs.get("delta") is None:
            continue
        onto = tuple(obs["onto"]) if obs.get("onto") else None
        miss = NearMiss(edits, float(obs["delta"]), obs.get("round"), onto, failure_cut(obs) if by_cut else None)
        latest[miss.texts] = miss

    def near(miss: NearMiss) -> NearMiss | None:  # over its own base, for a stack: the added edit added something
        base = latest.get(miss.onto if miss.onto is not None else miss.texts[:-1])
        gained = miss.delta > max(base.delta if base is not None else 0.0, 0.0)
        base_cut = base.cut[1] if base is not None and base.cut and miss.cut and base.cut[0] == miss.cut[0] else 0.0
        cut = miss.cut if miss.cut and miss.cut[1] >= base_cut + (CUT_MIN if base_cut else 0.0) else None
        return replace(miss, cut=cut) if gained or cut else None

    return [miss for miss in map(near, latest.values())
            if miss is not None and all(_applies(edit, current, offered) for edit in miss.edits)]


def stack_chance(misses: list[NearMiss]) -> float:
    """How likely a round is to stack (at `stack: 1`): g / (g + GAIN_SCALE), g the near misses'
    gains summed, so one gain of a single answer (noise, most likely) rarely takes a round, and
    several of a point or more take most."""
    gains = sum(miss.gain for miss in misses)
    return gains / (gains + GAIN_SCALE)


def target_pull(targets: dict[str, tuple[str, ...]], context: dict[str, float]) -> dict[str, float]:
    """Per targeted knob (a move as `move:<name>`, its targets as context features), its weight as a
    stack's added edit: 1 + TARGET_PULL times the context's targeted features summed (capped at 1)."""
    return {knob: 1.0 + TARGET_PULL * min(sum(context.get(f, 0.0) for f in features), 1.0)
            for knob, features in targets.items() if features}


def stacked_onto(observations: list[dict], miss: NearMiss) -> set[tuple[str, str]]:
    """The edits already stacked onto `miss` in this campaign, as `(knob, text)` (an observation from
    before `onto` was kept names its near miss by its stacked edits)."""
    return {(obs["knob"], obs["text"]) for obs in observations
            if tuple(obs.get("onto") or (edit["text"] for edit in obs.get("stacked", []))) == miss.texts}


@dataclass(frozen=True)
class StackPick:
    miss: NearMiss
    index: int  # the added edit, an index into the candidates it was drawn from
    knob: str  # the added edit's knob; one the near miss sets is set to the new value instead

    @property
    def refines(self) -> bool:
        """The added edit sets a knob of the near miss to another value."""
        return self.knob in self.miss.knobs

    @property
    def kept(self) -> tuple[dict, ...]:
        """The near miss's edits that the stack keeps: all but one on the added edit's knob."""
        return tuple(edit for edit in self.miss.edits if edit["knob"] != self.knob)

    def text(self, candidate_text: str) -> str:
        return JOIN.join((*(edit["text"] for edit in self.kept), candidate_text))


def pick_stack(rng: np.random.Generator, misses: list[NearMiss], candidates: list[tuple[str, str]],
               probs: np.ndarray, observations: list[dict], taken: set[tuple[tuple[str, ...], str, str]] = frozenset(),
               pull: dict[str, float] | None = None) -> StackPick | None:
    """A near miss and one candidate (`(text, knob)`) to add to it, none already stacked onto it (nor
    in `taken`, `(near miss texts, knob, text)` picked this round); None when nothing is left.

    An added edit is on a knob not yet paired with the near miss, the knob drawn with weights `pull`
    (`target_pull`; 1 for a knob it does not name), its value with `probs` within the knob. A
    refinement sets one of the near miss's knobs (it has two or more) to a value not yet tried on
    it, drawn uniformly; when both are open, a round refines with probability `REFINE_SHARE`."""
    open_edits = {}
    for miss in misses:
        done = stacked_onto(observations, miss) | {(knob, text) for texts, knob, text in taken if texts == miss.texts}
        added = {knob for knob, _ in done}
        adds = sorted({knob for _, knob in candidates if knob not in miss.knobs} - added)
        refines = sorted({knob for text, knob in candidates if knob in miss.knobs and len(miss.edits) > 1
                          and text not in miss.texts and (knob, text) not in done})
        if adds or refines:
            open_edits[miss.texts] = (adds, refines, done)
    usable = [miss for miss in misses if miss.texts in open_edits]
    if not usable:
        return None
    gains = np.array([miss.gain for miss in usable])
    miss = usable[int(rng.choice(len(usable), p=gains / gains.sum()))]
    adds, refines, done = open_edits[miss.texts]
    refine = bool(refines) and (not adds or rng.random() < REFINE_SHARE)
    knobs = refines if refine else adds
    odds = np.array([1.0 if refine else (pull or {}).get(k, 1.0) for k in knobs])
    knob = knobs[int(rng.choice(len(knobs), p=odds / odds.sum()))]
    within = np.array([i for i, (text, k) in enumerate(candidates)
                       if k == knob and text not in miss.texts and (k, text) not in done])
    # a refinement's value uniformly: the scores price each value alone, and alone a rate moves
    # nothing at the incumbent's decoder (two campaigns' scores drew 1.41e-5, 2.42e-6 and 5.85e-6)
    weights = np.ones(len(within)) if refine else probs[within]
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(within), 1.0 / len(within))
    return StackPick(miss, int(within[int(rng.choice(len(within), p=weights))]), knob)


def edit_record(knob: str, old: Any, value: Any, text: str) -> dict:
    return dict(zip(EDIT_KEYS, (knob, old, value, text)))
