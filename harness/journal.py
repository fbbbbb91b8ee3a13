"""The campaign's journal: what every round has done so far, so a killed campaign resumes exactly.

`runs/<campaign>/journal.json` holds campaign-level state (the config snapshot, the status, the
incumbent, the noise floor, counters) and, per round, the output of every finished step. It is
rewritten atomically after every change (a temp file in the same folder, fsync, os.replace), so
after a kill -9 at any moment it holds either the state before a step or the state after it.

`run_step` is what makes a round idempotent: a step whose output is already in the journal is not
run again, its recorded output is returned instead. A resumed campaign therefore replays the
finished steps for free, re-runs only the one it was killed in, and never repeats a decision.
A journal written by older code (an older `version`) is read in today's form, so a campaign
killed before an upgrade resumes after it.

    with CampaignLock("runs/demo"):                  # a second process gets CampaignBusy
        journal = Journal("runs/demo")
        n = journal.current_round() or journal.last_finished_round() + 1
        journal.begin_round(n)
        evidence = run_step(journal, n, "analyze", lambda: analyze(...))
        ...
        run_step(journal, n, "decide", lambda: decide(...),
                 updates=lambda out: {"incumbent": out["incumbent"]})
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rl_pipeline.files import file_lock, write_atomic

SCHEMA_VERSION = 2
JOURNAL_FILE = "journal.json"
LOCK_FILE = ".lock"
# A round's steps in order, each doing one thing: `compare` gives the verdict, `reeval` (only when
# that verdict asks for more seeds) the verdict on all of them, `retrain` (only when a change to
# training would be kept, or gains beyond the noise floor) the verdict across fresh training
# seeds, `decide` moves git and nothing
# else, `heldout` scores a keep for the record, `learn` updates and saves the researcher, and
# `record` writes memory, the round's files, the plot and MLflow.
STEPS = ("analyze", "propose", "gate_proposal", "apply", "evaluate", "compare", "reeval", "retrain", "critique",
         "gate_keep", "decide", "heldout", "learn", "record")
# A round is finished when its last step is; steps before it may be skipped (a rejected proposal
# has nothing to evaluate), so "finished" cannot mean "every step done".
FINAL_STEP = STEPS[-1]
SNAPSHOTS = "snapshots"  # campaign_dir/snapshots/NNN-k: candidate k's commit while it is evaluated
STATUSES = ("running", "paused", "pending_approval", "budget_exhausted", "finished", "failed")


class JournalError(RuntimeError):
    """A journal operation that would break the round sequence or repeat a step; the message says why."""


def utc_now() -> str:
    """The current time as ISO 8601 in UTC, to the second: how every timestamp here is written."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: Any) -> None:
    """Write `data` as JSON so that a reader sees the old file or the new one, never a partial one."""
    write_atomic(Path(path), json.dumps(data, indent=1, sort_keys=True) + "\n")


