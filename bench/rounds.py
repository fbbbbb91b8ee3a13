"""Wall time of one research round's evaluation, and where it goes.

Runs the sandboxed runner twice on the default scaffold at its default knobs, side by side in
one process: a train-and-evaluate round (GRPO from the base, then 3 evaluation seeds) and an
evaluation-only round (a sampling-only change, so the trained policy comes from the cache).
Prints each round's wall time and its split between rollouts, training steps and scoring.

    .venv/bin/python bench/rounds.py [--base runs/models/base]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rl_pipeline.run import run_scaffold  # noqa: E402


def split(result: dict) -> dict[str, float]:
    t = result["timings"]
    return {
        "total": t.get("total_s", 0.0),
        "training rollouts": t.get("train_rollout_s", 0.0),
        "training steps": t.get("train_training_steps_s", 0.0),
        "eval rollouts": t.get("eval_generate_s", 0.0),
        "scoring": t.get("eval_score_s", 0.0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default=str(REPO / "runs/models/base"))
    parser.add_argument("--scaffold", default=str(REPO / "scaffolds/arith"))
    args = parser.parse_args()
    if not (Path(args.base) / "config.json").is_file():
        print(f"no base policy at {args.base}: run `researcher model pretrain` first")
        return 1

    with tempfile.TemporaryDirectory(prefix="bench-rounds-") as tmp:
        opts = {"base": args.base, "cache_dir": f"{tmp}/cache", "data_dir": str(REPO / "runs/data")}
        rows = {}
        for label, overrides in (("train + evaluate", {}),
                                 ("evaluate only", {"sampling.temperature": 0.99})):
            start = time.perf_counter()
            result = run_scaffold(args.scaffold, f"{tmp}/{len(rows)}", overrides=overrides, **opts)
            wall = time.perf_counter() - start
            if result["status"] != "ok":
                print(f"{label}: failed: {result['reason']}")
                return 1
            rows[label] = split(result) | {"wall (incl. process start)": wall,
                                           "accuracy": result["metrics"]["accuracy"],
                                           "steps": result["training"]["steps"]}

    names = list(next(iter(rows.values())))
    print(f"{'':28s}" + "".join(f"{label:>20s}" for label in rows))
    for name in names:
        cells = "".join(f"{row[name]:>20.3f}" if isinstance(row[name], float) else f"{row[name]:>20}"
                        for row in rows.values())
        print(f"{name:28s}{cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
