"""The Ray runner on a real local Ray (no mock): jobs at once in sandboxed actors, the longest (one
that trains) first, a worker killed in a job as that one failed job (and one killed while idle as
nothing), nothing of ours left running after a close or a kill -9 of the process that started it
(checked in the process table).

A random-weight micro base and a scaffold cut to one GRPO step keep each evaluation to seconds.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
from fast_scaffold import campaign_root

from harness.ray_runner import RayPool
from rl_pipeline.run import run_scaffold

# Not importorskip: ray must not be imported before the pool starts its local Ray (see RayPool).
pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")

LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root, scaffold, _ = campaign_root(tmp_path_factory.mktemp("ray"), [])
    return root, scaffold


def options(root) -> dict:
    runs = root / "runs"
    return {"base": str(runs / "models" / "base"), "data_dir": str(runs / "data"),
            "cache_dir": str(runs / "cache" / "train"), "timeout_s": 600, "memory_gb": 8}


def jobs(root, scaffold, name: str, count: int, train_seed: int = 0) -> list[dict]:
    return [{"scaffold": scaffold, "out": root / name / str(i), "seeds": [0], "heldout": False, "train_seed": train_seed}
            for i in range(count)]


def ours(pid: int, before: frozenset[int] = frozenset()) -> list[psutil.Process]:
    """Every process under `pid` now (Ray's, the actors', the runners' workers and sandboxes), less
    those in `before` (an earlier test's warm local runner lives until pytest exits, by design)."""
    return [p for p in psutil.Process(pid).children(recursive=True) if p.pid not in before]


def cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # gone, or a zombie, since it was listed
        return ""


def assert_all_gone(processes: list[psutil.Process], timeout: float = 60) -> None:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    assert not alive, f"left running: {[(p.pid, cmdline(p)[:80]) for p in alive]}"


def test_jobs_run_at_once_a_killed_worker_fails_one_job_and_close_leaves_nothing(root):
    root, scaffold = root
    before = frozenset(p.pid for p in ours(os.getpid()))
    pool = RayPool(options(root), address=None, cpus=1, gpus=0, workers=2)
    try:
        assert pool.workers == min(2, int(pool.ray.cluster_resources()["CPU"]))
        first = pool.run(jobs(root, scaffold, "first", 2))
        assert [r["status"] for r in first] == ["ok", "ok"]
        assert all(r["seeds"] == [0] and "warnings" not in r for r in first)  # sandboxed, as the local runner is
        assert len(pool.idle) == pool.workers  # warm actors, one per job at once
        running = ours(os.getpid(), before)
        names = " ".join(map(cmdline, running))
        assert "gcs_server" in names and "rl_pipeline.worker" in names and "rl_pipeline.zygote" in names
        listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN
                     and c.pid in {p.pid for p in running}]
        assert listening and all(c.laddr.ip in LOOPBACK for c in listening), listening

        # A worker killed in the middle of a job: that job fails, the others and the pool go on.
        victim = pool.ray.get(pool.idle[0].pid.remote())
        results: list = []
        # Each trains (its own policy): seconds, not a fraction of one.
        second = jobs(root, scaffold, "second", 1, train_seed=1) + jobs(root, scaffold, "second-b", 1, train_seed=5)
        thread = threading.Thread(target=lambda: results.extend(pool.run(second)))
        thread.start()
        deadline = time.monotonic() + 600
        while not (all((job["out"] / "job.json").exists() for job in second)
                   and cmdline(psutil.Process(victim)).startswith("ray::Evaluator.evaluate")):
            assert time.monotonic() < deadline and thread.is_alive(), "the victim was never seen in a job"
            time.sleep(0.02)
        os.kill(victim, signal.SIGKILL)
        thread.join(timeout=600)
        assert sorted(r["status"] for r in results) == ["failed", "ok"]
        failed = next(r for r in results if r["status"] == "failed")
        assert failed["reason"].startswith("the Ray worker died")
        out = next(job["out"] for job, r in zip(second, results) if r["status"] == "failed")
        assert json.loads((out / "result.json").read_text())["reason"] == failed["reason"]
        # A worker that dies while idle fails nothing: its next job goes to a new one.
        (idle,) = pool.idle
        os.kill(pool.ray.get(idle.pid.remote()), signal.SIGKILL)
        assert [r["status"] for r in pool.run(jobs(root, scaffold, "third", 2))] == ["ok", "ok"]
        # The longest job first: one that trains starts beside the first of two whose training is cached.
        fourth = jobs(root, scaffold, "fourth", 2) + jobs(root, scaffold, "fourth-trains", 1, train_seed=2)
        results = pool.run(fourth)
        assert [(r["status"], r["training"]["cached"]) for r in results] == [("ok", True), ("ok", True), ("ok", False)]
        began = [(job["out"] / "job.json").stat().st_mtime for job in fourth]
        assert began[2] < began[1], began
        # Two runs of one policy (a proposal and its decoder companion) do not both train it: the
        # second waits for it and reads it from the cache while a run of another policy takes the
        # other worker; once the policy is cached the waiting run is short, and a longer one goes first.
        fifth = (jobs(root, scaffold, "fifth-a", 2, train_seed=3) + jobs(root, scaffold, "fifth-b", 2, train_seed=4)
                 + jobs(root, scaffold, "fifth-c", 1, train_seed=6))
        results = pool.run(fifth)
        assert [(r["status"], r["training"]["cached"]) for r in results] == [("ok", False), ("ok", True)] * 2 + [
            ("ok", False)]
        spans = [[(job["out"] / name).stat().st_mtime for name in ("job.json", "result.json")] for job in fifth]
        assert spans[2][0] < spans[0][1] and spans[0][0] < spans[2][1], spans  # the two trainings at once
        # Sent first; two actors that get jobs a loop apart may write job.json in either order (a
        # fraction of a millisecond apart), while a waiting run scores in a tenth of a second or more.
        assert spans[4][0] < min(spans[1][0], spans[3][0]) + 0.05, spans
        running = ours(os.getpid(), before)
    finally:
        pool.close()
    assert_all_gone(running)


def test_a_lone_run_is_scored_in_parts_on_both_workers_with_the_scores_of_one_run(root):
    """A run that would leave the second worker idle (one job, six seeds, a policy to train) is
    split: one part trains, the other waits for the policy in the cache and scores its seeds beside
    it; merged, they are the run as the local runner scores it in one piece, score for score."""
    root, scaffold = root
    pool = RayPool(options(root), address=None, cpus=1, gpus=0, workers=2)
    try:
        if pool.workers < 2:
            pytest.skip("this machine has one CPU: nothing to split over")
        job = {"scaffold": scaffold, "out": root / "split", "seeds": [0, 1, 2, 3, 4, 5], "heldout": True,
               "train_seed": 8}
        (result,) = pool.run([job])
    finally:
        pool.close()
    out = root / "split"
    parts = {name: json.loads((out / name / "result.json").read_text()) for name in ("seeds-0-1-2", "seeds-3-4-5")}
    trained = [name for name, part in parts.items() if not part["training"]["cached"]]
    assert len(trained) == 1, parts  # trained once
    waited = next(name for name in parts if name not in trained)
    began = (out / waited / "job.json").stat().st_mtime
    assert began < (out / trained[0] / "result.json").stat().st_mtime  # beside the part that trained, not after
    assert result == json.loads((out / "result.json").read_text())
    assert result["status"] == "ok" and result["seeds"] == [0, 1, 2, 3, 4, 5] and not result["training"]["cached"]
    assert not any((out / name / "samples.jsonl").exists() for name in parts)  # merged into the run's

    # The policy is cached now: scored as one run, by a runner started for it alone (a warm one
    # would outlive the test, and test_sandbox counts the sandboxes under pytest).
    whole = run_scaffold(scaffold, root / "whole", seeds=[0, 1, 2, 3, 4, 5], heldout=True, train_seed=8,
                         **options(root), threads=1, warm=False)
    assert whole["training"]["cached"] and whole["training"]["key"] == result["training"]["key"]
    assert result["per_example"] == whole["per_example"]
    assert result["heldout"]["per_example"] == whole["heldout"]["per_example"]
    assert result["heldout"]["seeds"] == [0, 1, 2, 3, 4, 5]
    for name, value in whole["metrics"].items():
        assert result["metrics"][name] == (value if isinstance(value, dict) else pytest.approx(value)), name
    counts = [{c: f["count"] for c, f in r["failures"].items()} for r in (result, whole)]
    assert counts[0] == counts[1]
    assert (out / "samples.jsonl").read_text() == (root / "whole" / "samples.jsonl").read_text()


DRIVER = """
import sys
from harness.ray_runner import RayPool
pool = RayPool({options!r}, address=None, cpus=1, gpus=0, workers=1)
assert pool.run([{{"scaffold": {scaffold!r}, "out": {out!r}, "seeds": [0], "heldout": False}}])[0]["status"] == "ok"
print("ready", flush=True)
sys.stdin.read()
"""


def test_a_kill_9_of_the_driver_leaves_no_process_of_its_ray(root):
    root, scaffold = root
    code = DRIVER.format(options=options(root), scaffold=str(scaffold), out=str(root / "driver"))
    driver = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "ready"
        running = ours(driver.pid)
        assert any("raylet" in cmdline(p) for p in running)
        assert any("rl_pipeline.worker" in cmdline(p) for p in running)
    finally:
        driver.kill()  # SIGKILL: no handler, no atexit, no `finally` runs in it
        driver.wait()
    assert_all_gone(running)
