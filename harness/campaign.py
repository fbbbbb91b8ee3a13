"""The campaign loop: rounds of analyze, propose, gate, apply, evaluate, compare, re-evaluate,
re-train, critique, gate, decide, held-out, learn and record (see `harness.journal.STEPS`).

Each step does one thing, reads what the steps before wrote (through the journal) and nothing
else, and runs through `run_step`, so a campaign killed at any moment resumes from the last
finished step: no round is lost and no decision is made twice. Round 0 is the baseline: the
initial scaffold evaluated with extra seeds, which also gives the noise floor.

    campaign = Campaign(config, campaign_dir); campaign.run()
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

from harness.analyze import Evidence, analyze
from harness.approvals import ApprovalPolicy, keep_question, make_gate, proposal_question
from harness.compare import decide, deterministic, merge_results, noise_floor, on_more_examples, with_calibration
from harness.config import data_dir
from harness.critique import check_critique, critique
from harness.heldout import HeldoutScoring, heldout_fields
from harness.journal import SNAPSHOTS, Journal, incumbent_dir, run_step
from harness.live import LiveView
from harness.proposal import ProposalError, parse_proposal
from harness.report import progress_plot, write_report
from harness.researchers import ResearcherExhausted, ResearcherStopped, make_researcher
from harness.tracking import make_tracker
from harness.training_noise import (calibration_dir, changes_training, retrain_dir, reusable,
                                    training_seed_verdict, worth_retraining)
from harness.workspace import Workspace
from memory import Memory, RoundRecord
from rl_pipeline.files import write_atomic
from rl_pipeline.result import integrity_problem, read_result, scaffold_commit, write_result
from rl_pipeline.run import job_options, run_scaffold

log = logging.getLogger(__name__)


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


class Campaign(HeldoutScoring):
    """One campaign folder and the loop over its rounds."""

    def __init__(self, config: dict, campaign_dir: Path, *, interactive: bool = False):
        self.config = config
        self.dir = Path(campaign_dir)
        self.journal = Journal(self.dir)
        self.rounds_dir = self.dir / "rounds"
        self.memory = Memory(self.dir / "memory.md")
        self.policy = ApprovalPolicy.from_config(config["approvals"])
        self.gate = make_gate(self.policy, self.dir, interactive)
        self.tracker = make_tracker(config["tracking"]["enabled"], config["tracking"].get("uri"),
                                    runs_dir=config["runs_dir"])
        self.live = LiveView(config["name"], config["rounds"], enabled=config.get("live", True))
        self.workspace: Workspace | None = None
        self.researcher = None
        self.pool = None  # the Ray actors of `runner=ray`, from setup to the end of run
        self._beside = []

    # ----------------------------------------------------------------------------- setup
    def _runner_options(self) -> dict:
        runner = self.config["runner"]
        return {"base": self.config["base_model"], "data_dir": str(data_dir(self.config)),
                "split_size": self.config["split_size"],
                "cache_dir": str(Path(self.config["runs_dir"]) / "cache" / "train"),
                "timeout_s": runner["timeout_s"], "memory_gb": runner["memory_gb"],
                "cache_gb": runner.get("cache_gb")}  # a config frozen before the limit has none

    def _evaluate(self, out: Path, seeds: list[int], *, heldout: bool = False, train_seed: int = 0,
                  calibration: bool = False, score_eval: bool = True) -> dict:
        """The runner's result for the scaffold as checked out now (see `_evaluate_all`)."""
        return self._evaluate_all([(self.workspace.path, out)], seeds, heldout=heldout, train_seed=train_seed,
                                  calibration=calibration, score_eval=score_eval)[0]

    def _evaluate_all(self, targets: list[tuple[Path, Path]], seeds: list[int], *, heldout: bool = False,
                      train_seed: int = 0, calibration: bool = False, score_eval: bool = True) -> list[dict]:
        """The runner's result for every (scaffold folder, out folder) on the same seeds (see `_run_jobs`)."""
        return self._run_jobs([self._job(scaffold, out, seeds, heldout=heldout, train_seed=train_seed,
                                         calibration=calibration, score_eval=score_eval) for scaffold, out in targets])

    @staticmethod
    def _job(scaffold: Path, out: Path, seeds: list[int], *, heldout: bool = False, train_seed: int = 0,
             calibration: bool = False, score_eval: bool = True) -> dict:
        """A run for the runner; without `score_eval` it scores held-out (or calibration) only."""
        return {"scaffold": scaffold, "out": out, "seeds": seeds, "heldout": heldout, "train_seed": train_seed,
                "calibration": calibration, "score_eval": score_eval}

    def _run_jobs(self, jobs: list[dict]) -> list[dict]:
        """The runner's result for every job: one after another on this machine, or at once on Ray
        (`runner=ray`). A result is failed when it does not name the commit that was evaluated or the
        baseline's data (every split's hash), so that no round is ever compared on other data or
        another scaffold than the one it claims."""
        with self._beside_checked_out() as beside:  # a keep's held-out runs, beside a round's first evaluations
            return self._run_checked(jobs + beside)[:len(jobs)]

    def _run_checked(self, jobs: list[dict]) -> list[dict]:
        commits = [scaffold_commit(job["scaffold"]) for job in jobs]
        if self.pool is not None:
            results = self.pool.run(jobs)
        else:
            results = [run_scaffold(job["scaffold"], job["out"], **job_options(job), **self._runner_options())
                       for job in jobs]
        baseline = self.journal.get("baseline")
        checked = []
        for result, commit, job in zip(results, commits, jobs):
            reference = read_result(self.dir / baseline["result"]) if baseline else result
            problem = integrity_problem(result, reference, commit=commit)
            if problem:
                result = {**result, "status": "failed", "reason": f"integrity check: {problem}"}
                write_result(job["out"], result)
            checked.append(result)
        return checked

    def _start_runner(self) -> None:
        """The Ray pool when `runner=ray` (ray is imported only then); the local runner needs nothing."""
        runner = self.config["runner"]
        if runner.get("name") == "ray" and self.pool is None:
            from harness.ray_runner import RayPool

            self.pool = RayPool(self._runner_options(), address=runner["address"], cpus=runner["cpus"],
                                gpus=runner["gpus"], workers=runner["workers"])

    def setup(self) -> None:
        """Create the workspace and the researcher, and run the baseline (round 0) once."""
        if not (self.dir / "scaffold").is_dir():
            self.workspace = Workspace.create(self.dir, self.config["scaffold"])
        self.workspace = Workspace.open(self.dir)
        for lock in self.workspace.clear_stale_locks():  # run under the campaign lock: nobody else uses git here
            log.warning("removed %s, left by a git process killed mid-write (a kill of this campaign)", lock)
        self.researcher = make_researcher(dict(self.config["researcher"]), campaign_dir=self.dir,
                                          seed=self.config["seed"], base_model=self.config["base_model"])
        self.researcher.load(self.dir / "researcher")
        if self.journal.get("campaign_id") is None:  # tells this campaign's MLflow run from a deleted namesake's
            self.journal.set("campaign_id", uuid.uuid4().hex)
        run_id = self.tracker.start_campaign(self.config["name"], self.config, self.journal.get("mlflow_run_id"),
                                             self.journal.get("campaign_id"))
        if run_id:
            self.journal.set("mlflow_run_id", run_id)
        self._start_runner()
        if self.journal.get("baseline") is None:
            self._baseline()

    def _baseline(self) -> None:
        self.live.step(0, "baseline")
        out = self.rounds_dir / "000"
        result = self._evaluate(out, self.config["baseline_seeds"], heldout=True)
        if result["status"] != "ok":
            raise RuntimeError(f"the initial scaffold failed to evaluate: {result['reason']}")
        floor = noise_floor([result])
        history = [{"round": 0, "decision": "baseline", "accuracy": result["metrics"]["accuracy"],
                    "incumbent_accuracy": result["metrics"]["accuracy"], "hypothesis": "initial scaffold",
                    "heldout_accuracy": result["heldout"]["metrics"]["accuracy"], "delta": None}]
        self.journal.set("noise_floor", floor)
        self.journal.set("history", history)
        self.journal.set("incumbent", {"round": 0, "result": self._stored(out),
                                       "commit": self.workspace.incumbent_commit()})
        self.journal.set("baseline", {"result": self._stored(out)})
        self.tracker.log_round(0, proposal={"hypothesis": "initial scaffold", "edits": []}, result=result,
                               verdict={"decision": "baseline"}, critique="", diff="",
                               commits={"incumbent": self.workspace.incumbent_commit()},
                               memory_snapshot=self.memory.snapshot())

    # ----------------------------------------------------------------------------- one round
    def _stored(self, out: Path) -> str:
        """A round folder as the journal keeps it: relative to the campaign, so that a campaign
        folder moved or renamed still reads its own results (and never another campaign's)."""
        return str(Path(out).relative_to(self.dir))

    def _incumbent_dir(self) -> Path:
        return incumbent_dir(self.dir, self.journal.get("incumbent"))

    def _incumbent_result(self) -> dict:
        return read_result(self._incumbent_dir())

    def _step(self, n: int, name: str, fn, **kw) -> dict:
        self.live.step(n, name)
        return run_step(self.journal, n, name, fn, **kw)

    def run_round(self, n: int) -> None:
        """Round `n`, one journaled step after another; a step already in the journal is not run again.

        A round can stop short of a verdict (no valid proposal, a rejection, an edit that does not
        apply); it still goes through decide, learn and record, which read why from the journal.
        """
        j, step = self.journal, self._step
        out = self.rounds_dir / f"{n:03d}"
        j.begin_round(n)
        self.live.round(n, j.get("history"))

        pending = self._pending_heldout(n)
        self._beside = self._heldout_jobs(pending) if pending else []
        try:
            evidence = step(n, "analyze", lambda: self._analyze(n))["evidence"]
            proposal, out = self._propose_and_judge(n, evidence, out)
        finally:
            self._beside = []
        self._score_pending_heldout(n)
        decided = step(n, "decide", lambda: self._decide(n),
                       updates=lambda o: ({"incumbent": {"round": n, "result": self._stored(out),
                                                         "commit": self.workspace.incumbent_commit()}}
                                          if o["decision"] == "keep" else {}))
        if decided["decision"] == "keep" and not self._heldout_beside(n):
            step(n, "heldout", lambda: self._heldout(n, out))
        if proposal is not None:
            step(n, "learn", lambda: self._learn(n, proposal))
        step(n, "record", lambda: self._record(n, out),
             updates=lambda o: {"history": [h for h in j.get("history") if h["round"] != n] + [o["history"]],
                                "last_round": o["last_round"], "researcher_usage": o["researcher_usage"]})
        self.live.decision(n, decided["decision"], decided["reason"])

    def _propose_and_judge(self, n: int, evidence: dict, out: Path) -> tuple:
        """The steps from propose to the keep gate; the round's proposal (None without a valid one)
        and the folder of its result. A round of several candidates (harness.candidates) overrides it."""
        proposed = self._step(n, "propose", lambda: self._propose(n, evidence, out))
        proposal = parse_proposal(proposed["proposal"]) if proposed.get("proposal") else None
        if proposal is not None:
            self._to_verdict(n, out, proposal)
        return proposal, out

    def _round_proposal(self, n: int) -> dict | None:
        """The proposal the round is recorded under (its only one here)."""
        return self.journal.step_output(n, "propose").get("proposal")

    def _chosen(self, n: int) -> int | None:
        """Which of several candidates the round is recorded under (None: it has one)."""
        return None

    def _to_verdict(self, n: int, out: Path, proposal) -> None:
        """The steps from a valid proposal to a verdict, stopping at the first that says no."""
        step = self._step
        gate = step(n, "gate_proposal", lambda: self._ask("proposal", n, proposal.kind, proposal_question(proposal)))
        if gate["decision"] == "reject":
            return
        if step(n, "apply", lambda: self._apply(n, proposal)).get("error"):
            return
        step(n, "evaluate", lambda: self._evaluate_candidate(n, out))
        verdict = step(n, "compare", lambda: self._compare(out))["verdict"]
        if verdict["decision"] == "reeval":
            verdict = step(n, "reeval", lambda: self._reeval(n, out))["verdict"]
        final = verdict
        if self._worth_retraining(verdict) and self._changes_training(n, out):
            final = step(n, "retrain", lambda: self._retrain(n, out))["verdict"]
        step(n, "critique", lambda: self._critique(out, n, proposal, verdict))
        if final["decision"] == "keep":
            step(n, "gate_keep", lambda: self._ask("keep", n, proposal.kind, keep_question(proposal, final),
                                                   self.workspace.diff(n)))

    def _analyze(self, n: int) -> dict:
        j = self.journal
        return {"evidence": analyze(self._incumbent_result(), n, j.get("last_round"),
                                    [h["incumbent_accuracy"] for h in j.get("history")]).to_dict()}

    def _propose(self, n: int, evidence: dict, out: Path) -> dict:
        ev = Evidence(**evidence)
        context = self.memory.render(self.config["memory_budget_tokens"])
        try:
            proposal = self.researcher.propose(ev, context, self.workspace.path)
        except ProposalError as err:
            return {"error": f"invalid proposal: {err}", "proposal": None}
        _write_json(out / "proposal.json", proposal.to_dict())
        return {"proposal": proposal.to_dict()}

    def _ask(self, point: str, n: int, kind: str, summary: str, diff: str = "") -> dict:
        if self.policy.needs(point, round_no=n, proposal_kind=kind):
            self.journal.set("status", "pending_approval")
        with self.live.paused():  # the live view would draw over the question and its prompt
            decision = self.gate.ask(point, round_no=n, proposal_kind=kind, summary=summary, diff=diff)
        self.journal.set("status", "running")
        return decision

    def _apply(self, n: int, proposal) -> dict:
        try:
            commit = self.workspace.apply(n, proposal)
        except ProposalError as err:
            return {"error": f"rejected before evaluation: {err}"}
        return {"commit": commit}

    def _evaluate_candidate(self, n: int, out: Path) -> dict:
        self.workspace.checkout(n)
        try:
            result = self._evaluate(out, self.config["eval_seeds"])
        finally:
            self.workspace.checkout_main()
        return {"status": result["status"]}

    def _verdict_args(self) -> dict:
        return {"margin": self.config["margin"], "reeval_band": self.journal.get("noise_floor")["halfwidth"]}

    def _compare(self, out: Path) -> dict:
        """The verdict on the candidate's seeds; "reeval" when it is promising but uncertain."""
        verdict = decide(read_result(out), self._incumbent_result(), can_reeval=True, **self._verdict_args())
        return {"verdict": verdict.to_dict()}

    def _reeval(self, n: int, out: Path) -> dict:
        """More seeds for the candidate and the incumbent, then the final verdict on all of them; under
        deterministic decoding more examples instead (see `_with_calibration`)."""
        extra = self.config["reeval_seeds"]
        candidate = read_result(out)

        def evaluate(folder: Path, seeds: list[int]) -> dict:
            self.workspace.checkout(n)
            try:
                return self._evaluate(folder, seeds, calibration=True)
            finally:
                self.workspace.checkout_main()

        commit = self.workspace.candidate_commit(n)
        pooled = self._with_calibration(candidate, calibration_dir(out, 0), commit, evaluate)
        if pooled:
            verdict = decide(*pooled, can_reeval=False, **self._verdict_args())
            return {"verdict": on_more_examples(verdict).to_dict(), "seeds": candidate["seeds"]}
        # A replay after a kill may find the merged result already written: skip its seeds.
        missing = [s for s in extra if s not in candidate["seeds"]]
        if missing:
            self.workspace.checkout(n)
            try:
                more = self._evaluate(out / "reeval", missing)
            finally:
                self.workspace.checkout_main()
            if more["status"] == "ok":
                candidate = merge_results(candidate, more)
                _write_json(out / "result.json", candidate)
        incumbent = self._incumbent_result()
        if all(s in candidate["seeds"] for s in extra):
            incumbent = self._incumbent_with_seeds(incumbent, extra)
        verdict = decide(candidate, incumbent, can_reeval=False, **self._verdict_args())
        return {"verdict": verdict.to_dict(), "seeds": candidate["seeds"]}

    def _with_calibration(self, candidate: dict, folder: Path, commit: str, evaluate) -> tuple[dict, dict] | None:
        """Under deterministic decoding every seed gives the same scores, so more seeds cannot settle
        an uncertain verdict: the candidate and the incumbent instead, each pooled with its scores on
        the calibration split (examples neither eval nor held-out has). None when decoding is not
        deterministic or a calibration run failed: the caller re-evaluates on more seeds."""
        incumbent = self._incumbent_result()
        if not (deterministic(candidate) and deterministic(incumbent)):
            return None
        ours, theirs = self._calibrated(folder, commit, evaluate), self._incumbent_calibrated()
        if ours is None or theirs is None or ours["calibration"]["data_hash"] != theirs["calibration"]["data_hash"]:
            return None
        return with_calibration(candidate, ours["calibration"]), with_calibration(incumbent, theirs["calibration"])

    def _calibrated(self, folder: Path, commit: str, evaluate) -> dict | None:
        """A result with a calibration part, on the first eval seed only (decoding is deterministic):
        the one a replay (or an earlier round) left at `folder` when it measured `commit` so, else
        `evaluate(folder, seeds)`'s; None when that failed."""
        seeds = self.config["eval_seeds"][:1]
        result = reusable(folder, commit=commit, seeds=seeds, train_seed=0, calibration=True)
        if result is None:
            result = evaluate(folder, seeds)
        return result if result["status"] == "ok" and "calibration" in result else None

    def _incumbent_calibrated(self) -> dict | None:
        """The incumbent's `_calibrated` result, kept beside its own for the rounds to come."""
        folder, commit = calibration_dir(self._incumbent_dir(), 0), self.journal.get("incumbent")["commit"]
        return self._calibrated(folder, commit, lambda at, seeds: self._evaluate(at, seeds, calibration=True))

    def _incumbent_with_seeds(self, incumbent: dict, seeds: list[int]) -> dict:
        """The incumbent evaluated on `seeds` too (eval only: its training is cached)."""
        missing = [s for s in seeds if s not in incumbent["seeds"]]
        if not missing:
            return incumbent
        inc_dir = self._incumbent_dir()
        more = self._evaluate(inc_dir / f"seeds-{'-'.join(map(str, missing))}", missing)
        if more["status"] != "ok":
            return incumbent
        merged = merge_results(incumbent, more)
        _write_json(inc_dir / "result.json", merged)
        return merged

    def _worth_retraining(self, verdict: dict) -> bool:
        """Whether a change to training with this verdict on its first training seed is re-trained."""
        return worth_retraining(verdict, margin=self.config["margin"], band=self._verdict_args()["reeval_band"])

    def _changes_training(self, n: int, out: Path) -> bool:
        """Whether a keep must hold across training seeds: the check is on and the candidate trains
        another policy than the incumbent. A replay after the keep moved the incumbent finds the
        step done; a round that an older release took past its critique keeps that release's verdict."""
        j = self.journal
        return j.is_done(n, "retrain") or (bool(self.config["retrain_seeds"]) and not j.is_done(n, "critique")
                                           and changes_training(read_result(out), self._incumbent_result()))

    def _retrain(self, n: int, out: Path, candidate: int | None = None, count: int = 1) -> dict:
        """The candidate (candidate k of a round of several, chosen as the best of `count`) and the
        incumbent re-trained with each fresh training seed and evaluated on the same seeds; the
        verdict on the paired change over every training seed, at the level `count` candidates call
        for. Under deterministic decoding each is scored on eval and calibration examples on one
        seed instead (see `_with_calibration`)."""
        seeds, inc_dir, result = self.config["eval_seeds"], self._incumbent_dir(), read_result(out)
        if deterministic(result) and deterministic(self._incumbent_result()):
            pairs = {t: (calibration_dir(out, t), calibration_dir(inc_dir, t))
                     for t in [0, *self.config["retrain_seeds"]]}
            if self._train_pairs(n, candidate, pairs, seeds[:1], calibration=True):
                return training_seed_verdict(pairs, margin=self.config["margin"], calibration=True, count=count)
        fresh = {t: (retrain_dir(out, t), retrain_dir(inc_dir, t)) for t in self.config["retrain_seeds"]}
        self._train_pairs(n, candidate, fresh, seeds, calibration=False)
        pairs = {result["training"]["train_seed"]: (out, inc_dir)} | fresh
        return training_seed_verdict(pairs, margin=self.config["margin"], count=count)

    def _train_pairs(self, n: int, candidate: int | None, pairs: dict[int, tuple[Path, Path]], seeds: list[int], *,
                     calibration: bool) -> bool:
        """Each training seed's (candidate folder, incumbent folder) measured with that seed where no
        result is there yet (a replay's, or an earlier round's for the incumbent): all of them in one
        batch, so `runner=ray` trains them at once. Whether every one is now there, with its
        calibration part when asked."""
        commits = (self.workspace.candidate_commit(n, candidate), self.journal.get("incumbent")["commit"])
        runs = [(folder, commit, t, side) for t, folders in pairs.items()
                for side, (folder, commit) in enumerate(zip(folders, commits))]

        def missing(folder: Path, commit: str, train_seed: int) -> bool:
            return reusable(folder, commit=commit, seeds=seeds, train_seed=train_seed, calibration=calibration) is None

        todo = [(folder, t, side) for folder, commit, t, side in runs if missing(folder, commit, t)]
        if todo:
            snapshot = self.dir / SNAPSHOTS / f"{n:03d}-{candidate or 0}-retrain"
            with self.workspace.snapshot(n, candidate, snapshot) as at:
                self._run_jobs([self._job(self.workspace.path if side else at, folder, seeds, train_seed=t,
                                          calibration=calibration) for folder, t, side in todo])
        return not any(missing(folder, commit, t) for folder, commit, t, _ in runs)

    def _critique(self, out: Path, n: int, proposal, verdict: dict) -> dict:
        """Self-feedback on the verdict of the evaluation seeds, and on the training seeds' when the
        round re-trained."""
        result, incumbent = read_result(out), self._incumbent_result()
        training = self.journal.step_output(n, "retrain")
        text = critique(proposal, result, incumbent, verdict, training)
        own = self.researcher.critique(text, n)  # a model researcher's own reading; checked like the rest
        if own:
            text += f"\n**The researcher's critique.**\n\n{own.strip()}\n"
        unverified = check_critique(text, result, incumbent, verdict, training)
        if unverified:
            text += f"\n\n_Unverified numbers (not found in result.json): {', '.join(unverified)}_\n"
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "critique.md", text)
        return {"critique": text, "unverified": unverified}

    def _verdict(self, n: int) -> dict | None:
        """The round's last verdict: across training seeds, else after re-evaluation, if the round
        went that far; None if nothing was evaluated."""
        j = self.journal
        compared = j.step_output(n, "retrain") or j.step_output(n, "reeval") or j.step_output(n, "compare")
        return compared["verdict"] if compared else None

    def _outcome(self, n: int) -> tuple[str, str]:
        """Keep, revert or failed, and why, from the steps the round got through."""
        j = self.journal
        proposed = j.step_output(n, "propose")
        if proposed.get("error"):
            return "failed", proposed["error"]
        gate = j.step_output(n, "gate_proposal")
        if gate["decision"] == "reject":
            return "revert", f"proposal rejected by {gate['who']}"
        applied = j.step_output(n, "apply")
        if applied.get("error"):
            return "failed", applied["error"]
        verdict = self._verdict(n)
        gate = j.step_output(n, "gate_keep")
        if verdict["decision"] == "keep" and gate["decision"] == "reject":
            return "revert", f"keep rejected by {gate['who']}: {gate.get('note') or ''}".strip()
        return verdict["decision"], verdict["reason"]

    def _decide(self, n: int) -> dict:
        """Keep (main fast-forwards to the candidate) or revert (the candidate under refs/rejected/)."""
        ws = self.workspace
        decision, reason = self._outcome(n)
        # The incumbent before is the journal's: it moves only with this step's record, so a replay
        # after a kill that landed between the git change and the record still names the right one.
        commits = {"incumbent_before": self.journal.get("incumbent")["commit"], "candidate": ws.candidate_commit(n)}
        if decision == "keep":
            ws.keep(n)
        elif commits["candidate"]:
            ws.revert(n, reason)
        return {"decision": decision, "reason": reason, "commits": commits}

    def _verdicts(self, n: int) -> tuple[dict, dict]:
        """The round's last verdict (for a round that never reached a comparison, its decision and
        reason alone), and the same with the decision and reason the round ended with."""
        decided = self.journal.step_output(n, "decide")
        verdict = self._verdict(n) or {"decision": decided["decision"], "reason": decided["reason"],
                                       "delta": None, "ci95": None}
        return verdict, {**verdict, "decision": decided["decision"], "reason": decided["reason"]}

    def _learn(self, n: int, proposal) -> dict:
        """The researcher's update from the round's outcome, saved with it."""
        verdict, final = self._verdicts(n)
        self.researcher.learn(proposal, {**verdict, "decision": final["decision"]})
        self.researcher.save(self.dir / "researcher")
        return {"decision": final["decision"]}

    def _record(self, n: int, out: Path) -> dict:
        """Memory, the round's files, the plot and MLflow, from what the round's steps wrote."""
        j, ws = self.journal, self.workspace
        decided, proposed = j.step_output(n, "decide"), self._round_proposal(n)
        result = read_result(out) if j.is_done(n, "evaluate") else None
        held = j.step_output(n, "heldout") or {}
        heldout = held.get("heldout_accuracy")
        verdict, final = self._verdicts(n)
        proposal_dict = proposed or {"hypothesis": "(no valid proposal)", "edits": []}
        decision = decided["decision"]
        failed = result is None or result.get("status") != "ok"
        critique_text = j.step_output(n, "critique")["critique"] if j.is_done(n, "critique") else \
            f"The round did not reach evaluation: {decided['reason']}"
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "critique.md").exists():
            write_atomic(out / "critique.md", critique_text)
        commits = decided["commits"]
        diff = ws.diff(n) if commits["candidate"] else ""
        write_atomic(out / "diff.patch", diff)
        _write_json(out / "verdict.json", verdict)
        kind = parse_proposal(proposal_dict).kind if proposed else "knob"
        approval = j.step_output(n, "gate_keep") or j.step_output(n, "gate_proposal")
        approval_text = (f"{approval['decision']} ({approval['point']}) by {approval['who']} at {approval['when']}"
                         f"{': ' + approval['note'] if approval.get('note') else ''}") if approval else ""
        record = RoundRecord.from_outcome(
            n, hypothesis=proposal_dict["hypothesis"], change_kind=kind,
            change="; ".join(f"move {e['move']}" if "move" in e else json.dumps(e)
                             for e in proposal_dict["edits"])[:300],
            targets=[e.get("knob") or e.get("file") or f"move {e['move']}" for e in proposal_dict["edits"]],
            result=result or {"status": "failed", "reason": decided["reason"]},
            verdict=final, critique=critique_text, approval=approval_text)
        if heldout is not None:
            record.heldout_accuracy = heldout
        self.memory.add_round(record)
        incumbent = self._incumbent_result()
        entry = {"round": n, "decision": "failed" if failed and decision != "keep" else decision,
                 "accuracy": None if failed else result["metrics"]["accuracy"],
                 "incumbent_accuracy": incumbent["metrics"]["accuracy"],
                 **heldout_fields(held), "hypothesis": proposal_dict["hypothesis"], "delta": verdict.get("delta")}
        last_round = {"round": n, "hypothesis": proposal_dict["hypothesis"], "decision": decision,
                      "delta": verdict.get("delta"), "ci95": verdict.get("ci95"),
                      "metric_deltas": verdict.get("metric_deltas"), "reason": decided["reason"]}
        history = [h for h in j.get("history") if h["round"] != n] + [entry]
        plot = progress_plot(history, self.dir / "progress.png")
        usage = self.researcher.usage()
        retrained = (j.step_output(n, "retrain") or {}).get("per_seed", [])
        self.tracker.log_round(n, proposal=proposal_dict, result=result, verdict={**verdict, "decision": decision},
                               critique=critique_text, diff=diff,
                               commits=commits | {"incumbent": ws.incumbent_commit()},
                               memory_snapshot=self.memory.snapshot(), approval=approval, heldout=held,
                               candidate=self._chosen(n),
                               extra_metrics={"usage/" + k: v for k, v in usage.items() if isinstance(v, (int, float))}
                               | {f"delta_by_train_seed/{p['train_seed']}": p["delta"] for p in retrained})
        self.tracker.log_campaign_progress(history, plot)
        return {"decision": decision, "history": entry, "last_round": last_round, "researcher_usage": usage}

    # ----------------------------------------------------------------------------- the loop
    def run(self) -> dict:
        """Run (or resume) rounds until the configured number is done or the researcher runs out."""
        try:
            return self._run()
        finally:
            if self.pool is not None:  # however the campaign ends, no Ray process of ours is left
                self.pool.close()
                self.pool = None

    def _run(self) -> dict:
        self.journal.set("status", "running")
        self.journal.set("stop_reason", None)
        status = "finished"
        with self.live:
            self.setup()
            start = time.perf_counter()
            try:
                while True:
                    n = self.journal.current_round() or self.journal.last_finished_round() + 1
                    if n > self.config["rounds"]:
                        break
                    self.live.eta(start, n, self.config["rounds"])
                    self.run_round(n)
                self._score_pending_heldout()
            except ResearcherExhausted as done:
                self.live.note(f"researcher has no more proposals: {done}")
                self._score_pending_heldout()
            except ResearcherStopped as stop:  # the round in progress is redone on resume
                status = stop.status
                self.journal.set("stop_reason", str(stop))
                self.live.note(f"campaign stopped ({status}): {stop}")
                self._score_pending_heldout()
            except BaseException:
                status = "paused"
                raise
            finally:
                self.journal.set("status", status)
                self.report()
                self.tracker.end_campaign("FINISHED" if status == "finished" else "KILLED")
        return {"status": status, "history": self.journal.get("history"),
                "stop_reason": self.journal.get("stop_reason") if status != "finished" else None}

    def report(self) -> tuple[Path, Path]:
        """Write progress.png and summary.md for the rounds done so far."""
        return write_report(self.dir, self.config["name"])
