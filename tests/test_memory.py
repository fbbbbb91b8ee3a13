"""The short-term memory: persistence, idempotent rounds, compaction into lessons, rendering under a budget."""

import json

import pytest

from memory import Memory, RoundRecord, approx_tokens, compact
from memory.memory import lesson_line

KNOBS = ["sampling.temperature", "sampling.top_p", "grpo.learning_rate", "sampling.frequency_penalty"]


def record(n: int, **fields) -> RoundRecord:
    """A plausible round: a knob change with a verdict that alternates keep and revert."""
    knob = KNOBS[n % len(KNOBS)]
    defaults = dict(
        round=n, hypothesis=f"Tuning {knob} should raise accuracy (idea {n % 7}).", change_kind="knob",
        change=f"{knob} -> {0.1 * (n % 10):.1f}", targets=[knob], decision="keep" if n % 5 == 0 else "revert",
        accuracy=0.3 + 0.001 * n, accuracy_ci95=(0.25 + 0.001 * n, 0.35 + 0.001 * n),
        delta=0.02 if n % 5 == 0 else -0.01, delta_ci95=(0.005, 0.035) if n % 5 == 0 else (-0.03, 0.01),
        critique=f"Round {n}: the change moved accuracy within noise.\nNext, try a smaller step.",
    )
    return RoundRecord(**(defaults | fields))


@pytest.fixture(scope="module")
def long_memory(tmp_path_factory):
    """300 rounds, every third a code change; built once, since rendering leaves it as it is."""
    memory = Memory(tmp_path_factory.mktemp("long") / "memory.md")
    for n in range(1, 301):
        memory.add_round(record(n) if n % 3 else record(n, change_kind="code", change="reward.py: new bonus",
                                                        targets=["reward.py"], hypothesis=f"Code idea {n}."))
    return memory


@pytest.mark.parametrize("budget", [120, 300, 1000, 4000])
@pytest.mark.parametrize("counter", [approx_tokens, lambda text: len(text.split())])
def test_render_fits_the_budget_for_300_rounds(long_memory, budget, counter):
    text = long_memory.render(budget, count_tokens=counter)
    assert counter(text) <= budget
    assert "## Lessons" in text
    assert "Round 300" in text


def test_render_uses_the_room_and_keeps_lessons_and_recent_rounds(long_memory):
    text = long_memory.render(4000)
    assert approx_tokens(text) > 3000
    assert "### Round 300: keep" in text and "### Round 299:" in text
    assert "[confirmed]" in text
    assert "live on only as lessons" in text
    small = long_memory.render(300)
    assert "lessons shown" in small  # the ledger was truncated, and says so


def test_render_of_a_short_memory_shows_everything_in_full(tmp_path):
    memory = Memory(tmp_path / "memory.md")
    for n in (1, 2, 3):
        memory.add_round(record(n))
    text = memory.render(4000)
    assert all(f"### Round {n}:" in text for n in (1, 2, 3))
    assert "live on only as lessons" not in text and "lessons shown" not in text
    assert Memory(tmp_path / "empty.md").render(100).count("(none yet)") == 2


def test_render_never_shows_heldout_accuracy(tmp_path):
    memory = Memory(tmp_path / "memory.md")
    memory.add_round(record(5, heldout_accuracy=0.777))
    assert "0.777" not in memory.render(4000)
    assert "Held-out accuracy: 0.777" in memory.snapshot()


def test_too_small_a_budget_is_a_clear_error(long_memory):
    with pytest.raises(ValueError, match="cannot hold"):
        long_memory.render(10)


def test_add_round_is_idempotent_and_persisted(tmp_path):
    path = tmp_path / "campaign" / "memory.md"
    memory = Memory(path)
    memory.add_round(record(1))
    memory.add_round(record(2))
    memory.add_round(record(2, critique="Rewritten after resume."))
    assert [r.round for r in memory.rounds] == [1, 2]
    reloaded = Memory(path)
    assert reloaded.rounds == memory.rounds
    assert reloaded.rounds[1].critique == "Rewritten after resume."
    assert path.read_text().count("### Round 2:") == 1
    data = json.loads(path.with_suffix(".json").read_text())
    assert [r["round"] for r in data["rounds"]] == [1, 2]


def test_markdown_has_every_part_of_a_round(tmp_path):
    memory = Memory(tmp_path / "memory.md")
    memory.add_round(record(5, approval="approved by alice at 2025-01-01T10:00Z: looks right"))
    memory.add_round(RoundRecord(round=6, hypothesis="A bigger bonus for the format.", change_kind="code",
                                 change="reward.py: format bonus 0.1 -> 0.5", decision="revert",
                                 targets=["reward.py"], failure_reason="training timed out after 300 s",
                                 critique="The run failed; nothing was measured."))
    text = (tmp_path / "memory.md").read_text()
    assert text == memory.snapshot()
    assert text.index("## Lessons") < text.index("## Rounds")
    assert "### Round 5: keep" in text
    assert "- Hypothesis: Tuning sampling.top_p should raise accuracy" in text
    assert "- Change (knob): sampling.top_p -> 0.5" in text
    assert "- Result: accuracy 0.305 (95% CI 0.255 to 0.355); delta +0.020 (95% CI +0.005 to +0.035)" in text
    assert "- Decision: keep" in text
    assert "- Approval: approved by alice" in text
    assert "- Critique: Round 5: the change moved accuracy within noise.\n  Next, try a smaller step." in text
    assert "- Result: failed: training timed out after 300 s" in text


