"""Rounds of several candidates (`candidates_per_round=K`): K distinct proposals, all evaluated (at
once on Ray), and the best of them re-tested on fresh seeds, at a level that accounts for K, before
it may be kept (harness.selection).

A round's candidates are what the researcher proposes: K, fewer when it has no more, or more when
it pairs a change to training with decoder companions (the local researcher,
`researcher.companions`; then even K = 1 runs here), or when a pool's worker would idle beside the
round's training and the researcher adds sampling-only fills (`runner.fill`, harness/fill.py). A
round that ends up with one proposal goes the one-candidate way (`harness.campaign`, its files in
rounds/NNN/); the level of the re-test is the number evaluated.

A round goes through the steps of `harness.journal.STEPS`, whose outputs hold every candidate:

    propose        {"proposal": None, "candidates": [proposal, ...]} (or an error; a round of one:
                   {"proposal": proposal}, and the steps of harness.campaign)
    gate_proposal  one decision for the round's candidates: a person is shown them all
    apply          {"candidates": [{"commit": sha} | {"error": why}, ...]}, "error" when none applied
    evaluate       {"candidates": [{"status": ...} | None, ...]}: each applied candidate k evaluated
                   from a snapshot of cand/NNN-k into rounds/NNN/cand-k/
    compare        {"verdict", "chosen", "candidates": [verdict | None, ...]}: the verdict of the one
                   with the highest gain, turned into "reeval" when it would have been kept or
                   re-evaluated alone
    reeval         that one evaluated on `reeval_seeds` too and judged on all its seeds at the level K
                   candidates call for: the round's verdict
    retrain        a chosen change to training that would be kept, or gains beyond the noise floor
                   without a keep, re-trained on fresh training seeds with the incumbent, as for
                   one candidate, and judged at the level K candidates call for
    critique, gate_keep and heldout act on the chosen candidate, in its folder;
    decide         names it cand/NNN, which is kept or reverted as in any round, and reverts the rest
    learn          the researcher learns from each candidate's own verdict
    record         memory and the round's files as for one candidate (the critique names the others),
                   rounds/NNN/candidates.json, and one MLflow child run per candidate

Every step is idempotent as in a one-candidate round, so a kill -9 anywhere resumes to the same end.

    campaign = CandidatesCampaign(config, campaign_dir); campaign.run()
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from harness.analyze import Evidence
from harness.approvals import keep_question, proposal_question
from harness.campaign import SNAPSHOTS, Campaign, _write_json
from harness.compare import decide, merge_results, on_more_examples
from harness.fill import fill_count, recent_seconds
from harness.proposal import ProposalError, parse_proposal
from harness.selection import choose, confirm, promising
from harness.training_noise import calibration_dir
from rl_pipeline.files import write_atomic
from rl_pipeline.result import read_result


def candidate_dir(round_dir: Path, k: int) -> Path:
    return Path(round_dir) / f"cand-{k}"


class CandidatesCampaign(Campaign):
    """A campaign whose every round proposes, evaluates and judges `candidates_per_round` candidates."""

    @property
    def count(self) -> int:
        return self.config["candidates_per_round"]

    def _outputs(self, n: int, step: str, key: str) -> list:
        return (self.journal.step_output(n, step) or {}).get(key) or []

    def _evaluated(self, n: int) -> int:
        """How many candidates round n evaluated: the number its chosen one was the best of."""
        return sum(status is not None for status in self._outputs(n, "evaluate", "candidates"))

    def _several(self, n: int) -> bool:
        """Whether round n is a round of several candidates: its propose step names candidates and
        no single proposal (a round of one names its proposal, as a one-candidate campaign's does)."""
        proposed = self.journal.step_output(n, "propose") or {}
        return bool(proposed.get("candidates")) and proposed.get("proposal") is None

    # ----------------------------------------------------------------------------- propose to verdict
    def _propose_and_judge(self, n: int, evidence: dict, out: Path) -> tuple:
        step = self._step
        proposed = step(n, "propose", lambda: self._propose_all(evidence, out))
        if not self._several(n):
            proposal = parse_proposal(proposed["proposal"]) if proposed.get("proposal") else None
            if proposal is not None:
                self._to_verdict(n, out, proposal)
            return proposal, out
        proposals = [parse_proposal(p) for p in proposed["candidates"]]
        kind = "code" if any(p.kind == "code" for p in proposals) else "knob"
        question = "\n\n".join(f"Candidate {k}:\n{proposal_question(p)}" for k, p in enumerate(proposals, 1))
        if step(n, "gate_proposal", lambda: self._ask("proposal", n, kind, question))["decision"] == "reject":
            return proposals[0], out
        if step(n, "apply", lambda: self._apply_all(n, proposals)).get("error"):
            return proposals[0], out
        step(n, "evaluate", lambda: self._evaluate_candidates(n, out))
        compared = step(n, "compare", lambda: self._compare_all(n, out))
        k, verdict = compared["chosen"], compared["verdict"]
        chosen, folder = proposals[k - 1], candidate_dir(out, k)
        if verdict["decision"] == "reeval":
            verdict = step(n, "reeval", lambda: self._retest(n, folder, k))["verdict"]
        if self._worth_retraining(verdict) and self._changes_training(n, folder):
            verdict = step(n, "retrain", lambda: self._retrain(n, folder, k, self._evaluated(n)))["verdict"]
        step(n, "critique", lambda: self._critique(folder, n, chosen, verdict))
        if verdict["decision"] == "keep":
            step(n, "gate_keep", lambda: self._ask("keep", n, chosen.kind, keep_question(chosen, verdict),
                                                   self.workspace.diff(n, k)))
        return chosen, folder

    def _propose_all(self, evidence: dict, out: Path) -> dict:
        context = self.memory.render(self.config["memory_budget_tokens"])
        try:
            proposals = self.researcher.propose_many(Evidence(**evidence), context, self.workspace.path, self.count)
            proposals += self._fills(Evidence(**evidence), context, proposals)
        except ProposalError as err:
            return {"error": f"invalid proposal: {err}", "proposal": None, "candidates": []}
        if len(proposals) == 1:
            _write_json(out / "proposal.json", proposals[0].to_dict())
            return {"proposal": proposals[0].to_dict()}  # a round of one, as a one-candidate campaign writes it
        for k, proposal in enumerate(proposals, 1):
            _write_json(candidate_dir(out, k) / "proposal.json", proposal.to_dict())
        return {"proposal": None, "candidates": [p.to_dict() for p in proposals]}

    def _fills(self, evidence: Evidence, context: str, proposals: list) -> list:
        """Sampling-only candidates in the time the round's own leave a pool's worker idle
        (`runner.fill`, `harness.fill`): at most `candidates_per_round` on each idle worker."""
        workers = self.pool.workers if self.pool is not None and self.config["runner"].get("fill") else 1
        if workers < 2:
            return []
        seconds = recent_seconds(self.rounds_dir, round_no=evidence.round, seeds=len(self.config["eval_seeds"]))
        if seconds is None:
            return []
        count = fill_count(proposals, workers=workers, train_s=seconds[0], score_s=seconds[1],
                           most=self.count * (workers - 1))
        return self.researcher.propose_fills(evidence, context, self.workspace.path, count, proposals) if count else []

    def _apply_all(self, n: int, proposals: list) -> dict:
        applied = []
        for k, proposal in enumerate(proposals, 1):
            try:
                applied.append({"commit": self.workspace.apply(n, proposal, candidate=k)})
            except ProposalError as err:
                applied.append({"error": f"rejected before evaluation: {err}"})
        if any("commit" in a for a in applied):
            return {"candidates": applied}
        return {"candidates": applied, "error": "; ".join(a["error"] for a in applied)}

    def _evaluate_snapshots(self, n: int, targets: list[tuple[int, Path]], seeds: list[int], *,
                            calibration: bool = False) -> list[dict]:
        """Candidates k evaluated at once, each from a snapshot of its commit into its folder."""
        with contextlib.ExitStack() as stack:
            scaffolds = [stack.enter_context(self.workspace.snapshot(n, k, self.dir / SNAPSHOTS / f"{n:03d}-{k}"))
                         for k, _ in targets]
            return self._evaluate_all([(s, out) for s, (_, out) in zip(scaffolds, targets)], seeds,
                                      calibration=calibration)

    def _evaluate_candidates(self, n: int, out: Path) -> dict:
        applied = self._outputs(n, "apply", "candidates")
        ks = [k for k, a in enumerate(applied, 1) if "commit" in a]
        results = self._evaluate_snapshots(n, [(k, candidate_dir(out, k)) for k in ks], self.config["eval_seeds"])
        status = {k: r["status"] for k, r in zip(ks, results)}
        return {"candidates": [{"status": status[k]} if k in status else None for k in range(1, len(applied) + 1)]}

    def _compare_all(self, n: int, out: Path) -> dict:
        """Every evaluated candidate's verdict; the best one's is the round's, to be re-tested if promising."""
        incumbent, statuses = self._incumbent_result(), self._outputs(n, "evaluate", "candidates")
        evaluated = [k for k, status in enumerate(statuses, 1) if status is not None]
        verdicts = [decide(read_result(candidate_dir(out, k)), incumbent, can_reeval=True,
                           **self._verdict_args()).to_dict() if k in evaluated else None
                    for k in range(1, len(statuses) + 1)]
        best = choose(verdicts)
        k = best + 1 if best is not None else evaluated[0]
        verdict = verdicts[k - 1]
        if promising(verdict):
            verdict = {**verdict, "decision": "reeval",
                       "reason": f"reeval: the best of {len(evaluated)} candidates, to be re-tested on fresh seeds "
                                 f"before a keep ({verdict['reason']})"}
        return {"verdict": verdict, "chosen": k, "candidates": verdicts}

    def _retest(self, n: int, folder: Path, k: int) -> dict:
        """The chosen candidate evaluated on the fresh seeds too (its result then holds all of them,
        as a kept incumbent's must), and judged on all of them against the incumbent on the same."""
        fresh_seeds = self.config["reeval_seeds"]
        candidate = read_result(folder)
        evaluated = self._evaluated(n)
        pooled = self._with_calibration(
            candidate, calibration_dir(folder, 0), self.workspace.candidate_commit(n, k),
            lambda at, seeds: self._evaluate_snapshots(n, [(k, at)], seeds, calibration=True)[0])
        if pooled:
            verdict = confirm(*pooled, count=evaluated, margin=self.config["margin"])
            return {"verdict": on_more_examples(verdict).to_dict(), "seeds": candidate["seeds"]}
        if any(s not in candidate["seeds"] for s in fresh_seeds):  # a replay may find them merged already
            fresh = self._evaluate_snapshots(n, [(k, folder / "retest")], fresh_seeds)[0]
            if fresh["status"] == "ok":
                candidate = merge_results(candidate, fresh)
                _write_json(folder / "result.json", candidate)
        incumbent = self._incumbent_with_seeds(self._incumbent_result(), fresh_seeds)
        verdict = confirm(candidate, incumbent, count=evaluated, margin=self.config["margin"])
        return {"verdict": verdict.to_dict(), "seeds": candidate["seeds"]}

    def _critique(self, out: Path, n: int, proposal, verdict: dict) -> dict:
        """The chosen candidate's critique, then what became of the others (for the memory)."""
        written = super()._critique(out, n, proposal, verdict)
        if not self._several(n):
            return written
        compared = self.journal.step_output(n, "compare")
        lines = [f"- candidate {k}: {p['hypothesis']}: {self._fate(n, k)}"
                 for k, p in enumerate(self._outputs(n, "propose", "candidates"), 1) if k != compared["chosen"]]
        text = written["critique"] + ("\n\n**The other candidates.**\n\n" + "\n".join(lines) + "\n" if lines else "")
        write_atomic(out / "critique.md", text)
        return {**written, "critique": text}

    def _fate(self, n: int, k: int) -> str:
        """Why candidate k (not the chosen one) was not kept, in one line."""
        applied, verdicts = self._outputs(n, "apply", "candidates"), self._outputs(n, "compare", "candidates")
        if k <= len(applied) and "error" in applied[k - 1]:
            return applied[k - 1]["error"]
        verdict = verdicts[k - 1] if k <= len(verdicts) else None
        if verdict is None:
            return "not evaluated"
        return f"not the best of the round ({verdict['reason']})"

    # ----------------------------------------------------------------------------- decide, learn, record
    def _chosen(self, n: int) -> int | None:
        if not self._several(n):
            return super()._chosen(n)
        compared = self.journal.step_output(n, "compare")
        return compared["chosen"] if compared else 1

    def _round_proposal(self, n: int) -> dict | None:
        if not self._several(n):
            return super()._round_proposal(n)
        proposals = self._outputs(n, "propose", "candidates")
        return proposals[self._chosen(n) - 1] if proposals else None

    def _decide(self, n: int) -> dict:
        """The chosen candidate becomes cand/NNN and goes the usual way; the others are reverted."""
        if not self._several(n):
            return super()._decide(n)
        compared = self.journal.step_output(n, "compare")
        if compared:
            self.workspace.choose(n, compared["chosen"])
        decided = super()._decide(n)
        for k, applied in enumerate(self._outputs(n, "apply", "candidates"), 1):
            if "commit" in applied and k != self._chosen(n):
                self.workspace.revert(n, f"revert: {self._fate(n, k)}", candidate=k)
        return decided

    def _verdict_of(self, n: int, k: int) -> dict:
        """Candidate k's verdict as its own: the round's for the chosen one, else its comparison's."""
        verdict, final = self._verdicts(n)
        if k == self._chosen(n) and self.journal.is_done(n, "compare"):
            return final
        verdicts = self._outputs(n, "compare", "candidates")
        if k <= len(verdicts) and verdicts[k - 1] is not None:  # evaluated (a failed run has no delta)
            decision = "revert" if verdicts[k - 1]["delta"] is not None else "failed"
            return {**verdicts[k - 1], "decision": decision, "reason": f"{decision}: {self._fate(n, k)}"}
        applied = self._outputs(n, "apply", "candidates")
        failed = k <= len(applied) and "error" in applied[k - 1]
        return {**final, "decision": "failed" if failed else final["decision"],
                "reason": self._fate(n, k) if failed else final["reason"], "delta": None, "ci95": None}

    def _learn(self, n: int, proposal) -> dict:
        """The researcher learns from every candidate, each with its own verdict."""
        if not self._several(n):
            return super()._learn(n, proposal)
        for k, candidate in enumerate(self._outputs(n, "propose", "candidates"), 1):
            self.researcher.learn(parse_proposal(candidate), self._verdict_of(n, k))
        self.researcher.save(self.dir / "researcher")
        return {"decision": self._verdicts(n)[1]["decision"]}

    def _record(self, n: int, out: Path) -> dict:
        """The round as for one candidate (under the chosen one), then every other candidate's MLflow
        child run and rounds/NNN/candidates.json."""
        recorded = super()._record(n, out)
        if not self._several(n):
            return recorded
        ws, round_dir = self.workspace, self.rounds_dir / f"{n:03d}"
        applied, evaluated = self._outputs(n, "apply", "candidates"), self._outputs(n, "evaluate", "candidates")
        summary = []
        for k, candidate in enumerate(self._outputs(n, "propose", "candidates"), 1):
            commit = applied[k - 1].get("commit") if k <= len(applied) else None
            result = read_result(candidate_dir(round_dir, k)) if k <= len(evaluated) and evaluated[k - 1] else None
            verdict = self._verdict_of(n, k)
            summary.append({"candidate": k, "chosen": k == self._chosen(n), "proposal": candidate, "commit": commit,
                            "status": result["status"] if result else None, "verdict": verdict})
            if k != self._chosen(n):
                self.tracker.log_round(n, proposal=candidate, result=result, verdict=verdict, critique="",
                                       diff=ws.diff(n, k) if commit else "", memory_snapshot="", candidate=k,
                                       commits={"candidate": commit, "incumbent": ws.incumbent_commit()})
        _write_json(round_dir / "candidates.json", summary)
        return recorded
