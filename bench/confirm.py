"""Each change a campaign kept, applied alone to its initial scaffold and scored on held-out.

    .venv/bin/python bench/confirm.py runs/default [--train-seeds 0 1 2] [--seeds 0 1 2] [--change EDITS ...]

A keep is decided on eval, on top of the keeps before it. This asks whether each kept change also
helps by itself where the campaign started: the initial scaffold (the workspace's baseline commit)
and, for every kept round, that round's whole proposal (every edit of it, stacked ones included)
applied to a copy of the initial scaffold, each trained with every `--train-seeds` seed and scored
on the held-out split with `--seeds`. Printed per change: held-out accuracy per training seed, the
paired per-example difference from the initial scaffold averaged over the training seeds with its
95% bootstrap interval, and whether it is confirmed (the difference is positive, the issue's test
of a false keep; "interval includes 0" where it is positive but could be noise). A change that no
longer applies to the initial scaffold (a file edit written against a later incumbent) is reported
as such.

A kept change that holds code moves beside other edits (a reward move stacked onto a learning
rate: on the initial scaffold's rate a reward move alone changes nothing, since the policy does not
move) is also scored without its moves, and the moves' own part is printed: the change against
the change without them, paired the same way. A change of moves only that does not help alone (a
reward move kept after a rate that moves the policy: on the initial rate it cannot show anything)
is also scored on top of the kept changes before it that were confirmed alone, and its part there
printed. Code moves count as confirmed when their part is positive: alone, beside the change's
other edits, or on those confirmed changes. `--change` scores any other change
the same way (a JSON list of edits), for a what-if beside the kept ones.

The trained policies go to the campaign's training cache, so the initial scaffold with training
seed 0 and anything the campaign already trained are not trained again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from rl_pipeline.env import use_offline_env  # noqa: E402

use_offline_env()

from harness.compare import heldout_part, paired_differences  # noqa: E402
from harness.config import CONFIG_FILE  # noqa: E402
from harness.journal import Journal  # noqa: E402
from harness.proposal import MoveEdit, Proposal, ProposalError, parse_proposal, render  # noqa: E402
from harness.workspace import Workspace  # noqa: E402
from rl_pipeline.result import read_result  # noqa: E402
from rl_pipeline.run import run_scaffold, shutdown  # noqa: E402
from rl_pipeline.stats import bootstrap_mean_ci  # noqa: E402
from heldout_keeps import runner_options  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("campaign", type=Path, help="a campaign folder, e.g. runs/default")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="evaluation seeds")
    parser.add_argument("--out", type=Path, default=None, help="where results go (default <campaign>/confirm)")
    parser.add_argument("--change", action="append", default=[], metavar="EDITS",
                        help="also score this change, a JSON list of edits as in proposal.json, e.g. "
                             "'[{\"knob\": \"grpo.learning_rate\", \"value\": 3.42e-05}, {\"move\": "
                             "\"reward_partial_credit\"}]' (repeatable; not counted as kept)")
    return parser


def initial_files(campaign: Path, commit: str) -> dict[str, bytes]:
    """The files of the scaffold at the baseline `commit` of the campaign's workspace."""
    tree = Workspace.open(campaign).repo.commit(commit).tree
    return {blob.path: blob.data_stream.read() for blob in tree.traverse() if blob.type == "blob"}


def committed_scaffold(files: dict[str, bytes], dest: Path) -> Path:
    """`files` as a campaign workspace at `dest/scaffold` (`Workspace.create`: validated, committed,
    its bytecode ignored), so every result names the commit it measured; replaces an earlier one."""
    shutil.rmtree(dest, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="confirm-") as tmp:
        for rel, data in files.items():
            (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / rel).write_bytes(data)
        return Workspace.create(dest, tmp).path


def kept_changes(journal: Journal, campaign: Path) -> list[tuple[int, object]]:
    """(round, proposal) of every kept round, in order: a round of several candidates (a proposal and
    its decoder companion, or K) is kept under its chosen one."""
    history = journal.get("history") or []
    kept = []
    for row in sorted(history, key=lambda r: r["round"]):
        if row["decision"] == "keep":
            folder = campaign / "rounds" / f"{row['round']:03d}"
            if (folder / "candidates.json").is_file():
                raw = next(c for c in json.loads((folder / "candidates.json").read_text()) if c["chosen"])["proposal"]
            else:
                raw = (folder / "proposal.json").read_text()
            kept.append((row["round"], parse_proposal(raw)))
    return kept


