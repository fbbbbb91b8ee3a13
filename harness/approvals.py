"""Approval policies and gates: when a person must approve a step, and how they are asked.

A policy (`conf/approvals/*.yaml`) says at which points of a round a person is asked:
`keep` before every keep, `code` before running a proposal that edits a file (knob-only
proposals run unasked), `every_n` at the proposal of every n-th round. A gate asks:

- `NullGate` never asks (policy `none`);
- `TerminalGate` asks y/n and a note on the terminal, for interactive runs;
- `FileGate` writes `campaign_dir/pending.json` and waits until `researcher approve NAME`
  (the `approve` function here) answers from another shell, or until the policy's timeout,
  when the policy's default (reject unless set otherwise) is applied with who="timeout".

A person is shown what is asked: `keep_question` (the hypothesis, the edits, the accuracy change
with its interval) or `proposal_question` (the hypothesis and the edits, before anything is
applied), and the candidate's diff when there is one. Every gate answers every `ask` with a
decision dict {decision, who, when, note, point, round} (points the policy does not ask about are
approved with who="policy:NAME"), which the loop records in the journal, the memory and MLflow.

    gate = make_gate(policy, "runs/demo", interactive=sys.stdin.isatty())
    d = gate.ask("keep", round_no=3, proposal_kind="knob", summary=keep_question(proposal, verdict),
                 diff=workspace.diff(3))
    # elsewhere: approve("runs/demo", reject=False, note="looks right")
"""

from __future__ import annotations

import getpass
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TextIO

from rich.console import Console, Group
from rich.panel import Panel
from rich.prompt import Confirm, Prompt
from rich.syntax import Syntax
from rich.text import Text

from harness.config import Approvals, ConfigError, parse_config
from harness.journal import utc_now, write_json
from rl_pipeline.files import write_atomic

POINTS = ("proposal", "keep")
PENDING_FILE = "pending.json"
DECISION_FILE = "decision.json"
# The terminal shows this many lines of a diff; `researcher diff NAME ROUND` shows all of it.
DIFF_LINES = 80


class ApprovalError(RuntimeError):
    """A policy that cannot be read, or an approval with nothing to approve; the message says why."""


# ---------------------------------------------------------------- policies

_DEFAULT = Approvals(name="none")  # the schema's defaults (harness/config.py), for a policy built in code


@dataclass(frozen=True)
class ApprovalPolicy:
    """When to ask a person, how long to wait for an answer, and what to do when none comes."""

    name: str = _DEFAULT.name
    when: frozenset[str] = frozenset(_DEFAULT.when)
    n: int = _DEFAULT.n
    timeout_s: float = _DEFAULT.timeout_s
    default: str = _DEFAULT.default

    @classmethod
    def from_config(cls, cfg: Mapping) -> ApprovalPolicy:
        """The policy from a `conf/approvals/*.yaml` mapping (a dict or an OmegaConf node), checked
        by the schema (`harness.config.Approvals`): unknown keys, triggers and bounds are errors."""
        if not isinstance(cfg, dict):  # an OmegaConf node
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_container(cfg, resolve=True)
        try:
            settings = parse_config(Approvals, cfg, "approvals")
        except ConfigError as err:
            raise ApprovalError(str(err)) from None
        return cls(name=settings.name, when=frozenset(settings.when), n=settings.n, timeout_s=settings.timeout_s,
                   default=settings.default)

    def needs(self, point: str, *, round_no: int, proposal_kind: str) -> bool:
        """Whether a person must approve `point` ("proposal" or "keep") of round `round_no`.

        The loop asks at "keep" only when the verdict is a keep: a revert needs nobody's consent.
        """
        if point not in POINTS:
            raise ValueError(f"unknown approval point {point!r}; the points are {', '.join(POINTS)}")
        if point == "keep":
            return "keep" in self.when
        return (("code" in self.when and proposal_kind == "code")
                or ("every_n" in self.when and round_no % self.n == 0))


