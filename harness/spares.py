"""Spare work for idle Ray workers: the re-training a round may ask for next, begun while its
candidates are still evaluated.

On `runner=ray` with two workers or more, a round's evaluate step often leaves a worker idle: a
sampling-only candidate is scored in seconds beside one that trains for tens of seconds. The retrain
step that may follow (a change to training that would be kept, or gains beyond the noise floor, is
re-trained with each fresh training seed, with the incumbent) then runs its GRPO runs after the round's
slowest candidate. A spare is one of those runs, offered to the pool with the evaluate step's jobs:
a worker that would idle there takes it (`RayPool.run`), so the run is done, or under way, when the
retrain step asks for it. It is the very job the retrain step would send (the same commit, folder,
seeds and training seed, see `Campaign._retrain`), so that step finds its result (`reusable`), or
the pool hands it the result of the spare still running; a spare of a round that does not re-train
is work lost on a worker that had nothing to do, and its policy stays in the training cache.

Only idle workers take spares: the local runner and a pool of one worker never run one, so they
change nothing there. Each spare checks out its commit in a worktree of its own only when a worker
takes it, and removes it once it has run (or when it is dropped).

    spares = retrain_spares(campaign, n, [(k, candidate_dir(out, k), proposal_dict), ...])
    results = pool.run(jobs, spares)
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from harness.compare import deterministic
from harness.training_noise import calibration_dir, retrain_dir, reusable

SPARES = "snapshots"  # campaign_dir/snapshots/NNN-k-spare-T: a spare's commit while it runs


class Spare:
    """One run a later step may ask for, of `commit` into `folder` (as `Campaign._job` describes it).
    `prepare()` checks the commit out at `at` and gives the job, or None when its result is there
    already; `finish(result)` checks the result the pool got; `close()` removes the checkout, and
    is safe to repeat."""

    def __init__(self, campaign, folder: Path, commit: str, at: Path, *, seeds: list[int], train_seed: int = 0,
                 calibration: bool = False, heldout: bool = False):
        self._campaign, self._folder, self._commit, self._at = campaign, Path(folder), commit, Path(at)
        self._run = {"seeds": list(seeds), "train_seed": train_seed, "calibration": calibration, "heldout": heldout}
        self._stack: contextlib.ExitStack | None = None
        self.job: dict | None = None  # what the pool sent, and its plan, worker and start (RayPool.run)
        self.plan = self.actor = None
        self.started = 0.0

    def prepare(self) -> dict | None:
        run = self._run
        if reusable(self._folder, commit=self._commit, seeds=run["seeds"], train_seed=run["train_seed"],
                    calibration=run["calibration"]):
            return None
        self._stack = contextlib.ExitStack()
        at = self._stack.enter_context(self._campaign.workspace.worktree(self._commit, self._at))
        return self._campaign._job(at, self._folder, run["seeds"], **{k: v for k, v in run.items() if k != "seeds"})

    def finish(self, result: dict | None) -> dict | None:
        """The spare's result as a step may take it (None when its worker died; failed, and written
        so, when it does not name its commit or the baseline's data), its checkout removed."""
        self.close()
        return None if result is None else self._campaign.checked(result, self._commit, self._folder)

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


def trains(proposal: dict) -> str | None:
    """The part of a proposal that changes training (every edit but a `sampling.*` knob's), as a
    key that a decoder companion shares with its proposal; None when it changes only sampling."""
    edits = [e for e in proposal.get("edits") or [] if not str(e.get("knob", "")).startswith("sampling.")]
    return json.dumps(edits, sort_keys=True) if edits else None


def _idle_workers(campaign) -> bool:
    """Whether a worker can idle beside a step's runs: `runner=ray` with two workers or more."""
    return campaign.pool is not None and campaign.pool.workers >= 2


def _calibrated(campaign) -> bool:
    """Whether the re-test and the retrain step will score on calibration examples (see
    `Campaign._with_calibration`): the incumbent scores every seed alike, and the candidate is
    taken to (a single eval seed tells nothing)."""
    return deterministic(campaign._incumbent_result()) and len(campaign.config["eval_seeds"]) > 1


def evaluate_spares(campaign, n: int, targets: list[tuple[int | None, Path, dict]]) -> list[Spare]:
    """The spares of round n's evaluate step, in the order a worker should take them: each
    candidate's re-test (the reeval step's run: fresh seeds, or calibration examples under
    deterministic decoding), then for each fresh training seed each candidate that changes training
    (one per training recipe: a companion trains its proposal's policy) and the incumbent, as the
    retrain step runs them. `targets`: (candidate k, or None in a round of one; its result folder;
    its proposal). None without a second worker."""
    if not _idle_workers(campaign):
        return []
    config, workspace = campaign.config, campaign.workspace
    calibration = _calibrated(campaign)
    seeds = config["eval_seeds"][:1] if calibration else config["eval_seeds"]
    commits = {k: workspace.candidate_commit(n, k) for k, _, _ in targets}
    at = campaign.dir / SPARES

    def spare(folder: Path, k: int | None, name: str, **run) -> Spare:
        return Spare(campaign, folder, commits[k], at / f"{n:03d}-{k or 0}-spare-{name}", **run)

    out = []
    for k, folder, _ in targets:
        if calibration:
            out.append(spare(calibration_dir(folder, 0), k, "retest", seeds=seeds, calibration=True))
        else:  # a round of one re-evaluates into reeval/, a round of several re-tests into retest/
            out.append(spare(folder / ("reeval" if k is None else "retest"), k, "retest", seeds=config["reeval_seeds"]))
    recipes, trained = set(), []
    for k, folder, proposal in targets:
        recipe = trains(proposal)
        if recipe is not None and recipe not in recipes:
            recipes.add(recipe)
            trained.append((k, folder))
    if not trained:
        return out
    incumbent, inc_dir = campaign.journal.get("incumbent")["commit"], campaign._incumbent_dir()
    for t in config["retrain_seeds"]:
        for k, folder in trained:
            where = calibration_dir(folder, t) if calibration else retrain_dir(folder, t)
            out.append(spare(where, k, f"seed-{t}", seeds=seeds, train_seed=t, calibration=calibration))
        where = calibration_dir(inc_dir, t) if calibration else retrain_dir(inc_dir, t)
        out.append(Spare(campaign, where, incumbent, at / f"{n:03d}-incumbent-spare-{t}", seeds=seeds, train_seed=t,
                         calibration=calibration))
    return out


def heldout_spares(campaign, n: int, runs: dict[int, tuple[tuple[Path, str], tuple[Path, str]]],
                   seeds: list[int]) -> list[Spare]:
    """The spares of the heldout step's first run (the new incumbent on held-out): its runs with
    each further training seed, `runs` as `Campaign._heldout_retrained` lays them out (training seed
    -> ((folder, commit) of the new incumbent, (folder, commit) of the replaced one))."""
    if not _idle_workers(campaign):
        return []
    at = campaign.dir / SPARES
    return [Spare(campaign, folder, commit, at / f"{n:03d}-heldout-{side}-spare-{t}", seeds=seeds, train_seed=t,
                  heldout=True)
            for t, pair in runs.items() for side, (folder, commit) in enumerate(pair)]


def drop_stale(campaign) -> None:
    """Remove the checkouts of spares a killed campaign left behind."""
    for path in sorted((campaign.dir / SPARES).glob("*-spare-*")):
        campaign.workspace.drop_worktree(path.resolve())
