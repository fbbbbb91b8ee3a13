"""Approval policies from conf/approvals, and the gates: file answers, timeouts, the terminal."""

import io
import json
import sys
import threading
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from rich.console import Console
from terminal_env import terminal_env

from harness.approvals import (ApprovalError, ApprovalPolicy, FileGate, NullGate, TerminalGate, approve,
                               keep_question, make_gate, pending, proposal_question)
from harness.proposal import parse_proposal

CONF = Path(__file__).resolve().parents[1] / "conf"
POLL_S = 0.02
DIFF = ("--- a/scaffold.yaml\n+++ b/scaffold.yaml\n@@ -5,3 +5,3 @@ sampling:\n"
        "-  temperature: 1.0\n+  temperature: 0.7\n")


def load_policy(name):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(overrides=[f"+approvals={name}"])
    return ApprovalPolicy.from_config(cfg.approvals)


def asks(policy):
    """Which (point, round, kind) cases of rounds 1..20 the policy asks a person about."""
    return {(point, n, kind) for point in ("proposal", "keep") for n in range(1, 21)
            for kind in ("knob", "code") if policy.needs(point, round_no=n, proposal_kind=kind)}


def every_round(point, kinds=("knob", "code")):
    return {(point, n, kind) for n in range(1, 21) for kind in kinds}


def test_conf_files_make_the_intended_policies():
    assert asks(load_policy("none")) == set()
    assert asks(load_policy("keep")) == every_round("keep")
    assert asks(load_policy("code")) == every_round("proposal", kinds=("code",))
    assert asks(load_policy("every_n")) == {("proposal", n, kind) for n in (10, 20)
                                            for kind in ("knob", "code")}
    assert asks(load_policy("keep_and_code")) == (every_round("keep")
                                                  | every_round("proposal", kinds=("code",)))
    for name in ("none", "keep", "code", "every_n", "keep_and_code"):
        policy = load_policy(name)
        assert (policy.name, policy.timeout_s, policy.default) == (name, 3600.0, "reject")


def test_policy_from_config_checks_its_settings():
    policy = ApprovalPolicy.from_config({"when": ["every_n"], "n": 3})
    assert policy.needs("proposal", round_no=6, proposal_kind="knob")
    assert not policy.needs("proposal", round_no=7, proposal_kind="code")
    with pytest.raises(ApprovalError,
                       match="approvals.when.0 must be one of 'keep', 'code' or 'every_n', got 'always'"):
        ApprovalPolicy.from_config({"when": ["always"]})
    with pytest.raises(ApprovalError) as err:
        ApprovalPolicy.from_config({"when": ["keep"], "timeout": 5})
    assert str(err.value) == ("approvals.timeout: unknown key; valid keys of approvals: "
                              "name, when, n, timeout_s, default")
    with pytest.raises(ApprovalError, match="approvals.default must be one of 'approve' or 'reject', got 'maybe'"):
        ApprovalPolicy.from_config({"when": ["keep"], "default": "maybe"})
    with pytest.raises(ApprovalError, match="approvals.n must be a positive integer, got 0"):
        ApprovalPolicy.from_config({"when": ["every_n"], "n": 0})
    with pytest.raises(ValueError, match="unknown approval point"):
        policy.needs("apply", round_no=1, proposal_kind="knob")


def test_gates_approve_unasked_points_on_the_policys_behalf(tmp_path):
    d = NullGate().ask("keep", round_no=4, proposal_kind="code", summary="")
    assert (d["decision"], d["who"], d["point"], d["round"]) == ("approve", "policy:none", "keep", 4)
    keep_only = FileGate(tmp_path, ApprovalPolicy(name="keep", when=frozenset({"keep"})))
    d = keep_only.ask("proposal", round_no=2, proposal_kind="code", summary="")
    assert (d["decision"], d["who"]) == ("approve", "policy:keep")
    assert not (tmp_path / "pending.json").exists()


def test_make_gate_picks_the_gate():
    keep = ApprovalPolicy(name="keep", when=frozenset({"keep"}))
    assert isinstance(make_gate(ApprovalPolicy(), "c", interactive=True), NullGate)
    assert isinstance(make_gate(keep, "c", interactive=True), TerminalGate)
    assert isinstance(make_gate(keep, "c", interactive=False), FileGate)


