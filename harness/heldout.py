"""A keep scored on held-out for the record (the `heldout` step), in its own round or beside the next.

Held-out decides nothing: the researcher never sees it and no decision waits on it. So where the
runner evaluates several jobs at once (`runner=ray` with more than one worker, or `heldout_beside:
true`), a keep's held-out runs stay off the campaign's path: they are sent with the next round's
first evaluations (a round of a GRPO candidate beside a sampling-only one leaves a worker idle for
most of it), and the kept round's `heldout` step is journaled during the next round, before its
decision (the incumbent is still the kept one then), which brings the kept round's history entry,
memory, plot and MLflow run up to date. A campaign's last round scores its keep in place; a campaign
that ends or stops otherwise (the researcher runs out or stops it, a resume asks for fewer rounds)
scores a keep still pending before it returns, and a kill anywhere leaves it pending for the resume.
A held-out run scores the held-out split alone (`score_eval=False`): its eval scores are on disk
already, in the kept candidate's result or in the re-training's.

    class Campaign(HeldoutScoring): ...   # the steps below use its journal, workspace and runner
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from harness.compare import deterministic, heldout_change, heldout_part
from harness.journal import SNAPSHOTS, heldout_dir
from harness.report import progress_plot
from harness.training_noise import reusable
from rl_pipeline.result import read_result


def heldout_fields(held: dict) -> dict:
    """A history entry's held-out columns from a `heldout` step's output (each None before it is scored)."""
    return {"heldout_accuracy": held.get("heldout_accuracy"), "heldout_delta": held.get("heldout_delta"),
            "false_keep": held.get("false_keep"), "heldout_by_train_seed": held.get("heldout_by_train_seed")}


class HeldoutScoring:
    """The held-out step of `harness.campaign.Campaign`, in place or beside the next round."""

    _beside: list[tuple[str, dict]]  # (commit, job): held-out runs to send with the round's first evaluations

    def _heldout_beside(self, n: int) -> bool:
        """Whether round n's keep is scored beside the next round rather than in its own."""
        if n >= self.config["rounds"]:
            return False
        beside = self.config.get("heldout_beside")  # a config frozen before the option has none
        if beside is None:
            return self.pool is not None and self.pool.workers > 1
        return beside

    def _pending_heldout(self, n: int | None = None) -> int | None:
        """The round before `n` (any, when None) whose keep is still to be scored on held-out: the
        incumbent's, when it went beside a later round that has not scored it yet."""
        incumbent = self.journal.get("incumbent") or {"round": 0}
        m = incumbent["round"]
        if m == 0 or self.journal.is_done(m, "heldout") or (n is not None and m >= n):
            return None
        return m

    def _heldout(self, n: int, out: Path) -> dict:
        """Held-out accuracy of the new incumbent and its change from the incumbent it replaced (a
        false keep when not positive): reported, never shown to the researcher, never decides. A
        change to training kept on its gain over training seeds has its change averaged over them.
        Runs already done (beside the next round, or before a kill) are read, not run again."""
        self.workspace.checkout_main()
        held = (reusable(out / "heldout", commit=self.workspace.incumbent_commit(), seeds=self.config["eval_seeds"],
                         train_seed=0)
                or self._evaluate(out / "heldout", self.config["eval_seeds"], heldout=True, score_eval=False))
        if held["status"] != "ok":
            return {"heldout_accuracy": None}
        accuracy = {"heldout_accuracy": held["heldout"]["metrics"]["accuracy"]}
        before = self._heldout_before(n)
        if before is None:
            return accuracy
        replaced = read_result(before)
        greedy = deterministic(heldout_part(held)) and deterministic(heldout_part(replaced))
        return accuracy | heldout_change(held, replaced, self._heldout_retrained(n, out, before, greedy))

    def _heldout_before(self, n: int) -> Path | None:
        """The held-out result's folder of the incumbent that round `n`'s keep replaced (the baseline
        or the last keep before it); None when that one has no held-out score."""
        previous = max((h for h in self.journal.get("history")
                        if h["round"] < n and h["decision"] in ("keep", "baseline")), key=lambda h: h["round"])
        if previous.get("heldout_accuracy") is None:
            return None
        return heldout_dir(self.dir, self.journal, previous["round"])

    def _heldout_runs(self, n: int, out: Path, before: Path, greedy: bool) -> tuple[dict, list[int]]:
        """For each training seed but 0 that round `n`'s keep was decided on (none unless it
        re-trained), the (folder, commit) of the new incumbent's and the replaced incumbent's
        held-out runs trained with it, the replaced one's taken from its own keep where it was
        scored there; and the seeds they are scored on (one under deterministic decoding)."""
        per_seed = (self.journal.step_output(n, "retrain") or {}).get("per_seed", [])
        seeds = self.config["eval_seeds"][:1] if greedy else self.config["eval_seeds"]
        new = self.workspace.incumbent_commit()
        old = self.journal.step_output(n, "decide")["commits"]["incumbent_before"]
        runs = {}
        for t in (p["train_seed"] for p in per_seed if p["train_seed"] != 0):
            earlier = before / f"train-seed-{t}"
            mine = reusable(earlier, commit=old, seeds=seeds, train_seed=t) is None
            runs[t] = ((out / "heldout" / f"train-seed-{t}", new),
                       (out / "heldout" / "before" / f"train-seed-{t}" if mine else earlier, old))
        return runs, seeds

    @staticmethod
    def _not_run(runs: dict, seeds: list[int]) -> list[tuple[Path, int, str]]:
        """The (folder, training seed, commit) of each of `_heldout_runs`' runs with no result yet."""
        return [(folder, t, commit) for t, pair in runs.items() for folder, commit in pair
                if not reusable(folder, commit=commit, seeds=seeds, train_seed=t)]

    def _heldout_retrained(self, n: int, out: Path, before: Path, greedy: bool) -> dict[int, tuple[dict, dict]]:
        """The (new incumbent, replaced incumbent) held-out results of `_heldout_runs`; a seed that
        either fails on is left out. The policies are in the training cache from the re-training:
        only the scoring runs."""
        runs, seeds = self._heldout_runs(n, out, before, greedy)
        old = self.journal.step_output(n, "decide")["commits"]["incumbent_before"]
        todo = self._not_run(runs, seeds)
        if todo:
            with self.workspace.worktree(old, self.dir / SNAPSHOTS / f"{n:03d}-heldout-before") as at:
                self._run_jobs([self._job(at if commit == old else self.workspace.path, folder, seeds, heldout=True,
                                          train_seed=t, score_eval=False) for folder, t, commit in todo])
        pairs = {t: tuple(reusable(folder, commit=commit, seeds=seeds, train_seed=t) for folder, commit in pair)
                 for t, pair in runs.items()}
        return {t: pair for t, pair in pairs.items() if all(pair)}

    # ----------------------------------------------------------------------------- beside the next round
    def _heldout_jobs(self, m: int) -> list[tuple[str, dict]]:
        """The runs round m's held-out step will need and has not done, as (commit, job): the kept
        incumbent on held-out and, with each further training seed its keep was decided on, the new
        and the replaced incumbent. Whether decoding is deterministic (one seed then) is read off the
        kept result's eval scores here; the step reads it off the held-out scores and runs any other."""
        out, new, seeds = self._incumbent_dir(), self.workspace.incumbent_commit(), self.config["eval_seeds"]
        jobs = [] if reusable(out / "heldout", commit=new, seeds=seeds, train_seed=0) else [
            (new, self._job(None, out / "heldout", seeds, heldout=True, score_eval=False))]
        before = self._heldout_before(m)
        if before is not None:
            greedy = deterministic(read_result(out)) and deterministic(heldout_part(read_result(before)))
            runs, run_seeds = self._heldout_runs(m, out, before, greedy)
            jobs += [(commit, self._job(None, folder, run_seeds, heldout=True, train_seed=t, score_eval=False))
                     for folder, t, commit in self._not_run(runs, run_seeds)]
        return jobs

    @contextlib.contextmanager
    def _beside_checked_out(self) -> Iterator[list[dict]]:
        """The held-out runs waiting to go beside this round's first evaluations (taken: they go
        once), each with its commit checked out in a worktree for the `with` block."""
        beside, self._beside = self._beside, []
        with contextlib.ExitStack() as stack:
            trees = {commit: stack.enter_context(self.workspace.worktree(
                         commit, self.dir / SNAPSHOTS / f"heldout-{commit[:12]}"))
                     for commit in dict.fromkeys(commit for commit, _ in beside)}
            yield [{**job, "scaffold": trees[commit]} for commit, job in beside]

    def _score_pending_heldout(self, n: int | None = None) -> None:
        """The `heldout` step of the keep before round `n` (any, when None) that went beside a later
        round: journaled now, with its round's history entry, memory, plot and MLflow run updated."""
        m = self._pending_heldout(n)
        if m is None:
            return

        def scored(held: dict) -> list[dict]:
            return [h | heldout_fields(held) if h["round"] == m else h for h in self.journal.get("history")]

        def score() -> dict:
            held = self._heldout(m, self._incumbent_dir())
            record = next((r for r in self.memory.rounds if r.round == m), None)
            if record is not None and held.get("heldout_accuracy") is not None:
                record.heldout_accuracy = held["heldout_accuracy"]
                self.memory.add_round(record)
            self.tracker.log_heldout(m, held, candidate=self._chosen(m))
            history = scored(held)
            self.tracker.log_campaign_progress(history, progress_plot(history, self.dir / "progress.png"))
            return held

        self._step(m, "heldout", score, updates=lambda held: {"history": scored(held)})