def test_writes_are_atomic_and_leave_no_temp_files(tmp_path):
    memory = Memory(tmp_path / "memory.md")
    for n in range(1, 20):
        memory.add_round(record(n))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory.json", "memory.md"]


def test_compaction_turns_hypotheses_into_lessons_with_rounds():
    records = [
        record(1, targets=["sampling.temperature"], change="sampling.temperature 1.0 -> 0.7",
               decision="revert", delta=-0.02, delta_ci95=(-0.05, 0.01)),
        record(4, targets=["sampling.temperature"], change="sampling.temperature 1.0 -> 0.5",
               decision="keep", delta=0.06, delta_ci95=(0.03, 0.09)),
        record(2, change_kind="code", targets=["reward.py"], hypothesis="Penalize long answers.",
               decision="revert", delta=-0.03, delta_ci95=(-0.06, 0.0)),
        record(7, change_kind="code", targets=["reward.py"], hypothesis="penalize  long answers",
               decision="revert", accuracy=None, accuracy_ci95=None, delta=None, delta_ci95=None,
               failure_reason="reward.py raised ZeroDivisionError"),
        record(3, change_kind="code", targets=["prompt.py"], hypothesis="Show a worked example.",
               decision="revert", delta=0.01, delta_ci95=(-0.02, 0.04)),
    ]
    lessons = {tuple(lesson.rounds): lesson for lesson in compact(records)}
    assert set(lessons) == {(1, 4), (2, 7), (3,)}

    temperature = lessons[(1, 4)]
    assert temperature.status == "confirmed"
    assert temperature.hypothesis.startswith("changing sampling.temperature")
    assert "Kept 1 of 2 tries" in temperature.evidence
    assert "r4 sampling.temperature 1.0 -> 0.5" in temperature.evidence
    assert "+0.060" in temperature.evidence

    penalty = lessons[(2, 7)]
    assert penalty.status == "refuted"
    assert "1 failed" in penalty.evidence and "ZeroDivisionError" in penalty.evidence

    assert lesson_line(penalty).startswith("- [refuted] penalize  long answers. Kept 0 of 2 tries")
    assert lesson_line(penalty).endswith("Rounds 2, 7.\n")

    assert lessons[(3,)].status == "inconclusive"
    assert compact(records) == compact(list(reversed(records)))  # deterministic, order-free


def test_lessons_appear_in_the_ledger_with_round_numbers(tmp_path):
    memory = Memory(tmp_path / "memory.md")
    for n in range(1, 41):
        memory.add_round(record(n))
    snapshot = memory.snapshot()
    ledger = snapshot[snapshot.index("## Lessons"):snapshot.index("## Rounds")]
    assert ledger.count("- [") == len(KNOBS)
    assert "(10 rounds)" in ledger and "Rounds 1, 5, ..., 29, 33, 37 (10 rounds)" in ledger


def test_record_from_outcome():
    result = {"status": "ok", "metrics": {"accuracy": 0.5, "accuracy_ci95": [0.45, 0.55]},
              "heldout": {"metrics": {"accuracy": 0.48}}}
    verdict = {"decision": "keep", "delta": 0.05, "ci95": [0.02, 0.08]}
    made = RoundRecord.from_outcome(3, hypothesis="h", change_kind="knob", change="c", targets=["k"],
                                    result=result, verdict=verdict, critique="ok")
    assert (made.accuracy, made.accuracy_ci95, made.delta_ci95, made.heldout_accuracy) == (0.5, (0.45, 0.55),
                                                                                           (0.02, 0.08), 0.48)
    failed = RoundRecord.from_outcome(4, hypothesis="h", change_kind="code", change="c", targets=[],
                                      result={"status": "failed", "reason": "boom"},
                                      verdict={"decision": "revert", "delta": None, "ci95": None})
    assert failed.failed and failed.failure_reason == "boom" and failed.delta is None


def test_rounds_of_one_move_are_one_lesson_whatever_their_hypotheses():
    records = [
        record(2, change_kind="code", targets=["move reward_partial_credit"], change="move reward_partial_credit",
               hypothesis="random search: apply move reward_partial_credit", decision="revert",
               delta=-0.01, delta_ci95=(-0.03, 0.01)),
        record(5, change_kind="code", targets=["move reward_partial_credit"], change="move reward_partial_credit",
               hypothesis="apply move reward_partial_credit: many wrong answers", decision="revert",
               delta=-0.02, delta_ci95=(-0.04, 0.0)),
        record(6, change_kind="code", targets=["reward.py"], hypothesis="a free edit", decision="revert"),
    ]
    lessons = {tuple(lesson.rounds): lesson for lesson in compact(records)}
    assert set(lessons) == {(2, 5), (6,)}
    assert lessons[(2, 5)].hypothesis.startswith("changing move reward_partial_credit: ")
    assert "r5 move reward_partial_credit: revert, delta -0.020" in lessons[(2, 5)].evidence