def trained(name: str, scaffold: Path, out: Path, args, options: dict) -> dict[int, dict] | str:
    """The result of `scaffold` trained with each training seed and scored on held-out, by seed;
    the reason, if a run failed."""
    results = {}
    for train_seed in args.train_seeds:
        result = run_scaffold(scaffold, out / name / f"train-seed-{train_seed}", heldout=True, seeds=args.seeds,
                              train_seed=train_seed, **options)
        if result["status"] != "ok":
            return f"train seed {train_seed}: {result['reason']}"
        results[train_seed] = result
    return results


def verdict(delta: float, low: float) -> str:
    """A change's verdict: positive (the issue's test of a keep) and whether its interval is above 0."""
    return ("yes" if low > 0 else "yes, interval includes 0") if delta > 0 else "NO"


def change(results: dict[int, dict], initial: dict[int, dict]) -> tuple[float, tuple[float, float]]:
    """The held-out change from `initial`: each example's paired difference averaged over the
    training seeds, its mean and 95% bootstrap interval."""
    pooled = np.mean([paired_differences(heldout_part(results[seed]), heldout_part(initial[seed]))[0]
                      for seed in results], axis=0)
    return float(pooled.mean()), bootstrap_mean_ci(pooled)


def scored(name: str, proposal: Proposal, scaffold_of, out: Path, args, options: dict) -> dict[int, dict] | str:
    """`proposal` applied to a copy of the initial scaffold (`scaffold_of(name, proposal)`), trained
    and scored like the initial one; the reason when it does not apply or a run failed."""
    try:
        scaffold = scaffold_of(name, proposal)
    except ProposalError as err:
        return f"does not apply to the initial scaffold: {err}"
    results = trained(name, scaffold, out, args, options)
    return f"failed: {results}" if isinstance(results, str) else results


def moves_part(label: str, name: str, moves: tuple, others: tuple, scaffold_of, out: Path, args, options: dict,
               results: dict[int, dict] | None = None) -> bool | None:
    """Print the part of `moves` on top of the edits `others` (the change with them against the
    change without them, paired the same way); whether it is positive, None if a run failed.
    `results`, if given, are those of the change with the moves, scored already."""
    if results is None:
        results = scored(name, Proposal("moves", (*others, *moves)), scaffold_of, out, args, options)
    without = scored(f"{name}-without-moves", Proposal("without", others), scaffold_of, out, args, options)
    for outcome in (results, without):
        if isinstance(outcome, str):
            print(f"    {label}: {outcome}")
            return None
    part, (low, high) = change(results, without)
    accs = " ".join(f"{without[s]['heldout']['metrics']['accuracy']:.3f}" for s in args.train_seeds)
    print(f"    {label}: {accs}; the moves' part {part:+.3f} [{low:+.3f}, {high:+.3f}]  {verdict(part, low)}")
    return part > 0