def make_decision(decision: str, *, who: str, note: str, point: str, round_no: int) -> dict:
    """The record of one decision, as the journal, the memory and MLflow store it."""
    return {"decision": decision, "who": who, "when": utc_now(), "note": note,
            "point": point, "round": round_no}


def _edit_line(edit: Mapping) -> str:
    if "knob" in edit:
        return f"- {edit['knob']} = {json.dumps(edit['value'])}"
    if "move" in edit:
        return f"- move {edit['move']} (the scaffold's declared patch; the diff shows it)"
    return f"- {edit['file']}: replace {json.dumps(edit['search'])} with {json.dumps(edit['replace'])}"


def proposal_question(proposal) -> str:
    """What a person approves before a proposal runs: its hypothesis and every edit."""
    data = proposal.to_dict()
    return "\n".join([f"Hypothesis: {data['hypothesis']}", "Edits:", *map(_edit_line, data["edits"])])


def keep_question(proposal, verdict: Mapping) -> str:
    """What a person approves before a keep: the change, and the paired accuracy change with its
    95% interval against the margin (the diff goes to the gate alongside)."""
    low, high = verdict["ci95"]
    return "\n".join([proposal_question(proposal),
                      f"Accuracy change {verdict['delta']:+.3f} (95% CI [{low:+.3f}, {high:+.3f}]) over "
                      f"{verdict['n_examples']} examples x {verdict['n_seeds']} seeds; margin "
                      f"{verdict['margin']:+.3f}.",
                      f"Verdict: {verdict['reason']}"])


def current_user() -> str:
    # getpass fails in containers whose uid has no passwd entry; the uid still names someone.
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


# ---------------------------------------------------------------- gates

class Gate:
    """Approves on the policy's behalf where it does not ask; asks a person where it does."""

    def __init__(self, policy: ApprovalPolicy):
        self.policy = policy

    def ask(self, point: str, *, round_no: int, proposal_kind: str, summary: str, diff: str = "") -> dict:
        """The decision on `point` of round `round_no`; `summary` (and `diff`, the candidate's
        patch when there is one) is what the person is shown."""
        if not self.policy.needs(point, round_no=round_no, proposal_kind=proposal_kind):
            return make_decision("approve", who=f"policy:{self.policy.name}", note="",
                                 point=point, round_no=round_no)
        return self._ask_person(point, round_no, summary, diff)

    def _ask_person(self, point: str, round_no: int, summary: str, diff: str) -> dict:
        raise NotImplementedError


class NullGate(Gate):
    """Never asks: every point is approved with who="policy:none"."""

    def __init__(self):
        super().__init__(ApprovalPolicy())


class TerminalGate(Gate):
    """Asks on the terminal (stdin a TTY): the summary, then approve y/n and an optional note.

    A person at the terminal is waited for without a timeout: the timeout exists for runs that
    nobody watches. `console` and `stream` default to the terminal; tests pass their own.
    """

    def __init__(self, policy: ApprovalPolicy, *, console: Console | None = None,
                 stream: TextIO | None = None):
        super().__init__(policy)
        self.console = console or Console()
        self.stream = stream

    def _ask_person(self, point: str, round_no: int, summary: str, diff: str) -> dict:
        self.console.print(question_panel(point, round_no, summary, diff))
        approved = Confirm.ask("Approve?", console=self.console, stream=self.stream)
        note = Prompt.ask("Note (optional)", default="", show_default=False,
                          console=self.console, stream=self.stream)
        return make_decision("approve" if approved else "reject", who=current_user(), note=note,
                             point=point, round_no=round_no)


def question_panel(point: str, round_no: int, summary: str, diff: str) -> Panel:
    """The question as a person sees it: the summary, then the diff (its first DIFF_LINES lines)."""
    parts = [Text(summary)]
    if diff:
        lines = diff.splitlines()
        parts += [Text(""), Syntax("\n".join(lines[:DIFF_LINES]), "diff", theme="ansi_dark", word_wrap=True)]
        if len(lines) > DIFF_LINES:
            parts.append(Text(f"... {len(lines) - DIFF_LINES} more lines (`researcher diff` shows them all)"))
    return Panel(Group(*parts), title=f"round {round_no}: approve the {point}?")


