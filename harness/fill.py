"""Decoder fills: sampling-only candidates a round adds where its own would leave a worker idle.

On a pool of several workers (`runner=ray`) a round lasts as long as its longest run. A candidate
that trains the policy (30-45 s on one CPU here) beside candidates that only decode with a cached
policy (6-8 s) leaves the other workers idle for most of the round. A candidate that sets sampling
knobs alone trains nothing: it decodes with the incumbent's policy, in the cache since the
incumbent was scored, so it fits in that idle time.

Before a round's candidates are applied, the campaign plans them on the pool's workers as the pool
runs them (`harness.ray_runner.RayPool`: longest first; a decoder companion waits until the policy
its proposal trains is cached), with the seconds a training and a scoring took in the campaign's
recent runs, and asks the researcher for as many more sampling-only candidates (fills) as the plan
takes without ending later, at most `candidates_per_round` on each idle worker. Fills are
candidates like the others: applied, evaluated, compared (the re-test's level counts them),
learned from and recorded. A plan cannot know how long a run will take, only how long such runs
took; where no run has trained yet it adds none.

    count = fill_count(proposals, workers=2, train_s=28.0, score_s=7.6, most=2)
    train_s, score_s = recent_seconds(campaign_dir / "rounds", round_no=5, seeds=3)
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from harness.proposal import KnobEdit, Proposal

SAMPLING = "sampling."
LOOKBACK_ROUNDS = 3  # the rounds before this one whose runs time a training and a scoring
SCORE_MARGIN = 1.15  # a fill is planned a little longer than a scoring took: a short run's overheads vary
FILL_NOTE = " (a fill: it decodes only, beside the round's training)"  # ends a fill's hypothesis


def sets_sampling(edit) -> bool:
    """Whether an edit sets a sampling knob: it changes how a policy decodes, not how it trains."""
    return isinstance(edit, KnobEdit) and edit.knob.startswith(SAMPLING)


def training_of(proposal: Proposal) -> str | None:
    """What the proposal trains, as a key two proposals share when they train the same policy (a
    proposal and its decoder companions); None for one that sets sampling knobs alone, which decodes
    with the policy of the scaffold it edits (the convention of
    `harness.researchers.base.decoder_companions`)."""
    trained = tuple(e for e in proposal.edits if not sets_sampling(e))
    return Proposal(proposal.hypothesis, trained).edits_key if trained else None


def makespan(runs: list[tuple[str | None, float]], workers: int, train_s: float) -> float:
    """Seconds until the last of `runs` ends on `workers`, scheduled as `RayPool` does. A run is
    (its training key, `training_of`; its scoring seconds). The first run of a key trains for
    `train_s` before it scores; the others of that key wait until the policy is cached, then score.
    Runs are planned longest first (one that trains before one that decodes, in their order
    otherwise) and each free worker takes the first run it may begin, or waits for a policy."""
    first: dict[str, int] = {}
    for i, (key, _) in enumerate(runs):
        if key is not None:
            first.setdefault(key, i)
    trains = [key is not None and first[key] == i for i, (key, _) in enumerate(runs)]
    queue = sorted(range(len(runs)), key=lambda i: -(train_s if runs[i][0] is not None else 0.0) - runs[i][1])
    free = [0.0] * workers
    cached: dict[str, float] = {}
    while queue:
        w = min(range(workers), key=free.__getitem__)
        now = free[w]
        ready = [i for i in queue if runs[i][0] is None or trains[i] or cached.get(runs[i][0], float("inf")) <= now]
        if not ready:  # every queued run waits for a policy in training: so does the worker
            free[w] = min(cached[runs[i][0]] for i in queue)
            continue
        i = ready[0]
        queue.remove(i)
        if trains[i]:
            cached[runs[i][0]] = now + train_s
        free[w] = now + (train_s if trains[i] else 0.0) + runs[i][1]
    return max(free)


def fill_count(proposals: list[Proposal], *, workers: int, train_s: float, score_s: float, most: int) -> int:
    """How many decoding-only candidates can join `proposals` on `workers` without the round's plan
    ending later (each planned `SCORE_MARGIN` times a scoring), at most `most`."""
    if workers < 2 or most < 1:
        return 0
    runs = [(training_of(p), score_s) for p in proposals]
    if all(key is None for key, _ in runs):
        return 0  # nothing trains: the round's own scorings keep every worker busy
    alone, fill = makespan(runs, workers, train_s), (None, score_s * SCORE_MARGIN)
    count = 0
    while count < most and makespan(runs + [fill] * (count + 1), workers, train_s) <= alone:
        count += 1
    return count


def _read(path: Path) -> dict | None:
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("status") == "ok" else None


def recent_seconds(rounds_dir: Path, *, round_no: int, seeds: int) -> tuple[float, float] | None:
    """(training seconds, scoring seconds of a run on `seeds` seeds): the medians over the runs of
    the `LOOKBACK_ROUNDS` rounds before `round_no` and the baseline (round 0); None when none of
    them trained a policy or scored one."""
    trained, per_seed = [], []
    for n in [0, *range(max(1, round_no - LOOKBACK_ROUNDS), round_no)]:
        folder = Path(rounds_dir) / f"{n:03d}"
        for path in [folder / "result.json", *sorted(folder.glob("cand-*/result.json"))]:
            result = _read(path) if path.is_file() else None
            if result is None:
                continue
            training = result.get("training") or {}
            train_total = (training.get("timings") or {}).get("train_total_s")
            if not training.get("cached", True) and train_total:
                trained.append(float(train_total))
            eval_s = (result.get("timings") or {}).get("eval_s")
            if eval_s and result.get("seeds"):
                per_seed.append(float(eval_s) / len(result["seeds"]))
    if not trained or not per_seed:
        return None
    return statistics.median(trained), statistics.median(per_seed) * seeds
