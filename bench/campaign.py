"""Campaign throughput: rounds and candidates per hour, and where a round's time goes.

Runs a short campaign (default: 5 rounds of the `random` researcher on the arith scaffold at its
default knobs) in a temporary runs folder that shares the base policy and the data, then reads
the journal's per-step timings and prints rounds/hour, candidates evaluated/hour, the split per
step (propose, apply, evaluate, compare, record and the rest) and the round overhead: a round's
time less the evaluation work in it (training and scoring, as bench/rounds.py counts it), which is
what the runner and the loop add when evaluations run one at a time.

    .venv/bin/python bench/campaign.py [--rounds 5] [--researcher random|local] [--scaffold PATH]
    .venv/bin/python bench/campaign.py --runner ray --workers 2 --cpus 1 --candidates 2
    .venv/bin/python bench/campaign.py --runner ray --workers 2 margin=-0.5   # any campaign config after the
                                                                       # options (here: every tie a keep)
    .venv/bin/python bench/campaign.py --from-campaign runs/default    # the same numbers, read from
                                                                       # a campaign that already ran
    .venv/bin/python bench/campaign.py --keep /tmp/tp ...              # the campaign stays in /tmp/tp/runs

Without a base policy at --base, a tiny random one is built (the loop and the runner are under
test, not the policy's skill).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from rl_pipeline.env import use_offline_env  # noqa: E402

use_offline_env()

from harness.campaigns import create_campaign, run_campaign  # noqa: E402
from harness.config import ConfigError, compose_config  # noqa: E402
from harness.fill import FILL_NOTE  # noqa: E402
from harness.journal import STEPS, Journal  # noqa: E402
from rl_pipeline.result import read_result  # noqa: E402
from rounds import work  # noqa: E402  (bench/rounds.py: training and scoring time of a result)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--researcher", default="random")
    parser.add_argument("--base", default=str(REPO / "runs/models/base"))
    parser.add_argument("--scaffold", default="arith", help="a folder under scaffolds/, or a path")
    parser.add_argument("--runner", choices=["local", "ray"], default="local")
    parser.add_argument("--workers", type=int, default=None, help="ray: evaluations at once (default: all CPUs)")
    parser.add_argument("--cpus", type=int, default=1, help="ray: CPUs (and torch threads) per candidate")
    parser.add_argument("--candidates", type=int, default=1, help="candidates_per_round")
    parser.add_argument("--from-campaign", default=None, help="read the timings of this campaign folder instead")
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="run in DIR/runs (a new folder) and leave the campaign there, to look into later")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="more campaign config (hydra overrides)")
    args = parser.parse_args()
    if args.from_campaign:
        journal = Journal(Path(args.from_campaign))
        rounds = journal.last_finished_round()
        report(journal, Path(args.from_campaign), rounds, Path(args.from_campaign).name)
        return 0

    if args.keep and Path(args.keep, "runs").exists():
        parser.error(f"--keep {args.keep}: {Path(args.keep, 'runs')} exists; name a new folder")
    with (contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(prefix="bench-campaign-")
          ) as tmp:
        runs = Path(tmp) / "runs"
        runner = [f"runner={args.runner}"] + ([f"runner.cpus={args.cpus}"] if args.runner == "ray" else [])
        runner += [f"runner.workers={args.workers}"] if args.runner == "ray" and args.workers else []
        try:  # before the base and data are set up: a typo costs nothing
            config = compose_config([f"runs_dir={runs}", "name=bench", f"rounds={args.rounds}",
                                     f"scaffold={args.scaffold}", f"researcher={args.researcher}", "live=false",
                                     "tracking.enabled=true", f"candidates_per_round={args.candidates}", *runner,
                                     *args.overrides])
        except ConfigError as err:
            parser.error(str(err))
        (runs / "models").mkdir(parents=True)
        if (Path(args.base) / "config.json").is_file():
            os.symlink(Path(args.base).resolve(), runs / "models" / "base")
        else:
            from model import build_policy, build_tokenizer, save_policy
            tokenizer = build_tokenizer(["Q: 12 + 34\nA: 46"])
            save_policy(build_policy("tiny", tokenizer, seed=0), tokenizer, runs / "models" / "base")
            print(f"no base policy at {args.base}: using a tiny random one")
        if (REPO / "runs" / "data").is_dir():
            shutil.copytree(REPO / "runs" / "data", runs / "data")
        start = time.perf_counter()
        run_campaign(config, create_campaign(config))
        wall = time.perf_counter() - start
        label = (f"{args.researcher}, {args.candidates} candidate(s)/round, " +
                 (f"ray: {args.workers or 'all'} workers x {args.cpus} CPU" if args.runner == "ray" else "local runner") +
                 "".join(f", {o}" for o in args.overrides))
        report(Journal(runs / "bench"), runs / "bench", args.rounds, label, wall_s=wall)
    return 0


def evaluated(journal: Journal, n: int) -> int:
    """Candidates round n evaluated (one, or each of several)."""
    output = journal.step_output(n, "evaluate")
    return 0 if output is None else len([c for c in output.get("candidates", [output]) if c])


def fills(journal: Journal, n: int) -> int:
    """Round n's sampling-only fills (`runner.fill`, harness/fill.py) among its candidates."""
    proposed = journal.step_output(n, "propose") or {}
    return sum(p["hypothesis"].endswith(FILL_NOTE) for p in proposed.get("candidates") or [])