def answer_later(campaign_dir, **kwargs):
    """Call approve() from another thread as soon as the request is pending; return the thread."""
    def run():
        while pending(campaign_dir) is None:
            time.sleep(POLL_S)
        approve(campaign_dir, **kwargs)
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_file_gate_waits_for_approve(tmp_path):
    gate = FileGate(tmp_path, ApprovalPolicy(name="keep", when=frozenset({"keep"}), timeout_s=30),
                    poll_s=POLL_S)
    thread = answer_later(tmp_path, note="looks right", who="alice")
    d = gate.ask("keep", round_no=3, proposal_kind="knob", summary="temperature 0.7: +0.04")
    thread.join()
    assert {k: d[k] for k in ("decision", "who", "note", "point", "round")} == {
        "decision": "approve", "who": "alice", "note": "looks right", "point": "keep", "round": 3}
    assert d["when"].endswith("+00:00")
    assert pending(tmp_path) is None and not (tmp_path / "pending.json").exists()
    with pytest.raises(ApprovalError, match="nothing is waiting for approval"):
        approve(tmp_path)


def test_file_gate_records_a_rejection(tmp_path):
    gate = FileGate(tmp_path, ApprovalPolicy(name="code", when=frozenset({"code"}), timeout_s=30),
                    poll_s=POLL_S)
    thread = answer_later(tmp_path, reject=True, note="touches the reward", who="bob")
    d = gate.ask("proposal", round_no=5, proposal_kind="code", summary="edit reward.py")
    thread.join()
    assert (d["decision"], d["who"], d["note"]) == ("reject", "bob", "touches the reward")


def test_pending_request_names_what_is_asked(tmp_path):
    gate = FileGate(tmp_path, ApprovalPolicy(name="keep", when=frozenset({"keep"}), timeout_s=30),
                    poll_s=POLL_S)
    seen = {}

    def look_then_answer():
        while (request := pending(tmp_path)) is None:
            time.sleep(POLL_S)
        seen.update(request)
        approve(tmp_path, who="carol")

    thread = threading.Thread(target=look_then_answer)
    thread.start()
    gate.ask("keep", round_no=7, proposal_kind="knob", summary="the summary")
    thread.join()
    assert (seen["round"], seen["point"], seen["summary"], seen["default"]) == (7, "keep", "the summary",
                                                                                "reject")
    assert seen["asked_at"] <= seen["expires_at"]


@pytest.mark.parametrize("default", ["reject", "approve"])
def test_file_gate_timeout_applies_the_default(tmp_path, default):
    policy = ApprovalPolicy(name="keep", when=frozenset({"keep"}), timeout_s=0.1, default=default)
    d = FileGate(tmp_path, policy, poll_s=POLL_S).ask("keep", round_no=1, proposal_kind="knob", summary="")
    assert (d["decision"], d["who"], d["round"]) == (default, "timeout", 1)
    assert pending(tmp_path) is None
    with pytest.raises(ApprovalError, match="nothing is waiting"):
        approve(tmp_path)


def test_answer_given_while_the_campaign_was_down_is_used_on_resume(tmp_path):
    # The campaign wrote its request and was killed; the person answered; the campaign resumes.
    (tmp_path / "pending.json").write_text(json.dumps({"round": 2, "point": "keep", "summary": "",
                                                       "asked_at": "2030-01-01T00:00:00+00:00"}))
    approve(tmp_path, note="while you were out", who="dave")
    policy = ApprovalPolicy(name="keep", when=frozenset({"keep"}), timeout_s=0.05)
    d = FileGate(tmp_path, policy, poll_s=POLL_S).ask("keep", round_no=2, proposal_kind="knob", summary="")
    assert (d["decision"], d["who"], d["note"]) == ("approve", "dave", "while you were out")
    # The next request does not take that stale answer for its own.
    d = FileGate(tmp_path, policy, poll_s=POLL_S).ask("keep", round_no=3, proposal_kind="knob", summary="")
    assert (d["who"], d["round"]) == ("timeout", 3)


def test_approve_with_nothing_pending_is_a_clear_error(tmp_path):
    with pytest.raises(ApprovalError, match=f"nothing is waiting for approval in {tmp_path}"):
        approve(tmp_path, note="hello")
    assert not (tmp_path / "decision.json").exists()


def test_approve_never_overwrites_an_answer(tmp_path):
    # The timeout's answer landed between approve() reading the request and writing its own.
    (tmp_path / "pending.json").write_text(json.dumps({"round": 4, "point": "keep"}))
    (tmp_path / "decision.json").write_text(json.dumps({"round": 3, "point": "keep", "who": "timeout"}))
    with pytest.raises(ApprovalError, match="round 4 keep was decided in the meantime"):
        approve(tmp_path)
    assert json.loads((tmp_path / "decision.json").read_text())["who"] == "timeout"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decision.json", "pending.json"]


