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
from collections.abc import Callable
from pathlib import Path

from harness.compare import deterministic
from harness.training_noise import calibration_dir, retrain_dir, reusable

SPARES = "snapshots"  # campaign_dir/snapshots/NNN-k-spare-T: a spare's commit while it runs


class Spare:
    """One run a later step may ask for: `prepare()` checks out its commit and gives the job (None
    when its result is there already), `close()` removes the checkout; both are safe to repeat."""

    def __init__(self, job: Callable[[Path], dict | None], checkout: Callable[[Path], contextlib.AbstractContextManager],
                 at: Path):
        self._job, self._checkout, self._at = job, checkout, at
        self._stack: contextlib.ExitStack | None = None
        self.job: dict | None = None  # what the pool sent, and its plan, worker and start (RayPool.run)
        self.plan = self.actor = None
        self.started = 0.0

    def prepare(self) -> dict | None:
        job = self._job(self._at)
        if job is None:
            return None
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self._checkout(self._at))
        return job

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


def trains(proposal: dict) -> str | None:
    """The part of a proposal that changes training (every edit but a `sampling.*` knob's), as a
    key that a decoder companion shares with its proposal; None when it changes only sampling."""
    edits = [e for e in proposal.get("edits") or [] if not str(e.get("knob", "")).startswith("sampling.")]
    return json.dumps(edits, sort_keys=True) if edits else None


def retrain_spares(campaign, n: int, targets: list[tuple[int | None, Path, dict]]) -> list[Spare]:
    """Round n's spares, in the order a worker should take them: for each fresh training seed, each
    candidate that changes training (one per training recipe: a companion trains its proposal's
    policy), then the incumbent. `targets`: (candidate k or None for a round of one, its result
    folder, its proposal). None when the runner has no second worker or nothing is re-trained."""
    config, workspace = campaign.config, campaign.workspace
    pool = campaign.pool
    if pool is None or pool.workers < 2 or not config["retrain_seeds"]:
        return []
    incumbent = campaign.journal.get("incumbent")
    inc_dir = campaign._incumbent_dir()
    # The retrain step's way when the candidate scores as the incumbent does (one seed tells nothing).
    calibration = deterministic(campaign._incumbent_result()) and len(config["eval_seeds"]) > 1
    seeds = config["eval_seeds"][:1] if calibration else config["eval_seeds"]
    recipes, chosen = set(), []
    for k, out, proposal in targets:
        recipe = trains(proposal)
        if recipe is not None and recipe not in recipes:
            recipes.add(recipe)
            chosen.append((k, out))
    if not chosen:
        return []
    snapshots = campaign.dir / SPARES

    def spare(folder: Path, commit: Callable[[], str | None], checkout, name: str, t: int) -> Spare:
        def job(at: Path) -> dict | None:
            sha = commit()
            if sha is None or reusable(folder, commit=sha, seeds=seeds, train_seed=t, calibration=calibration):
                return None
            return campaign._job(at, folder, seeds, train_seed=t, calibration=calibration)
        return Spare(job, checkout, snapshots / f"{n:03d}-{name}-spare-{t}")

    out = []
    for t in config["retrain_seeds"]:
        for k, folder in chosen:
            where = calibration_dir(folder, t) if calibration else retrain_dir(folder, t)
            out.append(spare(where, lambda k=k: workspace.candidate_commit(n, k),
                             lambda at, k=k: workspace.snapshot(n, k, at), str(k or 0), t))
        where = calibration_dir(inc_dir, t) if calibration else retrain_dir(inc_dir, t)
        out.append(spare(where, lambda: incumbent["commit"],
                         lambda at: workspace.worktree(incumbent["commit"], at), "incumbent", t))
    return out


def drop_stale(campaign) -> None:
    """Remove the checkouts of spares a killed campaign left behind."""
    for path in sorted((campaign.dir / SPARES).glob("*-spare-*")):
        campaign.workspace.drop_worktree(path.resolve())
