"""The keep rule across training seeds: a change to training earns its keep on fresh training runs.

`compare` pairs a candidate with the incumbent on evaluation seeds of one trained policy each, so
its interval is the noise of evaluation. A change that alters training is also one draw of
training randomness, and a recipe that is no better can win by the luck of that draw (a campaign
kept `grpo.num_generations` 8 -> 2 at +0.040 while held-out fell). So before such a change is
kept, the campaign re-trains the candidate and the incumbent on the same fresh training seeds
(the incumbent's re-trains are kept in its round folder and reused by later rounds; the training
cache reuses its weights), evaluates both on the same evaluation seeds, and keeps only if the
per-example paired difference, averaged over every training seed (the first one and the fresh
ones), still has the lower bound of its 95% interval above the margin. When the change was the
best of K candidates of its round (`count`), the interval is at the level K candidates call for
(1 - 0.05/K, `harness.selection`): its first training seed is the one it was chosen on.

A change to training that gains more than the evaluation noise floor's half-width on its first
training seed without clearing the margin goes to the same re-training (`worth_retraining`): one
trained policy is one draw of training randomness, and the spread between draws (0.064 to 0.140
held-out for one recipe on the make run base) is wider than evaluation's, so more evaluation seeds
cannot settle it and fresh training seeds can. A reward move measured +0.014 [-0.010, +0.036] on
its first training seed was worth +0.052 [+0.037, +0.067] averaged over three.

    if changes_training(candidate, incumbent):
        out = training_seed_verdict({0: (round_dir, incumbent_dir), 1: (retrain_dir(round_dir, 1),
                                    retrain_dir(incumbent_dir, 1))}, margin=0.0)
        out["verdict"]["decision"], out["per_seed"]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.compare import Verdict, metric_deltas, on_more_examples, paired_differences, with_calibration
from harness.selection import selection_level
from rl_pipeline.result import read_result
from rl_pipeline.stats import bootstrap_mean_ci


def changes_training(candidate: dict, incumbent: dict) -> bool:
    """Whether the candidate trains another policy than the incumbent: their training cache keys
    differ (the key hashes everything training depends on, so a change of `sampling.*` alone,
    which reuses the incumbent's trained policy, does not count)."""
    keys = [(result.get("training") or {}).get("key") for result in (candidate, incumbent)]
    return keys[0] != keys[1]


def worth_retraining(verdict: dict, *, margin: float, band: float) -> bool:
    """Whether a change to training goes on to fresh training seeds: it would be kept on its first
    one, or its gain there is above the margin by more than `band` (the noise floor's half-width)."""
    delta = verdict.get("delta")
    return verdict["decision"] == "keep" or (delta is not None and delta > margin + band)


def retrain_dir(round_dir: Path, train_seed: int) -> Path:
    """Where a round's scaffold re-trained with `train_seed` keeps its result."""
    return Path(round_dir) / "retrain" / f"seed-{train_seed}"


def calibration_dir(round_dir: Path, train_seed: int) -> Path:
    """Where a round's scaffold (re-trained with `train_seed` unless it is 0) keeps its result with a
    calibration part: the extra examples of a comparison under deterministic decoding."""
    return (Path(round_dir) if train_seed == 0 else retrain_dir(round_dir, train_seed)) / "calibration"


def reusable(out: Path, *, commit: str, seeds: list[int], train_seed: int, calibration: bool = False) -> dict | None:
    """The successful result already at `out` when it measured `commit` trained with `train_seed`
    on exactly `seeds`, with its calibration part when `calibration` (a replay after a kill, or the
    incumbent's re-train from an earlier round)."""
    if not (Path(out) / "result.json").is_file():
        return None
    result = read_result(out)
    ok = (result.get("status") == "ok" and result["scaffold"].get("commit") == commit
          and result["seeds"] == list(seeds) and result["training"].get("train_seed") == train_seed
          and (not calibration or "calibration" in result))
    return result if ok else None


def _pooled(per_seed: list[dict], diffs: list[np.ndarray], margin: float,
            count: int) -> tuple[str, float, tuple, str]:
    """The decision, the change and its interval (at the level `count` candidates call for), and
    the reason, from each example's paired difference averaged over the training seeds."""
    pooled = np.mean(diffs, axis=0)
    delta = float(pooled.mean())
    level = selection_level(count)
    low, high = bootstrap_mean_ci(pooled, level=level)
    seeds = ", ".join(f"{p['train_seed']} {p['delta']:+.3f}" for p in per_seed)
    interval = "95% CI" if count == 1 else f"{level:.2%} CI, the level {count} candidates call for,"
    numbers = (f"accuracy {delta:+.3f} ({interval} {low:+.3f} to {high:+.3f}) over {len(diffs[0])} examples, "
               f"averaged over {len(per_seed)} training seeds (by training seed: {seeds})")
    if low > margin:
        decision, why = "keep", f"the lower bound is above the margin {margin:+.3f} across training seeds"
    elif delta > margin:
        decision, why = "revert", (f"the lower bound does not clear the margin {margin:+.3f} across training "
                                   "seeds: the first training's gain did not hold on fresh ones")
    else:
        decision, why = "revert", f"the estimate is not above the margin {margin:+.3f} across training seeds"
    return decision, delta, (low, high), f"{decision}: {numbers}; {why}."


def training_seed_verdict(pairs: dict[int, tuple[Path, Path]], *, margin: float,
                          calibration: bool = False, count: int = 1) -> dict:
    """The keep rule on the paired change averaged over training seeds.

    `pairs` maps each training seed to the result folders of the candidate and the incumbent
    trained with it; with `calibration`, each result's eval and calibration examples are pooled
    (`with_calibration`: the re-test of a deterministic decoder). `count` is how many candidates
    the change was chosen from on its first training seed. Returns `verdict` (a `Verdict` as a
    dict: keep only when the pooled interval's lower bound, at level 1 - 0.05/count, is above
    `margin`), `per_seed` (each training seed's paired change and interval) and `left_out`
    (training seeds whose incumbent failed, so nothing could be paired). A candidate that fails
    with any training seed is reverted: it does not train reliably.
    """
    per_seed, left_out, diffs, deltas = [], [], [], []
    n_seeds = 0
    for train_seed, (cand_dir, inc_dir) in sorted(pairs.items()):
        candidate, incumbent = read_result(cand_dir), read_result(inc_dir)
        if candidate["status"] != "ok":
            reason = (f"revert: the candidate failed with training seed {train_seed} "
                      f"({candidate.get('reason') or 'no reason given'}).")
            return {"verdict": Verdict("revert", None, None, margin, 0, 0, reason).to_dict(),
                    "per_seed": per_seed, "left_out": left_out}
        if incumbent["status"] != "ok":
            left_out.append({"train_seed": train_seed, "reason": incumbent.get("reason") or "no reason given"})
            continue
        if calibration:
            candidate = with_calibration(candidate, candidate["calibration"])
            incumbent = with_calibration(incumbent, incumbent["calibration"])
        diff, _, seeds = paired_differences(candidate, incumbent)
        low, high = bootstrap_mean_ci(diff)
        per_seed.append({"train_seed": train_seed, "delta": float(diff.mean()), "ci95": [low, high],
                         "n_seeds": len(seeds)})
        diffs.append(diff)
        deltas.append(metric_deltas(candidate, incumbent))
        n_seeds += len(seeds)
    decision, delta, ci95, reason = _pooled(per_seed, diffs, margin, count)
    if left_out:
        reason += " Left out, the incumbent failing to train: " + "; ".join(
            f"training seed {gone['train_seed']} ({gone['reason'].splitlines()[0][:200]})" for gone in left_out) + "."
    shared = set.intersection(*(set(d) for d in deltas))
    mean_deltas = {name: float(np.mean([d[name] for d in deltas])) for name in sorted(shared)}
    verdict = Verdict(decision, delta, ci95, margin, len(diffs[0]), n_seeds, reason, mean_deltas)
    if calibration:
        verdict = on_more_examples(verdict)
    return {"verdict": verdict.to_dict(), "per_seed": per_seed, "left_out": left_out}