def _json_copy(value: Any, what: str) -> Any:
    """A deep copy of `value` through JSON: checks it can be stored and detaches it from the caller."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise JournalError(f"{what} is not JSON-serializable: {e}") from None


def _state_updates(updates: dict[str, Any], what: str) -> dict[str, Any]:
    """`updates` to campaign-level state, copied and checked before anything is changed."""
    updates = _json_copy(updates, what)
    if "status" in updates and updates["status"] not in STATUSES:
        raise JournalError(f"status {updates['status']!r} is not one of {', '.join(STATUSES)}")
    return updates


# ---------------------------------------------------------------- the journal

class Journal:
    """The state of one campaign, loaded from `campaign_dir/journal.json` (empty if there is none yet)."""

    def __init__(self, campaign_dir: str | Path):
        self.dir = Path(campaign_dir)
        self.path = self.dir / JOURNAL_FILE
        if self.path.exists():
            self._data = json.loads(self.path.read_text())
            if self._data.get("version") == 1:
                self._data = _from_version_1(self._data)  # written back with the next change
            if self._data.get("version") != SCHEMA_VERSION:
                raise JournalError(f"{self.path}: schema version {self._data.get('version')!r}, "
                                   f"this code reads version {SCHEMA_VERSION}")
        else:
            self._data = {"version": SCHEMA_VERSION, "state": {}, "rounds": {}}

    def _save(self) -> None:
        # Changes are applied in memory first; if this write fails the process is about to stop
        # anyway, and the next Journal() reads the file, which is the authority.
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self._data)

    # ------------------------------------------------------------ campaign-level state

    def set(self, key: str, value: Any) -> None:
        """Store campaign-level state (config, status, incumbent, noise_floor, tokens_used, ...)."""
        self._data["state"].update(_state_updates({key: value}, f"campaign state {key!r}"))
        self._save()

    def get(self, key: str, default: Any = None) -> Any:
        return copy.deepcopy(self._data["state"].get(key, default))

    # ------------------------------------------------------------ rounds and steps

    def _round(self, n: int) -> dict:
        try:
            return self._data["rounds"][str(n)]
        except KeyError:
            raise JournalError(f"round {n} has not begun") from None

    def begin_round(self, n: int) -> None:
        """Open round `n`; a no-op if it is already open, so a resumed campaign can call it again.

        Rounds are numbered 1, 2, 3 ... with no gaps, and one round is open at a time: that is
        how the journal guarantees no round is lost or skipped.
        """
        if str(n) in self._data["rounds"]:
            return
        open_round = self.current_round()
        if open_round is not None:
            raise JournalError(f"round {open_round} is not finished; it must finish before round {n}")
        expected = self.last_finished_round() + 1
        if n != expected:
            raise JournalError(f"round {n} cannot begin: the next round is {expected}")
        self._data["rounds"][str(n)] = {"started_at": utc_now(), "finished_at": None, "steps": {}}
        self._save()

    def step_done(self, n: int, step: str, output: dict, *, seconds: float | None = None,
                  updates: dict[str, Any] | None = None) -> None:
        """Record that `step` of round `n` finished with `output` (a JSON-serializable dict).

        `updates` are campaign-level keys written in the same atomic write, for steps whose effect
        must never be half-recorded: a decision and the incumbent it moves, a round and its tokens.
        """
        if step not in STEPS:
            raise JournalError(f"unknown step {step!r}; the steps are {', '.join(STEPS)}")
        if not isinstance(output, dict):
            raise JournalError(f"step {step} must output a dict, got {type(output).__name__}")
        record = self._round(n)
        if step in record["steps"]:
            raise JournalError(f"round {n} step {step} is already done; it is never run twice")
        entry = {"output": _json_copy(output, f"round {n} step {step} output"),
                 "done_at": utc_now(), "seconds": seconds}
        updates = _state_updates(updates or {}, f"round {n} step {step} updates")
        record["steps"][step] = entry
        if step == FINAL_STEP:
            record["finished_at"] = entry["done_at"]
        self._data["state"].update(updates)
        self._save()

    def is_done(self, n: int, step: str) -> bool:
        return step in self._data["rounds"].get(str(n), {}).get("steps", {})

    def step_output(self, n: int, step: str) -> dict | None:
        """The recorded output of a finished step (a copy), or None if it has not finished."""
        if not self.is_done(n, step):
            return None
        return copy.deepcopy(self._data["rounds"][str(n)]["steps"][step]["output"])

    def started_at(self, n: int) -> str | None:
        """When round n began (ISO 8601, UTC, to the second), None if it has not."""
        return self._data["rounds"].get(str(n), {}).get("started_at")

    def step_done_at(self, n: int, step: str) -> str | None:
        """When a finished step was journaled (ISO 8601, UTC, to the second), None if it has not been."""
        if not self.is_done(n, step):
            return None
        return self._data["rounds"][str(n)]["steps"][step]["done_at"]

    def step_seconds(self, n: int, step: str) -> float | None:
        """How long a finished step took (None if unknown or unfinished): the benchmark's time split."""
        if not self.is_done(n, step):
            return None
        return self._data["rounds"][str(n)]["steps"][step]["seconds"]

    def round_done(self, n: int) -> bool:
        return self.is_done(n, FINAL_STEP)

    def last_finished_round(self) -> int:
        """The highest finished round, 0 before the first one finishes."""
        return max((int(n) for n in self._data["rounds"] if self.round_done(int(n))), default=0)

    def current_round(self) -> int | None:
        """The round that has begun and not finished, or None between rounds."""
        return next((int(n) for n in self._data["rounds"] if not self.round_done(int(n))), None)


def _from_version_1(data: dict) -> dict:
    """A version 1 journal in today's form. Version 1 scored a keep on held-out inside `decide`
    (its output held `heldout_accuracy`) and learned inside `record`, marking the last round
    learned from in the state key `learned_round`; `decide` did not record the commits it saw.
    Those become the `heldout` and `learn` steps, so a campaign killed mid-round by the old code
    resumes without scoring held-out or learning a second time."""
    data = copy.deepcopy(data)
    learned_round = data["state"].pop("learned_round", None) or 0
    for n, record in data["rounds"].items():
        steps = record["steps"]
        if "decide" not in steps:
            continue
        decide = steps["decide"]
        decided = decide["output"]
        heldout = decided.pop("heldout_accuracy", None)
        candidate = (steps.get("apply") or {}).get("output", {}).get("commit")
        decided.setdefault("commits", {"incumbent_before": None, "candidate": candidate})  # before: unknown
        moved = {"done_at": decide["done_at"], "seconds": None}
        if decided["decision"] == "keep":
            steps["heldout"] = {"output": {"heldout_accuracy": heldout}} | moved
        proposed = steps.get("propose", {}).get("output", {})
        if proposed.get("proposal") and ("record" in steps or int(n) <= learned_round):
            steps["learn"] = {"output": {"decision": decided["decision"]}} | moved
    data["version"] = 2
    return data


