"""The journal: round trip, atomic writes, idempotent steps across a simulated crash, the campaign lock."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest

from harness.journal import STEPS, CampaignBusy, CampaignLock, Journal, JournalError, incumbent_dir, is_locked, run_step

ROOT = Path(__file__).resolve().parents[1]


def finish_round(journal, n):
    journal.begin_round(n)
    for step in STEPS:
        run_step(journal, n, step, lambda step=step: {"step": step, "round": n})


def test_round_trip(tmp_path):
    journal = Journal(tmp_path)
    journal.set("config", {"rounds": 3, "researcher": "scripted"})
    journal.set("status", "running")
    journal.begin_round(1)
    journal.step_done(1, "analyze", {"evidence": "rounds/001/evidence.json", "deltas": (0.1, -0.2)})

    again = Journal(tmp_path)
    assert again.get("config") == {"rounds": 3, "researcher": "scripted"}
    assert again.get("status") == "running"
    assert again.get("missing", 7) == 7
    assert again.step_output(1, "analyze") == {"evidence": "rounds/001/evidence.json", "deltas": [0.1, -0.2]}
    assert again.is_done(1, "analyze") and not again.is_done(1, "propose")
    assert again.step_output(1, "propose") is None
    assert again.current_round() == 1 and again.last_finished_round() == 0
    began, done = again.started_at(1), again.step_done_at(1, "analyze")
    assert datetime.fromisoformat(began) <= datetime.fromisoformat(done) <= datetime.now(timezone.utc)
    assert again.step_done_at(1, "propose") is None and again.started_at(2) is None


def test_writes_leave_no_temp_files(tmp_path):
    journal = Journal(tmp_path)
    finish_round(journal, 1)
    journal.set("tokens_used", 1234)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.json"]


def test_rounds_finish_in_order_with_no_gaps(tmp_path):
    journal = Journal(tmp_path)
    assert journal.current_round() is None and journal.last_finished_round() == 0
    with pytest.raises(JournalError, match="next round is 1"):
        journal.begin_round(2)
    finish_round(journal, 1)
    assert journal.round_done(1) and journal.last_finished_round() == 1
    assert journal.current_round() is None
    journal.begin_round(2)
    journal.begin_round(2)  # resuming an open round is a no-op
    with pytest.raises(JournalError, match="round 2 is not finished"):
        journal.begin_round(3)
    with pytest.raises(JournalError, match="round 5 has not begun"):
        journal.step_done(5, "analyze", {})


def test_a_step_is_never_recorded_twice(tmp_path):
    journal = Journal(tmp_path)
    journal.begin_round(1)
    journal.step_done(1, "decide", {"decision": "keep"})
    with pytest.raises(JournalError, match="already done"):
        journal.step_done(1, "decide", {"decision": "revert"})
    assert Journal(tmp_path).step_output(1, "decide") == {"decision": "keep"}


def test_bad_outputs_are_refused_and_change_nothing(tmp_path):
    journal = Journal(tmp_path)
    journal.begin_round(1)
    with pytest.raises(JournalError, match="not JSON-serializable"):
        journal.step_done(1, "analyze", {"path": Path("x")})
    with pytest.raises(JournalError, match="must output a dict"):
        journal.step_done(1, "analyze", ["not", "a", "dict"])
    with pytest.raises(JournalError, match="unknown step"):
        journal.step_done(1, "analyse", {})
    with pytest.raises(JournalError, match="status 'done' is not one of"):
        journal.set("status", "done")
    assert not journal.is_done(1, "analyze") and journal.get("status") is None


def test_run_step_after_a_crash_reruns_only_unfinished_steps(tmp_path):
    calls = []

    def step_fn(step):
        def fn():
            calls.append(step)
            return {"from": step}
        return fn

    journal = Journal(tmp_path)
    journal.begin_round(1)
    for step in STEPS[:4]:
        run_step(journal, 1, step, step_fn(step))
    # A kill -9 here: the process is gone, only the file remains.
    del journal
    calls.clear()

    resumed = Journal(tmp_path)
    n = resumed.current_round()
    assert n == 1
    outputs = [run_step(resumed, n, step, step_fn(step)) for step in STEPS]
    assert calls == list(STEPS[4:])
    assert outputs == [{"from": step} for step in STEPS]
    assert resumed.round_done(1) and resumed.last_finished_round() == 1


def test_updates_are_written_with_the_step(tmp_path):
    journal = Journal(tmp_path)
    journal.begin_round(1)
    out = run_step(journal, 1, "decide", lambda: {"decision": "keep", "commit": "abc123"},
                   updates=lambda o: {"incumbent": o["commit"]})
    assert out == {"decision": "keep", "commit": "abc123"}
    reopened = Journal(tmp_path)
    assert reopened.get("incumbent") == "abc123"
    assert reopened.step_seconds(1, "decide") >= 0
    # A resumed run_step returns the record and does not apply the updates again.
    reopened.set("incumbent", "later")
    run_step(reopened, 1, "decide", lambda: pytest.fail("ran twice"),
             updates=lambda o: {"incumbent": o["commit"]})
    assert reopened.get("incumbent") == "later"


def test_outputs_are_detached_from_the_caller(tmp_path):
    journal = Journal(tmp_path)
    journal.begin_round(1)
    output = {"paths": ["a"]}
    assert run_step(journal, 1, "analyze", lambda: output) == {"paths": ["a"]}
    output["paths"].append("b")
    journal.step_output(1, "analyze")["paths"].append("c")
    assert journal.step_output(1, "analyze") == {"paths": ["a"]}


# ---------------------------------------------------------------- the lock

HOLDER = textwrap.dedent("""
    import sys, time
    from harness.journal import CampaignLock
    with CampaignLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_second_process_is_refused_until_the_holder_is_killed(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert is_locked(tmp_path)
        with pytest.raises(CampaignBusy, match=f"in use by process {holder.pid}") as busy:
            with CampaignLock(tmp_path):
                pytest.fail("two processes hold one campaign")
        assert busy.value.pid == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not is_locked(tmp_path)  # status reports such a campaign as stopped, not running
    with CampaignLock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


def test_lock_is_released_on_exit_and_reusable(tmp_path):
    with CampaignLock(tmp_path / "new"):
        pass
    with CampaignLock(tmp_path / "new"):
        with pytest.raises(CampaignBusy, match=str(os.getpid())):
            with CampaignLock(tmp_path / "new"):
                pass


def test_a_write_that_dies_leaves_the_previous_journal(tmp_path, monkeypatch):
    journal = Journal(tmp_path)
    journal.begin_round(1)
    journal.step_done(1, "analyze", {"ok": True})

    def killed(*args):
        raise KeyboardInterrupt  # the process dies between writing the temp file and the rename

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        journal.step_done(1, "propose", {"hypothesis": "h"})
    monkeypatch.undo()
    reopened = Journal(tmp_path)
    assert reopened.is_done(1, "analyze") and not reopened.is_done(1, "propose")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.json"]


def test_incumbent_dir_reads_this_campaign_whatever_the_stored_form(tmp_path):
    camp = tmp_path / "renamed"
    assert incumbent_dir(camp, {"result": "rounds/019"}) == camp / "rounds" / "019"
    # written before paths were relative: the folder was runs/old-name, now moved and renamed
    assert incumbent_dir(camp, {"result": "runs/old-name/rounds/019"}) == camp / "rounds" / "019"
    assert incumbent_dir(camp, {"result": "/x/rounds/runs/old/rounds/000"}) == camp / "rounds" / "000"


# ---------------------------------------------------------------- journals written by older code

def version_1_journal(tmp_path, learned_round):
    """A version 1 journal as the old code left it after a kill: round 1 finished (a keep), round 2
    decided (a keep, scored on held-out inside `decide`) and killed inside `record`."""
    def steps(n, decision, heldout, record):
        done = {"analyze": {}, "propose": {"proposal": {"hypothesis": f"h{n}", "edits": []}},
                "gate_proposal": {"decision": "approve"}, "apply": {"commit": f"cand{n}"},
                "evaluate": {"status": "ok"}, "compare": {"verdict": {"decision": decision}}, "critique": {},
                "decide": {"decision": decision, "reason": "r", "heldout_accuracy": heldout}}
        if record:
            done["record"] = {"decision": decision}
        return {name: {"output": out, "done_at": f"t{n}", "seconds": 1.0} for name, out in done.items()}

    data = {"version": 1, "state": {"status": "paused", "learned_round": learned_round},
            "rounds": {"1": {"started_at": "t", "finished_at": "t1", "steps": steps(1, "keep", 0.4, True)},
                       "2": {"started_at": "t", "finished_at": None, "steps": steps(2, "keep", 0.5, False)}}}
    (tmp_path / "journal.json").write_text(json.dumps(data))
    return data


@pytest.mark.parametrize("learned_round", [1, 2])
def test_a_version_1_journal_reads_as_todays_steps(tmp_path, learned_round):
    version_1_journal(tmp_path, learned_round)
    journal = Journal(tmp_path)
    assert journal.current_round() == 2 and journal.last_finished_round() == 1
    assert journal.get("learned_round") is None and journal.get("status") == "paused"
    for n, heldout in ((1, 0.4), (2, 0.5)):  # held-out, scored inside decide, is its own step
        assert journal.step_output(n, "heldout") == {"heldout_accuracy": heldout}
        assert journal.step_output(n, "decide") == {"decision": "keep", "reason": "r",
                                                    "commits": {"incumbent_before": None, "candidate": f"cand{n}"}}
    # learning was marked by `learned_round`: round 2 learned only if the kill came after the mark
    assert journal.is_done(1, "learn") and journal.is_done(2, "learn") == (learned_round == 2)
    assert not journal.is_done(2, "record") and not journal.is_done(2, "reeval")
    # run_step picks up where the old code stopped, and the file is today's version from the next write
    ran = [step for step in STEPS[STEPS.index("decide"):]
           if run_step(journal, 2, step, lambda step=step: {"ran": step}) == {"ran": step}]
    assert ran == (["record"] if learned_round == 2 else ["learn", "record"])
    assert json.loads((tmp_path / "journal.json").read_text())["version"] == 2
    assert Journal(tmp_path).last_finished_round() == 2


def test_a_version_1_journal_is_read_without_being_rewritten(tmp_path):
    data = version_1_journal(tmp_path, 1)
    Journal(tmp_path).get("status")  # status and report only read
    assert json.loads((tmp_path / "journal.json").read_text()) == data


def test_an_unknown_version_is_refused(tmp_path):
    (tmp_path / "journal.json").write_text(json.dumps({"version": 99, "state": {}, "rounds": {}}))
    with pytest.raises(JournalError, match="schema version 99, this code reads version 2"):
        Journal(tmp_path)
