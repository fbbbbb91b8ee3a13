"""Campaign throughput: rounds per hour and where a round's time goes.

Runs a short campaign (default: 5 rounds of the `random` researcher on the arith scaffold at its
default knobs) in a temporary runs folder that shares the base policy and the data, then reads
the journal's per-step timings and prints rounds/hour and the split per step (propose, apply,
evaluate, compare, record and the rest).

    .venv/bin/python bench/campaign.py [--rounds 5] [--researcher random|local]
    .venv/bin/python bench/campaign.py --from-campaign runs/default    # the same numbers, read from
                                                                       # a campaign that already ran
"""

from __future__ import annotations

import argparse
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
from harness.config import compose_config  # noqa: E402
from harness.journal import STEPS, Journal  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--researcher", default="random")
    parser.add_argument("--base", default=str(REPO / "runs/models/base"))
    parser.add_argument("--from-campaign", default=None, help="read the timings of this campaign folder instead")
    args = parser.parse_args()
    if args.from_campaign:
        journal = Journal(Path(args.from_campaign))
        rounds = journal.last_finished_round()
        report(journal, rounds, Path(args.from_campaign).name)
        return 0
    if not (Path(args.base) / "config.json").is_file():
        print(f"no base policy at {args.base}: run `researcher model pretrain` first")
        return 1

    with tempfile.TemporaryDirectory(prefix="bench-campaign-") as tmp:
        runs = Path(tmp) / "runs"
        (runs / "models").mkdir(parents=True)
        os.symlink(Path(args.base).resolve(), runs / "models" / "base")
        if (REPO / "runs" / "data").is_dir():
            shutil.copytree(REPO / "runs" / "data", runs / "data")
        config = compose_config([f"runs_dir={runs}", "name=bench", f"rounds={args.rounds}",
                                 f"researcher={args.researcher}", "live=false", "tracking.enabled=true"])
        start = time.perf_counter()
        run_campaign(config, create_campaign(config))
        wall = time.perf_counter() - start
        journal = Journal(runs / "bench")
        report(journal, args.rounds, args.researcher, wall_s=wall)
    return 0


def report(journal: Journal, rounds: int, label: str, *, wall_s: float | None = None) -> None:
    """Rounds/hour and seconds per step over rounds 1..`rounds` of a campaign's journal."""
    per_step: dict[str, float] = defaultdict(float)
    for n in range(1, rounds + 1):
        for step in STEPS:
            per_step[step] += journal.step_seconds(n, step) or 0.0
    rounds_s = sum(per_step.values())
    setup = f" after a {wall_s - rounds_s:.1f}s setup (base checks, baseline evaluation)" if wall_s else ""
    print(f"{rounds} rounds ({label}) in {rounds_s:.1f}s{setup}: {3600 * rounds / rounds_s:.1f} rounds/hour")
    print(f"{'step':16s}{'seconds/round':>15s}{'share':>8s}")
    for step in STEPS:
        print(f"{step:16s}{per_step[step] / rounds:15.2f}{per_step[step] / rounds_s:8.1%}")


if __name__ == "__main__":
    sys.exit(main())
