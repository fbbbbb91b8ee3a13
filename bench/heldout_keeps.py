"""A finished campaign's keeps scored on held-out over the training seeds each keep was decided on.

    .venv/bin/python bench/heldout_keeps.py runs/default [runs/other ...]

A change to training is kept on its paired gain averaged over training seeds (0 and
`retrain_seeds`), but campaigns run before the held-out record did the same scored each keep's
held-out change with training seed 0 alone, so training noise could make a keep false (or hide
one). This scores, for every kept round that re-trained, the new incumbent and the incumbent it
replaced on held-out with each further training seed (the policies are in the campaign's training
cache: only the scoring runs), and prints each keep's held-out change as the campaign recorded it
and as the campaign records it now (`heldout_change` with `retrained`), with the false keeps of
both. Each commit is scored in a worktree of the campaign's own repository at that commit, so the
result names the commit the campaign measured; results go to <campaign>/heldout-keeps/ and are
reused by a second run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from rl_pipeline.env import use_offline_env  # noqa: E402

use_offline_env()

from harness.compare import deterministic, heldout_change, heldout_part  # noqa: E402
from harness.config import frozen_config  # noqa: E402
from harness.journal import Journal, heldout_dir  # noqa: E402
from harness.training_noise import reusable  # noqa: E402
from harness.workspace import Workspace  # noqa: E402
from rl_pipeline.result import read_result  # noqa: E402
from rl_pipeline.run import run_scaffold, shutdown  # noqa: E402


def runner_options(campaign: Path) -> dict:
    """The runner options the campaign ran with: its base, data, training cache and split size.
    Relative paths in its config are from where it was started: <there>/<runs_dir>/<name>."""
    config = frozen_config(campaign)
    runs_dir = Path(config["runs_dir"])
    started_in = campaign.parent if runs_dir.is_absolute() else campaign.parents[len(runs_dir.parts)]
    runs = campaign.parent
    return {"base": str(started_in / config["base_model"]), "data_dir": str(runs / "data"),
            "cache_dir": str(runs / "cache" / "train"), "split_size": config["split_size"]}


def scored(campaign: Path, commit: str, train_seed: int, seeds: list[int], options: dict) -> dict:
    """`commit` trained with `train_seed`, scored on held-out with `seeds` (reused when there)."""
    out = campaign / "heldout-keeps" / commit[:12] / f"train-seed-{train_seed}"
    done = reusable(out, commit=commit, seeds=seeds, train_seed=train_seed)
    if done:
        return done
    workspace = Workspace.open(campaign)
    with workspace.worktree(commit, campaign / "heldout-keeps" / "worktree") as at:
        result = run_scaffold(at, out, heldout=True, seeds=seeds, train_seed=train_seed, **options)
    if result["status"] != "ok":
        raise RuntimeError(f"{commit[:12]} with training seed {train_seed}: {result.get('reason')}")
    return result


def keeps(campaign: Path) -> list[dict]:
    """Each re-trained keep of `campaign`: its round, its held-out change as recorded, and now."""
    journal, options, eval_seeds = Journal(campaign), runner_options(campaign), frozen_config(campaign)["eval_seeds"]
    history = sorted(journal.get("history"), key=lambda h: h["round"])
    rows, previous = [], 0
    for row in history:
        if row["decision"] != "keep":
            continue
        n, before = row["round"], previous
        previous = n
        per_seed = (journal.step_output(n, "retrain") or {}).get("per_seed", [])
        train_seeds = [p["train_seed"] for p in per_seed if p["train_seed"] != 0]
        if not train_seeds or row.get("heldout_delta") is None:
            continue
        new = read_result(heldout_dir(campaign, journal, n))
        old = read_result(heldout_dir(campaign, journal, before))
        greedy = deterministic(heldout_part(new)) and deterministic(heldout_part(old))
        seeds = eval_seeds[:1] if greedy else eval_seeds
        commits = journal.step_output(n, "decide")["commits"]
        retrained = {t: (scored(campaign, commits["candidate"], t, seeds, options),
                         scored(campaign, commits["incumbent_before"], t, seeds, options)) for t in train_seeds}
        rows.append({"round": n, "recorded": row["heldout_delta"], **heldout_change(new, old, retrained)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("campaigns", type=Path, nargs="+", help="finished campaign folders, e.g. runs/default")
    args = parser.parse_args(argv)
    missing = [str(c) for c in args.campaigns if not (c / "journal.json").is_file()]
    if missing:
        print(f"not a campaign folder (no journal.json): {', '.join(missing)}")
        return 2
    totals = {"recorded": 0, "now": 0, "keeps": 0}
    try:
        for campaign in args.campaigns:
            rows = keeps(campaign.resolve())
            print(f"\n{campaign.name}: {len(rows)} re-trained keep(s)")
            print(f"{'round':>5}  {'recorded (seed 0)':>17}  {'over training seeds':>19}  by training seed")
            for r in rows:
                seeds = ", ".join(f"{t} {d:+.4f}" for t, d in r["heldout_by_train_seed"].items())
                print(f"{r['round']:>5}  {r['recorded']:>+17.4f}  {r['heldout_delta']:>+19.4f}  {seeds}"
                      f"{'  false keep' if r['false_keep'] else ''}")
            totals["keeps"] += len(rows)
            totals["recorded"] += sum(r["recorded"] <= 0 for r in rows)
            totals["now"] += sum(r["false_keep"] for r in rows)
    finally:
        shutdown()
    print(f"\nfalse keeps among {totals['keeps']} re-trained keeps: {totals['recorded']} on training seed 0 alone, "
          f"{totals['now']} over the training seeds each keep was decided on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