def test_terminal_gate_asks_yes_no_and_a_note():
    policy = ApprovalPolicy(name="keep", when=frozenset({"keep"}))
    console = Console(file=io.StringIO(), width=80)
    gate = TerminalGate(policy, console=console, stream=io.StringIO("y\nnice gain\n"))
    d = gate.ask("keep", round_no=9, proposal_kind="knob", summary="temperature 0.7: +0.04", diff=DIFF)
    assert (d["decision"], d["note"], d["point"], d["round"]) == ("approve", "nice gain", "keep", 9)
    shown = console.file.getvalue()
    assert "round 9: approve the keep?" in shown and "temperature 0.7" in shown
    assert "-  temperature: 1.0" in shown and "+  temperature: 0.7" in shown
    assert shown.index("+  temperature: 0.7") < shown.index("Approve? [y/n]: ") < shown.index("Note (optional): ")
    gate = TerminalGate(policy, console=console, stream=io.StringIO("n\n\n"))
    assert gate.ask("keep", round_no=10, proposal_kind="knob", summary="")["decision"] == "reject"


def test_questions_state_the_change_and_the_paired_delta_with_its_interval():
    proposal = parse_proposal({"hypothesis": "cooler sampling", "edits": [
        {"knob": "sampling.temperature", "value": 0.7},
        {"file": "reward.py", "search": "a = 1", "replace": "a = 2"}]})
    assert proposal_question(proposal) == ('Hypothesis: cooler sampling\nEdits:\n- sampling.temperature = 0.7\n'
                                           '- reward.py: replace "a = 1" with "a = 2"')
    verdict = {"delta": 0.0412, "ci95": [0.011, 0.0705], "n_examples": 200, "n_seeds": 3, "margin": 0.0,
               "reason": "keep: the lower bound is above the margin"}
    assert keep_question(proposal, verdict).endswith(
        "Accuracy change +0.041 (95% CI [+0.011, +0.070]) over 200 examples x 3 seeds; margin +0.000.\n"
        "Verdict: keep: the lower bound is above the margin")


# What a person at a terminal sees, played through a VT100 emulator: a live view is running, the
# gate asks inside `paused()`, the live view comes back after the answer.
TERMINAL_CHILD = """
import time
from harness.approvals import ApprovalPolicy, TerminalGate
from harness.live import LiveView
live = LiveView("demo", 3)
gate = TerminalGate(ApprovalPolicy(name="keep", when=frozenset({"keep"})))
with live:
    live.step(1, "gate_keep")
    time.sleep(0.5)
    with live.paused():
        d = gate.ask("keep", round_no=1, proposal_kind="knob", summary="Accuracy change +0.041", diff=%r)
    live.step(1, "decide")
    live.decision(1, d["decision"], d["note"])
    time.sleep(0.5)
"""


def test_terminal_gate_under_a_live_view_is_seen_and_answered_in_a_real_terminal():
    pexpect = pytest.importorskip("pexpect")
    pyte = pytest.importorskip("pyte")
    screen = pyte.Screen(100, 40)
    stream = pyte.ByteStream(screen)
    child = pexpect.spawn(sys.executable, ["-c", TERMINAL_CHILD % DIFF], dimensions=(40, 100),
                          env=terminal_env(PYTHONPATH=str(CONF.parent)))

    def expect(pattern):
        child.expect(pattern, timeout=60)
        stream.feed(child.before + (child.after if isinstance(child.after, bytes) else b""))

    try:
        expect(r"Approve\?[^\n]*\[y/n\][^:\n]*: ")
        deadline = time.monotonic() + 1.5  # a live view still drawing would cover the question now
        while time.monotonic() < deadline:
            try:
                stream.feed(child.read_nonblocking(65536, timeout=0.2))
            except pexpect.TIMEOUT:
                pass
        asked = "\n".join(line.rstrip() for line in screen.display).rstrip()
        assert "round 1: approve the keep?" in asked and "Accuracy change +0.041" in asked, asked
        assert "-  temperature: 1.0" in asked and "+  temperature: 0.7" in asked, asked
        assert asked.splitlines()[-1] == "Approve? [y/n]:", asked
        child.sendline("n")
        expect(r"Note \(optional\): ")  # the patterns run to the end of a prompt: nothing is left over
        child.sendline("not yet")
        expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    after = "\n".join(line.rstrip() for line in screen.display)
    assert "+  temperature: 0.7" in after and "Approve? [y/n]: n\nNote (optional): not yet\n" in after, after
    assert after.index("Note (optional): not yet") < after.index("step: decide"), after
    assert "│ reject" in after and "not yet" in after.split("step: decide")[1], after
