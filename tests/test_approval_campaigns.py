"""Approval gates inside real campaigns: a person at a terminal (a real pseudo-terminal, read back
through a terminal emulator), and `researcher approve` answering from another process.

A random-weight micro base and a two-GRPO-step scaffold keep a round to seconds; `margin=-1` makes
the round's verdict a keep, so the keep gate asks. What is checked is what a person sees (the
question, the diff, the accuracy change with its interval, the prompt, the live view after the
answer) and what the campaign records (journal, memory, MLflow).
"""

import json
import os
import re
import subprocess
import sys
import time

import git
import pexpect
import pyte
import pytest
from fast_scaffold import campaign_root
from mlflow.tracking import MlflowClient
from terminal_env import terminal_env


PROPOSAL = {"hypothesis": "lower temperature sharpens answers",
            "edits": [{"knob": "sampling.temperature", "value": 0.3}]}
ROWS, COLUMNS = 60, 150
CAMPAIGN_S = 900  # a baseline and one round on a busy 2-core machine, with room to spare


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return campaign_root(tmp_path_factory.mktemp("approvals"), [PROPOSAL])


def start_args(root, scaffold, script, name, **extra):
    items = {"name": name, "rounds": 1, "researcher": "scripted", "researcher.file": str(script),
             "approvals": "keep", "margin": -1.0, "runs_dir": str(root / "runs"), "scaffold": str(scaffold),
             "baseline_seeds": "[0,1]", "eval_seeds": "[0]", "reeval_seeds": "[1]"} | extra
    return ["-m", "harness.cli", "start", *(f"{k}={v}" for k, v in items.items())]


def child_env() -> dict:
    return terminal_env(PYTHONUNBUFFERED="1")


def candidate_diff(camp, n: int) -> str:
    """`git diff` of round n's candidate commit against its parent, from the scaffold repo itself."""
    repo = git.Repo(camp / "scaffold")
    commit = repo.commit(f"cand/{n:03d}")
    return repo.git.diff(commit.parents[0].hexsha, commit.hexsha)


def journal_state(camp) -> dict:
    return json.loads((camp / "journal.json").read_text())


