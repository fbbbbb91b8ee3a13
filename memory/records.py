"""What the short-term memory holds: one record per round, and lessons compacted from them.

A `RoundRecord` is the researcher-facing summary of one round (hypothesis, change, result with
its interval, delta with its interval, decision, critique). `compact` turns a list of records
into `Lesson`s with a fixed rule, so the same rounds always give the same lessons:

  - rounds are grouped by what they tried: a knob-only change by the set of knobs it touched
    (trying temperature 0.7 and then 1.3 is one line of inquiry), anything else by its
    hypothesis text (case and spacing ignored);
  - a group with a kept round is `confirmed`; a group with no kept round whose runs all failed
    or never beat the incumbent (delta <= 0) is `refuted`; the rest (a positive delta that did
    not clear the bar) is `inconclusive`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields

STATUSES = ("confirmed", "refuted", "inconclusive")
# Evidence names the best try and the last few of a group, so a long group stays one sentence.
EVIDENCE_TRIES = 3


@dataclass
class RoundRecord:
    """One round as the researcher should remember it; `accuracy`/`delta` are None for a failed run."""

    round: int
    hypothesis: str
    change_kind: str  # "knob" | "code"
    change: str  # short description, e.g. "sampling.temperature 1.0 -> 0.7"
    decision: str  # "keep" | "revert"
    targets: list[str] = field(default_factory=list)  # knob names, files or "move NAME" the change touched
    accuracy: float | None = None
    accuracy_ci95: tuple[float, float] | None = None
    delta: float | None = None
    delta_ci95: tuple[float, float] | None = None
    failure_reason: str | None = None
    heldout_accuracy: float | None = None
    critique: str = ""
    approval: str = ""  # who approved or rejected, when, and their note, if a person was asked

    @property
    def failed(self) -> bool:
        return self.accuracy is None

    def to_dict(self) -> dict:
        # Shallow on purpose: dataclasses.asdict deep-copies and dominates the cost of a save.
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> RoundRecord:
        data = dict(data)
        for key in ("accuracy_ci95", "delta_ci95"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)

    @classmethod
    def from_outcome(cls, round: int, *, hypothesis: str, change_kind: str, change: str, targets: list[str],
                     result: dict, verdict: dict, critique: str = "", approval: str = "") -> RoundRecord:
        """A record from a round's `result.json` and its verdict (as `Verdict.to_dict()` writes it)."""
        ok = result.get("status") == "ok"
        metrics = result.get("metrics", {}) if ok else {}
        heldout = result.get("heldout", {}).get("metrics", {}).get("accuracy") if ok else None
        return cls(
            round=round, hypothesis=hypothesis, change_kind=change_kind, change=change,
            decision=verdict["decision"], targets=list(targets),
            accuracy=metrics.get("accuracy"),
            accuracy_ci95=tuple(metrics["accuracy_ci95"]) if "accuracy_ci95" in metrics else None,
            delta=verdict.get("delta"),
            delta_ci95=tuple(verdict["ci95"]) if verdict.get("ci95") is not None else None,
            failure_reason=None if ok else result.get("reason", "no reason given"),
            heldout_accuracy=heldout, critique=critique, approval=approval,
        )


@dataclass
class Lesson:
    """What a line of inquiry taught: its status, one evidence sentence, and the rounds behind it."""

    hypothesis: str
    status: str  # one of STATUSES
    evidence: str
    rounds: list[int]

    def to_dict(self) -> dict:
        return asdict(self)


def interval(ci: tuple[float, float] | None, signed: bool = False) -> str:
    """'95% CI a to b' with three decimals, signed for deltas."""
    if ci is None:
        return "no interval"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return f"95% CI {fmt.format(ci[0])} to {fmt.format(ci[1])}"


def outcome(record: RoundRecord) -> str:
    """A round's result in a few words: 'keep, delta +0.040 (95% CI ...)' or 'failed (reason)'."""
    if record.failed:
        return f"failed ({record.failure_reason})"
    if record.delta is None:
        return f"{record.decision}, accuracy {record.accuracy:.3f}"
    return f"{record.decision}, delta {record.delta:+.3f} ({interval(record.delta_ci95, signed=True)})"


def _group_key(record: RoundRecord) -> tuple[str, str]:
    # A change of knobs and declared moves only ("move NAME" targets) is one line of inquiry per
    # target set, whatever its hypothesis says; free code edits are grouped by their hypothesis.
    named = record.targets and all(record.change_kind == "knob" or t.startswith("move ") for t in record.targets)
    if named:
        return ("knob", ", ".join(sorted(record.targets)))
    normalized = re.sub(r"\s+", " ", record.hypothesis.strip().lower()).rstrip(".!")
    return ("hypothesis", normalized)


def _status(group: list[RoundRecord]) -> str:
    if any(r.decision == "keep" for r in group):
        return "confirmed"
    if all(r.failed or (r.delta is not None and r.delta <= 0) for r in group):
        return "refuted"
    return "inconclusive"


def _evidence(group: list[RoundRecord]) -> str:
    kept = sum(r.decision == "keep" for r in group)
    failed = sum(r.failed for r in group)
    head = f"Kept {kept} of {len(group)} tries" + (f", {failed} failed" if failed else "")
    shown = group[-EVIDENCE_TRIES:]
    measured = [r for r in group if r.delta is not None]
    if measured:
        best = max(measured, key=lambda r: (r.delta, r.round))
        if best not in shown:
            shown = [best] + shown
    tries = "; ".join(f"r{r.round} {r.change}: {outcome(r)}" for r in shown)
    return f"{head} ({tries})."


def compact(records: list[RoundRecord]) -> list[Lesson]:
    """The lessons from `records`, one per line of inquiry, ordered by their first round."""
    groups: dict[tuple[str, str], list[RoundRecord]] = {}
    for record in sorted(records, key=lambda r: r.round):
        groups.setdefault(_group_key(record), []).append(record)
    lessons = []
    for (kind, key), group in groups.items():
        hypothesis = f"changing {key}: {group[-1].hypothesis}" if kind == "knob" else group[-1].hypothesis
        lessons.append(Lesson(hypothesis, _status(group), _evidence(group), [r.round for r in group]))
    return lessons