def evaluation_work(round_dir: Path) -> float:
    """Training and scoring seconds of every evaluation in a round's folder (each wrote a job.json);
    a result that a later one was merged into counts only its own part."""
    total = 0.0
    for job in round_dir.rglob("job.json"):
        if (job.parent / "result.json").is_file():
            total += work(read_result(job.parent))
            for merged in ("reeval", "retest"):
                if (job.parent / merged / "result.json").is_file():
                    total -= work(read_result(job.parent / merged))
    return total


def report(journal: Journal, campaign: Path, rounds: int, label: str, *, wall_s: float | None = None) -> None:
    """Rounds and candidates per hour, seconds per step and the round overhead over rounds 1..`rounds`."""
    per_step: dict[str, float] = defaultdict(float)
    for n in range(1, rounds + 1):
        for step in STEPS:
            per_step[step] += journal.step_seconds(n, step) or 0.0
    rounds_s = sum(per_step.values())
    candidates = sum(evaluated(journal, n) for n in range(1, rounds + 1))
    filled = sum(fills(journal, n) for n in range(1, rounds + 1))
    overhead = rounds_s - sum(evaluation_work(campaign / "rounds" / f"{n:03d}") for n in range(1, rounds + 1))
    setup = f" after a {wall_s - rounds_s:.1f}s setup (base checks, baseline evaluation)" if wall_s else ""
    print(f"{rounds} rounds ({label}) in {rounds_s:.1f}s{setup}: {3600 * rounds / rounds_s:.1f} rounds/hour, "
          f"{3600 * candidates / rounds_s:.1f} candidates evaluated/hour"
          + (f" ({filled} of the {candidates} candidates were sampling-only fills)" if filled else ""))
    print(f"round overhead (round time less evaluation work): {overhead / rounds:.2f}s/round")
    print(f"{'step':16s}{'seconds/round':>15s}{'share':>8s}")
    for step in STEPS:
        print(f"{step:16s}{per_step[step] / rounds:15.2f}{per_step[step] / rounds_s:8.1%}")
    print("each round's evaluations (work seconds; T: trained, c: training cached), against its evaluate step "
          "and the other steps that run jobs:")
    for n in range(1, rounds + 1):
        round_dir = campaign / "rounds" / f"{n:03d}"
        folders = [round_dir] if (round_dir / "result.json").is_file() else sorted(round_dir.glob("cand-*"))
        results = [(folder.name, read_result(folder)) for folder in folders if (folder / "result.json").is_file()]
        parts = [f"{name} {work(result):.1f}{'c' if result['training']['cached'] else 'T'}"
                 for name, result in results if result["status"] == "ok"]
        steps = "".join(f", {step} {journal.step_seconds(n, step):.1f}s" for step in ("reeval", "retrain", "heldout")
                        if journal.step_seconds(n, step))
        print(f"  round {n}: {', '.join(parts) or 'none'}; evaluate {journal.step_seconds(n, 'evaluate') or 0:.1f}s"
              f"{steps}{beside(journal, campaign, n)}")


def beside(journal: Journal, campaign: Path, n: int) -> str:
    """The held-out runs of round n-1's keep when they went beside round n's evaluations
    (`heldout_beside`): their round's heldout step is journaled during round n."""
    done_at = journal.step_done_at(n - 1, "heldout") if n > 1 else None
    if done_at is None or done_at < journal.started_at(n):
        return ""
    runs = [read_result(job.parent) for job in (campaign / "rounds" / f"{n - 1:03d}").rglob("heldout/**/job.json")
            if (job.parent / "result.json").is_file()]
    return (f"; beside them round {n - 1}'s {len(runs)} held-out run{'s' * (len(runs) != 1)}, "
            f"{sum(work(r) for r in runs):.1f}s of work")


if __name__ == "__main__":
    sys.exit(main())
