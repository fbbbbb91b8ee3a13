"""Joint proposals: every knob at the value one posterior draw of the credit model favours.

The local researcher changes one knob a round (or adds one to a near miss). On 800 problems that
set the learning rate, the knob that decides whether training moves the policy, in 3 to 6 rounds
of 100, whichever value its draw favoured: one knob of 28. TPE sets every knob in every trial, and
its mean incumbent was the higher (0.099 against 0.096, three seeds). A joint proposal is Thompson
sampling over whole configurations of what has paid off: under one draw of the credit model's
weights, each knob (and each move that applies) is set to the value of the largest predicted gain
over the incumbent among the values this campaign has measured it at (alone or with others),
where that gain is positive both under the draw and under the posterior mean; any other knob stays
as it is. So a value the model has seen pay off is set in most joint rounds, and a value never
measured, or measured to do nothing or harm, is left to the single-edit rounds to try.

Without the mean's condition (the draw alone) every knob never measured moved as its prior draw
said, 7 to 14 knobs a proposal: of 32 such proposals in the first 21 to 24 rounds of three
800-problem campaigns (b31d9b4), 28 lost 0.015 to 0.051 of accuracy against incumbents at 0.029 and
0.051, nearly all of it, and none was kept (one bad value among a dozen, a short completion length
or a prompt without its instruction, takes every answer, and an additive model spreads that loss
thinly over all twelve). With the mean's condition alone (0dc2e46), a move never measured whose
`targets` were the incumbent's common failures had a positive prior mean (where 90% of answers
are malformed, about +0.045), and a value never measured had the trend's extrapolation (a
repetition penalty of 2.0 measured at -0.002 made 0.5 look good): 6 of the 8 joint proposals in
the first 12 to 14 rounds of three campaigns held a prompt move never measured and lost 0.027 to
0.032, nearly all accuracy (prompt_instruction alone, later: -0.024).

The additive credit model reads a joint observation as the sum of its edits' effects, as it reads a
stacked one. Where the scaffold refuses the whole set (a cross-knob rule, two moves on one text),
the edits of the smallest predicted gain are dropped until it accepts it. A joint proposal is no
near miss for stacking (one more edit onto a dozen says little that the next joint draw does not).

    pick = joint_pick(gains, means, [(text, knob), ...], measured, learnable, accepts, tried)
    # pick.order: indices into the offered edits, the smallest gain first; the last is the edit
    # the model learns from (the largest gain among those it could propose alone)
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass

import numpy as np

from harness.researchers.stacking import JOIN


@dataclass(frozen=True)
class JointPick:
    order: tuple[int, ...]  # indices into the offered edits; the last is the one learned from
    text: str  # the texts of its edits, joined: its key among the edits tried against an incumbent


def joint_pick(gains: np.ndarray, means: np.ndarray, offered: list[tuple[str, str]], measured: Container[str],
               learnable: Container[str], accepts: Callable[[list[int]], bool],
               tried: Container[str]) -> JointPick | None:
    """Per knob of `offered` (`(text, knob)` of every edit on offer), its edit of the largest gain
    in `gains` (a draw) among those whose text is `measured`, where that gain and its `means` (the
    posterior mean's) are positive; ordered by gain, the last being the best edit whose text
    is `learnable` (one the model scores this round). Edits of the smallest gain are dropped until
    `accepts` (the scaffold) takes the set. None where fewer than two edits remain, none is
    learnable, or the set was tried already (its text in `tried`)."""
    best: dict[str, int] = {}
    for index, (text, knob) in enumerate(offered):
        if text in measured and (knob not in best or gains[index] > gains[best[knob]]):
            best[knob] = index
    order = sorted((i for i in best.values() if gains[i] > 0 and means[i] > 0), key=lambda i: gains[i])
    while len(order) > 1 and not accepts(order):
        order = order[1:]
    last = [i for i in order if offered[i][0] in learnable]
    if len(order) < 2 or not last:
        return None
    order = [i for i in order if i != last[-1]] + [last[-1]]
    text = JOIN.join(offered[i][0] for i in order)
    return None if text in tried else JointPick(tuple(order), text)
