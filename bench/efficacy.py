"""Efficacy: the researchers against each other, on one scaffold, with the same round budget.

For each researcher (default: local, random, tpe, cmaes) and each seed, one campaign of `--rounds`
rounds on the arith scaffold at its defaults. All share one runs folder, so the base policy, the
data and the training cache are common. Per researcher it prints, over the seeds:

  - the median final held-out accuracy (the last keep's, or the baseline's when nothing was kept)
  - the median final incumbent accuracy (eval)
  - near best at: the median first round at which the incumbent came within NEAR_BEST of the best
    final incumbent of that seed's campaigns, all researchers together (not reached: rounds + 1,
    shown as ">N"), so a campaign that stops early at a lower level does not look fast
  - the median mean incumbent over the rounds (the area under its curve: sooner counts)
  - keeps, and false keeps (keeps whose held-out change was not positive), summed over seeds

then every campaign's row (`researcher compare`'s table), and writes one plot of every campaign's
incumbent by round (`--plot`). Trailing KEY=VALUE items set the campaign config of every campaign.
A campaign already in the runs folder is resumed, not restarted, so a long comparison can be
stopped and picked up again.

`--ray` runs the campaigns at once as Ray tasks, `--cpus` CPUs reserved for each (a local Ray
bound to 127.0.0.1 sized to this machine, or `--ray-address` to join a cluster that sees this
project and the runs folder at the same paths). Each campaign evaluates with its own local runner.

    .venv/bin/python bench/efficacy.py --rounds 2 --seeds 1 --fast          # a smoke run of the bench itself
    .venv/bin/python bench/efficacy.py --rounds 2 --seeds 1 --fast --ray --researchers random tpe
    .venv/bin/python bench/efficacy.py --rounds 100 --seeds 3 --runs-dir runs/bench-efficacy
                                        # the full comparison: a pretrained base at runs/models/base
                                        # (`researcher model pretrain`), about an hour per campaign here
    .venv/bin/python bench/efficacy.py --rounds 100 --seeds 1 --runs-dir runs/bench-efficacy \
        --reuse local:0=runs/default    # the default campaign (`make run`) as local's seed 0
    .venv/bin/python bench/efficacy.py --rounds 100 --seeds 1 --first-seed 1 --runs-dir runs/bench-efficacy \
        --records bench/records         # seed 1 alone, its campaigns' records kept in the repository
    .venv/bin/python bench/efficacy.py --rounds 100 --seeds 2 --runs-dir runs/bench-efficacy \
        --reuse local:1=bench/records/efficacy-local-s1.json ...   # seed 1 from its records, on the same base

A record (`--records`) is a small JSON file: the campaign's config, base and data fingerprints,
initial scaffold hash and history. `--reuse` takes a record as it takes a folder, with the same
checks, so a comparison of several seeds can be run on different days and machines, provided the
base policy there has the same weights, config and tokenizer (checked by their hashes).

`--fast` (and a missing base) runs the end-to-end tests' set-up instead (bench/campaign_runs.py):
its accuracy is 0 whatever the researcher does, so it checks that the bench runs, not who wins.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from campaign_runs import (REPO, ReuseError, check_overrides, group_stats, median, near_median,  # noqa: E402
                           parse_reuse, reuse_all, run, setup, write_records)

from harness.report import NEAR_BEST, comparison_markdown, comparison_plot  # noqa: E402

RESEARCHERS = ["local", "random", "tpe", "cmaes"]


def campaign_name(researcher: str, seed: int) -> str:
    return f"efficacy-{researcher}-s{seed}"


def overrides(researcher: str, seed: int, common: list[str]) -> list[str]:
    return [f"seed={seed}", f"researcher={researcher}", *common]


def run_all(runs: Path, keys: list[tuple[str, int]], rounds: int, common: list[str]) -> dict:
    """The campaigns of `keys` (researcher, seed), one after another; their histories by key."""
    return {(r, s): run(runs, campaign_name(r, s), rounds, overrides(r, s, common)) for r, s in keys}


def run_all_on_ray(runs: Path, keys: list[tuple[str, int]], rounds: int, common: list[str],
                   *, address: str | None, cpus: int) -> dict:
    """The campaigns of `keys` as Ray tasks reserving `cpus` CPUs each, at once as the cluster allows."""
    from harness.ray_runner import LOCAL_ONLY_ENV

    os.environ.update(LOCAL_ONLY_ENV)
    import ray

    bench = str(Path(__file__).resolve().parent)
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), bench, *filter(None, [os.environ.get("PYTHONPATH")])])}
    # "local": a new cluster even where a stale /tmp/ray names an old one
    local = {} if address else {"num_cpus": os.cpu_count(), "_node_ip_address": "127.0.0.1"}
    ray.init(address=address or "local", include_dashboard=False, log_to_driver=True, logging_level="WARNING",
             runtime_env={"env_vars": env}, **local)
    try:
        task = ray.remote(num_cpus=cpus, max_retries=0)(run)
        refs = [task.remote(runs, campaign_name(r, s), rounds, overrides(r, s, common)) for r, s in keys]
        return dict(zip(keys, ray.get(refs)))
    finally:
        ray.shutdown()


def report(histories: dict[tuple[str, int], list[dict]], researchers: list[str], seeds: list[int], rounds: int) -> None:
    print("\n| researcher | held-out | accuracy | near best at round | mean incumbent | kept | false keeps |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for researcher, row in group_stats(histories, researchers, seeds, rounds).items():
        print(f"| {researcher} | {median(row['heldout'])} | {median(row['final'])} | {near_median(row['near'], rounds)} | "
              f"{median(row['mean'])} | {row['kept']} | {row['false']} |")
    print(f"\nmedians over seeds {seeds}, {rounds} rounds each; near best: within {NEAR_BEST} of the seed's best\n")
    print(comparison_markdown({f"{r}-s{s}": histories[r, s] for s in seeds for r in researchers}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3, help="how many campaign seeds, one campaign per researcher each")
    parser.add_argument("--first-seed", type=int, default=0, help="the seeds are FIRST..FIRST+N-1 (default 0)")
    parser.add_argument("--researchers", nargs="+", default=RESEARCHERS)
    parser.add_argument("--base", default=str(REPO / "runs/models/base"))
    parser.add_argument("--runs-dir", default=None, help="keep the campaigns here (default: a temporary folder)")
    parser.add_argument("--fast", action="store_true", help="the tests' tiny random base and one-step scaffold")
    parser.add_argument("--ray", action="store_true", help="run the campaigns at once as Ray tasks")
    parser.add_argument("--ray-address", default=None, help="join this Ray cluster ('auto', 'ray://HOST:PORT')")
    parser.add_argument("--cpus", type=int, default=1, help="--ray: CPUs reserved per campaign")
    parser.add_argument("--reuse", action="append", default=[], metavar="RESEARCHER:SEED=PATH",
                        help="take the campaign at PATH (a folder run earlier elsewhere, or its record) as this "
                             "researcher's seed (repeatable)")
    parser.add_argument("--records", default=None, metavar="DIR",
                        help="write a record of each campaign run here to DIR, for a later --reuse")
    parser.add_argument("--plot", default="efficacy.png", help="where to write the plot (in the runs folder)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="campaign config for every campaign")
    args = parser.parse_args()
    if args.rounds < 1 or args.seeds < 1 or args.first_seed < 0:
        parser.error("--rounds and --seeds must be at least 1, --first-seed at least 0")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    try:
        reused = parse_reuse(args.reuse, args.researchers, seeds)
    except ReuseError as err:
        parser.error(str(err))
    check_overrides(parser, [overrides(k, seeds[0], args.overrides) for k in args.researchers])

    with tempfile.TemporaryDirectory(prefix="bench-efficacy-") as tmp:
        runs = Path(args.runs_dir or Path(tmp) / "runs").resolve()
        common = setup(runs, Path(args.base), args.fast) + args.overrides
        histories = reuse_all(reused, runs, args.rounds, lambda r, s: overrides(r, s, common))
        keys = [(r, s) for s in seeds for r in args.researchers if (r, s) not in reused]
        if args.ray and keys:
            histories |= run_all_on_ray(runs, keys, args.rounds, common, address=args.ray_address, cpus=args.cpus)
        elif keys:
            histories |= run_all(runs, keys, args.rounds, common)
        report(histories, args.researchers, seeds, args.rounds)
        if args.records:
            write_records(runs, [campaign_name(r, s) for r, s in keys], Path(args.records))
        plot = comparison_plot({f"{r}-s{s}": histories[r, s] for s in seeds for r in args.researchers},
                               Path(args.runs_dir or ".") / args.plot, title="Incumbent by round, per researcher")
        print(f"plot: {plot.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
