"""The random baseline: one knob and a new value, or one code move, uniformly, every round (or
several distinct ones: the round's first draws).

Each round picks uniformly among the searchable knobs of the surface and the scaffold's code moves
that apply now (so a move is drawn with probability moves / (knobs + moves)). A knob gets a value
uniformly in its range (log-uniform for `log: true`, uniform among choices, integers drawn as
integers), never the current value; a move is proposed as it is declared. The draw is seeded by
(seed, round), so a campaign is reproducible and a resumed round draws what it drew before. A draw
that breaks a cross-knob rule of the scaffold (say a batch size that is not a multiple of the
group size) is drawn again, so every proposal is valid. Fills (`propose_fills`, harness/fill.py) are
sampling knobs alone, drawn the same way from a stream of the round's own, apart from its proposals.

    researcher = RandomResearcher({}, campaign_dir=Path("runs/demo"), seed=0, base_model="runs/models/base")
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from harness.analyze import Evidence
from harness.config import RandomOptions, parse_config
from harness.fill import FILL_NOTE, SAMPLING
from harness.proposal import KnobEdit, MoveEdit, Proposal, ProposalError, validate
from harness.researchers.base import (FILL_STREAM, Researcher, ResearcherExhausted, knob_space, move_hypothesis,
                                      move_space, round_seed, same_value, short_float)

# Significant digits of a drawn float: enough to cover a range finely, short enough to read.
DIGITS = 4
# Redraws of a value that equals the current one, and of a proposal the scaffold rejects.
MAX_DRAWS = 100


def draw_value(rng: np.random.Generator, spec: dict) -> Any:
    """One value of a knob, uniform over its range (log-uniform with `log: true`) or its choices."""
    if "choices" in spec:
        return spec["choices"][rng.integers(len(spec["choices"]))]
    low, high = spec["min"], spec["max"]
    if spec.get("log"):
        if low <= 0:
            raise ValueError(f"a log-scaled knob needs min > 0, got min={low}")
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
        if spec["type"] == "int":
            return min(max(round(value), math.ceil(low)), math.floor(high))
    elif spec["type"] == "int":
        return int(rng.integers(math.ceil(low), math.floor(high) + 1))
    else:
        value = rng.uniform(low, high)
    return min(max(short_float(value, DIGITS), low), high)


def has_alternative(spec: dict, current: Any) -> bool:
    """Whether the knob can take any value other than `current` (a one-value range cannot)."""
    if "choices" in spec:
        return any(not same_value(c, current) for c in spec["choices"])
    if spec["type"] == "int":
        return math.floor(spec["max"]) > math.ceil(spec["min"])
    return spec["max"] > spec["min"]


class RandomResearcher(Researcher):
    name = "random"

    def __init__(self, config: dict, *, campaign_dir: Path, seed: int, base_model: str):
        parse_config(RandomOptions, config, "researcher")  # it has no options: any key is a mistake
        self.seed = seed
        self.proposals = 0

    def propose(self, evidence: Evidence, memory_text: str, scaffold_dir: Path) -> Proposal:
        return self.propose_many(evidence, memory_text, scaffold_dir, 1)[0]

    def propose_many(self, evidence: Evidence, memory_text: str, scaffold_dir: Path, count: int) -> list[Proposal]:
        """The round's first `count` distinct draws (the first is what `propose` gives)."""
        proposals: dict[str, Proposal] = {}
        for proposal in self._draws(evidence.round, scaffold_dir, MAX_DRAWS * count):
            proposals.setdefault(proposal.edits_key, proposal)
            if len(proposals) == count:
                break
        if not proposals:
            raise ResearcherExhausted(f"no valid knob edit in {MAX_DRAWS} draws for round {evidence.round}")
        self.proposals += len(proposals)
        return list(proposals.values())

    def propose_fills(self, evidence: Evidence, memory_text: str, scaffold_dir: Path, count: int,
                      taken: list[Proposal]) -> list[Proposal]:
        """Up to `count` distinct draws of sampling knobs alone, from the round's stream of fills."""
        seen = {p.edits_key for p in taken}
        fills: list[Proposal] = []
        if count < 1:
            return fills
        for proposal in self._draws(evidence.round, scaffold_dir, MAX_DRAWS * count, fills=True):
            if proposal.edits_key not in seen:
                seen.add(proposal.edits_key)
                fills.append(Proposal(proposal.hypothesis + FILL_NOTE, proposal.edits))
                if len(fills) == count:
                    break
        self.proposals += len(fills)
        return fills

    def _draws(self, round_no: int, scaffold_dir: Path, draws: int, *, fills: bool = False) -> Iterator[Proposal]:
        """Valid proposals drawn one after another from the round's seeded stream, in `draws` draws;
        with `fills`, sampling knobs alone from the round's stream of fills."""
        specs, current = knob_space(scaffold_dir)
        names = sorted(name for name, spec in specs.items() if has_alternative(spec, current.get(name))
                       and (not fills or name.startswith(SAMPLING)))
        moves = {} if fills else move_space(scaffold_dir)
        choices = [(name, None) for name in names] + [(None, move) for move in moves]
        if not choices:
            if fills:
                return
            raise ResearcherExhausted("no knob of the surface can take another value, and no code move applies")
        rng = np.random.default_rng(round_seed(self.seed, round_no, FILL_STREAM if fills else None))
        for _ in range(draws):
            name, move = choices[rng.integers(len(choices))]
            if move is not None:  # available moves were validated by move_space
                yield Proposal(f"random search: {move_hypothesis(move, moves[move])}", (MoveEdit(move),))
                continue
            value = draw_value(rng, specs[name])
            if same_value(value, current[name]):
                continue
            proposal = Proposal(f"random search: set {name} from {current[name]} to {value}",
                                (KnobEdit(name, value),))
            try:
                validate(proposal, scaffold_dir)
            except ProposalError:
                continue
            yield proposal

    def usage(self) -> dict:
        return {"proposals": self.proposals}
