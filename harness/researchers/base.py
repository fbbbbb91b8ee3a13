"""The researcher interface every backend implements, and the helpers they share.

A researcher turns what the analyze step saw (`Evidence`) and the rendered memory into one
`Proposal` per round (or several distinct ones, `propose_many`), may learn from the round's
verdict, and may keep a checkpoint:

    proposal = researcher.propose(evidence, memory.render(2000), Path("runs/demo/scaffold"))
    researcher.learn(proposal, verdict.to_dict())

Backends are stateless given the round number (`evidence.round`) and their saved state, so a
campaign resumed after a crash asks for the same round again and gets the same proposal.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from harness.analyze import Evidence
from harness.fill import sets_sampling
from harness.proposal import KnobEdit, Proposal, ProposalError, available_moves, validate
from rl_pipeline.scaffold import load_scaffold


class ResearcherExhausted(Exception):
    """The researcher has nothing more to propose (a scripted file ran out): the campaign ends cleanly."""


class ResearcherStopped(Exception):
    """The researcher cannot go on for now (its budget is spent, its endpoint is down): the campaign
    stops with `status` ("budget_exhausted", "paused") and resumes from the same round later."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


class Researcher:
    """The interface: `propose` is required; `learn`, `save`, `load` and `usage` default to nothing.

    Every backend is built as `Backend(config, campaign_dir=..., seed=..., base_model=...)`: its
    options (`conf/researcher/<name>.yaml`), its campaign's folder, the campaign's seed and the base
    policy's folder; a backend uses what it needs of them."""

    name = "base"

    def propose(self, evidence: Evidence, memory_text: str, scaffold_dir: Path) -> Proposal:
        """One proposal for round `evidence.round` on the scaffold at `scaffold_dir`."""
        raise NotImplementedError

    def propose_many(self, evidence: Evidence, memory_text: str, scaffold_dir: Path, count: int) -> list[Proposal]:
        """`count` distinct proposals for one round (fewer when the researcher has no more), each
        learned from on its own; the backends in `harness.config.MANY_CANDIDATES` implement it."""
        if count == 1:
            return [self.propose(evidence, memory_text, scaffold_dir)]
        raise NotImplementedError(f"researcher {self.name} proposes one candidate a round")

    def propose_fills(self, evidence: Evidence, memory_text: str, scaffold_dir: Path, count: int,
                      taken: list[Proposal]) -> list[Proposal]:
        """Up to `count` more proposals for the same round that set sampling knobs alone
        (`harness.fill`: they decode with a policy already trained, in time a worker would idle),
        distinct from `taken` (the round's), each learned from on its own. The default: none."""
        return []

    def learn(self, proposal: Proposal, verdict: dict) -> None:
        """Online update from the final verdict of the round that `proposal` was made for; `save`
        makes it last (a campaign saves once a round, after every candidate's update)."""

    def save(self, dir: Path) -> None:
        """Write the researcher's state (a checkpoint) into `dir`."""

    def load(self, dir: Path) -> None:
        """Read back what `save` wrote."""

    def usage(self) -> dict:
        """Counters for tracking, such as tokens generated; empty when there is nothing to count."""
        return {}

    def critique(self, facts: str, round_no: int) -> str | None:
        """The researcher's own critique of a round, given the harness's critique as facts; None
        (the default) leaves the harness's critique alone."""
        return None


# ---------------------------------------------------------------------------------------------
# shared by the knob-search backends and the prompts

FILL_STREAM = 1  # `round_seed(..., stream=FILL_STREAM)`: a round's fills, drawn apart from its proposals


def round_seed(seed: int, round_no: int, stream: int | None = None) -> int:
    """A seed for one round of one campaign: the same (seed, round) always draws the same proposal,
    and neighbouring rounds get unrelated streams (not seed + round, which would overlap campaigns);
    `stream` names another stream of the same round (its fills)."""
    entropy = [seed, round_no] if stream is None else [seed, round_no, stream]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def searchable(spec: dict) -> bool:
    """Whether a knob's values can be enumerated or sampled: it has choices, or both bounds."""
    return "choices" in spec or ("min" in spec and "max" in spec)


def knob_space(scaffold_dir: Path) -> tuple[dict[str, dict], dict[str, Any]]:
    """The searchable knobs of a scaffold's surface (name -> spec) and their current values."""
    return scaffold_knob_space(load_scaffold(scaffold_dir, import_code=False))


def scaffold_knob_space(scaffold) -> tuple[dict[str, dict], dict[str, Any]]:
    """`knob_space` of an already loaded scaffold."""
    specs = {name: spec for name, spec in (scaffold.surface.get("knobs") or {}).items() if searchable(spec)}
    return specs, scaffold.knobs()


def move_space(scaffold_dir: Path) -> dict[str, str]:
    """The scaffold's code moves that apply to it now (name -> doc), in declaration order: a move
    already applied, or whose text another change replaced, is left out."""
    moves = load_scaffold(scaffold_dir, import_code=False).moves
    return {name: moves[name].doc for name in available_moves(scaffold_dir)}


def decoder_companions(proposal: Proposal, scaffold) -> list[Proposal]:
    """The proposal's companions: for a proposal that changes training (a knob outside `sampling.*`,
    a code move, a file edit) and sets no sampling knob, the same edits plus each decoder the
    scaffold declares (surface `decoders`) that differs from the current one, as long as the
    scaffold accepts it. The companion trains the same policy (its training inputs are the
    proposal's), so it costs one more evaluation, not another training."""
    if any(sets_sampling(e) for e in proposal.edits):
        return []  # it decodes otherwise already (and a proposal of sampling edits alone trains nothing new)
    current, companions = scaffold.knobs(), []
    for decoder in scaffold.decoders:
        if all(same_value(current[k], v) for k, v in decoder.items()):
            continue
        setting = ", ".join(f"{k} {v}" for k, v in decoder.items())
        companion = Proposal(f"{proposal.hypothesis}; scored under the decoder {setting} too (a companion)",
                             (*proposal.edits, *(KnobEdit(k, v) for k, v in decoder.items())))
        try:
            validate(companion, scaffold.path)
        except ProposalError:
            continue
        companions.append(companion)
    return companions


def move_hypothesis(name: str, doc: str) -> str:
    """How a proposal that applies one move says so: the move's name, then its doc."""
    return f"apply move {name}: {doc}"


def same_value(a: Any, b: Any) -> bool:
    """Knob values equal as the scaffold would store them (1 == 1.0; floats up to rounding noise)."""
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def short_float(value: float, digits: int) -> float:
    """`value` rounded to `digits` significant digits, so proposals read (and tokenize) short."""
    return float(f"{value:.{digits}g}")
