"""The short-term memory of a campaign: `memory.md` for people, `memory.json` as the source of truth.

    memory = Memory("runs/demo/memory.md")
    memory.add_round(RoundRecord(round=1, ...))     # idempotent: the same round again replaces it
    context = memory.render(budget_tokens=2000)      # what the researcher reads
    memory.snapshot()                                # the whole memory.md text

Both files are written atomically (a temp file in the same folder, then os.replace), JSON first:
after a crash the JSON holds every round that was added and the markdown is at most one round
behind, and the next `add_round` rewrites it.

`render` fits the memory into a token budget. It always shows the latest round (in full, or as
one line when even that is too long) and the Lessons section; it fills half the remaining room
with lessons (confirmed first, then refuted, then inconclusive, newest first within each), then
the most recent rounds in full, newest first, then more lessons. Rounds that do not fit live on
only as lessons, so a campaign of any length renders within the budget. Held-out accuracy is in
`memory.md` but never in `render`: the researcher must not see the held-out split.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from memory.records import STATUSES, Lesson, RoundRecord, compact, interval, outcome
from rl_pipeline.files import write_atomic

SCHEMA_VERSION = 1
# Long lessons list their first and last rounds only, so one line stays short however long the group.
ROUNDS_SHOWN = 5


def approx_tokens(text: str) -> int:
    """About four characters per token: the default when no tokenizer is given."""
    return (len(text) + 3) // 4


# ---------------------------------------------------------------- markdown pieces

def round_section(record: RoundRecord, *, heldout: bool) -> str:
    """A round in full: hypothesis, change, result with its interval, decision, critique."""
    if record.failed:
        result = f"failed: {record.failure_reason}"
    else:
        result = f"accuracy {record.accuracy:.3f} ({interval(record.accuracy_ci95)})"
        if record.delta is not None:
            result += f"; delta {record.delta:+.3f} ({interval(record.delta_ci95, signed=True)})"
    lines = [f"### Round {record.round}: {record.decision}", "",
             f"- Hypothesis: {record.hypothesis}",
             f"- Change ({record.change_kind}): {record.change}",
             f"- Result: {result}"]
    if heldout and record.heldout_accuracy is not None:
        lines.append(f"- Held-out accuracy: {record.heldout_accuracy:.3f}")
    lines.append(f"- Decision: {record.decision}")
    if record.approval:
        lines.append(f"- Approval: {record.approval}")
    if record.critique.strip():
        # Continuation lines are indented so a multi-line critique stays inside its list item.
        lines.append("- Critique: " + record.critique.strip().replace("\n", "\n  "))
    return "\n".join(lines) + "\n"


def round_line(record: RoundRecord) -> str:
    """A round in one line, for when its full section does not fit."""
    change = f"{record.change_kind}: {record.change}"
    return f"- Round {record.round}: {record.hypothesis} ({change}): {outcome(record)}\n"


def _rounds_text(rounds: list[int]) -> str:
    if len(rounds) <= ROUNDS_SHOWN:
        return ", ".join(map(str, rounds))
    head, tail = rounds[:2], rounds[-(ROUNDS_SHOWN - 2):]
    return f"{', '.join(map(str, head))}, ..., {', '.join(map(str, tail))} ({len(rounds)} rounds)"


def lesson_line(lesson: Lesson) -> str:
    hypothesis = lesson.hypothesis.rstrip(" .")
    return f"- [{lesson.status}] {hypothesis}. {lesson.evidence} Rounds {_rounds_text(lesson.rounds)}.\n"


def _priority(lesson: Lesson) -> tuple[int, int]:
    """Most informative first: confirmed, refuted, inconclusive; the newest first within each."""
    return (STATUSES.index(lesson.status), -max(lesson.rounds))


# ---------------------------------------------------------------- the memory

class Memory:
    """A campaign's round records, persisted as `memory.json` (truth) and `memory.md` (for people)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.sidecar = self.path.with_suffix(".json")
        self._rounds: dict[int, RoundRecord] = {}
        if self.sidecar.exists():
            data = json.loads(self.sidecar.read_text())
            if data.get("schema_version") != SCHEMA_VERSION:
                raise ValueError(f"{self.sidecar}: schema_version {data.get('schema_version')} "
                                 f"is not {SCHEMA_VERSION}")
            for item in data["rounds"]:
                record = RoundRecord.from_dict(item)
                self._rounds[record.round] = record

    @property
    def rounds(self) -> list[RoundRecord]:
        return [self._rounds[n] for n in sorted(self._rounds)]

    def add_round(self, record: RoundRecord) -> None:
        """Add or replace round `record.round` and persist both files."""
        self._rounds[record.round] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"schema_version": SCHEMA_VERSION, "rounds": [r.to_dict() for r in self.rounds]}
        # One line: the C encoder is many times faster than the indented one on hundreds of rounds,
        # and memory.md is the human-readable view anyway.
        write_atomic(self.sidecar, json.dumps(data) + "\n")
        write_atomic(self.path, self.snapshot())

    def lessons(self) -> list[Lesson]:
        return compact(self.rounds)

    def snapshot(self) -> str:
        """The full markdown: the lessons ledger, then every round in full, held-out scores included."""
        rounds = self.rounds
        parts = ["# Research memory\n", "\n## Lessons\n\n"]
        lessons = sorted(self.lessons(), key=_priority)
        parts += [lesson_line(lesson) for lesson in lessons] or ["(none yet)\n"]
        parts.append("\n## Rounds\n")
        parts += ["\n" + round_section(r, heldout=True) for r in rounds]
        return "".join(parts)

    def render(self, budget_tokens: int, count_tokens: Callable[[str], int] = approx_tokens) -> str:
        """The memory for the researcher, at most `budget_tokens` by `count_tokens` (see the module doc)."""
        rounds = self.rounds
        lessons = sorted(self.lessons(), key=_priority)
        if not rounds:
            return self._assemble("", [], 0, [])
        latest = None
        for candidate in (round_section(rounds[-1], heldout=False), round_line(rounds[-1])):
            if count_tokens(self._assemble(candidate, [], len(lessons), [])) <= budget_tokens:
                latest = candidate
                break
        if latest is None:
            raise ValueError(f"a budget of {budget_tokens} tokens cannot hold even the latest round in one line")

        # Greedy fill on per-piece costs; the exact count of the whole text is checked after.
        room = budget_tokens - count_tokens(self._assemble(latest, [], len(lessons), []))
        costs = [count_tokens(lesson_line(lesson)) for lesson in lessons]
        shown = used = 0
        while shown < len(lessons) and used + costs[shown] <= room // 2:
            used += costs[shown]
            shown += 1
        room -= used
        recent: list[str] = []  # sections of the rounds before the latest, newest first
        for record in reversed(rounds[:-1]):
            cost = count_tokens(round_section(record, heldout=False))
            if cost > room:
                break
            recent.append(round_section(record, heldout=False))
            room -= cost
        while shown < len(lessons) and costs[shown] <= room:
            room -= costs[shown]
            shown += 1

        # A tokenizer need not be additive over pieces: trim until the whole text fits. Without
        # any optional piece the text is the one measured above, so this ends within the budget.
        while True:
            text = self._assemble(latest, lessons[:shown], len(lessons), recent[::-1])
            if count_tokens(text) <= budget_tokens:
                return text
            if recent:
                recent.pop()
            else:
                shown -= 1

    def _assemble(self, latest: str, lessons: list[Lesson], n_lessons: int, earlier: list[str]) -> str:
        """The rendered text: title, lessons (with a note when some are left out), recent rounds."""
        rounds = self.rounds
        if not rounds:
            return "# Research memory\n\n## Lessons\n\n(none yet)\n\n## Recent rounds\n\n(none yet)\n"
        parts = [f"# Research memory: rounds {rounds[0].round} to {rounds[-1].round}\n", "\n## Lessons\n\n"]
        if n_lessons == 0:
            parts.append("(none yet)\n")
        elif len(lessons) < n_lessons:
            parts.append(f"({len(lessons)} of {n_lessons} lessons shown; the oldest and least informative "
                         f"are left out for space)\n")
        parts += [lesson_line(lesson) for lesson in lessons]
        parts.append("\n## Recent rounds\n")
        hidden = len(rounds) - 1 - len(earlier)
        if hidden:
            parts.append(f"\n(the {hidden} earlier rounds, {rounds[0].round} to {rounds[hidden - 1].round}, "
                         f"live on only as lessons)\n")
        parts += ["\n" + section for section in earlier]
        parts.append("\n" + latest)
        return "".join(parts)
