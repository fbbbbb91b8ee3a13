"""Round overhead of the runner: processes started per run (cold) against warm processes.

Side by side in one process, on the default scaffold: a training round (GRPO from the base, then
evaluation) and an evaluation-only round (a sampling-only change: the trained policy comes from
the cache), each run cold (`warm=False`: the trusted worker and the sandbox are started for the
run and stopped after it, so torch and the rest are imported again, as by the one-process-per-run
runner this replaced) and warm (started once, kept). Overhead is wall time minus the work:
training (`trainer.train()`) and evaluation (loading the trained policy, generating, scoring).
Then keep rounds as a campaign runs them (evaluate 3 seeds, re-evaluate 2 more, score held-out;
sampling-only changes), per round.

    .venv/bin/python bench/rounds.py [--base runs/models/base] [--completions 16] [--keep-rounds 5]

Without a base policy at --base, a tiny random one is built (the runner is under test, not the
policy's skill).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from rl_pipeline.run import run_scaffold, shutdown  # noqa: E402


def work(result: dict) -> float:
    t = result["timings"]
    return t.get("train_train_total_s", 0.0) + t.get("eval_s", 0.0) + t.get("heldout_s", 0.0)


def timed(scaffold: str, out: str, overrides: dict, opts: dict, **kwargs) -> tuple[float, dict]:
    start = time.perf_counter()
    result = run_scaffold(scaffold, out, overrides=overrides, **opts, **kwargs)
    wall = time.perf_counter() - start
    if result["status"] != "ok":
        raise SystemExit(f"{out}: failed: {result['reason']}")
    return wall, result


def with_budget(scaffold: str, completions: int, dst: str) -> str:
    """A copy of `scaffold` whose training budget is `completions`."""
    shutil.copytree(scaffold, dst, ignore=shutil.ignore_patterns("__pycache__"))
    surface = yaml.safe_load(Path(dst, "surface.yaml").read_text())
    surface["budget"]["train_completions"] = completions
    Path(dst, "surface.yaml").write_text(yaml.safe_dump(surface))
    return dst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default=str(REPO / "runs/models/base"))
    parser.add_argument("--scaffold", default=str(REPO / "scaffolds/arith"))
    parser.add_argument("--completions", type=int, default=None,
                        help="training budget in completions (default: the scaffold's)")
    parser.add_argument("--keep-rounds", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-rounds-") as tmp:
        base = args.base
        if not (Path(base) / "config.json").is_file():
            from model import build_policy, build_tokenizer, save_policy
            tokenizer = build_tokenizer(["Q: 12 + 34\nA: 46"])
            base = f"{tmp}/base"
            save_policy(build_policy("tiny", tokenizer, seed=0), tokenizer, base)
            print(f"no base policy at {args.base}: using a tiny random one")
        from rl_pipeline.data import load_splits
        load_splits("arith", data_dir=f"{tmp}/data")  # built once, before anything is timed
        scaffold = (args.scaffold if args.completions is None
                    else with_budget(args.scaffold, args.completions, f"{tmp}/scaffold"))
        rows: dict[str, dict[str, float]] = {}
        n = 0
        for mode, warm in (("cold", False), ("warm", True)):
            opts = {"base": base, "data_dir": f"{tmp}/data", "cache_dir": f"{tmp}/cache-{mode}", "warm": warm}
            if warm:  # start the warm processes before timing, as a campaign's baseline does
                timed(scaffold, f"{tmp}/{n}", {}, opts | {"cache_dir": f"{tmp}/cache-start"}, seeds=[0])
                n += 1
            for label, overrides in (("training round", {}), ("eval-only round", {"sampling.temperature": 0.9})):
                wall, result = timed(scaffold, f"{tmp}/{n}", overrides, opts)
                n += 1
                rows[f"{label}, {mode}"] = {"wall": wall, "work": work(result), "overhead": wall - work(result),
                                            "train": result["timings"].get("train_train_total_s", 0.0),
                                            "eval": result["timings"].get("eval_s", 0.0)}

        print(f"\n{'':26s}{'wall s':>10s}{'train s':>10s}{'eval s':>10s}{'overhead s':>12s}")
        for label, row in rows.items():
            print(f"{label:26s}{row['wall']:>10.2f}{row['train']:>10.2f}{row['eval']:>10.2f}{row['overhead']:>12.2f}")

        print("\nkeep rounds (evaluate 3 seeds, re-evaluate 2 more, held-out; training cached), wall s per round:")
        for mode, warm, rounds in (("cold", False, 1), ("warm", True, args.keep_rounds)):
            opts = {"base": base, "data_dir": f"{tmp}/data", "cache_dir": f"{tmp}/cache-{mode}", "warm": warm}
            walls, overheads = [], []
            for r in range(rounds):
                knobs = {"sampling.temperature": 0.6 + 0.05 * r}
                start = time.perf_counter()
                spent = 0.0
                for seeds, heldout in (([0, 1, 2], False), ([3, 4], False), ([0, 1, 2], True)):
                    _, result = timed(scaffold, f"{tmp}/{n}", knobs, opts, seeds=seeds, heldout=heldout)
                    n += 1
                    spent += work(result)
                walls.append(time.perf_counter() - start)
                overheads.append(walls[-1] - spent)
            print(f"  {mode}: " + "  ".join(f"{w:.2f}" for w in walls)
                  + f"   (overhead " + "  ".join(f"{o:.2f}" for o in overheads) + ")")
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