def round_run(root, name: str, n: int):
    client = MlflowClient(f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("agentic-researcher").experiment_id
    runs = client.search_runs([experiment], f"tags.campaign = '{name}' AND tags.round = '{n}'")
    assert len(runs) == 1
    return runs[0]


class Screen:
    """What a person at the terminal sees: the child's output played through a VT100 emulator."""

    def __init__(self, child: pexpect.spawn):
        self.child = child
        self.screen = pyte.Screen(COLUMNS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.seen = b""

    def feed(self, data: bytes) -> None:
        self.seen += data
        self.stream.feed(data)

    def expect(self, pattern, timeout: float) -> int:
        """Read up to the pattern (or the first of a list that shows up); which one it was."""
        index = self.child.expect(pattern, timeout=timeout)
        after = self.child.after if isinstance(self.child.after, bytes) else b""  # EOF's is a class
        self.feed(self.child.before + after)
        return index

    def settle(self, seconds: float = 2.0) -> None:
        """Read whatever the child draws in the next `seconds` (a live view redraws 4 times a second)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.feed(self.child.read_nonblocking(65536, timeout=0.2))
            except pexpect.TIMEOUT:
                pass
            except pexpect.EOF:
                return

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)


@pytest.mark.slow
def test_terminal_gate_in_a_campaign_shows_the_question_and_the_live_view_resumes(setup):
    root, scaffold, script = setup
    camp = root / "runs" / "pty"
    child = pexpect.spawn(sys.executable, start_args(root, scaffold, script, "pty"), env=child_env(),
                          cwd=os.getcwd(), dimensions=(ROWS, COLUMNS))
    screen = Screen(child)
    try:
        asked = r"Approve\?[^\n]*\[y/n\][^:\n]*: "  # styles sit between the words
        # the live view runs; a question first means it drew nothing (and would wait here for ever)
        first = screen.expect([r"step: (analyze|propose|evaluate)", asked], timeout=CAMPAIGN_S)
        assert first == 0, screen.seen.decode(errors="replace")[-3000:]
        screen.expect(asked, timeout=CAMPAIGN_S)
        screen.settle()  # a live view still running would now draw over the question
        shown = screen.text()
        question = re.sub(r"\s+", " ", shown)
        assert "round 1: approve the keep?" in shown, shown
        assert "Hypothesis: lower temperature sharpens answers" in question, shown
        assert "sampling.temperature = 0.3" in question, shown
        assert re.search(r"Accuracy change [+-]\d\.\d{3} \(95% CI \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]\) over "
                         r"\d+ examples x 1 seeds; margin -1\.000", question), shown
        diff_lines = [line for line in candidate_diff(camp, 1).splitlines() if line.startswith(("+ ", "- "))]
        assert diff_lines and all(line in shown for line in diff_lines), shown
        assert shown.rstrip().splitlines()[-1].startswith("Approve? [y/n]"), shown  # the prompt is last

        child.sendline("y")
        screen.expect(r"Note \(optional\): ", timeout=60)
        child.sendline("ship it")
        screen.expect(r"last decisions", timeout=CAMPAIGN_S)  # the live view is back
        screen.expect(pexpect.EOF, timeout=CAMPAIGN_S)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, screen.seen.decode(errors="replace")[-3000:]
    final = screen.text()
    # the resumed live view is drawn below the answered question, not over it
    assert "Approve? [y/n]: y\nNote (optional): ship it\n" in final, final
    assert final.index("Note (optional): ship it") < final.rindex("step: "), final
    assert re.search(r"│ 1\s+│ keep", final), final  # the live view's last decisions, after the answer

    journal = journal_state(camp)
    decision = journal["rounds"]["1"]["steps"]["gate_keep"]["output"]
    history = journal["state"]["history"]
    assert [(h["round"], h["decision"]) for h in history] == [(0, "baseline"), (1, "keep")]
    assert (decision["decision"], decision["note"], decision["point"]) == ("approve", "ship it", "keep")
    tags = round_run(root, "pty", 1).data.tags
    assert (tags["approval.decision"], tags["approval.note"]) == ("approve", "ship it")
    assert "approve (keep) by" in (camp / "memory.md").read_text()


@pytest.mark.slow
def test_file_gate_in_a_campaign_is_answered_by_researcher_approve(setup):
    root, scaffold, script = setup
    camp = root / "runs" / "filegate"
    env = child_env()
    campaign = subprocess.Popen([sys.executable, *start_args(root, scaffold, script, "filegate", live="false")],
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + CAMPAIGN_S
        while not (camp / "pending.json").exists():
            assert campaign.poll() is None, campaign.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the campaign never asked"
            time.sleep(0.5)
        request = json.loads((camp / "pending.json").read_text())
        assert (request["round"], request["point"]) == (1, "keep")
        assert request["diff"] == candidate_diff(camp, 1) != ""
        assert "Accuracy change" in request["summary"] and "95% CI" in request["summary"]
        assert journal_state(camp)["state"]["status"] == "pending_approval"

        shown = subprocess.run([sys.executable, "-m", "harness.cli", "approve", "filegate", f"runs_dir={root / 'runs'}",
                                "--show"], env=env, capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr
        assert "round 1: approve the keep?" in shown.stdout and "sampling.temperature = 0.3" in shown.stdout
        assert (camp / "pending.json").exists() and not (camp / "decision.json").exists()  # --show answers nothing

        answer = subprocess.run([sys.executable, "-m", "harness.cli", "approve", "filegate", f"runs_dir={root / 'runs'}",
                                 "--reject", "--note", "not on a random policy"],
                                env=env, capture_output=True, text=True, timeout=120)
        assert answer.returncode == 0, answer.stderr
        assert "reject round 1 (keep)" in answer.stdout
        assert campaign.wait(timeout=CAMPAIGN_S) == 0, campaign.stdout.read().decode()[-3000:]
    finally:
        if campaign.poll() is None:
            os.killpg(campaign.pid, 9)
    state = journal_state(camp)["state"]
    assert [(h["round"], h["decision"]) for h in state["history"]] == [(0, "baseline"), (1, "revert")]
    verdict = json.loads((camp / "rounds" / "001" / "verdict.json").read_text())
    assert verdict["decision"] == "keep"  # the comparison said keep; the person said no
    assert "refs/rejected/001" in [r.path for r in git.Repo(camp / "scaffold").refs]
    tags = round_run(root, "filegate", 1).data.tags
    assert (tags["decision"], tags["approval.decision"], tags["approval.note"]) == ("revert", "reject",
                                                                                  "not on a random policy")
    # the description says who turned the keep down, above the diff
    assert "**Approval:** reject of the keep by " in tags["mlflow.note.content"]
    assert tags["mlflow.note.content"].index("not on a random policy") < tags["mlflow.note.content"].index("```diff")
