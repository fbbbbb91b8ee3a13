"""Each change a campaign kept, applied alone to its initial scaffold and scored on held-out.

    .venv/bin/python bench/confirm.py runs/default [--train-seeds 0 1 2] [--seeds 0 1 2]

A keep is decided on eval, on top of the keeps before it. This asks whether each kept change also
helps by itself where the campaign started: the initial scaffold (the workspace's baseline commit)
and, for every kept round, that round's whole proposal (every edit of it, stacked ones included)
applied to a copy of the initial scaffold, each trained with every `--train-seeds` seed and scored
on the held-out split with `--seeds`. Printed per change: held-out accuracy per training seed, the
paired per-example difference from the initial scaffold averaged over the training seeds with its
95% bootstrap interval, and whether it is confirmed (the difference is positive, the issue's test
of a false keep). A change that no longer applies to the initial scaffold (a file edit written
against a later incumbent) is reported as such.

The trained policies go to the campaign's training cache, so the initial scaffold with training
seed 0 and anything the campaign already trained are not trained again.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from rl_pipeline.env import use_offline_env  # noqa: E402

use_offline_env()

from harness.compare import heldout_part, paired_differences  # noqa: E402
from harness.config import CONFIG_FILE, frozen_config  # noqa: E402
from harness.journal import Journal  # noqa: E402
from harness.proposal import ProposalError, parse_proposal, render  # noqa: E402
from harness.workspace import Workspace  # noqa: E402
from rl_pipeline.result import read_result  # noqa: E402
from rl_pipeline.run import run_scaffold, shutdown  # noqa: E402
from rl_pipeline.stats import bootstrap_mean_ci  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("campaign", type=Path, help="a campaign folder, e.g. runs/default")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="evaluation seeds")
    parser.add_argument("--out", type=Path, default=None, help="where results go (default <campaign>/confirm)")
    return parser


def _git(path: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, text=True)


def _committed_copy(files: dict[str, bytes], dest: Path, message: str) -> Path:
    """`files` written into a fresh repository at `dest`, committed, so results name a commit."""
    if dest.exists():
        shutil.rmtree(dest)
    for rel, data in files.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
    _git(dest, "init", "-q")
    _git(dest, "add", "-A")
    _git(dest, "-c", "user.name=confirm", "-c", "user.email=confirm@localhost", "commit", "-q", "-m", message)
    return dest


def initial_files(campaign: Path, commit: str) -> dict[str, bytes]:
    """The files of the scaffold at the baseline `commit` of the campaign's workspace."""
    ws = Workspace.open(campaign).path
    names = subprocess.run(["git", "-C", str(ws), "ls-tree", "-r", "--name-only", commit],
                           check=True, capture_output=True, text=True).stdout.split()
    return {rel: subprocess.run(["git", "-C", str(ws), "show", f"{commit}:{rel}"], check=True,
                                capture_output=True).stdout for rel in names}


def kept_changes(campaign: Path) -> list[tuple[int, str, object]]:
    """(round, hypothesis, proposal) of every kept round, in order."""
    history = Journal(campaign).get("history") or []
    kept = []
    for row in sorted(history, key=lambda r: r["round"]):
        if row["decision"] == "keep":
            raw = (campaign / "rounds" / f"{row['round']:03d}" / "proposal.json").read_text()
            kept.append((row["round"], row.get("hypothesis", ""), parse_proposal(raw)))
    return kept


def confirm(name: str, scaffold: Path, initial: dict[int, dict], out: Path, args, options: dict) -> dict:
    """Held-out of `scaffold` per training seed, and its pooled paired difference from `initial`."""
    results, diffs = {}, []
    for train_seed in args.train_seeds:
        result = run_scaffold(scaffold, out / name / f"train-seed-{train_seed}", heldout=True, seeds=args.seeds,
                              train_seed=train_seed, **options)
        if result["status"] != "ok":
            return {"error": f"train seed {train_seed}: {result['reason']}"}
        results[train_seed] = result
        if train_seed in initial:
            diffs.append(paired_differences(heldout_part(result), heldout_part(initial[train_seed]))[0])
    pooled = np.mean(diffs, axis=0) if diffs else np.zeros(1)
    return {"results": results, "delta": float(pooled.mean()), "ci": bootstrap_mean_ci(pooled)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    campaign = args.campaign.resolve()
    if not (campaign / CONFIG_FILE).is_file() or Journal(campaign).get("baseline") is None:
        print(f"{campaign} is not a campaign folder with a baseline (no {CONFIG_FILE}, or round 0 has not run)")
        return 2
    config = frozen_config(campaign)
    baseline = read_result(campaign / Journal(campaign).get("baseline")["result"])
    # relative paths in the config are from where the campaign was started: <that>/<runs_dir>/<name>
    started_in = campaign.parent
    for _ in Path(config["runs_dir"]).parts if not Path(config["runs_dir"]).is_absolute() else ():
        started_in = started_in.parent
    runs = campaign.parent
    options = {"base": str(started_in / config["base_model"]), "data_dir": str(runs / "data"),
               "cache_dir": str(runs / "cache" / "train")}
    out = (args.out or campaign / "confirm").resolve()
    files = initial_files(campaign, baseline["scaffold"]["commit"])
    initial_dir = _committed_copy(files, out / "scaffolds" / "initial", "the campaign's initial scaffold")

    try:
        first = confirm("initial", initial_dir, {}, out, args, options)
        if "error" in first:
            print(f"the initial scaffold failed: {first['error']}")
            return 1
        initial = first["results"]
        header = " ".join(f"t{s:<6}" for s in args.train_seeds)
        print(f"held-out accuracy per training seed, eval seeds {args.seeds}\n")
        print(f"{'change':<46} {header}  {'vs initial':>10}  {'95% interval':>17}  confirmed")
        print(f"{'initial scaffold':<46} " + " ".join(
            f"{initial[s]['heldout']['metrics']['accuracy']:<7.3f}" for s in args.train_seeds))
        confirmed = 0
        kept = kept_changes(campaign)
        for n, hypothesis, proposal in kept:
            label = f"round {n}: {proposal.kind} ({len(proposal.edits)} edits)"
            try:
                changed = render(proposal, initial_dir)
            except ProposalError as err:
                print(f"{label:<46} does not apply to the initial scaffold: {err}")
                continue
            scaffold = _committed_copy(files | {rel: text.encode("utf-8") for rel, text in changed.items()},
                                       out / "scaffolds" / f"round-{n:03d}", f"round {n} alone: {hypothesis}")
            row = confirm(f"round-{n:03d}", scaffold, initial, out, args, options)
            if "error" in row:
                print(f"{label:<46} failed: {row['error']}")
                continue
            ok = row["delta"] > 0
            confirmed += ok
            accs = " ".join(f"{row['results'][s]['heldout']['metrics']['accuracy']:<7.3f}" for s in args.train_seeds)
            print(f"{label:<46} {accs}  {row['delta']:>+10.3f}  [{row['ci'][0]:+.3f}, {row['ci'][1]:+.3f}]  "
                  f"{'yes' if ok else 'NO'}")
            for edit in proposal.to_dict()["edits"]:
                print(f"    {edit}")
        print(f"\n{confirmed} of {len(kept)} kept changes confirmed on held-out alone on the initial scaffold")
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