def run_step(journal: Journal, n: int, step: str, fn: Callable[[], dict], *,
             updates: Callable[[dict], dict[str, Any]] | None = None) -> dict:
    """The output of `step` in round `n`: the recorded one if it already ran, else `fn()`'s, recorded.

    `updates(output)` gives campaign-level state to write together with the step (see `step_done`).
    The returned dict is always the journal's copy, so a fresh run and a resumed run hand the next
    step exactly the same value (tuples as lists, no references into `fn`'s objects).
    """
    if not journal.is_done(n, step):
        start = time.perf_counter()
        output = fn()
        seconds = time.perf_counter() - start
        journal.step_done(n, step, output, seconds=round(seconds, 3),
                          updates=updates(output) if updates else None)
    return journal.step_output(n, step)


def incumbent_dir(campaign_dir: str | Path, incumbent: dict) -> Path:
    """The incumbent's round folder from the journal's `incumbent` entry. Paths are stored relative
    to the campaign; journals from before that hold `<runs_dir>/<name>/rounds/NNN`, whose
    `rounds/NNN` tail is taken from this campaign, so a renamed folder never reads another's."""
    parts = Path(incumbent["result"]).parts
    if "rounds" in parts:
        last = len(parts) - 1 - parts[::-1].index("rounds")
        parts = parts[last:]
    return Path(campaign_dir).joinpath(*parts)


def heldout_dir(campaign_dir: str | Path, journal: Journal, round_no: int) -> Path:
    """Where the campaign scored round `round_no`'s incumbent on held-out (0: the baseline): its
    round's folder, or in a round of several its chosen candidate's (only that one has it)."""
    if round_no == 0:
        return Path(campaign_dir) / journal.get("baseline")["result"]
    folder = Path(campaign_dir) / "rounds" / f"{round_no:03d}"
    return next(held for held in (folder / "heldout", *sorted(folder.glob("cand-*/heldout")))
                if (held / "result.json").is_file())


# ---------------------------------------------------------------- one process per campaign

class CampaignBusy(RuntimeError):
    """Another process holds the campaign's lock."""

    def __init__(self, campaign_dir: Path, pid: int | None):
        self.pid = pid
        holder = f"process {pid}" if pid else "another process"
        super().__init__(f"campaign {campaign_dir} is in use by {holder}; "
                         "wait for it to finish or stop it, then run the command again")


class CampaignLock:
    """An exclusive, non-blocking lock on a campaign, held for the lifetime of a `with` block.

    It is an flock on `campaign_dir/.lock`, not a pid file: the kernel drops it when the holder
    dies, kill -9 included, so a crashed campaign never needs a stale lock cleaned by hand. The
    holder's pid is written into the file only to name it in the error the next process gets.
    The descriptor is not inherited by subprocesses (Python opens files non-inheritable), so a
    runner child that outlives a killed campaign does not keep the campaign locked.
    """

    def __init__(self, campaign_dir: str | Path):
        self.dir = Path(campaign_dir)
        self.path = self.dir / LOCK_FILE
        self._held = contextlib.ExitStack()
        self._fd: int | None = None

    def __enter__(self) -> CampaignLock:
        try:
            fd = self._held.enter_context(file_lock(self.path, blocking=False))
        except BlockingIOError:
            raise CampaignBusy(self.dir, _holder_pid(self.path)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        os.ftruncate(self._fd, 0)
        self._held.close()
        self._fd = None


def is_locked(campaign_dir: str | Path) -> bool:
    """Whether a process holds the campaign's lock now. A journal that says `running` while no
    process holds the lock belongs to a campaign that was killed."""
    path = Path(campaign_dir) / LOCK_FILE
    if not path.exists():
        return False
    try:
        with file_lock(path, shared=True, blocking=False):
            return False
    except BlockingIOError:
        return True


def _holder_pid(path: Path) -> int | None:
    # The holder writes its pid just after taking the lock; give it a moment if we came in between.
    for _ in range(20):
        text = path.read_text(errors="replace").strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.01)
    return None
