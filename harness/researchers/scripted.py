"""The scripted researcher: replays proposals from a JSONL file, one per line, for tests and reproductions.

Round n (1-based) gets the n-th non-blank line (with K candidates a round, the n-th K lines); past
the last one the researcher is exhausted and the campaign ends cleanly. Nothing is remembered
between rounds, so a resumed campaign asks for round n again and gets line n again.

    researcher = ScriptedResearcher({"file": "tests/data/proposals.jsonl"}, campaign_dir=Path("runs/demo"), seed=0,
                                    base_model="runs/models/base")
"""

from __future__ import annotations

from pathlib import Path

from harness.analyze import Evidence
from harness.config import ScriptedOptions, parse_config
from harness.proposal import Proposal, ProposalError, parse_proposal
from harness.researchers.base import Researcher, ResearcherExhausted


class ScriptedResearcher(Researcher):
    name = "scripted"

    def __init__(self, config: dict, *, campaign_dir: Path, seed: int, base_model: str):
        self.path = Path(parse_config(ScriptedOptions, config, "researcher").file)
        if not self.path.is_file():
            raise FileNotFoundError(f"proposals file {str(self.path)!r} does not exist")
        # (line number in the file, text): line numbers count blank lines, so errors point at the file.
        self.lines = [(number, text) for number, text in enumerate(self.path.read_text().splitlines(), 1)
                      if text.strip()]

    def propose(self, evidence: Evidence, memory_text: str, scaffold_dir: Path) -> Proposal:
        return self.propose_many(evidence, memory_text, scaffold_dir, 1)[0]

    def propose_many(self, evidence: Evidence, memory_text: str, scaffold_dir: Path, count: int) -> list[Proposal]:
        """Round n's `count` lines: lines (n-1)*count+1 to n*count (fewer at the end of the file)."""
        if evidence.round < 1:
            raise ValueError(f"rounds are numbered from 1, got {evidence.round}")
        lines = self.lines[(evidence.round - 1) * count:evidence.round * count]
        if not lines:
            raise ResearcherExhausted(f"{self.path} has {len(self.lines)} proposal(s); round {evidence.round} "
                                      "has none")
        proposals = []
        for number, text in lines:
            try:
                proposals.append(parse_proposal(text))
            except ProposalError as err:
                raise ProposalError(f"{self.path}, line {number}: {err}") from err
        return proposals

    def usage(self) -> dict:
        return {"proposals_in_file": len(self.lines)}
