"""One run's seeds scored on several workers at once, where a batch would leave a worker idle.

On a pool of several workers (`runner=ray`) a batch of runs lasts as long as its longest run: a
lone GRPO candidate beside a sampling-only one, the best candidate's re-test on fresh seeds, or the
baseline on its six seeds keep one worker busy while the others wait. Scoring is one pass per seed
(`rl_pipeline.evaluate`), each with its own seeded generator over the same prompts, so a run's
seeds can be scored as separate runs, one per worker, and merged into the scores the whole run
gives: the same per-example scores, the seeds in the same order, the same accuracy and interval
(`harness.compare.merge_results`; the other rates are seed-weighted means of the same numbers).

A run is split where its expected seconds exceed the batch's share per worker (its total over the
workers): into as many contiguous parts of its seeds as there are workers, at most one per seed.
The parts share one training key: the first one sent trains the policy (when it is not cached) and
the others wait for it in the cache (`RayPool`), then score their seeds beside it; where the key
cannot be told yet (a campaign's baseline, planned before its data is built) each part trains it,
at once. A run that also scores the calibration split, or with one seed, is never split. Each part
runs in a folder of its own under the run's (`seeds-1-2/`: its job.json, logs and result); the
run's result.json and samples.jsonl are the merged ones. A part that fails fails the run, with the
part's reason.

    chunks = splits(jobs, [plan.seconds for plan in plans], workers)   # {job index: [[0], [1, 2]]}
    parts = [part_job(jobs[i], seeds) for seeds in chunks[i]]
    result = merge_parts(jobs[i], parts, part_results)
"""

from __future__ import annotations

import functools
from pathlib import Path

from harness.compare import merge_results
from rl_pipeline.files import write_atomic
from rl_pipeline.result import write_result


def chunked(seeds: list[int], parts: int) -> list[list[int]]:
    """`seeds` in `parts` contiguous runs of sizes that differ by at most one, the shorter first."""
    size, extra = divmod(len(seeds), parts)
    bounds = [0]
    for k in range(parts):
        bounds.append(bounds[-1] + size + (1 if k >= parts - extra else 0))
    return [list(seeds[a:b]) for a, b in zip(bounds, bounds[1:])]


def splits(jobs: list[dict], seconds: list[float], workers: int) -> dict[int, list[list[int]]]:
    """The runs to split (by index) and their parts' seeds: each run of more than one seed, without
    a calibration part, that is expected to take longer than the batch's share per worker."""
    if workers < 2:
        return {}
    share = sum(seconds) / workers
    return {i: chunked(job["seeds"], min(len(job["seeds"]), workers))
            for i, (job, s) in enumerate(zip(jobs, seconds))
            if len(job["seeds"]) > 1 and not job.get("calibration") and s > share}


def part_job(job: dict, seeds: list[int]) -> dict:
    """The run `job` on `seeds` only, in a folder of its own under the run's."""
    return job | {"seeds": list(seeds), "out": Path(job["out"]) / ("seeds-" + "-".join(map(str, seeds)))}


def merge_parts(job: dict, parts: list[dict], results: list[dict]) -> dict:
    """The run's result from its parts' results (in the order of its seeds), written to its folder
    with every part's samples; the first failed part's result (naming its seeds) when one failed."""
    out = Path(job["out"])
    failed = next((r for r in results if r.get("status") != "ok"), None)
    if failed is not None:
        part = f"the part of the run that scored seeds {failed['seeds']}"
        result = failed | {"seeds": list(job["seeds"]), "reason": f"{failed.get('reason')} ({part})"}
        write_result(out, result)
        return result
    merged = functools.reduce(merge_results, results)
    trained = [r["training"] for r in results if not r["training"].get("cached", True)]
    merged["training"] = trained[0] if trained else results[0]["training"]
    samples = [path for part in parts if (path := Path(part["out"]) / "samples.jsonl").is_file()]
    if samples:  # eval's records (a run that scored held-out only has none)
        write_atomic(out / "samples.jsonl", "".join(path.read_text() for path in samples))
    for path in samples:
        path.unlink()  # the run's samples.jsonl has them, in seed order
    write_result(out, merged)
    return merged
