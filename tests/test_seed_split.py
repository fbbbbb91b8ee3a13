"""Which runs of a batch are scored in parts on several workers, and how a failed part fails the run.

That the merged parts give the very scores one run gives is checked on a real local Ray in
tests/test_ray_runner.py; here the rules, on plain numbers and results.
"""

import json

from harness.seed_split import chunked, merge_parts, part_job, splits
from rl_pipeline.result import failed_result


def job(tmp_path, name: str, seeds: list[int], **extra) -> dict:
    return {"scaffold": str(tmp_path / "scaffold"), "out": tmp_path / name, "seeds": seeds, "heldout": False} | extra


def test_seeds_go_in_contiguous_parts_of_near_equal_size_the_shorter_first():
    assert chunked([0, 1, 2], 2) == [[0], [1, 2]]
    assert chunked([3, 4, 5, 6, 7, 8], 4) == [[3], [4], [5, 6], [7, 8]]
    assert chunked([0, 1], 2) == [[0], [1]]
    assert chunked([0, 1, 2], 1) == [[0, 1, 2]]


def test_only_a_run_longer_than_the_share_per_worker_is_split(tmp_path):
    lone = [job(tmp_path, "grpo", [0, 1, 2]), job(tmp_path, "sampling", [0, 1, 2])]
    assert splits(lone, [90.0, 30.0], workers=2) == {0: [[0], [1, 2]]}  # 90 > 120 / 2
    assert splits(lone, [90.0, 90.0], workers=2) == {}  # both workers busy the whole batch
    assert splits(lone, [90.0, 30.0], workers=1) == {}  # nothing to share
    assert splits(lone[:1], [60.0], workers=4) == {0: [[0], [1], [2]]}  # at most one part a seed
    one_seed = [job(tmp_path, "one", [3]), job(tmp_path, "short", [0])]
    assert splits(one_seed, [90.0, 5.0], workers=2) == {}
    calibration = [job(tmp_path, "baseline", [0, 1, 2, 3], calibration=True)]
    assert splits(calibration, [200.0], workers=2) == {}  # its calibration part is not merged


def test_a_failed_part_fails_the_run_with_its_reason_and_all_its_seeds(tmp_path):
    whole = job(tmp_path, "cand-1", [0, 1, 2])
    parts = [part_job(whole, seeds) for seeds in ([0], [1, 2])]
    assert [p["out"] for p in parts] == [tmp_path / "cand-1" / "seeds-0", tmp_path / "cand-1" / "seeds-1-2"]
    reason = "scaffold code timed out after 30s"
    results = [{"status": "ok", "seeds": [0]}, failed_result(parts[1], reason)]  # the second part failed
    merged = merge_parts(whole, parts, results)
    assert merged["status"] == "failed" and merged["seeds"] == [0, 1, 2]
    assert merged["reason"] == f"{reason} (the part of the run that scored seeds [1, 2])"
    assert json.loads((tmp_path / "cand-1" / "result.json").read_text()) == merged