def report(label: str, name: str, proposal: Proposal, initial: dict[int, dict], scaffold_of, out: Path, args,
           options: dict, confirmed_before: tuple = ()) -> tuple[bool | None, bool | None]:
    """Score `proposal` alone on the initial scaffold and print its row, its edits and, where it holds
    code moves beside other edits, the moves' part. A change of moves alone that does not help on
    the initial scaffold (a reward move where the initial rate leaves the policy as it was) is also
    scored on top of `confirmed_before`, the edits of the kept changes before it that were confirmed
    alone. Returns (confirmed, moves' part confirmed): None where it could not be scored, or holds
    no code move."""
    label = f"{label}: {proposal.kind} ({len(proposal.edits)} edits)"
    results = scored(name, proposal, scaffold_of, out, args, options)
    if isinstance(results, str):
        print(f"{label:<46} {results}")
        return None, None
    delta, (low, high) = change(results, initial)
    accs = " ".join(f"{results[s]['heldout']['metrics']['accuracy']:<7.3f}" for s in args.train_seeds)
    print(f"{label:<46} {accs}  {delta:>+10.3f}  [{low:+.3f}, {high:+.3f}]  {verdict(delta, low)}")
    for edit in proposal.to_dict()["edits"]:
        print(f"    {edit}")
    others = tuple(edit for edit in proposal.edits if not isinstance(edit, MoveEdit))
    if len(others) == len(proposal.edits):
        return delta > 0, None
    if not others:  # moves only: the change alone is the moves' part
        if delta > 0 or not confirmed_before:
            return delta > 0, delta > 0
        return delta > 0, moves_part("on the confirmed kept changes before it", f"{name}-on-confirmed",
                                     proposal.edits, confirmed_before, scaffold_of, out, args, options)
    moves = tuple(edit for edit in proposal.edits if isinstance(edit, MoveEdit))
    return delta > 0, moves_part("without its code moves", name, moves, others, scaffold_of, out, args, options,
                                 results)


def merged(edits: list) -> tuple:
    """Knob edits merged in order (a later value of a knob replaces an earlier one), moves after them."""
    knobs = {edit.knob: edit for edit in edits if not isinstance(edit, MoveEdit)}
    return (*knobs.values(), *dict.fromkeys(edit for edit in edits if isinstance(edit, MoveEdit)))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    campaign = args.campaign.resolve()
    journal = Journal(campaign)
    if not (campaign / CONFIG_FILE).is_file() or journal.get("baseline") is None:
        print(f"{campaign} is not a campaign folder with a baseline (no {CONFIG_FILE}, or round 0 has not run)")
        return 2
    asked = []
    for i, text in enumerate(args.change, 1):
        try:
            asked.append((f"asked {i}", parse_proposal(json.dumps({"hypothesis": "asked", "edits": json.loads(text)}))))
        except (ValueError, ProposalError) as err:  # JSONDecodeError is a ValueError
            print(f"--change {text!r}: not a JSON list of edits: {err}")
            return 2
    baseline = read_result(campaign / journal.get("baseline")["result"])
    options = runner_options(campaign)
    out = (args.out or campaign / "confirm").resolve()
    files = initial_files(campaign, baseline["scaffold"]["commit"])
    initial_dir = committed_scaffold(files, out / "scaffolds" / "initial")

    def scaffold_of(name: str, proposal: Proposal) -> Path:
        changed = render(proposal, initial_dir)
        return committed_scaffold(files | {rel: text.encode("utf-8") for rel, text in changed.items()},
                                  out / "scaffolds" / name)

    try:
        initial = trained("initial", initial_dir, out, args, options)
        if isinstance(initial, str):
            print(f"the initial scaffold failed: {initial}")
            return 1
        header = " ".join(f"t{s:<6}" for s in args.train_seeds)
        print(f"held-out accuracy per training seed, eval seeds {args.seeds}\n")
        print(f"{'change':<46} {header}  {'vs initial':>10}  {'95% interval':>17}  confirmed")
        print(f"{'initial scaffold':<46} " + " ".join(
            f"{initial[s]['heldout']['metrics']['accuracy']:<7.3f}" for s in args.train_seeds))
        kept = kept_changes(journal, campaign)
        confirmed, moves_kept, moves_confirmed, before = 0, 0, 0, []
        for n, proposal in kept:
            whole, moves = report(f"round {n}", f"round-{n:03d}", proposal, initial, scaffold_of, out, args, options,
                                  merged(before))
            before += list(proposal.edits) if whole else []
            confirmed += bool(whole)
            moves_kept += moves is not None
            moves_confirmed += bool(moves)
        for label, proposal in asked:
            report(label, label.replace(" ", "-"), proposal, initial, scaffold_of, out, args, options)
        print(f"\n{confirmed} of {len(kept)} kept changes confirmed on held-out alone on the initial scaffold")
        print(f"{moves_confirmed} of {moves_kept} kept changes with code moves have the moves' part confirmed "
              "(alone, beside the change's other edits, or on the confirmed kept changes before it)")
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
