"""Evidence that steers: the same local-researcher campaigns with the evidence present and blanked.

For each seed, two campaigns of the local researcher on the arith scaffold that differ only in
`researcher.evidence` (true: the evidence summary in its prompt and the evidence as the credit
model's context; false: neither). They share one runs folder, so the base policy, the data and
the training cache are common to both. Per condition it prints, over the seeds:

  - final level at: the median first round whose incumbent was at its final accuracy (0 when it
    never rose above the baseline's)
  - pair's best at: the median first round at which the incumbent came within NEAR_BEST of the
    better final incumbent of that seed's two campaigns (not reached: rounds + 1, shown as ">N"),
    so a campaign that stops early at a lower level does not look fast
  - the median final incumbent accuracy and its held-out accuracy
  - keeps and false keeps (keeps whose held-out change was not positive), summed over seeds

then every campaign's row (`researcher compare`'s table). Trailing KEY=VALUE items set the
campaign config of both conditions. A campaign already in the runs folder is resumed, not
restarted, so a long comparison can be stopped and picked up again; `--reuse present:0=PATH` takes
the campaign at PATH (run earlier, in another runs folder, or its record written by `--records`) as
that condition's seed-0 campaign, after checking that it ran this config on the same base, data and
scaffold (`bench/efficacy.py` says more).

    .venv/bin/python bench/evidence.py --rounds 2 --seeds 1 --fast      # a smoke run of the bench itself
    .venv/bin/python bench/evidence.py --rounds 2 --seeds 1 --fast margin=-0.01   # ties are kept: false keeps
    .venv/bin/python bench/evidence.py --rounds 100 --seeds 4 --runs-dir runs/bench-evidence
                                        # the full comparison: a pretrained base at runs/models/base
                                        # (`researcher model pretrain`), hours per campaign

`--fast` (and a missing base) runs the end-to-end tests' set-up instead: a random-weight tiny base
and the arith scaffold cut to one GRPO step (tests/fast_scaffold.py). Its accuracy is 0 whatever
the researcher does, so it checks that the bench runs, not which condition wins.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from campaign_runs import (REPO, ReuseError, check_overrides, group_stats, median, near_median,  # noqa: E402
                           parse_reuse, reuse_all, run, setup, write_records)

from harness.report import comparison_markdown  # noqa: E402

CONDITIONS = {"present": "true", "blanked": "false"}


def campaign_name(condition: str, seed: int) -> str:
    return f"evidence-{condition}-s{seed}"


def overrides(condition: str, seed: int, common: list[str]) -> list[str]:
    return [f"seed={seed}", "researcher=local", f"researcher.evidence={CONDITIONS[condition]}", *common]


def report(histories: dict[tuple[str, int], list[dict]], seeds: list[int], rounds: int) -> None:
    print("\n| evidence | final level at round | pair's best at round | final accuracy | held-out | kept | "
          "false keeps |\n|---|---:|---:|---:|---:|---:|---:|")
    for condition, row in group_stats(histories, list(CONDITIONS), seeds, rounds).items():
        print(f"| {condition} | {median(row['own'])} | {near_median(row['near'], rounds)} | {median(row['final'])} | "
              f"{median(row['heldout'])} | {row['kept']} | {row['false']} |")
    print(f"\nmedians over seeds {seeds}, {rounds} rounds each\n")
    print(comparison_markdown({f"{c}-s{s}": histories[c, s] for s in seeds for c in CONDITIONS}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=4, help="campaign seeds 0..N-1, one pair each")
    parser.add_argument("--base", default=str(REPO / "runs/models/base"))
    parser.add_argument("--runs-dir", default=None, help="keep the campaigns here (default: a temporary folder)")
    parser.add_argument("--fast", action="store_true", help="the tests' tiny random base and one-step scaffold")
    parser.add_argument("--reuse", action="append", default=[], metavar="CONDITION:SEED=PATH",
                        help="take the campaign at PATH (a folder run earlier elsewhere, or its record) as this "
                             "condition's seed (repeatable)")
    parser.add_argument("--records", default=None, metavar="DIR",
                        help="write a record of each campaign run here to DIR, for a later --reuse")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="campaign config for both conditions")
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    try:
        reused = parse_reuse(args.reuse, list(CONDITIONS), seeds)
    except ReuseError as err:
        parser.error(str(err))
    check_overrides(parser, [overrides(k, seeds[0], args.overrides) for k in CONDITIONS])

    with tempfile.TemporaryDirectory(prefix="bench-evidence-") as tmp:
        runs = Path(args.runs_dir or Path(tmp) / "runs").resolve()
        common = setup(runs, Path(args.base), args.fast) + args.overrides
        histories = reuse_all(reused, runs, args.rounds, lambda c, s: overrides(c, s, common))
        keys = [(c, s) for s in seeds for c in CONDITIONS if (c, s) not in reused]
        histories |= {(c, s): run(runs, campaign_name(c, s), args.rounds, overrides(c, s, common)) for c, s in keys}
        report(histories, seeds, args.rounds)
        if args.records:
            write_records(runs, [campaign_name(c, s) for c, s in keys], Path(args.records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
