"""The child side of the runner: one scaffold in, one `result.json` out.

Runs inside the sandbox the parent (rl_pipeline.run) sets up. Steps: load and validate the
scaffold, train with GRPO unless a cached policy for the same training inputs exists, evaluate
on the internal split with several seeds, optionally score the held-out split, write the result.
Any failure becomes a `failed` result with a precise reason and the traceback; the training
cache is written atomically (temp folder, then rename), so a failed or killed run never leaves
a half-written entry.

    python -m rl_pipeline.worker --job job.json     (the parent writes job.json)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from rl_pipeline import result as result_schema

TRAIN_CODE_VERSION = "1"


def training_key(scaffold, base_dir: Path, train_hash: str, budget_s: float, seed: int) -> str:
    """Hash of everything that changes the trained policy; sampling knobs are not in it."""
    base = json.loads((base_dir / "pretrain.json").read_text()) if (base_dir / "pretrain.json").exists() else {}
    weights = base_dir / "model.safetensors"
    parts = {
        "code": TRAIN_CODE_VERSION,
        "base": hashlib.sha256(weights.read_bytes()).hexdigest() if weights.exists() else str(base),
        "knobs": scaffold.training_knobs(),
        "reward.py": (scaffold.path / "reward.py").read_text(),
        "prompt.py": (scaffold.path / "prompt.py").read_text(),
        "train": train_hash,
        "budget_s": budget_s,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def run_job(job: dict) -> dict:
    """Everything the child does; raises on failure (the caller turns it into a failed result)."""
    import torch

    from model import load_policy, load_tokenizer
    from rl_pipeline.data import load_splits, split_hash
    from rl_pipeline.evaluate import evaluate
    from rl_pipeline.scaffold import load_scaffold
    from rl_pipeline.train import train_grpo

    torch.set_num_threads(job.get("threads", 2))
    timings: dict[str, float] = {}
    start = time.perf_counter()
    scaffold = load_scaffold(job["scaffold"], job.get("overrides"))
    splits = load_splits(scaffold.task, data_dir=job["data_dir"])
    hashes = {name: split_hash(splits[name]) for name in ("train", "eval", "heldout")}
    budget_s = float(scaffold.surface.get("budget", {}).get("train_seconds", 60))
    base_dir = Path(job["base"])
    key = training_key(scaffold, base_dir, hashes["train"], budget_s, job["train_seed"])
    cache_dir = Path(job["cache_dir"]) / key
    timings["load_s"] = time.perf_counter() - start

    training = {"key": key, "cached": cache_dir.is_dir()}
    if not training["cached"]:
        tmp = cache_dir.with_name(f".{key}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        summary = train_grpo(scaffold, base_dir=str(base_dir), train_split=splits["train"], out_dir=str(tmp),
                             budget_s=budget_s, seed=job["train_seed"])
        (tmp / "training.json").write_text(json.dumps(summary, indent=2))
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(cache_dir)
        except OSError:  # another run cached the same key first: theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
        timings.update({f"train_{k}": v for k, v in summary["timings"].items()})
    training |= json.loads((cache_dir / "training.json").read_text())

    start = time.perf_counter()
    policy, tokenizer = load_policy(cache_dir), load_tokenizer(cache_dir)
    evaluation = evaluate(policy, tokenizer, scaffold, splits["eval"], seeds=job["seeds"], split="eval")
    timings["eval_s"] = time.perf_counter() - start
    heldout = None
    if job.get("heldout"):
        start = time.perf_counter()
        heldout = evaluate(policy, tokenizer, scaffold, splits["heldout"], seeds=job["seeds"], split="heldout")
        timings["heldout_s"] = time.perf_counter() - start
    return result_schema.ok_result(job, scaffold, training, evaluation, heldout, hashes, timings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="evaluate one scaffold (child side of rl_pipeline.run)")
    parser.add_argument("--job", required=True, help="job.json written by the parent")
    args = parser.parse_args(argv)
    job = json.loads(Path(args.job).read_text())
    out = Path(job["out"])
    start = time.perf_counter()
    try:
        result = run_job(job)
    except Exception as err:  # every failure becomes a result the parent can read
        result = result_schema.failed_result(job, f"{type(err).__name__}: {err}", traceback.format_exc())
    result["timings"]["total_s"] = round(time.perf_counter() - start, 3)
    result_schema.write_result(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