class FileGate(Gate):
    """Asks through files, for runs without a terminal: `researcher approve` answers.

    The request is `pending.json`; the answer is `decision.json`, created only if absent (see
    `_create_once`), so `approve` and the timeout cannot both decide. The answer stays until the
    next request: a campaign killed while waiting finds it on resume and does not ask again.
    """

    def __init__(self, campaign_dir: str | Path, policy: ApprovalPolicy, *, poll_s: float = 1.0):
        super().__init__(policy)
        self.dir = Path(campaign_dir)
        self.poll_s = poll_s

    def _ask_person(self, point: str, round_no: int, summary: str, diff: str) -> dict:
        decision_path = self.dir / DECISION_FILE
        answer = _read_json(decision_path)
        if not _answers(answer, round_no, point):
            decision_path.unlink(missing_ok=True)  # an earlier request's answer
            answer = self._wait(point, round_no, summary, diff)
        (self.dir / PENDING_FILE).unlink(missing_ok=True)
        return answer

    def _wait(self, point: str, round_no: int, summary: str, diff: str) -> dict:
        asked = datetime.now(timezone.utc)
        expires = asked + timedelta(seconds=self.policy.timeout_s)
        write_json(self.dir / PENDING_FILE, {
            "round": round_no, "point": point, "summary": summary, "diff": diff,
            "asked_at": asked.isoformat(timespec="seconds"),
            "expires_at": expires.isoformat(timespec="seconds"), "default": self.policy.default})
        decision_path = self.dir / DECISION_FILE
        deadline = time.monotonic() + self.policy.timeout_s
        while (answer := _read_json(decision_path)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                note = f"no answer within {self.policy.timeout_s:g} s; the default was applied"
                _create_once(decision_path, make_decision(
                    self.policy.default, who="timeout", note=note, point=point, round_no=round_no))
                # If `approve` won the race, its answer is the one in the file: read it back.
                return _read_json(decision_path)
            time.sleep(min(self.poll_s, left))
        return answer


def make_gate(policy: ApprovalPolicy, campaign_dir: str | Path, interactive: bool) -> Gate:
    """The gate for `policy`: none when it never asks, the terminal when there is one, else files."""
    if not policy.when:
        return NullGate()
    return TerminalGate(policy) if interactive else FileGate(campaign_dir, policy)


# ---------------------------------------------------------------- the other shell's side

def pending(campaign_dir: str | Path) -> dict | None:
    """The request a campaign is waiting on ({round, point, summary, diff, asked_at, ...}), or None."""
    campaign_dir = Path(campaign_dir)
    request = _read_json(campaign_dir / PENDING_FILE)
    if request is None or _answers(_read_json(campaign_dir / DECISION_FILE),
                                   request["round"], request["point"]):
        return None
    return request


def approve(campaign_dir: str | Path, reject: bool = False, note: str = "",
            who: str | None = None) -> dict:
    """Answer the campaign's pending request (what `researcher approve NAME` runs); the decision."""
    request = pending(campaign_dir)
    if request is None:
        raise ApprovalError(f"nothing is waiting for approval in {campaign_dir}")
    decision = make_decision("reject" if reject else "approve", who=who or current_user(),
                             note=note, point=request["point"], round_no=request["round"])
    if not _create_once(Path(campaign_dir) / DECISION_FILE, decision):
        raise ApprovalError(f"round {request['round']} {request['point']} was decided in the "
                            "meantime (the timeout or another approve); see `researcher status`")
    return decision


# ---------------------------------------------------------------- files

def _answers(decision: dict | None, round_no: int, point: str) -> bool:
    return decision is not None and decision["round"] == round_no and decision["point"] == point


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _create_once(path: Path, data: dict) -> bool:
    """Write `data` to `path` only if no file is there; False if one is. Readers see all or nothing,
    and "create if absent" is atomic across processes (see `write_atomic`'s `exclusive`)."""
    return write_atomic(path, json.dumps(data, indent=1, sort_keys=True), exclusive=True)
