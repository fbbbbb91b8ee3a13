"""The training cache's size limit: least recently used policies deleted, on real folders and
through the real runner (its worker trains, caches and prunes)."""

import os
import shutil
import time
from pathlib import Path

from fast_scaffold import COMPLETIONS, TEST_PRESET, with_budget

from model import build_policy, build_tokenizer, save_policy
from rl_pipeline.cache import GRACE_S, prune
from rl_pipeline.run import run_scaffold

ARITH = Path(__file__).resolve().parents[1] / "scaffolds" / "arith"
FAST = {"sampling.max_new_tokens": 6, "grpo.max_completion_length": 6}
MB = 2 ** 20


def entry(root: Path, name: str, megabytes: int, age_s: float) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"\0" * megabytes * MB)
    age(path, age_s)
    return path


def age(path: Path, seconds: float) -> None:
    """Mark `path` last used `seconds` ago."""
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


def test_prune_deletes_the_least_recently_used_down_to_the_limit(tmp_path):
    for name, hours in (("c", 1.5), ("a", 3), ("b", 2)):
        entry(tmp_path, name, 3, hours * GRACE_S)
    entry(tmp_path, "recent", 3, GRACE_S / 2)
    new = entry(tmp_path, "new", 3, 0)
    (tmp_path / ".new.tmp-x").mkdir()  # another job's entry being written: not an entry
    (tmp_path / ".z.evicted-99").mkdir()  # a deletion a crash cut short
    assert prune(tmp_path, 10 * MB, keep=new) == ["a", "b"]  # 15 MB, 12, then 9: within the limit
    assert sorted(p.name for p in tmp_path.iterdir()) == [".new.tmp-x", "c", "new", "recent"]
    # Below what may go, it deletes what it may and no more: one used within the grace period
    # (a job may be about to load it) and the one just cached stay.
    assert prune(tmp_path, 1 * MB, keep=new) == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".new.tmp-x", "new", "recent"]
    assert prune(tmp_path, 100 * MB) == []


def test_the_runner_keeps_its_cache_within_the_limit(tmp_path):
    """Real runs: each trains a policy (53 MB at the tiny preset, far less at the test's), then
    prunes; an entry read by a job is marked used, and a deleted one is trained again."""
    tokenizer = build_tokenizer(["Q: 12 + 34\nA: 46"])
    save_policy(build_policy(TEST_PRESET, tokenizer, seed=0), tokenizer, tmp_path / "base")
    scaffold = tmp_path / "scaffold"
    shutil.copytree(ARITH, scaffold)
    with_budget(scaffold, COMPLETIONS)
    cache = tmp_path / "cache"
    env = {"base": str(tmp_path / "base"), "data_dir": str(tmp_path / "data"), "cache_dir": str(cache),
           "seeds": [0], "timeout_s": 300.0, "cache_gb": 1e-6}  # 1 KiB: less than any one policy

    def run(name: str, **overrides) -> dict:
        result = run_scaffold(scaffold, tmp_path / name, overrides=FAST | overrides, **env)
        assert result["status"] == "ok", result.get("reason")
        return result

    first = run("a")
    kept = cache / first["training"]["key"]
    age(kept, 2 * GRACE_S)
    assert run("b", **{"sampling.temperature": 0.5})["training"]["cached"]  # read: marked used now
    assert time.time() - kept.stat().st_mtime < 60
    second = run("c", **{"grpo.learning_rate": 1e-5})  # trained: over the limit, but the first was just used
    assert not second["training"]["cached"] and kept.is_dir()
    age(kept, 2 * GRACE_S)
    third = run("d", **{"grpo.learning_rate": 2e-5})
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted(
        [second["training"]["key"], third["training"]["key"]])
    assert "training cache over its limit (1e-06 GiB): deleted the 1 least recently used policies" in (
        tmp_path / "d" / "worker.log").read_text()
    again = run("e")  # the deleted policy is trained again, the same one
    assert not again["training"]["cached"] and again["training"]["key"] == first["training"]["key"]
    assert again["metrics"]["accuracy"] == first["metrics"]["accuracy"]


def test_a_campaign_passes_its_limit_to_the_runner(tmp_path):
    """`runner.cache_gb` from the command line reaches the worker: a policy cached long ago (two
    hours unused) is gone after one round that trained a new one."""
    from fast_scaffold import campaign_root

    from harness.cli import main

    proposal = {"hypothesis": "a faster rate", "edits": [{"knob": "grpo.learning_rate", "value": 1e-5}]}
    root, scaffold, script = campaign_root(tmp_path, [proposal])
    stale = entry(root / "runs" / "cache" / "train", "0" * 24, 1, 2 * GRACE_S)
    args = {"name": "capped", "rounds": 1, "researcher": "scripted", "researcher.file": script,
            "runs_dir": root / "runs", "scaffold": scaffold, "baseline_seeds": "[0,1]", "eval_seeds": "[0]",
            "reeval_seeds": "[1]", "live": "false", "tracking.enabled": "false", "runner.cache_gb": 1e-6}
    assert main(["start", *(f"{k}={v}" for k, v in args.items())]) == 0
    assert not stale.exists()
    logs = [p.read_text() for p in (root / "runs" / "capped" / "rounds").rglob("worker.log")]
    assert any("deleted the 1 least recently used policies" in log for log in logs)
